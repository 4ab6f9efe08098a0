"""PyTorch tasks whose data is wrong in a way NumPy can tell before any training: NaN inputs, infinite targets,
validation inputs of another width than the training inputs; and labels beyond the model's outputs, which the
two-sample contract check finds."""

import numpy as np

import autotune
import torch

from torch_tasks import _blobs, mse_model, small_model


def _nan_inputs():
    (x, y), (xv, yv) = _blobs()
    x = x.copy()
    x[7, 3] = np.nan
    return (x, y), (xv, yv)


def _inf_targets():
    (x, _), (xv, _) = _blobs()
    y = np.zeros((len(x), 1), np.float32)
    y[5] = np.inf
    return (x, y), (xv, np.zeros((len(xv), 1), np.float32))


def _wider_validation():
    (x, y), (xv, yv) = _blobs()
    return (x, y), (np.concatenate([xv, xv[:, :1]], axis=1), yv)


nan_inputs = autotune.Task(backend="torch", model=small_model, data=_nan_inputs, loss="cross_entropy")
inf_targets = autotune.Task(backend="torch", model=mse_model, data=_inf_targets, loss="mse")
wider_validation = autotune.Task(backend="torch", model=small_model, data=_wider_validation, loss="cross_entropy")


def _three_classes():
    return torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 3))


too_few_outputs = autotune.Task(backend="torch", model=_three_classes, data=_blobs, loss="cross_entropy")
