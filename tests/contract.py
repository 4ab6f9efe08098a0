"""Helpers the backend contract tests share: a CPU session of a task, and a few training steps."""

from autotune.backends import get_backend
from autotune.training import BatchSampler


def cpu_session(backend_name, task, batch_size=32, optimizer=None, seed=0):
    """A session of ``task`` on the backend's CPU, and a sampler over its training data."""
    backend = get_backend(backend_name)
    data = task.load_data()
    session = backend.session(task, data, backend.resolve_device("cpu"), batch_size=batch_size, seed=seed,
                              optimizer=optimizer or {"name": "adam", "lr": 1e-2})
    return session, BatchSampler(backend.data_size(data)[0], batch_size, seed)


def train(session, sampler, steps=40):
    """``steps`` training steps, then the validation loss."""
    for _ in range(steps):
        session.train_step(sampler.next())
    session.synchronize()
    return session.evaluate()
