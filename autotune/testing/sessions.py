"""Sessions for a backend's own contract tests: a CPU session of a task, and a few training steps."""

from __future__ import annotations

from typing import Any, Mapping

from autotune.backends import get_backend
from autotune.backends.base import TrainingSession
from autotune.task import Task
from autotune.training import BatchSampler


def cpu_session(backend_name: str, task: Task, batch_size: int = 32, optimizer: Mapping[str, Any] | None = None,
                seed: int = 0) -> tuple[TrainingSession, BatchSampler]:
    """A session of ``task`` on the backend's CPU, and a sampler over its training data."""
    backend = get_backend(backend_name)
    data = task.load_data()
    session = backend.session(task, data, backend.resolve_device("cpu"), batch_size=batch_size, seed=seed,
                              optimizer=optimizer or {"name": "adam", "lr": 1e-2})
    return session, BatchSampler(backend.data_size(data)[0], batch_size, seed)


def train(session: TrainingSession, sampler: BatchSampler, steps: int = 40) -> float:
    """``steps`` training steps, then the validation loss."""
    for _ in range(steps):
        session.train_step(sampler.next())
    session.synchronize()
    return session.evaluate()
