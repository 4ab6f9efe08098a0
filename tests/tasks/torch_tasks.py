"""Small real PyTorch tasks for the tests: a fast classifier and a memory-hungry but cheap-to-run model."""

import time

import numpy as np
import torch

import autotune
try:  # loaded by path (autotune.load_task puts this folder on sys.path)
    from blobs import make_blobs
except ImportError:  # imported as tests.tasks.<name> by a test module
    from tests.tasks.blobs import make_blobs


_blobs = make_blobs


def small_model():
    return torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))


small = autotune.Task(backend="torch", model=small_model, data=_blobs, loss="cross_entropy")


class Hungry(torch.nn.Module):
    """A wide layer followed by element-wise ops: about 0.5 MiB of saved activations per sample, little compute."""

    def __init__(self):
        super().__init__()
        self.up = torch.nn.Linear(16, 8192)
        self.down = torch.nn.Linear(8192, 4)

    def forward(self, x):
        h = self.up(x)
        for _ in range(6):
            h = torch.tanh(h) * 1.01
        return self.down(h)


def hungry_data():
    return _blobs(n=3000)


hungry = autotune.Task(backend="torch", model=Hungry, data=hungry_data, loss="cross_entropy")


def broken_model():
    return torch.nn.Sequential(torch.nn.Linear(17, 4))  # wrong input width: fails at every size


broken = autotune.Task(backend="torch", model=broken_model, data=_blobs, loss="cross_entropy")


def mse_model():
    return torch.nn.Linear(16, 1)


def _regression():
    (x, _), (xv, _) = _blobs()
    w = np.linspace(-1, 1, 16).astype(np.float32)
    return (x, (x @ w)[:, None]), (xv, (xv @ w)[:, None])


regression = autotune.Task(backend="torch", model=mse_model, data=_regression, loss="mse")


def compute_bound_model():
    """Three wide layers: compute grows with the batch (about 0.2 GFLOP a sample per step), memory barely."""
    return torch.nn.Sequential(torch.nn.Linear(16, 2048), torch.nn.ReLU(), torch.nn.Linear(2048, 2048),
                               torch.nn.ReLU(), torch.nn.Linear(2048, 2048), torch.nn.ReLU(),
                               torch.nn.Linear(2048, 4))


compute_bound = autotune.Task(backend="torch", model=compute_bound_model, data=lambda: _blobs(n=2500),
                              loss="cross_entropy")


class StallsLater(torch.nn.Module):
    """The small classifier, except that from the second one built in a process on, its first training forward
    sleeps 5 s (a model whose build or first step outlasts a short budget)."""

    built = 0

    def __init__(self):
        super().__init__()
        StallsLater.built += 1
        self.stall = 5.0 if StallsLater.built > 1 else 0.0
        self.layer = torch.nn.Linear(16, 4)

    def forward(self, x):
        if self.training and self.stall:
            time.sleep(self.stall)
            self.stall = 0.0
        return self.layer(x)


stalls_later = autotune.Task(backend="torch", model=StallsLater, data=_blobs, loss="cross_entropy")


class SlowToValidate(torch.nn.Module):
    """The small classifier, except that its forward passes outside training sleep 4 ms a sample: one pass over
    the 120 validation samples takes about half a second, whatever the batch (a costly validation set)."""

    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(16, 4)

    def forward(self, x):
        if not self.training:
            time.sleep(0.004 * len(x))
        return self.layer(x)


slow_to_validate = autotune.Task(backend="torch", model=SlowToValidate, data=_blobs, loss="cross_entropy")


def _nan_loss(outputs, targets):
    return torch.nn.functional.cross_entropy(outputs, targets) * float("nan")


nan_loss = autotune.Task(backend="torch", model=small_model, data=_blobs, loss=_nan_loss)
