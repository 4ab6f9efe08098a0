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


RETIME_BELOW = 1.0
"""Seconds: a probe's first step shorter than this is not its timing. A fresh process's first step carries 0.05 to
0.13 s of first-call set-up on torch's CPU (measured: 0.44 s against 0.35 s steady for an MLP at batch 1024,
0.51 s against 0.38 s for a conv net at 128), so a first step is timed only from a second up (within ~13 %)."""


def measure_probe(session: TrainingSession, sampler: BatchSampler, steps: int = 1) -> dict[str, Any]:
    """The peak of a short training run at one batch size, in as few steps as show it, and the throughput.

    The optimizer's state is allocated first, so that the first training step already holds all a steady one
    holds; one evaluation batch follows it. That first step is also timed, unless it compiled
    (``first_step_compiles``) or was so short that first-call set-up weighs in it (`RETIME_BELOW`); then
    ``steps`` more steps after the evaluation are timed (and measured), else ``steps - 1`` more. Measured on
    torch's CPU under a real cap (batch 1184 of an MLP, 1408 of a conv net): the same peak as the former
    unprimed step + evaluation + step on the MLP, 3.3 MiB (0.13 %) under it on the conv net (what the evaluation
    leaves behind for later steps); a probe whose step takes a second or more runs in about 55 % of the former's
    time (shorter ones run a second step, as before).
    """
    session.allocate_optimizer_state()
    tick = time.perf_counter()
    session.train_step(sampler.next())
    session.synchronize()
    first = time.perf_counter() - tick
    session.evaluate(max_batches=1)
    step_seconds = [first] if not session.first_step_compiles and first >= RETIME_BELOW else []
    train_steps = 1
    while len(step_seconds) < steps:
        tick = time.perf_counter()
        session.train_step(sampler.next())
        session.synchronize()
        step_seconds.append(time.perf_counter() - tick)
        train_steps += 1
    loss = session.last_loss()
    total = sum(step_seconds)
    return {
        "throughput": sampler.batch_size * len(step_seconds) / total if total > 0 else None,
        "step_seconds_p50": percentile(step_seconds, 50),
        "train_steps": train_steps,
        "loss": loss if math.isfinite(loss) else None,
    }


DIVERGENCE_FACTOR = 10.0
"""A training loss this many times the first one (or NaN/inf) marks a trial as diverged."""


class Diverged(Exception):
    """The loss became NaN, infinite or exploded: the trial is pruned at once."""


class Pruned(Exception):
    """The pruner asked the trial to stop after an intermediate report."""


def train_for_budget(
    session: TrainingSession,
    sampler: BatchSampler,
    *,
    seconds: float | None = None,
    steps: int | None = None,
    reports: int = 8,
    warmup_steps: int = 2,
    report: Any = None,
    energy: Any = None,
) -> dict[str, Any]:
    """Train until ``seconds`` of training time (evaluation excluded) or ``steps`` steps, evaluating
    ``reports`` times at even fractions of the budget; ``report(index, val_loss)`` returning True prunes.

    Warm-up steps (the first compiles or allocates) train the model but are kept out of the clock, so
    throughput is steady-state. Returns throughput, final validation loss, step-time percentiles, samples,
    steps, compile time and, where ``energy()`` reads a counter in joules, energy per sample.
    """
    if (seconds is None) == (steps is None):
        raise ValueError("give exactly one of seconds or steps")
    tick = time.perf_counter()
    for _ in range(warmup_steps):
        session.train_step(sampler.next())
    session.synchronize()
    warmup_seconds = time.perf_counter() - tick
    first_loss = session.last_loss()
    if not math.isfinite(first_loss):
        raise Diverged(f"loss is {first_loss} after {warmup_steps} warm-up steps")
    step_seconds: list[float] = []
    history: list[tuple[int, float, float]] = []
    train_seconds = 0.0
    next_report = 1
    joules_start = energy() if energy else None
    val_loss = None
    while True:
        started = time.perf_counter()
        session.train_step(sampler.next())
        session.synchronize()
        elapsed = time.perf_counter() - started
        step_seconds.append(elapsed)
        train_seconds += elapsed
        done = len(step_seconds)
        if done % 5 == 0 or elapsed > 0.2:
            loss = session.last_loss()
            if not math.isfinite(loss) or loss > DIVERGENCE_FACTOR * max(first_loss, 1e-12):
                raise Diverged(f"training loss {loss:.4g} at step {done} (first loss {first_loss:.4g})")
        progress = (train_seconds / seconds) if seconds is not None else (done / steps)
        while next_report <= reports and progress >= next_report / reports:
            val_loss = session.evaluate()
            if not math.isfinite(val_loss):
                raise Diverged(f"validation loss is {val_loss} after {done} steps")
            history.append((next_report, val_loss, train_seconds))
            if report is not None and report(next_report, val_loss):
                raise Pruned(f"pruned after report {next_report} of {reports} (validation loss {val_loss:.4g})")
            next_report += 1
        if next_report > reports:
            break
    joules = (energy() - joules_start) if energy and joules_start is not None else None
    samples = done * sampler.batch_size
    return {
        "throughput": samples / train_seconds if train_seconds > 0 else None,
        "val_loss": val_loss,
        "train_loss": session.last_loss(),
        "step_seconds_p50": percentile(step_seconds, 50),
        "step_seconds_p95": percentile(step_seconds, 95),
        "steps": done,
        "samples": samples,
        "epochs": samples / sampler.n_samples,
        "train_seconds": train_seconds,
        "warmup_seconds": warmup_seconds,
        "compile_seconds": session.compile_seconds or None,
        "energy_per_sample_joules": (joules / samples) if joules is not None and samples else None,
        "history": history,
    }


def lr_range_test(session: TrainingSession, sampler: BatchSampler, low: float, high: float,
                  steps: int = 60) -> dict[str, Any]:
    """Smith's learning-rate range test: raise the rate exponentially from ``low`` to ``high`` over ``steps``
    steps and watch the smoothed training loss; the best rate is where it is lowest, the edge where it blows up."""
    rates, losses = [], []
    smoothed, best = None, math.inf
    for index in range(steps):
        rate = low * (high / low) ** (index / max(steps - 1, 1))
        session.set_learning_rate(rate)
        session.train_step(sampler.next())
        loss = session.last_loss()
        if not math.isfinite(loss):
            break
        smoothed = loss if smoothed is None else 0.8 * smoothed + 0.2 * loss
        rates.append(rate)
        losses.append(smoothed)
        best = min(best, smoothed)
        if smoothed > 4 * best and index > steps // 5:
            break
    if not losses:
        return {"best_lr": None, "diverge_lr": low, "rates": [], "losses": []}
    best_index = int(np.argmin(losses))
    diverge = next((rates[i] for i in range(best_index, len(rates)) if losses[i] > 2 * losses[best_index]), None)
    if diverge is None and len(rates) < steps:
        diverge = rates[-1]
    return {"best_lr": rates[best_index], "diverge_lr": diverge, "rates": rates, "losses": losses}
