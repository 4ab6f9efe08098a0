"""MindSpore tasks for tests/test_mindspore_contract.py: a compute_loss, a model ending in a softmax, and a
compute_loss that breaks the contract on purpose (workers load them by path)."""

from mindspore import nn, ops

import autotune
try:  # loaded by path (autotune.load_task puts this folder on sys.path)
    from blobs import make_blobs
except ImportError:  # imported as tests.tasks.<name> by a test module
    from tests.tasks.blobs import make_blobs


def mlp():
    return nn.SequentialCell(nn.Dense(16, 32), nn.ReLU(), nn.Dense(32, 4))


def mean_cross_entropy(model, batch):
    """A model's own loss: the mean cross entropy of its logits, labels as the data has them (int64)."""
    x, y = batch
    return ops.nll_loss(ops.log_softmax(model(x), axis=1), y)


own_loss = autotune.Task(backend="mindspore", model=mlp, data=make_blobs, compute_loss=mean_cross_entropy)


def per_sample_loss(model, batch):
    """Forgets to reduce: one loss per sample."""
    x, y = batch
    return ops.nll_loss(ops.log_softmax(model(x), axis=1), y, reduction="none")


per_sample = autotune.Task(backend="mindspore", model=mlp, data=make_blobs, compute_loss=per_sample_loss)


def softmax_mlp():
    return nn.SequentialCell(nn.Dense(16, 32), nn.ReLU(), nn.Dense(32, 4), nn.Softmax())


softmax = autotune.Task(backend="mindspore", model=softmax_mlp, data=make_blobs, loss="cross_entropy")
