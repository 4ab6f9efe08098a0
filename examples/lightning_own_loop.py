"""autotune with a PyTorch Lightning ``Trainer``: each trial's ``trial.callback()`` times the steps, reports
the validation loss after each epoch and stops the Trainer when the pruner says so. Digits from scikit-learn.

Run ``python examples/lightning_own_loop.py`` (needs ``pip install lightning``); then
``autotune best lightning-digits`` reads the chosen configuration.
"""

import lightning.pytorch as pl
import numpy as np
import torch
from sklearn.datasets import load_digits
from torch.utils.data import DataLoader, TensorDataset

import autotune


def digits() -> tuple[TensorDataset, TensorDataset]:
    data = load_digits()
    x = torch.tensor(data.data / 16.0, dtype=torch.float32)
    y = torch.tensor(data.target, dtype=torch.int64)
    order = torch.from_numpy(np.random.default_rng(0).permutation(len(x)))
    x, y = x[order], y[order]
    return TensorDataset(x[:1400], y[:1400]), TensorDataset(x[1400:], y[1400:])


class Classifier(pl.LightningModule):
    def __init__(self, trial: autotune.TunerTrial) -> None:
        super().__init__()
        self.trial = trial
        self.net = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.cross_entropy(self.net(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", torch.nn.functional.cross_entropy(self.net(x), y))

    def configure_optimizers(self):
        return self.trial.optimizer(self.parameters())  # the trial's optimizer, rate scaled for its batch


def main(trials: int = 8, storage: str | None = None, epochs: int = 4) -> autotune.TuneResult:
    train, val = digits()
    tuner = autotune.Tuner(study="lightning-digits", backend="torch", storage=storage, ceiling=256)
    for trial in tuner.trials(trials):
        with trial:
            torch.manual_seed(0)
            trainer = pl.Trainer(max_epochs=epochs, callbacks=[trial.callback()], accelerator="cpu",
                                 logger=False, enable_checkpointing=False, enable_progress_bar=False,
                                 enable_model_summary=False)
            trainer.fit(Classifier(trial), DataLoader(train, batch_size=trial.batch_size, shuffle=True),
                        DataLoader(val, batch_size=len(val)))
    return tuner.best


if __name__ == "__main__":
    best = main()
    print(f"batch {best.batch_size}, {best.optimizer}, lr {best.lr:.3g}: validation loss {best.val_loss:.4f}")
