"""The Lightning callback: a Trainer's trials land in storage, a pruned one stops the Trainer and is pruned."""

import json
import math

import optuna
import pytest
import torch

import autotune
from tests.conftest import load_example, run_cli

pl = pytest.importorskip("lightning.pytorch", reason="the Lightning callback needs `pip install lightning`")
QUIET = dict(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
             enable_model_summary=False)


def test_the_lightning_example_stores_timed_trials_that_best_reads(tmp_path):
    storage = f"sqlite:///{tmp_path / 'l.db'}"
    best = load_example("lightning_own_loop").main(trials=2, storage=storage, epochs=2)
    study = optuna.load_study(study_name="lightning-digits", storage=storage)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 2
    for trial in complete:
        assert [step for step, _, _ in trial.user_attrs["history"]] == [1, 2]  # one report per epoch
        measured = trial.user_attrs["measured"]
        assert measured["steps_timed"] == 2 * math.ceil(1400 / trial.user_attrs["batch_size"])
        assert measured["throughput"] > 0 and trial.user_attrs["throughput"] == measured["throughput"]
    shown = json.loads(run_cli("best", "lightning-digits", "--storage", storage, "--json").stdout)
    assert shown["batch_size"] == best.batch_size and shown["lr"] == pytest.approx(best.lr)


class _Diverging(pl.LightningModule):
    """Logs a non-finite validation loss: the trial must be pruned and the Trainer stopped after epoch 1."""

    def __init__(self, trial):
        super().__init__()
        self.trial, self.net = trial, torch.nn.Linear(4, 2)

    def training_step(self, batch, batch_idx):
        return self.net(batch[0]).sum()

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", torch.tensor(float("nan")))

    def configure_optimizers(self):
        return self.trial.optimizer(self.parameters())


def test_a_pruned_lightning_trial_stops_the_trainer_and_is_stored_pruned(tmp_path):
    tuner = autotune.Tuner(study="diverging", backend="torch", storage=f"sqlite:///{tmp_path / 'd.db'}",
                           ceiling=8, space_overrides={"batch_size": {"choices": [4, 8]}, "optimizers": {"sgd": {}}})
    data = torch.utils.data.TensorDataset(torch.randn(32, 4))
    epochs = []
    for trial in tuner.trials(1):
        with trial:
            trainer = pl.Trainer(max_epochs=5, callbacks=[trial.callback()], **QUIET)
            trainer.fit(_Diverging(trial), torch.utils.data.DataLoader(data, batch_size=trial.batch_size),
                        torch.utils.data.DataLoader(data, batch_size=32))
            epochs.append(trainer.current_epoch)
        assert trial.state == "pruned"
    assert epochs == [1]
    (stored,) = tuner.study.trials
    assert stored.state == optuna.trial.TrialState.PRUNED and "diverged" in stored.user_attrs["failure"]


def test_a_metric_the_module_does_not_log_is_named(tmp_path):
    tuner = autotune.Tuner(study="unlogged", backend="torch", storage=f"sqlite:///{tmp_path / 'u.db'}", ceiling=8,
                           space_overrides={"batch_size": {"choices": [4, 8]}})
    data = torch.utils.data.TensorDataset(torch.randn(16, 4))
    for trial in tuner.trials(1):
        with pytest.raises(autotune.AutotuneError, match="monitors 'val_acc'"):
            trainer = pl.Trainer(max_epochs=1, callbacks=[trial.callback(monitor="val_acc")], **QUIET)
            trainer.fit(_Diverging(trial), torch.utils.data.DataLoader(data, batch_size=8),
                        torch.utils.data.DataLoader(data, batch_size=16))
        trial.fail("error", "test over")
        break
