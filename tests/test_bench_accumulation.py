"""Gradient accumulation: micro-batches reproduce the full batch's loss trajectory (real backends, CPU)."""

from __future__ import annotations

import numpy as np
import pytest

from autotune.backends import get_backend, is_installed
from autotune.task import load_task
from autotune.training import BatchSampler, accumulating, accumulation_plan
from tests.conftest import EXAMPLES

TASKS = {"torch": "torch_digits.py", "tensorflow": "tensorflow_digits.py", "mindspore": "mindspore_digits.py"}


@pytest.mark.parametrize("global_batch, ceiling, plan", [
    (256, 512, (256, 1)), (256, 64, (64, 4)), (256, 100, (64, 4)), (96, 40, (32, 3)), (7, 2, (1, 7)),
])
def test_the_plan_divides_the_global_batch_exactly_under_the_ceiling(global_batch, ceiling, plan):
    micro, steps = accumulation_plan(global_batch, ceiling)
    assert (micro, steps) == plan and micro * steps == global_batch and micro <= ceiling


def _trajectory(name: str, batch_size: int, accumulation_steps: int, steps: int = 8) -> list[float]:
    task = load_task(str(EXAMPLES / TASKS[name]))
    backend = get_backend(name)
    device = backend.resolve_device("cpu")
    data = task.load_data()
    micro = batch_size // accumulation_steps
    session = accumulating(backend.session(task, data, device, batch_size=micro,
                                           optimizer={"name": "momentum", "lr": 0.05}, seed=3),
                           accumulation_steps)
    sampler = BatchSampler(backend.data_size(data)[0], batch_size, seed=5)
    losses = []
    try:
        for _ in range(steps):
            session.train_step(sampler.next())
            losses.append(session.last_loss())
        losses.append(session.evaluate())
    finally:
        session.close()
    return losses


@pytest.mark.parametrize("name", list(TASKS))
def test_accumulation_reproduces_the_full_batch_trajectory(name):
    if not is_installed(name):
        pytest.skip(f"{name} is not installed")
    full = _trajectory(name, 128, 1)
    accumulated = _trajectory(name, 128, 4)
    assert full[-1] < full[0]  # it learns: the comparison is of a moving trajectory
    np.testing.assert_allclose(accumulated, full, rtol=2e-4, atol=1e-5)
    smaller = _trajectory(name, 32, 1)  # a plain step at the micro-batch is another trajectory
    assert not np.allclose(smaller, full, rtol=2e-4, atol=1e-5)


def test_a_global_batch_over_the_ceiling_is_sampled_as_micro_batches_with_its_own_rate():
    import optuna

    from autotune.optimizers import lr_scale
    from autotune.space import BATCH_PARAM, load_space

    space = load_space("torch", get_backend("torch").optimizer_names)
    trial = optuna.create_study().ask()
    config = space.suggest(trial, ceiling=64, global_batch=256)
    assert config["batch_size"] == 256
    assert (config["micro_batch"], config["accumulation_steps"]) == (64, 4)
    assert config["lr_scale"] == lr_scale(config["optimizer"], 256, space.reference_batch)
    assert BATCH_PARAM not in trial.params  # the batch is not searched


def test_a_trial_runs_the_global_batch_in_micro_batches():
    from autotune.trial import run_trial

    config = {"batch_size": 256, "micro_batch": 64, "accumulation_steps": 4, "optimizer": "adam", "lr": 1e-3}
    figures = run_trial(str(EXAMPLES / "torch_digits.py"), config, "cpu", steps=6, reports=2)
    assert figures["samples"] == 6 * 256  # the optimizer stepped six times on 256 samples each
    assert figures["val_loss"] < figures["initial_val_loss"]


def test_cli_global_batch_over_the_training_set_is_one_line(tmp_cwd):
    from tests.conftest import assert_one_line_error, run_cli

    result = run_cli("tune", "--confirm", "0", str(EXAMPLES / "torch_digits.py"), "--global-batch", "5000", "--trials", "1",
                     cwd=tmp_cwd)
    assert_one_line_error(result, "--global-batch 5000", "1437")
    assert not list(tmp_cwd.rglob("*.db"))  # caught before a storage or a study exists
