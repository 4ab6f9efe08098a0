"""A memory-hungry PyTorch task on generated images: activations grow fast with the batch size.

Used by the fit-batch tests and benchmark; the data is generated, nothing is downloaded.
"""

import numpy as np
import torch

import autotune

IMAGE = 32
SAMPLES = 4096


def build_model() -> torch.nn.Module:
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 64, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(64, 64, 3, padding=1), torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(64, 128, 3, padding=1), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
        torch.nn.Linear(128, 10),
    )


def load_data():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((SAMPLES, 3, IMAGE, IMAGE), dtype=np.float32)
    y = rng.integers(0, 10, SAMPLES).astype(np.int64)
    return (x[:-256], y[:-256]), (x[-256:], y[-256:])


task = autotune.Task(backend="torch", model=build_model, data=load_data, loss="cross_entropy")
