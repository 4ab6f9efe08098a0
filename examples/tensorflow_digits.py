"""A small TensorFlow/Keras task: an MLP on scikit-learn's digits (8×8 images, 10 classes), shipped with the package.

Run ``autotune tune examples/tensorflow_digits.py`` or ``autotune fit-batch examples/tensorflow_digits.py``.
"""

import numpy as np
from sklearn.datasets import load_digits

import autotune
from autotune.backends.tensorflow import keras  # Keras as the backend loads it: TensorFlow's, quiet


def build_model() -> keras.Model:
    return keras.Sequential([
        keras.Input((64,)),
        keras.layers.Dense(128, activation="relu"),
        keras.layers.Dense(64, activation="relu"),
        keras.layers.Dense(10),
    ])


def load_data():
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(x))
    x, y = x[order], y[order]
    split = int(0.8 * len(x))
    return (x[:split], y[:split]), (x[split:], y[split:])


task = autotune.Task(backend="tensorflow", model=build_model, data=load_data, loss="cross_entropy")
