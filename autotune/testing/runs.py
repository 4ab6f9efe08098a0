"""Training runs the conformance suite starts in capped worker processes, kept apart from the suite itself
(which imports pytest) so that a worker maps only what fit-batch's own probe workers map."""

from __future__ import annotations

from typing import Any

from autotune.backends import get_backend
from autotune.errors import TrialError
from autotune.task import load_task
from autotune.training import BatchSampler, measure_probe


def capped_training(task: str, batch_size: int, steps: int, seed: int = 0) -> dict[str, Any]:
    """A fresh CPU session of ``task`` at ``batch_size``: its optimizer state, ``steps`` training steps and an
    evaluation batch, as a fit-batch probe runs them; an out-of-memory failure becomes ``TrialError('oom')``."""
    loaded = load_task(task)
    backend = get_backend(loaded.backend)
    data = loaded.load_data()
    try:
        session = backend.session(loaded, data, backend.resolve_device("cpu"), batch_size=batch_size, seed=seed,
                                  optimizer=backend.validate_optimizer({"name": "adam"}))
        return measure_probe(session, BatchSampler(backend.data_size(data)[0], batch_size, seed), steps=steps)
    except Exception as exc:
        if backend.is_oom(exc):
            raise TrialError("oom", f"{type(exc).__name__}: {str(exc).strip()[:200]}") from None
        raise
