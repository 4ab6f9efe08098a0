"""autotune inside MindSpore's own ``Model.train``: the trial's callback times the steps, reports the validation
loss that ``evaluate`` returns after each epoch and stops training when the pruner says so. Data: Gaussian
blobs (16 features, 4 classes), generated here.

Run ``python examples/mindspore_own_loop.py``; then ``autotune best mindspore-own-loop`` reads the result.
"""

import mindspore as ms
import mindspore.dataset as msds
import numpy as np
from mindspore import nn

import autotune

SPACE = {"batch_size": {"choices": [32, 64]}, "lr": {"low": 1e-3, "high": 3e-2, "log": True, "reference_batch": 32},
         "optimizers": {"adam": {}, "momentum": {"momentum": {"low": 0.8, "high": 0.95}}}}
CROSS_ENTROPY = nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean")


class ColumnLabels(nn.Cell):
    """Cross entropy on labels carried as a column: a ``mindspore.dataset`` row of NumPy scalars fails under
    NumPy 2."""

    def construct(self, logits, labels):
        return CROSS_ENTROPY(logits, labels.squeeze(-1))


def blobs(n: int = 600, seed: int = 0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 3, (4, 16))
    y = rng.integers(0, 4, n).astype(np.int32)
    x = (centers[y] + rng.normal(0, 1, (n, 16))).astype(np.float32)
    split = int(0.8 * n)
    return (x[:split], y[:split, None]), (x[split:], y[split:])


def main(trials: int = 4, storage: str | None = None) -> autotune.Tuner:
    (x, y), (x_val, y_val) = blobs()
    tuner = autotune.Tuner(study="mindspore-own-loop", backend="mindspore", storage=storage, space_overrides=SPACE)
    for trial in tuner.trials(trials):
        with trial:
            ms.set_seed(0)
            net = nn.SequentialCell([nn.Dense(16, 32), nn.ReLU(), nn.Dense(32, 4)])
            model = ms.Model(net, loss_fn=ColumnLabels(), optimizer=trial.optimizer(net.trainable_params()))
            data = msds.NumpySlicesDataset({"x": x, "y": y}, shuffle=False).batch(trial.batch_size)

            def validation_loss() -> float:
                return float(CROSS_ENTROPY(net(ms.Tensor(x_val)), ms.Tensor(y_val)).asnumpy())

            model.train(2, data, callbacks=[trial.callback(evaluate=validation_loss)], dataset_sink_mode=False)
    return tuner


if __name__ == "__main__":
    best = main().best
    print(f"batch {best.batch_size}, {best.optimizer}, lr {best.lr:.3g}: validation loss {best.val_loss:.4f}")
