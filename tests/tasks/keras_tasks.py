"""Keras tasks written the way Keras users write them (tests/test_keras_contract.py): a PyDataset, a model that
ends in a softmax (keras.applications' MobileNetV2), a compute_loss, and contracts broken on purpose."""

import numpy as np

import autotune
try:  # loaded by path (autotune.load_task puts this folder on sys.path)
    from blobs import make_blobs
except ImportError:  # imported as tests.tasks.<name> by a test module
    from tests.tasks.blobs import make_blobs
from autotune.backends.tensorflow import keras  # imported the way the backend imports it (quiet, TF backend)


class Batches(keras.utils.PyDataset):
    """(x, y) batches of arrays, the last one short, as a Keras user's PyDataset serves them."""

    def __init__(self, x, y, batch_size=50, **kwargs):
        super().__init__(**kwargs)
        self.x, self.y, self.batch_size = x, y, batch_size

    def __len__(self):
        return -(-len(self.x) // self.batch_size)

    def __getitem__(self, index):
        rows = slice(index * self.batch_size, (index + 1) * self.batch_size)
        return self.x[rows], self.y[rows]


def pydatasets():
    (x, y), (xv, yv) = make_blobs()
    return Batches(x, y), Batches(xv, yv, batch_size=32)


def small_model():
    return keras.Sequential([keras.Input((16,)), keras.layers.Dense(32, activation="relu"), keras.layers.Dense(4)])


pydataset = autotune.Task(backend="tensorflow", model=small_model, data=pydatasets, loss="cross_entropy")


def mobilenet():
    """keras.applications' MobileNetV2, untrained, at 32×32: its classifier ends in a softmax."""
    return keras.applications.MobileNetV2(input_shape=(32, 32, 3), weights=None, classes=10)


def tiny_images(n=64):
    rng = np.random.default_rng(0)
    x = rng.random((n, 32, 32, 3), dtype=np.float32)
    y = rng.integers(0, 10, n)
    split = n * 3 // 4
    return (x[:split], y[:split]), (x[split:], y[split:])


mobilenet_v2 = autotune.Task(backend="tensorflow", model=mobilenet, data=tiny_images, loss="cross_entropy")


def mean_cross_entropy(model, batch):
    """A model's own loss: the mean sparse cross entropy of its logits."""
    x, y = batch
    return keras.ops.mean(keras.losses.sparse_categorical_crossentropy(y, model(x), from_logits=True))


own_loss = autotune.Task(backend="tensorflow", model=small_model, data=make_blobs, compute_loss=mean_cross_entropy)


# --- contracts broken on purpose ----------------------------------------------------------------------------

def per_sample_loss(model, batch):
    """Forgets to reduce: one loss per sample."""
    x, y = batch
    return keras.losses.sparse_categorical_crossentropy(y, model(x), from_logits=True)


per_sample = autotune.Task(backend="tensorflow", model=small_model, data=make_blobs, compute_loss=per_sample_loss)
