"""autotune inside Keras' own ``fit``: the trial's callback times the steps, reports each epoch's validation loss
and stops training when the pruner says so. Data: Gaussian blobs (16 features, 4 classes), generated here.

Run ``python examples/keras_own_loop.py``; then ``autotune best keras-own-loop`` reads the chosen configuration.
"""

import keras
import numpy as np

import autotune

SPACE = {"batch_size": {"choices": [32, 64]}, "lr": {"low": 1e-3, "high": 3e-2, "log": True, "reference_batch": 32},
         "optimizers": {"adam": {}, "momentum": {"momentum": {"low": 0.8, "high": 0.95}}}}


def blobs(n: int = 600, seed: int = 0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 3, (4, 16))
    y = rng.integers(0, 4, n)
    x = (centers[y] + rng.normal(0, 1, (n, 16))).astype(np.float32)
    split = int(0.8 * n)
    return (x[:split], y[:split]), (x[split:], y[split:])


def main(trials: int = 6, storage: str | None = None) -> autotune.Tuner:
    (x, y), (x_val, y_val) = blobs()
    tuner = autotune.Tuner(study="keras-own-loop", backend="tensorflow", storage=storage, space_overrides=SPACE)
    for trial in tuner.trials(trials):
        with trial:
            model = keras.Sequential([keras.Input((16,)), keras.layers.Dense(32, activation="relu"),
                                      keras.layers.Dense(4)])
            model.compile(optimizer=trial.optimizer(None),
                          loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
            model.fit(x, y, batch_size=trial.batch_size, epochs=3, validation_data=(x_val, y_val),
                      callbacks=[trial.callback()], verbose=0)
    return tuner


if __name__ == "__main__":
    best = main().best
    print(f"batch {best.batch_size}, {best.optimizer}, lr {best.lr:.3g}: validation loss {best.val_loss:.4f}")
