"""A small MindSpore task: an MLP on scikit-learn's digits (8×8 images, 10 classes), shipped with the package.

Run ``autotune tune examples/mindspore_digits.py`` or ``autotune fit-batch examples/mindspore_digits.py``.
The step runs in PyNative mode; ``options={"mode": "graph"}`` on the Task compiles it with ``mindspore.jit``.
"""

import numpy as np
from mindspore import nn
from sklearn.datasets import load_digits

import autotune


def build_model() -> nn.Cell:
    return nn.SequentialCell(
        nn.Dense(64, 128), nn.ReLU(),
        nn.Dense(128, 64), nn.ReLU(),
        nn.Dense(64, 10),
    )


def load_data():
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(x))
    x, y = x[order], y[order]
    split = int(0.8 * len(x))
    return (x[:split], y[:split]), (x[split:], y[split:])


task = autotune.Task(backend="mindspore", model=build_model, data=load_data, loss="cross_entropy")
