"""autotune inside your own PyTorch training loop: ask-and-tell trials on scikit-learn's digits.

Run ``python examples/torch_own_loop.py``; then ``autotune best own-loop-digits`` reads the chosen configuration.
"""

import numpy as np
import torch
from sklearn.datasets import load_digits

import autotune


def digits():
    data = load_digits()
    x = torch.tensor(data.data / 16.0, dtype=torch.float32)
    y = torch.tensor(data.target, dtype=torch.int64)
    order = torch.from_numpy(np.random.default_rng(0).permutation(len(x)))
    x, y = x[order], y[order]
    return (x[:1400], y[:1400]), (x[1400:], y[1400:])


def build_model() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10))


def main(trials: int = 12, storage: str | None = None) -> autotune.TuneResult:
    (x, y), (x_val, y_val) = digits()
    tuner = autotune.Tuner(study="own-loop-digits", backend="torch", storage=storage, ceiling=256)
    for trial in tuner.trials(trials):
        with trial:
            torch.manual_seed(0)
            model = build_model()
            optimizer = trial.optimizer(model.parameters())
            for epoch in range(4):
                for start in range(0, len(x) - trial.batch_size + 1, trial.batch_size):
                    batch_x, batch_y = x[start:start + trial.batch_size], y[start:start + trial.batch_size]
                    with trial.step(samples=len(batch_x)):
                        optimizer.zero_grad()
                        loss = torch.nn.functional.cross_entropy(model(batch_x), batch_y)
                        loss.backward()
                        optimizer.step()
                with torch.no_grad():
                    val_loss = torch.nn.functional.cross_entropy(model(x_val), y_val).item()
                trial.report(val_loss, epoch + 1)
                if trial.should_prune():
                    break
            trial.finish(val_loss)
    return tuner.best


if __name__ == "__main__":
    best = main()
    print(f"batch {best.batch_size}, {best.optimizer}, lr {best.lr:.3g}: validation loss {best.val_loss:.4f}")
