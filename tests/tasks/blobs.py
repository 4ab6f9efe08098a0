"""The generated data every backend's test tasks share: Gaussian blobs, 16 features, 4 classes (NumPy only)."""

import numpy as np


def make_blobs(n=600, features=16, classes=4, seed=0):
    """``((x_train, y_train), (x_val, y_val))``: 80 % train, float32 inputs, int64 labels."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 3, (classes, features))
    y = rng.integers(0, classes, n)
    x = (centers[y] + rng.normal(0, 1, (n, features))).astype(np.float32)
    split = int(0.8 * n)
    return (x[:split], y[:split].astype(np.int64)), (x[split:], y[split:].astype(np.int64))
