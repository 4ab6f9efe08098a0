"""A Keras training step of the user's own code, for `autotune.find_batch_size`: module-level, so a worker can
import it by name."""

import numpy as np

from tests.tasks.tensorflow_tasks import Hungry, keras  # about 0.25 MiB of saved activations per sample

model = Hungry()
model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
_rng = np.random.default_rng(0)


def hungry_step(batch_size):
    """One `train_on_batch` at ``batch_size`` on generated data."""
    x = _rng.standard_normal((batch_size, 16)).astype(np.float32)
    y = _rng.integers(0, 4, batch_size)
    return model.train_on_batch(x, y)
