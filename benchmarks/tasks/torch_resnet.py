"""A ResNet-shaped PyTorch model (a stem and three residual stages with BatchNorm) on 1,500 random but learnable
32×32 images (`image_patterns`), 10 classes, cross entropy on logits.

Run ``autotune tune benchmarks/tasks/torch_resnet.py --trials 6 --trial-time 4``.
"""

import torch
from image_patterns import images
from torch import nn

import autotune


class BasicBlock(nn.Module):
    """Two 3×3 convolutions with BatchNorm, added to the input (a 1×1 projection where the shape changes)."""

    def __init__(self, inputs: int, outputs: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(inputs, outputs, 3, stride, 1, bias=False), nn.BatchNorm2d(outputs), nn.ReLU(inplace=True),
            nn.Conv2d(outputs, outputs, 3, 1, 1, bias=False), nn.BatchNorm2d(outputs),
        )
        self.shortcut = nn.Identity() if stride == 1 and inputs == outputs else nn.Sequential(
            nn.Conv2d(inputs, outputs, 1, stride, bias=False), nn.BatchNorm2d(outputs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.shortcut(x))


def build_model() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, 1, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU(inplace=True),
        BasicBlock(8, 8, 1), BasicBlock(8, 16, 2), BasicBlock(16, 32, 2),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10),
    )


def load_data():
    return images(channels_last=False)


task = autotune.Task(backend="torch", model=build_model, data=load_data, loss="cross_entropy")
