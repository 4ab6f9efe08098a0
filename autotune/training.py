"""Backend-neutral measurement loops over a `TrainingSession`: memory probes and timed trials.

Throughput is steady-state samples per second: warm-up steps are excluded and the device is synchronised
before each clock read. Every backend goes through these same loops, which is what makes their figures
comparable.
"""

from __future__ import annotations

import math
import os
import time
from typing import Any, Mapping, Sequence

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


class LargestSampler:
    """The ``batch_size`` largest training samples, every call: a memory probe on data whose samples differ in
    size (padded or bucketed sequences) measures the largest batch the data can make."""

    def __init__(self, largest_first: np.ndarray, batch_size: int) -> None:
        """``largest_first``: sample indices, largest sample first (at least ``batch_size`` of them)."""
        if batch_size > len(largest_first):
            raise ValueError(f"batch size {batch_size} is larger than the {len(largest_first)} samples given")
        self.n_samples = len(largest_first)
        self.batch_size = batch_size
        self._largest = np.sort(np.asarray(largest_first)[:batch_size])
        self.epochs = 0

    def next(self) -> np.ndarray:
        return self._largest


def percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


RETIME_BELOW = 1.0
"""Seconds: a probe's first step shorter than this is not its timing. A fresh process's first step carries 0.05 to
0.13 s of first-call set-up on torch's CPU (measured: 0.44 s against 0.35 s steady for an MLP at batch 1024,
0.51 s against 0.38 s for a conv net at 128), so a first step is timed only from a second up (within ~13 %)."""


def measure_probe(session: TrainingSession, sampler: BatchSampler, steps: int = 1,
                  first_in_process: bool = False) -> dict[str, Any]:
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
    contention = CpuContention()  # a step timed while other processes took the CPU is slower than the task's
    tick = time.perf_counter()
    session.train_step(sampler.next())
    session.synchronize()
    first = time.perf_counter() - tick
    session.evaluate(max_batches=1)
    # The first session of a process carries first-call set-up (a Hugging Face model's first forward: seconds),
    # so its first step is never its timing; later sessions' first steps are, from RETIME_BELOW up.
    trusted = not session.first_step_compiles and first >= RETIME_BELOW and not first_in_process
    step_seconds = [first] if trusted else []
    if not trusted:  # only the timed steps are judged: a compile's helper processes are no other job's load
        contention = CpuContention()
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
        "first_step_seconds": first,  # tracing or compiling included: what a fresh session's first step costs
        "train_steps": train_steps,
        "loss": loss if math.isfinite(loss) else None,
        **contention.finish(),
    }


DIVERGENCE_FACTOR = 10.0
"""A training loss this many times the first one (or NaN/inf) marks a trial as diverged."""


class Diverged(Exception):
    """The loss became NaN, infinite or exploded: the trial is pruned at once."""


class Pruned(Exception):
    """The pruner asked the trial to stop after an intermediate report."""


EVALUATION_SHARE = 0.1
"""Of a trial's time budget, the most its validation passes may take: intermediate reports use a fixed validation
subset (the first samples) sized to fit, the final figure the whole validation set. Evaluation is engine overhead:
at a quarter, a GPT-2 trial of 4 s spent 0.6 to 1.3 s in it."""

CONTENDED_CORES = 0.5
"""Other processes' CPU use, in cores, above which a measurement is flagged as taken on a busy machine."""


def _own_cores() -> set[int] | None:
    """The cores this process may run on; None where the OS does not say (then the whole machine counts)."""
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None


class CpuContention:
    """CPU time that other processes used while a measurement ran, on the cores this process may run on (their
    busy time less this process's).

    A trial's throughput measured while another job took a core is not this configuration's throughput: the
    figure is kept but flagged, so a report can tell it apart. Only this process's cores count: a worker pinned
    to its share of the cores (``--devices cpu*N``) is not slowed by its siblings on the others."""

    def __init__(self) -> None:
        import psutil

        self._psutil = psutil
        self._process = psutil.Process()
        self._cores = _own_cores()
        self._start = self._read()

    def _read(self) -> tuple[float, float, float]:
        per_core = self._psutil.cpu_times(percpu=True)
        cores = [times for index, times in enumerate(per_core) if self._cores is None or index in self._cores]
        busy = sum(sum(times) - times.idle - getattr(times, "iowait", 0.0) for times in cores)
        own = self._process.cpu_times()
        return time.perf_counter(), busy, own.user + own.system

    def finish(self) -> dict[str, Any]:
        wall, busy, own = self._read()
        seconds = wall - self._start[0]
        if seconds <= 0:
            return {"other_cpu_cores": None, "busy": False, "busy_reason": None}
        others = max(0.0, (busy - self._start[1]) - (own - self._start[2])) / seconds
        busy_flag = others > CONTENDED_CORES
        reason = (f"other processes used {others:.1f} CPU cores while it was measured: rerun on a quiet machine"
                  if busy_flag else None)
        return {"other_cpu_cores": round(others, 2), "busy": busy_flag, "busy_reason": reason}


class TooSlow(Exception):
    """One training step takes most of the trial's budget: the trial cannot measure anything in it."""


def _evaluation_plan(session: TrainingSession, n_val: int, reports: int, seconds: float | None, subset_cap: int,
                     pruner_reports: Sequence[int]) -> tuple[int | None, set[int], float]:
    """Which reports run a validation pass, on how many batches (None: the whole set), and the projected seconds
    of one whole pass, timed on one batch.

    The last report always evaluates the whole set. The others use the first validation batches, as many as keep
    all evaluation within `EVALUATION_SHARE` of ``seconds``; where even one batch at every report would not fit,
    only the reports the pruner reads (``pruner_reports``) evaluate, and the rest record the training loss."""
    batch = session.batch_size
    total_batches = max(1, math.ceil(n_val / batch))
    every = set(range(1, reports + 1))
    if seconds is None:
        subset = min(total_batches, max(1, math.ceil(subset_cap / batch)))
        return (None if subset >= total_batches else subset), every, 0.0
    tick = time.perf_counter()
    session.evaluate(max_batches=1)
    per_batch = max(time.perf_counter() - tick, 1e-9)
    room = max(0.0, EVALUATION_SHARE * seconds - per_batch * total_batches)
    evaluated = every
    if room < per_batch * (reports - 1):
        evaluated = {r for r in pruner_reports if r < reports} | {reports}
    subset = min(total_batches, max(1, int(room / max(len(evaluated) - 1, 1) // per_batch)))
    return (None if subset >= total_batches else subset), evaluated, per_batch * total_batches


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
    n_val: int | None = None,
    subset_cap: int = 1024,
    pruner_reports: Sequence[int] = (),
) -> dict[str, Any]:
    """Train until ``seconds`` of training (warm-up steps included, evaluation excluded) or ``steps`` steps,
    evaluating ``reports`` times at even fractions of the budget; ``report(index, val_loss, train_seconds)`` returning
    True prunes (index -1, before training, is the untrained model's loss on one batch: no report of a user's
    loop has a negative step).

    Cost: see `_evaluation_plan` (the last report is the whole validation set, earlier ones a fixed subset, all
    of it within `EVALUATION_SHARE` of ``seconds`` where one pass allows; up to ``subset_cap`` samples with a step
    budget); where one whole pass takes more than that share, training gives up the difference (down to half of
    ``seconds``). A step that takes over half of ``seconds`` raises `TooSlow`: the trial cannot measure
    anything. A slow first step is judged by the second, unless it alone took the whole budget.

    Throughput is steady-state: the warm-up steps (which compile or allocate) train the model but are not timed.
    Returns throughput with its spread (steps timed, step-time percentiles), final validation loss, samples,
    compile time, energy per sample where ``energy()`` reads joules, CPU contention by other processes, and the
    whole validation pass's seconds beside the training budget it left (`autotune.verdict` tells the user).
    """
    if (seconds is None) == (steps is None):
        raise ValueError("give exactly one of seconds or steps")
    initial_loss = session.evaluate(max_batches=1)  # the untrained model: what "does it learn" is judged against
    if report is not None and math.isfinite(initial_loss):
        report(-1, initial_loss, 0.0)  # kept by a trial that is pruned before it can return its figures
    tick = time.perf_counter()
    compiling = 0.0  # a first step that traces or compiles is set-up, reported apart: not training time
    timed_steps = 0
    for index in range(warmup_steps + (1 if session.first_step_compiles else 0)):
        started = time.perf_counter()
        session.train_step(sampler.next())
        session.synchronize()
        if index == 0 and session.first_step_compiles:
            compiling = time.perf_counter() - started
            continue
        timed_steps += 1
        step = time.perf_counter() - started
        spent = time.perf_counter() - tick - compiling
        # A first step can stall on a process's first touch of its memory: a slow one is judged by the next,
        # unless it alone used up the budget.
        if seconds is not None and step > 0.5 * seconds and (timed_steps > 1 or spent > seconds):
            raise TooSlow(f"one step at batch {sampler.batch_size} takes {step:.3g} s, over half the "
                          f"{seconds:g} s trial budget: give --trial-time at least {4 * step:.2g} or lower the batch")
        if seconds is not None and spent > 0.1 * seconds and (step <= 0.5 * seconds or timed_steps > 1):
            break  # a step this long carries little first-call set-up: one warm-up step is enough
    warmup_seconds = time.perf_counter() - tick - compiling
    first_loss = session.last_loss()
    if not math.isfinite(first_loss):
        raise Diverged(f"loss is {first_loss} after the warm-up steps")
    subset, evaluated, whole_pass = _evaluation_plan(session, n_val or 0, reports, seconds, subset_cap,
                                                     pruner_reports)
    training_budget = None
    if seconds is not None:  # a final pass over the whole set that outgrows the evaluation share costs training
        training_budget = max(0.5 * seconds, seconds - max(0.0, whole_pass - EVALUATION_SHARE * seconds))
    step_seconds: list[float] = []
    history: list[tuple[int, float, float]] = []
    train_seconds = warmup_seconds
    eval_seconds = 0.0
    whole_pass_seconds = None  # the last report's pass over the whole validation set, as it ran
    next_report = 1
    joules_start = energy() if energy else None
    contention = CpuContention()
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
        # a time budget ends at the step that comes nearest to it (half a step early at most), not the one after
        progress = ((train_seconds + 0.5 * elapsed) / training_budget) if training_budget is not None \
            else (done / (steps or 1))
        while next_report <= reports and progress >= next_report / reports:
            if next_report not in evaluated:
                next_report += 1
                continue
            evaluation_started = time.perf_counter()
            val_loss = session.evaluate(max_batches=None if next_report == reports else subset)
            eval_seconds += time.perf_counter() - evaluation_started
            if next_report == reports:
                whole_pass_seconds = time.perf_counter() - evaluation_started
            if not math.isfinite(val_loss):
                raise Diverged(f"validation loss is {val_loss} after {done} steps")
            history.append((next_report, val_loss, train_seconds))
            if report is not None and report(next_report, val_loss, train_seconds):
                raise Pruned(f"pruned after report {next_report} of {reports} (validation loss {val_loss:.4g})")
            next_report += 1
        if next_report > reports:
            break
    joules = (energy() - joules_start) if energy and joules_start is not None else None
    samples = done * sampler.batch_size
    # steady state: the median step, so that one step stalled by a collector pass or another process's burst
    # does not move the figure
    median = percentile(step_seconds, 50)
    return {
        "throughput": sampler.batch_size / median if median else None,
        "val_loss": val_loss,
        "initial_val_loss": initial_loss if math.isfinite(initial_loss) else None,
        "train_loss": session.last_loss(),
        "steps_timed": done,
        "step_seconds_p50": percentile(step_seconds, 50),
        "step_seconds_p95": percentile(step_seconds, 95),
        "step_seconds_p99": percentile(step_seconds, 99),
        "steps": done,
        "samples": samples,
        "epochs": samples / sampler.n_samples,
        "train_seconds": train_seconds,
        "warmup_seconds": warmup_seconds,
        "eval_seconds": eval_seconds,
        "report_subset_batches": subset,
        "validation_pass_seconds": whole_pass_seconds,
        "validation_samples": n_val,
        "training_budget_seconds": training_budget,
        "compile_seconds": session.compile_seconds or None,
        "energy_per_sample_joules": (joules / samples) if joules is not None and samples else None,
        **contention.finish(),
        "history": history,
    }


RANGE_TEST_MIN_STEPS = 10
"""Fewer sweep steps than this say nothing about where the loss turns: such a range test is not run."""


def lr_range_test(session: TrainingSession, sampler: BatchSampler, low: float, high: float,
                  steps: int = 60, seconds: float | None = None) -> dict[str, Any]:
    """Smith's learning-rate range test: raise the rate exponentially from ``low`` to ``high`` over ``steps``
    steps and watch the smoothed training loss; the best rate is where it is lowest, the edge where it blows up.

    With ``seconds``, the sweep is shortened to the steps that fit in it, timed on its first step, or on its
    second where the first traces or compiles (that one-off cost is spent either way: the rest of the budget is
    what the sweep can use); a budget too short for `RANGE_TEST_MIN_STEPS` steps returns ``best_lr`` None with
    the reason in ``skipped``.
    """
    rates, losses = [], []
    smoothed, best = None, math.inf
    index, step_seconds, swept_from = 0, None, time.perf_counter()
    timed_at = 1 if session.first_step_compiles else 0
    while index < steps:
        rate = low * (high / low) ** (index / max(steps - 1, 1))
        session.set_learning_rate(rate)
        tick = time.perf_counter()
        session.train_step(sampler.next())
        loss = session.last_loss()
        if index == timed_at:
            now = time.perf_counter()
            step_seconds = now - tick
            left = seconds - (now - swept_from) if seconds is not None else None
            fitting = index + 1 + int(max(left, 0.0) / max(step_seconds, 1e-9)) if left is not None else steps
            if fitting < RANGE_TEST_MIN_STEPS:
                return {"best_lr": None, "diverge_lr": None, "rates": [], "losses": [], "step_seconds": step_seconds,
                        "skipped": f"{seconds:.2g} s fit only {fitting} of the {RANGE_TEST_MIN_STEPS} steps needed"}
            steps = min(steps, fitting)
        if not math.isfinite(loss):
            break
        smoothed = loss if smoothed is None else 0.8 * smoothed + 0.2 * loss
        rates.append(rate)
        losses.append(smoothed)
        best = min(best, smoothed)
        if smoothed > 4 * best and index > steps // 5:
            break
        index += 1
    if not losses:
        return {"best_lr": None, "diverge_lr": low, "rates": [], "losses": [], "step_seconds": step_seconds}
    best_index = int(np.argmin(losses))
    diverge = next((rates[i] for i in range(best_index, len(rates)) if losses[i] > 2 * losses[best_index]), None)
    if diverge is None and len(rates) < steps:
        diverge = rates[-1]
    return {"best_lr": rates[best_index], "diverge_lr": diverge, "rates": rates, "losses": losses,
            "step_seconds": step_seconds}


# ------------------------------------------------------------------------------------ gradient accumulation
def check_global_batch(global_batch: Any, n_train: int) -> None:
    """A one-line `AutotuneError` unless ``global_batch`` is a whole number from 1 to the training set's size."""
    from autotune.errors import AutotuneError

    if isinstance(global_batch, bool) or not isinstance(global_batch, int) or global_batch < 1:
        raise AutotuneError(f"--global-batch must be a whole number of samples above 0, got {global_batch!r}")
    if global_batch > n_train:
        raise AutotuneError(f"--global-batch {global_batch} is larger than the {n_train} training samples: give "
                            f"{n_train} or less")


def accumulation_plan(global_batch: int, ceiling: int) -> tuple[int, int]:
    """``(micro_batch, steps)`` with ``micro_batch × steps == global_batch`` and ``micro_batch <= ceiling``:
    the fewest accumulation steps that divide the global batch exactly, so the optimizer sees batch
    ``global_batch`` itself (not one rounded up), in the largest micro-batches that fit."""
    if global_batch < 1 or ceiling < 1:
        raise ValueError(f"global batch and ceiling must be positive, got {global_batch} and {ceiling}")
    steps = -(-global_batch // ceiling)
    while global_batch % steps:
        steps += 1
    return global_batch // steps, steps


class AccumulatingSession(TrainingSession):
    """A session whose every ``train_step`` is one optimizer step over a global batch, run as micro-batches
    with accumulated gradients (`TrainingSession.train_micro_batches`). ``batch_size`` stays the micro-batch,
    which is what the evaluation passes run at: the global batch need not fit in memory."""

    def __init__(self, session: TrainingSession, micro_batch: int) -> None:
        self.session = session
        self.micro_batch = micro_batch
        self.batch_size = session.batch_size
        self.first_step_compiles = session.first_step_compiles  # type: ignore[misc]  # the wrapped session's

    @property
    def compile_seconds(self) -> float:  # type: ignore[override]
        return self.session.compile_seconds

    def train_step(self, indices: np.ndarray) -> None:
        self.session.train_micro_batches(indices, self.micro_batch)

    def last_loss(self) -> float:
        return self.session.last_loss()

    def evaluate(self, max_batches: int | None = None) -> float:
        return self.session.evaluate(max_batches)

    def allocate_optimizer_state(self) -> None:
        self.session.allocate_optimizer_state()

    def set_learning_rate(self, lr: float) -> None:
        self.session.set_learning_rate(lr)

    def synchronize(self) -> None:
        self.session.synchronize()

    def reset_peak_memory(self) -> None:
        self.session.reset_peak_memory()

    def peak_memory(self) -> int | None:
        return self.session.peak_memory()

    def close(self) -> None:
        self.session.close()


def configured_session(backend: Any, task: Any, data: Any, device: Any, config: Mapping[str, Any], *,
                       optimizer: Mapping[str, Any], seed: int) -> TrainingSession:
    """The session a trial's ``config`` asks for: at its micro-batch (else its batch), and in its ``precision``
    and ``compile`` mode through `Backend.bench_session` where those are not fp32 and off."""
    batch_size = int(config.get("micro_batch", config["batch_size"]))
    precision, compiled = config.get("precision", "fp32"), bool(config.get("compile", False))
    if precision == "fp32" and not compiled:
        return backend.session(task, data, device, batch_size=batch_size, optimizer=optimizer, seed=seed)
    if precision not in backend.precisions(device):
        from autotune.errors import AutotuneError

        raise AutotuneError(f"the search space asks for {precision} training, which {backend.name} does not have on "
                            f"{device.id} (it has {', '.join(backend.precisions(device))}): drop it from "
                            "precision.choices")
    return backend.bench_session(task, data, device, batch_size=batch_size, optimizer=optimizer,
                                 precision=precision, compile=compiled, seed=seed)


def accumulating(session: TrainingSession, accumulation_steps: int) -> TrainingSession:
    """``session`` itself for one step, else an `AccumulatingSession` in micro-batches of its batch size."""
    return session if accumulation_steps <= 1 else AccumulatingSession(session, session.batch_size)
