"""PyTorch tasks whose model crashes the process or hangs at batch size 32 (and only there).

Fit-batch probes sizes 8, 64 and the data size (480), so the ceiling fits; trials at 32 segfault or hang.
"""

import ctypes
import time

import torch

import autotune
from torch_tasks import _blobs


class Segfaults(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(16, 4)

    def forward(self, x):
        if x.shape[0] == 32:
            ctypes.string_at(0)  # a real segmentation fault in this process
        return self.layer(x)


class Hangs(Segfaults):
    def forward(self, x):
        if x.shape[0] == 32:
            time.sleep(3600)
        return self.layer(x)


segfault = autotune.Task(backend="torch", model=Segfaults, data=_blobs, loss="cross_entropy")
hang = autotune.Task(backend="torch", model=Hangs, data=_blobs, loss="cross_entropy")
