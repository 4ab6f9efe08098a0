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
