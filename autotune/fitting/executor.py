"""Run the probes the planner asks for: in worker processes (exact, capped) or in this process.

A probe builds a fresh session at one batch size, runs `autotune.training.measure_probe` and returns its
figures; a failure comes back as an outcome kind (an OOM, a crash under the cap, another error). The
executor turns that into a `Probe` judged against the `Budget`: it fits, it went over the budget less the
margin, or it ran out of memory. Growth probes (whose figures feed the slope, not the answer) share one
worker, and on the CPU one session where its traced step serves the next size (`TrainingSession.resize`:
Keras' step is not traced again); every size that may be the answer runs in a fresh one, because a process
that has run other sizes is not a fresh training run (allocator caches warmed by other sizes or by an OOM
run sizes a fresh process cannot; on the CPU the peak address space only grows over a worker's life).
"""

from __future__ import annotations

import contextlib
import time
from typing import Any, Callable, Mapping, Sequence

from autotune.backends import get_backend
from autotune.errors import FitError
from autotune.fitting.budget import Budget
from autotune.fitting.model import Probe
from autotune.fitting.planner import Answer, ProbeAt
from autotune.procmem import pool_blocks, process_memory, reset_resident_peak
from autotune.runner import WorkerOutcome, run_here, run_in_worker
from autotune.task import resolve_task
from autotune.training import BatchSampler, LargestSampler, configured_session, measure_probe
from autotune.trial import fresh_session
from autotune.units import format_size

Decide = Callable[[Probe], "ProbeAt | Answer"]
"""What the executor calls after each probe: records it and returns the planner's next decision."""


def _probe_setup(task: Any, device: str | None, device_memory_limit: int | None) -> tuple[Any, Any, Any, Any]:
    task = resolve_task(task)
    backend = get_backend(task.backend)
    target = backend.resolve_device(device)
    if device_memory_limit and target.kind != "cpu":
        backend.limit_memory(target, device_memory_limit)
    return task, backend, target, task.load_data()


def _measure(task: Any, backend: Any, target: Any, data: Any, batch_size: int, optimizer: Mapping[str, Any],
             steps: int, seed: int, largest: Any = None, first_in_process: bool = False,
             precision: str = "fp32") -> dict[str, Any]:
    free_at_start = backend.free_memory(target) if target.kind != "cpu" else None
    reset_resident_peak()
    with fresh_session(backend, target, _builder(task, backend, target, data, batch_size, optimizer, seed,
                                                 precision)) as session:
        figures = _measure_session(session, backend, data, batch_size, steps, seed, largest, first_in_process)
    return _with_memory(figures, backend, target, free_at_start)


def _builder(task: Any, backend: Any, target: Any, data: Any, batch_size: int, optimizer: Mapping[str, Any],
             seed: int, precision: str) -> Callable[[], Any]:
    # the session a trial in ``precision`` trains with: its activations and casts set the memory
    return lambda: configured_session(backend, task, data, target, {"batch_size": batch_size, "precision": precision},
                                      optimizer=optimizer, seed=seed)


def _measure_session(session: Any, backend: Any, data: Any, batch_size: int, steps: int, seed: int, largest: Any,
                     first_in_process: bool) -> dict[str, Any]:
    session.reset_peak_memory()
    n_train, _ = backend.data_size(data)
    sampler: Any = (LargestSampler(largest, batch_size) if largest is not None
                    else BatchSampler(n_train, batch_size, seed))
    figures = measure_probe(session, sampler, steps=steps, first_in_process=first_in_process)
    return {**figures, "device_peak": session.peak_memory()}


def _with_memory(figures: dict[str, Any], backend: Any, target: Any, free_at_start: int | None) -> dict[str, Any]:
    pool = pool_blocks(backend.cpu_pool_block_bytes) if backend.cpu_pool_block_bytes and target.kind == "cpu" \
        else None
    return {**figures, "free_at_start": free_at_start, **process_memory(), "pool": pool or None}


def _probe_run(task: Any, batch_size: int, device: str | None, optimizer: Mapping[str, Any], steps: int,
               seed: int, device_memory_limit: int | None, largest: Any = None,
               precision: str = "fp32") -> dict[str, Any]:
    """Build a fresh session at ``batch_size`` (in ``precision``), run `measure_probe`, return the peak;
    OOM → TrialError('oom')."""
    task, backend, target, data = _probe_setup(task, device, device_memory_limit)
    return _measure(task, backend, target, data, batch_size, optimizer, steps, seed, largest, precision=precision)


def _probe_series(task: Any, device: str | None, optimizer: Mapping[str, Any], steps: int, seed: int,
                  device_memory_limit: int | None, channel: Any, largest: Any = None,
                  retime_first: bool = False, precision: str = "fp32") -> int:
    """Probe the sizes the parent asks for, one after another in this worker, until it answers None.

    Saves a worker start (and a device context) per probe; the parent asks for a size here only while the
    figures need not be exact (growth probes). A failure (an OOM included) ends the worker with its kind, as
    `_probe_run` would.
    """
    task, backend, target, data = _probe_setup(task, device, device_memory_limit)
    held = contextlib.ExitStack()  # on the CPU, the last session, whose traced step may serve the next size
    session: Any = None

    def measure(batch_size: int, first: bool) -> dict[str, Any]:
        nonlocal session
        # the fit's first probe (a small growth size) carries the process's first-call set-up: a second,
        # timed step costs little there
        retime = retime_first and first
        if session is None or not session.resize(batch_size):  # sizes only grow: the peak is the largest's
            held.close()  # the previous session, closed and its memory released
            session = None
            if target.kind != "cpu":  # a device's free memory is read by each probe: nothing is held between
                return _measure(task, backend, target, data, batch_size, optimizer, steps, seed, largest,
                                first_in_process=retime, precision=precision)
            reset_resident_peak()
            session = held.enter_context(fresh_session(
                backend, target, _builder(task, backend, target, data, batch_size, optimizer, seed, precision)))
        else:
            reset_resident_peak()
        figures = _measure_session(session, backend, data, batch_size, steps, seed, largest, retime)
        return _with_memory(figures, backend, target, None)

    def limit_device(limit: int) -> None:
        if target.kind != "cpu":
            backend.limit_memory(target, limit)

    with held:  # an OOM in a held session leaves through `fresh_session`, as TrialError('oom')
        return serve_probes(channel, measure, limit_device, device_memory_limit)


def serve_probes(channel: Any, measure: Callable[[int, bool], dict[str, Any]], limit_device: Callable[[int], Any],
                 device_memory_limit: int | None) -> int:
    """A worker's side of a run of probes: ask the parent for a size (and the device cap), ``measure(size,
    first)``, send the figures, until the parent answers None; returns how many ran."""
    reply = channel.ask(("ready", None))
    count = 0
    while reply is not None:
        batch_size, limit = reply
        if limit and limit != device_memory_limit:
            limit_device(limit)
            device_memory_limit = limit
        result = measure(batch_size, count == 0)
        count += 1
        reply = channel.ask(("ok", result))
    return count


def judge(budget: Budget, probes: Sequence[Probe], batch_size: int, outcome: WorkerOutcome,
          elapsed: float) -> Probe:
    """The `Probe` a run's outcome makes: fits, over the budget less margin, or out of memory; FitError when the
    run failed for a reason other than memory (the task is broken, fitting cannot go on)."""
    if outcome.kind == "fatal":
        raise FitError(outcome.message)
    message = outcome.message or ""
    if outcome.kind == "oom" and message.startswith("the worker alone"):
        raise FitError(f"batch size {batch_size} does not fit: {message}; raise --memory-limit")
    if not outcome.ok:
        # Under an enforced cap, a size larger than one that ran can fail in other ways than the framework's OOM
        # error (oneDNN: "could not create a primitive"; a C++ abort): that is memory too. So is a worker that
        # vanished under the cap, or an allocation the framework reports as its own error (protobuf's "Arena
        # alloc failed" from TensorFlow), at any size.
        fits_at = max((p.batch_size for p in probes if p.fits), default=0)
        crashed_under_cap = budget.cpu_cap is not None and (
            outcome.killed_by_signal or outcome.kind == "crash" or "alloc" in message.lower())
        failed_above_a_fit = budget.cpu_cap is not None and outcome.kind in ("error", "crash") \
            and 0 < fits_at < batch_size
        if outcome.kind == "oom" or crashed_under_cap or failed_above_a_fit:
            return Probe(batch_size, fits=False, oom=True, seconds=elapsed, reason=message)
        raise FitError(f"the model fails at batch {batch_size} for a reason other than memory "
                       f"({outcome.kind}: {message}); fix the task before fitting")
    value = outcome.value
    free = value.get("free_at_start")
    budget = budget.resolve([*probes, Probe(batch_size, fits=False, free_bytes=free)])
    peak = budget.peak_of(value)
    fits = budget.fits(peak, value.get("pool"))
    return Probe(batch_size, fits=fits, peak_memory_bytes=peak, resident_peak_bytes=value.get("resident_peak"),
                 pool=value.get("pool"), free_bytes=None if free is None else int(free),
                 throughput=value.get("throughput"), train_steps=int(value.get("train_steps") or 0),
                 first_step_seconds=value.get("first_step_seconds"), seconds=elapsed,
                 other_cpu_cores=value.get("other_cpu_cores"), busy=bool(value.get("busy")),
                 reason="" if fits else "over the budget less margin")


class ProbeExecutor:
    """Runs probes of one kind of work: ``function(**kwargs, batch_size=..., device_memory_limit=...)`` in
    this process, or ``series(**kwargs, channel=..., ...)`` in workers, one worker per run of growth probes."""

    def __init__(self, budget: Budget, probes: list[Probe], *, in_worker: bool, function: Callable[..., Any],
                 series: Callable[..., Any], kwargs: Mapping[str, Any], preload: Sequence[str] = (),
                 timeout: float | None = None, say: Callable[[str], None] = lambda _message: None) -> None:
        self.budget, self.probes, self.in_worker = budget, probes, in_worker
        self.function, self.series, self.kwargs = function, series, dict(kwargs)
        self.preload, self.timeout, self.say = tuple(preload), timeout, say

    def run(self, first: ProbeAt, decide: Decide) -> ProbeAt | Answer:
        """Probe ``first`` (and, in a worker, the growth probes that follow it); return the decision after the
        last one. ``decide`` gets each `Probe` as it is judged."""
        if not self.in_worker:
            return self._run_here(first, decide)
        return self._run_in_worker(first, decide)

    def _device_cap(self) -> int | None:
        return self.budget.resolve(self.probes).device_cap

    def _record(self, batch_size: int, outcome: WorkerOutcome, since: float) -> Probe:
        elapsed = time.perf_counter() - since
        probe = judge(self.budget, self.probes, batch_size, outcome, elapsed)
        state = "fits" if probe.fits else ("OOM" if probe.oom else "over budget")
        self.say(f"  batch {batch_size}: {state}, peak {format_size(probe.peak_memory_bytes)}, {elapsed:.1f} s")
        return probe

    def _run_here(self, first: ProbeAt, decide: Decide) -> ProbeAt | Answer:
        self.say(f"probe batch {first.batch_size} ...")
        since = time.perf_counter()
        outcome = run_here(self.function, {**self.kwargs, "batch_size": first.batch_size,
                                           "device_memory_limit": self._device_cap()})
        return decide(self._record(first.batch_size, outcome, since))

    def _run_in_worker(self, first: ProbeAt, decide: Decide) -> ProbeAt | Answer:
        in_flight: dict[str, Any] = {"size": first.batch_size, "since": time.perf_counter(), "decision": first}

        def serve(message: tuple[str, Any]) -> tuple[int, int | None] | None:
            kind, value = message
            if kind != "ready":
                size = in_flight["size"]
                outcome = WorkerOutcome(True, value=value) if kind == "ok" else \
                    WorkerOutcome(False, kind=kind, message=value)
                probe = self._record(size, outcome, in_flight["since"])
                decision = in_flight["decision"] = decide(probe)
                in_flight["size"] = None
                if not (isinstance(decision, ProbeAt) and probe.fits and decision.batch_size > size
                        and decision.growth):
                    return None  # a size that may be the answer gets a fresh worker
                in_flight["size"], in_flight["since"] = decision.batch_size, time.perf_counter()
            self.say(f"probe batch {in_flight['size']} ...")
            return in_flight["size"], self._device_cap()

        kwargs = {**self.kwargs, "device_memory_limit": self._device_cap(), "retime_first": not self.probes}
        outcome = run_in_worker(self.series, kwargs, memory_limit=self.budget.cpu_cap, timeout=self.timeout,
                                preload=self.preload, on_message=serve, timeout_per_message=True)
        if in_flight["size"] is not None:  # the worker ended during a probe: that probe failed
            outcome = WorkerOutcome(False, kind=outcome.kind or "crash",
                                    message=outcome.message or "the worker ended without a result",
                                    exitcode=outcome.exitcode if outcome.kind else None)
            in_flight["decision"] = decide(self._record(in_flight["size"], outcome, in_flight["since"]))
        return in_flight["decision"]
