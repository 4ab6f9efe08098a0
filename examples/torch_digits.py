"""A small PyTorch task: an MLP on scikit-learn's digits (8×8 images, 10 classes), shipped with the package.

Run ``autotune tune examples/torch_digits.py`` or ``autotune fit-batch examples/torch_digits.py``.
"""

import numpy as np
import torch
from sklearn.datasets import load_digits

import autotune


def build_model() -> torch.nn.Module:
    return torch.nn.Sequential(
        torch.nn.Linear(64, 128), torch.nn.ReLU(),
        torch.nn.Linear(128, 64), torch.nn.ReLU(),
        torch.nn.Linear(64, 10),
    )


def load_data():
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(x))
    x, y = x[order], y[order]
    split = int(0.8 * len(x))
    return (x[:split], y[:split]), (x[split:], y[split:])


task = autotune.Task(backend="torch", model=build_model, data=load_data, loss="cross_entropy")
