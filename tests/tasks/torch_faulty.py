"""PyTorch tasks whose model crashes the process, hangs or raises at batch size 32 (and only there), or raises
at 16 and 32 both.

Fit-batch probes sizes 8, 64 and the data size (480), so the ceiling fits; trials at 32 segfault, hang or raise.
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


class Raises(Segfaults):
    def forward(self, x):
        if x.shape[0] == 32:
            raise RuntimeError("this model cannot take batch 32")
        return self.layer(x)


class RaisesSmall(Segfaults):
    def forward(self, x):
        if x.shape[0] in (16, 32):
            raise RuntimeError(f"this model cannot take batch {x.shape[0]}")
        return self.layer(x)


segfault = autotune.Task(backend="torch", model=Segfaults, data=_blobs, loss="cross_entropy")
hang = autotune.Task(backend="torch", model=Hangs, data=_blobs, loss="cross_entropy")
raises = autotune.Task(backend="torch", model=Raises, data=_blobs, loss="cross_entropy")
raises_small = autotune.Task(backend="torch", model=RaisesSmall, data=_blobs, loss="cross_entropy")
