"""The conformance tasks of the NumPy test backend (see `autotune.testing.backend_suite`)."""

import numpy as np
from numpy_backend import MLP

import autotune

try:  # loaded by path (autotune.load_task puts this folder on sys.path)
    from blobs import make_blobs
except ImportError:
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tasks"))
    from blobs import make_blobs


small = autotune.Task(backend="numpy_mlp", model=lambda: MLP((16, 32, 4)), data=make_blobs, loss="cross_entropy")

# 8192 wide, with six tanh repeats: seven float32 activations of 32 KiB kept per sample (about 0.25 MiB), and
# the backward pass's temporaries on top
hungry = autotune.Task(backend="numpy_mlp", model=lambda: MLP((16, 8192, 4), repeats=6),
                       data=lambda: make_blobs(n=3000), loss="cross_entropy")

broken = autotune.Task(backend="numpy_mlp", model=lambda: MLP((17, 4)), data=make_blobs, loss="cross_entropy")


def _regression():
    (x, _), (xv, _) = make_blobs()
    w = np.linspace(-1, 1, 16).astype(np.float32)
    return (x, (x @ w)[:, None]), (xv, (xv @ w)[:, None])


regression = autotune.Task(backend="numpy_mlp", model=lambda: MLP((16, 1)), data=_regression, loss="mse")
