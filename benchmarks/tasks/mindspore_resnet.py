"""A ResNet-shaped MindSpore model (``mindspore.nn``: a stem and three residual stages with BatchNorm) on 1,500
random but learnable 32×32 images (`image_patterns`), 10 classes, cross entropy on logits.

Written here to the shape of a ResNet (a model library such as MindCV was not tried beside MindSpore 2.10).
Run ``autotune tune benchmarks/tasks/mindspore_resnet.py --trials 6 --trial-time 4``.
"""

from image_patterns import images
from mindspore import nn, ops

import autotune


class BasicBlock(nn.Cell):
    """Two 3×3 convolutions with BatchNorm, added to the input (a 1×1 projection where the shape changes)."""

    def __init__(self, inputs: int, outputs: int, stride: int) -> None:
        super().__init__()
        self.body = nn.SequentialCell(
            nn.Conv2d(inputs, outputs, 3, stride, pad_mode="pad", padding=1), nn.BatchNorm2d(outputs), nn.ReLU(),
            nn.Conv2d(outputs, outputs, 3, 1, pad_mode="pad", padding=1), nn.BatchNorm2d(outputs),
        )
        self.project = not (stride == 1 and inputs == outputs)
        self.shortcut = nn.SequentialCell(nn.Conv2d(inputs, outputs, 1, stride), nn.BatchNorm2d(outputs)) \
            if self.project else nn.Identity()
        self.relu = nn.ReLU()

    def construct(self, x):
        return self.relu(self.body(x) + self.shortcut(x))


class ResNet(nn.Cell):
    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.features = nn.SequentialCell(
            nn.Conv2d(3, 8, 3, 1, pad_mode="pad", padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            BasicBlock(8, 8, 1), BasicBlock(8, 16, 2), BasicBlock(16, 32, 2),
        )
        self.head = nn.Dense(32, classes)

    def construct(self, x):
        return self.head(ops.mean(self.features(x), (2, 3)))


def build_model() -> nn.Cell:
    return ResNet()


def load_data():
    return images(channels_last=False)


task = autotune.Task(backend="mindspore", model=build_model, data=load_data, loss="cross_entropy")
