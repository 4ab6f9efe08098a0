"""Small real MindSpore tasks for the tests: the same four as torch_tasks.py, as mindspore.nn.Cell models."""

import numpy as np
from mindspore import nn, ops

import autotune
try:  # loaded by path (autotune.load_task puts this folder on sys.path)
    from blobs import make_blobs
except ImportError:  # imported as tests.tasks.<name> by a test module
    from tests.tasks.blobs import make_blobs


_blobs = make_blobs


def small_model():
    return nn.SequentialCell(nn.Dense(16, 32), nn.ReLU(), nn.Dense(32, 4))


small = autotune.Task(backend="mindspore", model=small_model, data=_blobs, loss="cross_entropy")


class Hungry(nn.Cell):
    """A wide layer followed by element-wise ops, little compute. Wider than the other backends' hungry task
    (width 24576, about 0.75 MiB per sample), so that the one 1 GiB block of MindSpore's CPU pool that a 2.5 GiB
    cap leaves room for holds fewer samples than the training set (about 1370, measured)."""

    def __init__(self, width=24576):
        super().__init__()
        self.up = nn.Dense(16, width)
        self.down = nn.Dense(width, 4)

    def construct(self, x):
        h = self.up(x)
        for _ in range(6):
            h = ops.tanh(h) * 1.01
        return self.down(h)


def hungry_data():
    return _blobs(n=3000)


hungry = autotune.Task(backend="mindspore", model=Hungry, data=hungry_data, loss="cross_entropy")


def broken_model():
    return nn.SequentialCell(nn.Dense(17, 4))  # wrong input width: fails at every size


broken = autotune.Task(backend="mindspore", model=broken_model, data=_blobs, loss="cross_entropy")


def mse_model():
    return nn.Dense(16, 1)


def _regression():
    (x, _), (xv, _) = _blobs()
    w = np.linspace(-1, 1, 16).astype(np.float32)
    return (x, (x @ w)[:, None]), (xv, (xv @ w)[:, None])


regression = autotune.Task(backend="mindspore", model=mse_model, data=_regression, loss="mse")


# --- MindSpore-specific variants (tests/test_mindspore_backend.py) -------------------------------------------

small_graph = autotune.Task(backend="mindspore", model=small_model, data=_blobs, loss="cross_entropy",
                            options={"mode": "graph"})


def huge_model():
    """Hungry at width 65536 (about 2 MiB per sample): a batch of a thousand outgrows the one 1 GiB CPU pool
    block that a 2.8 GiB cap leaves room for, in PyNative and graph mode alike."""
    return Hungry(width=65536)


huge = autotune.Task(backend="mindspore", model=huge_model, data=hungry_data, loss="cross_entropy")
huge_graph = autotune.Task(backend="mindspore", model=huge_model, data=hungry_data, loss="cross_entropy",
                           options={"mode": "graph"})


def _digits_example():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "examples" / "mindspore_digits.py"
    spec = importlib.util.spec_from_file_location("mindspore_digits_example", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# The digits example compiled (`mindspore.jit`): the same search, where PyNative's 70 ms per step on this
# 2-core machine made the test the suite's slowest.
_example = _digits_example()
digits_graph = autotune.Task(backend="mindspore", model=_example.build_model, data=_example.load_data,
                             loss="cross_entropy", options={"mode": "graph"})
