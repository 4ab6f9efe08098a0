"""Keras' own MobileNetV2 (``keras.applications``, ``weights=None``, 32×32 inputs, 10 classes; it ends in a
softmax) on 1,500 random but learnable 32×32 images (`image_patterns`, channels last), cross entropy.

Run ``autotune tune benchmarks/tasks/keras_mobilenet.py --trials 6 --trial-time 4``.
"""

from image_patterns import images

import autotune
from autotune.backends.tensorflow import keras  # Keras as the backend loads it: TensorFlow's, quiet


def build_model() -> keras.Model:
    return keras.applications.MobileNetV2(input_shape=(32, 32, 3), weights=None, classes=10)


def load_data():
    return images(channels_last=True)


task = autotune.Task(backend="tensorflow", model=build_model, data=load_data, loss="cross_entropy")
