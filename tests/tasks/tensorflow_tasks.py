"""Small real TensorFlow/Keras tasks for the tests: the torch tasks' twins (same data, same shapes)."""

import numpy as np

import autotune
try:  # loaded by path (autotune.load_task puts this folder on sys.path)
    from blobs import make_blobs
except ImportError:  # imported as tests.tasks.<name> by a test module
    from tests.tasks.blobs import make_blobs
from autotune.backends.tensorflow import keras, tf  # imported the way the backend imports them (quiet, TF backend)


_blobs = make_blobs


def small_model():
    return keras.Sequential([keras.Input((16,)), keras.layers.Dense(32, activation="relu"), keras.layers.Dense(4)])


small = autotune.Task(backend="tensorflow", model=small_model, data=_blobs, loss="cross_entropy")


class Hungry(keras.Model):
    """A wide layer followed by element-wise ops: about 0.25 MiB of saved activations per sample, little compute."""

    def __init__(self):
        super().__init__()
        self.up = keras.layers.Dense(8192)
        self.down = keras.layers.Dense(4)

    def call(self, x):
        h = self.up(x)
        for _ in range(6):
            h = keras.ops.tanh(h) * 1.01
        return self.down(h)


def hungry_data():
    return _blobs(n=3000)


hungry = autotune.Task(backend="tensorflow", model=Hungry, data=hungry_data, loss="cross_entropy")


def broken_model():
    return keras.Sequential([keras.Input((17,)), keras.layers.Dense(4)])  # wrong input width: fails at every size


broken = autotune.Task(backend="tensorflow", model=broken_model, data=_blobs, loss="cross_entropy")


def mse_model():
    return keras.Sequential([keras.Input((16,)), keras.layers.Dense(1)])


def _regression():
    (x, _), (xv, _) = _blobs()
    w = np.linspace(-1, 1, 16).astype(np.float32)
    return (x, (x @ w)[:, None]), (xv, (xv @ w)[:, None])


regression = autotune.Task(backend="tensorflow", model=mse_model, data=_regression, loss="mse")


def _hungry_datasets():
    """The hungry data as tf.data.Datasets: single training samples, validation in batches (TF-only tests)."""
    (x, y), (xv, yv) = hungry_data()
    return tf.data.Dataset.from_tensor_slices((x, y)), tf.data.Dataset.from_tensor_slices((xv, yv)).batch(100)


hungry_datasets = autotune.Task(backend="tensorflow", model=Hungry, data=_hungry_datasets, loss="cross_entropy")


def three_classes():
    return keras.Sequential([keras.Input((16,)), keras.layers.Dense(3)])


too_few_outputs = autotune.Task(backend="tensorflow", model=three_classes, data=_blobs, loss="cross_entropy")
