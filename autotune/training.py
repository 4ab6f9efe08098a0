"""Backend-neutral measurement loops over a `TrainingSession`: memory probes and timed trials.

Throughput is steady-state samples per second: warm-up steps are excluded and the device is synchronised
before each clock read. Every backend goes through these same loops, which is what makes their figures
comparable.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np

from autotune.backends.base import TrainingSession


class BatchSampler:
    """Shuffled mini-batch indices, epoch after epoch, reproducible from ``seed``; the last short batch is dropped."""

    def __init__(self, n_samples: int, batch_size: int, seed: int = 0) -> None:
        if batch_size > n_samples:
            raise ValueError(f"batch size {batch_size} is larger than the {n_samples} training samples")
        self.n_samples = n_samples
        self.batch_size = batch_size
        self._rng = np.random.default_rng(seed)
        self._order = self._rng.permutation(n_samples)
        self._position = 0
        self.epochs = 0

    def next(self) -> np.ndarray:
        if self._position + self.batch_size > self.n_samples:
            self._order = self._rng.permutation(self.n_samples)
            self._position = 0
            self.epochs += 1
        batch = self._order[self._position:self._position + self.batch_size]
        self._position += self.batch_size
        return batch


def percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def measure_probe(session: TrainingSession, sampler: BatchSampler, steps: int = 2, warmup: int = 1) -> dict[str, Any]:
    """The whole peak of a training run at one batch size: warm-up steps (the first allocates optimizer
    state), one evaluation batch, then ``steps`` timed steps; returns throughput and step times."""
    started = time.perf_counter()
    for _ in range(warmup):
        session.train_step(sampler.next())
    session.synchronize()
    warm = time.perf_counter() - started
    session.evaluate(max_batches=1)
    step_seconds = []
    for _ in range(steps):
        tick = time.perf_counter()
        session.train_step(sampler.next())
        session.synchronize()
        step_seconds.append(time.perf_counter() - tick)
    loss = session.last_loss()
    total = sum(step_seconds)
    return {
        "throughput": sampler.batch_size * steps / total if total > 0 else None,
        "step_seconds_p50": percentile(step_seconds, 50),
        "warmup_seconds": warm,
        "loss": loss if math.isfinite(loss) else None,
    }
