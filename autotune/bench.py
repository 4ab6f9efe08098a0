"""Hardware evaluation of a task: every device × precision × compile mode, measured in its own worker.

Each mode trains a fresh model at one batch size and reports steady-state throughput (median step) with its
spread, step latency percentiles, forward-only latency at batch 1 and at the batch (and, on torch, with dynamic
int8 quantization beside fp32), peak memory, energy per sample where a counter is readable, and MFU (achieved
FLOP/s over the device's measured matmul peak for that dtype, `autotune.peak`). Compile time is reported apart
and charged against its mode: modes are ranked by the samples they would train within ``budget`` seconds.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from autotune.backends import get_backend
from autotune.backends.base import PRECISIONS
from autotune.errors import AutotuneError, DeviceError, TrialError
from autotune.peak import cache_path as peak_cache_path
from autotune.runner import run_here, run_in_worker, warm_up_for, warm_up_server
from autotune.scoped import collector_skips_the_callers_heap
from autotune.task import Task, load_task, resolve_task, task_handle
from autotune.training import BatchSampler, CpuContention, percentile
from autotune.trial import check_contract, raise_for_contract

DEFAULT_BATCH = 256
"""The batch a bench trains at unless told (``batch="ceiling"`` fits it per device first), capped at the
training set."""

DEFAULT_BUDGET = 300.0
"""Seconds of training a compiled mode must pay its compile time back within, unless told."""


class BenchError(AutotuneError):
    """A bench request that cannot run (an unknown precision, a device that is not there)."""


@dataclasses.dataclass(frozen=True)
class Mode:
    """One configuration to measure: a device, a training precision and compilation on or off."""

    device: str
    precision: str
    compile: bool

    @property
    def label(self) -> str:
        return f"{self.device} {self.precision} {'compiled' if self.compile else 'eager'}"


@dataclasses.dataclass
class BenchResult:
    """The measured modes, best first (by samples trained within the budget), and the winner's label."""

    task: str
    backend: str
    batch_size: int
    budget_seconds: float
    rows: list[dict[str, Any]]
    skipped: list[dict[str, Any]]
    seconds: float

    @property
    def winner(self) -> dict[str, Any] | None:
        return next((row for row in self.rows if row.get("ok")), None)

    def to_dict(self) -> dict[str, Any]:
        winner = self.winner
        return {"task": self.task, "backend": self.backend, "batch_size": self.batch_size,
                "budget_seconds": self.budget_seconds, "winner": winner["mode"] if winner else None,
                "rows": self.rows, "skipped": self.skipped, "seconds": self.seconds}


def parse_list(option: str, text: str | Sequence[str] | None, allowed: Sequence[str]) -> list[str] | None:
    """``text`` ("a,b" or a list) as a list of names from ``allowed`` (None: all); `BenchError` for others."""
    if text is None:
        return None
    names = [part.strip().lower() for part in (text.split(",") if isinstance(text, str) else text) if part.strip()]
    if not names:
        raise BenchError(f"{option} is empty: give one or more of {', '.join(allowed)}")
    unknown = [name for name in names if name not in allowed]
    if unknown:
        raise BenchError(f"{option}: unknown {', '.join(repr(n) for n in unknown)}: use {', '.join(allowed)}")
    return list(dict.fromkeys(names))


_COMPILE_WORDS = {"off": False, "on": True, "false": False, "true": True, "0": False, "1": True}


def plan_modes(backend: Any, devices: str | Sequence[str] | None, precisions: str | Sequence[str] | None,
               compile_modes: str | Sequence[str] | None) -> tuple[list[Mode], list[dict[str, Any]]]:
    """The modes to measure and those skipped (with why): every device named (``all``/None: every one the
    backend sees), every precision asked that the device supports (None: all it supports), compile off/on.

    Raises `BenchError` before any measurement for an unknown precision or compile word, a device that is not
    there, or a precision that none of the chosen devices supports."""
    wanted_precisions = parse_list("--precision", precisions, PRECISIONS)
    compile_words = parse_list("--compile", compile_modes, tuple(_COMPILE_WORDS))
    compiles = sorted({_COMPILE_WORDS[word] for word in compile_words}) if compile_words else [False, True]
    seen = backend.devices()
    if devices is None or devices in ("all", "auto") or devices in (["all"], ["auto"]):
        chosen = seen
    else:
        names = devices.split(",") if isinstance(devices, str) else list(devices)
        chosen = []
        for name in (n.strip() for n in names if n.strip()):
            try:
                chosen.append(backend.resolve_device(name))
            except DeviceError as exc:
                raise BenchError(f"--devices: {exc}") from None
        if not chosen:
            raise BenchError(f"--devices {devices!r} names no device: give ids from `autotune probe`, or all")
    modes: list[Mode] = []
    skipped: list[dict[str, Any]] = []
    supported_anywhere: set[str] = set()
    for device in chosen:
        supported = backend.precisions(device)
        supported_anywhere.update(supported)
        for precision in wanted_precisions or supported:
            if precision not in supported:
                why = backend.precision_notes(device).get(precision)
                skipped.append({"mode": f"{device.id} {precision}",
                                "reason": f"{backend.name} has no {precision} training on {device.id} "
                                          f"(it has {', '.join(supported)})" + (f": {why}" if why else "")})
                continue
            modes.extend(Mode(device.id, precision, flag) for flag in compiles)
    missing = [p for p in (wanted_precisions or []) if p not in supported_anywhere]
    if missing:
        raise BenchError(f"--precision {','.join(missing)}: no chosen device trains in it on {backend.name} "
                         f"(supported: {', '.join(sorted(supported_anywhere))})")
    return modes, skipped


def _timed(run: Callable[[], None], seconds: float, min_runs: int, max_runs: int) -> list[float]:
    """Durations of ``run()`` (which ends when the device is done), at least ``min_runs`` and for ``seconds``."""
    durations: list[float] = []
    started = time.perf_counter()
    while len(durations) < max_runs and (len(durations) < min_runs or time.perf_counter() - started < seconds):
        tick = time.perf_counter()
        run()
        durations.append(time.perf_counter() - tick)
    return durations


def _latency(run: Callable[[], None], seconds: float) -> dict[str, float | None]:
    """p50 and p95 of forward passes after two untimed ones (the first may trace or compile)."""
    for _ in range(2):
        run()
    durations = _timed(run, seconds, min_runs=10, max_runs=2000)
    return {"p50": percentile(durations, 50), "p95": percentile(durations, 95)}


def measure_mode(session: Any, sampler: BatchSampler, *, seconds: float, energy: Callable[[], float] | None,
                 ) -> dict[str, Any]:
    """Train ``session`` for about ``seconds`` after its first step and two warm-up steps, and time it.

    The first step's time beyond a steady step is compile (and first-call set-up) time; throughput is the
    batch over the median step, its spread the coefficient of variation of the per-step throughput."""
    tick = time.perf_counter()
    session.train_step(sampler.next())
    session.synchronize()
    first = time.perf_counter() - tick
    for _ in range(2):
        session.train_step(sampler.next())
    session.synchronize()

    def step() -> None:
        session.train_step(sampler.next())
        session.synchronize()

    joules_start = energy() if energy else None
    contention = CpuContention()
    steps = _timed(step, seconds, min_runs=10, max_runs=100000)
    joules = energy() - joules_start if energy and joules_start is not None else None
    loss = session.last_loss()
    if not math.isfinite(loss):  # the speed of a step that trains nothing is no figure to rank
        raise TrialError("diverged", f"the training loss is {loss} at batch {sampler.batch_size}: fix the task's "
                                     "loss or data")
    median = statistics.median(steps)
    rates = [sampler.batch_size / s for s in steps]
    samples = sampler.batch_size * len(steps)
    return {
        "throughput": sampler.batch_size / median,
        "throughput_spread": statistics.pstdev(rates) / statistics.fmean(rates),
        "steps_timed": len(steps),
        "step_seconds_p50": median,
        "step_seconds_p95": percentile(steps, 95),
        "step_seconds_p99": percentile(steps, 99),
        "first_step_seconds": first,
        "compile_seconds": max(0.0, first - median),
        "energy_per_sample_joules": joules / samples if joules is not None else None,
        **contention.finish(),
    }


def _bench_mode(task: Any, mode: Mode, batch_size: int, optimizer: Mapping[str, Any], seed: int,
                seconds: float, latency_seconds: float, peak_cache: str | None) -> dict[str, Any]:
    """One mode, measured from a fresh model in this (worker) process; see `measure_mode`."""
    from autotune.energy import energy_reader
    from autotune.peak import peak_flops
    from autotune.procmem import process_memory, reset_resident_peak

    task = resolve_task(task)
    backend = get_backend(task.backend)
    device = backend.resolve_device(mode.device)
    data = task.load_data()
    n_train, _ = backend.data_size(data)
    reset_resident_peak()
    energy, energy_note = energy_reader(device)
    session = backend.bench_session(task, data, device, batch_size=batch_size, optimizer=optimizer,
                                    precision=mode.precision, compile=mode.compile, seed=seed)
    try:
        session.reset_peak_memory()
        sampler = BatchSampler(n_train, batch_size, seed)
        figures = measure_mode(session, sampler, seconds=seconds, energy=energy)
        device_peak = session.peak_memory()
        flops, flop_method = session.training_flops(sampler.next())
        one = np.arange(1)
        batch = np.arange(batch_size)
        inference = int8 = None
        if latency_seconds > 0:
            inference = {"batch_1": _latency(lambda: session.forward(one), latency_seconds),
                         "batch": _latency(lambda: session.forward(batch), latency_seconds)}
        if latency_seconds > 0 and mode.precision == "fp32" and not mode.compile:
            quantized = session.int8_forward()
            if quantized is not None:
                int8 = {"batch_1": _latency(lambda: quantized(one), latency_seconds),
                        "batch": _latency(lambda: quantized(batch), latency_seconds)}
    finally:
        session.close()
        backend.release_memory(device)
    peak = peak_flops(backend, device, mode.precision, cache_dir=peak_cache)
    flops_per_sample = flops / batch_size if flops else None
    achieved = flops_per_sample * figures["throughput"] if flops_per_sample else None
    memory = process_memory()
    return {
        **figures,
        "energy_note": energy_note if figures["energy_per_sample_joules"] is None else None,
        "peak_memory_bytes": device_peak if device_peak is not None else memory.get("resident_peak"),
        "peak_memory_kind": "device allocator" if device_peak is not None else "process resident set",
        "flops_per_sample": flops_per_sample,
        "flop_count": flop_method,
        "achieved_flops": achieved,
        "peak_flops": peak["flops"],
        "peak_flops_cached": peak["cached"],
        "peak_flops_busy": bool(peak.get("busy")),
        "peak_flops_cache": peak["cache"],
        "mfu": achieved / peak["flops"] if achieved else None,
        "inference_seconds": inference,
        "inference_int8_seconds": int8,
        "device_name": device.name,
    }


def rank(rows: list[dict[str, Any]], budget: float) -> None:
    """Sort ``rows`` in place, best first, by ``throughput_in_budget``: the samples per second over ``budget``
    seconds once the mode's compile time has come out of them (a compiled mode wins only if it pays for itself
    within the budget); failed modes last, unranked."""
    for row in rows:
        if row["ok"]:
            row["throughput_in_budget"] = row["throughput"] * max(0.0, budget - row["compile_seconds"]) / budget
    rows.sort(key=lambda r: (not r["ok"], -(r.get("throughput_in_budget") or 0.0)))
    for place, row in enumerate(rows, 1):
        row["rank"] = place if row["ok"] else None


@collector_skips_the_callers_heap
def bench(
    task: Task | str,
    *,
    devices: str | Sequence[str] | None = None,
    precisions: str | Sequence[str] | None = None,
    compile_modes: str | Sequence[str] | None = None,
    batch_size: int | str | None = None,
    budget: float = DEFAULT_BUDGET,
    seconds: float = 2.0,
    latency_seconds: float = 0.5,
    optimizer: Mapping[str, Any] | None = None,
    seed: int = 0,
    isolation: str = "process",
    mode_timeout: float = 900.0,
    peak_cache: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> BenchResult:
    """Measure ``task`` in every mode (`plan_modes`) and rank the modes by samples trained within ``budget``.

    ``batch_size``: a number, ``"ceiling"`` (the largest batch that fits, from `autotune.fit_batch_size` per
    device and precision: each row trains at its own precision's ceiling), or None (`DEFAULT_BATCH`, capped
    at the training set). ``seconds`` of timed training and ``latency_seconds`` per latency figure per mode
    (0: no inference figures); each mode runs in a fresh worker (``isolation="process"``) so that its peak
    memory is its own, or here (``"none"``). A mode that fails is
    kept with its reason.
    ``peak_cache``: the directory of the device-peak cache (default: see `autotune.peak.cache_path`)."""
    started = time.perf_counter()
    say = progress or (lambda _message: None)
    if not (isinstance(budget, (int, float)) and math.isfinite(budget) and budget > 0):
        raise BenchError(f"budget must be a finite number of seconds above 0, got {budget!r}")
    if isolation not in ("process", "none"):
        raise BenchError(f"isolation must be 'process' or 'none', got {isolation!r}")
    warm_up_for(task, isolation=isolation)
    task = load_task(task)
    backend = get_backend(task.backend)
    modes, skipped = plan_modes(backend, devices, precisions, compile_modes)
    spec = backend.validate_optimizer(optimizer or {"name": "adam", "lr": 1e-3})
    if batch_size is not None and batch_size != "ceiling" and (
            isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise BenchError(f"batch must be a positive whole number or 'ceiling', got {batch_size!r}")
    preload = backend.worker_preload(task)
    if isolation == "process":
        warm_up_server(preload)
    data = task.load_data()
    n_train, _ = backend.data_size(data)
    if isinstance(batch_size, int) and batch_size > n_train:
        raise BenchError(f"batch {batch_size} is larger than the {n_train} training samples: give --batch "
                         f"{n_train} or less")
    handle = task_handle(task) if isolation == "process" else task
    # the model and its loss on two samples first: a task that cannot train is one line, not a table of failures
    contract = {"task": handle, "device": modes[0].device, "seed": seed}
    checked = (run_in_worker(check_contract, contract, timeout=mode_timeout, preload=preload, exact_memory=False)
               if isolation == "process" else run_here(check_contract, contract))
    raise_for_contract(checked)
    batches = _batches(task, modes, batch_size, n_train, isolation, say)
    # resolved here: workers fork from a server that keeps the environment it started with
    peak_cache = peak_cache or str(peak_cache_path().parent)
    rows: list[dict[str, Any]] = []
    for mode in modes:
        batch = batches[(mode.device, mode.precision)]
        say(f"bench {mode.label} at batch {batch} ...")
        kwargs = {"task": handle, "mode": mode, "batch_size": batch, "optimizer": spec,
                  "seed": seed, "seconds": seconds, "latency_seconds": latency_seconds, "peak_cache": peak_cache}
        # timed with the allocator a user's training has (a pinned one slows steps that map large tensors)
        outcome = (run_in_worker(_bench_mode, kwargs, timeout=mode_timeout, preload=preload, exact_memory=False)
                   if isolation == "process" else run_here(_bench_mode, kwargs))
        if outcome.kind == "fatal":
            raise AutotuneError(outcome.message)
        row: dict[str, Any] = {"mode": mode.label, **dataclasses.asdict(mode), "batch_size": batch,
                               "ok": outcome.ok}
        if outcome.ok:
            row.update(outcome.value)
        else:
            row["failure"] = f"{outcome.kind}: {outcome.message}"
        rows.append(row)
    rank(rows, budget)
    return BenchResult(task=task.reference or repr(task), backend=backend.name,
                       batch_size=max(batches.values()) if batches else 0, budget_seconds=float(budget), rows=rows,
                       skipped=skipped, seconds=time.perf_counter() - started)


def _batches(task: Task, modes: list[Mode], batch_size: int | str | None, n_train: int, isolation: str,
             say: Callable[[str], None]) -> dict[tuple[str, str], int]:
    """The batch each (device, precision) is measured at: given, fitted per device and precision
    (``"ceiling"``: mixed precision keeps smaller activations, so each has its own), or the default."""
    keys = list(dict.fromkeys((mode.device, mode.precision) for mode in modes))
    if batch_size == "ceiling":
        from autotune.memory import fit_batch_size

        fitted = {}
        for device_id, precision in keys:
            say(f"fit the batch ceiling on {device_id} in {precision} ...")
            fitted[(device_id, precision)] = fit_batch_size(task, device=device_id, isolation=isolation,
                                                            precision=precision).batch_size
        return fitted
    size = batch_size if isinstance(batch_size, int) else min(DEFAULT_BATCH, n_train)
    return {key: size for key in keys}


def choose_mode(
    task: Task | str,
    *,
    precisions: Sequence[str] = ("fp32",),
    compile_modes: Sequence[bool] = (False,),
    budget: float = DEFAULT_BUDGET,
    seconds: float = 1.0,
    batch_size: int | None = None,
    isolation: str = "process",
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """The mode (device, precision, compile) with the most samples trained within ``budget`` seconds, by
    `bench`'s ranking (a compiled mode must pay its compile time back within the budget), among every device
    the backend sees × ``precisions`` it supports × ``compile_modes``: ``{"device", "precision", "compile",
    "why", "table"}``. A single candidate mode is the answer without a bench (``table`` None). Each mode
    trains for ``seconds`` at ``batch_size`` (default: `bench`'s), without inference figures."""
    task = load_task(task)
    backend = get_backend(task.backend)
    devices = backend.devices()
    compiles = sorted(set(bool(flag) for flag in compile_modes))
    candidates = [(device.id, precision, flag) for device in devices for precision in precisions
                  if precision in backend.precisions(device) for flag in compiles]
    if len(candidates) == 1:
        device_id, precision, flag = candidates[0]
        only = f"the only device {backend.name} sees" if len(devices) == 1 else "the only mode"
        return {"device": device_id, "precision": precision, "compile": flag, "table": None,
                "why": f"{Mode(device_id, precision, flag).label} is {only}"}
    result = bench(task, devices="all", precisions=list(dict.fromkeys(precisions)),
                   compile_modes=["on" if flag else "off" for flag in compiles], budget=budget, seconds=seconds,
                   latency_seconds=0.0, batch_size=batch_size, isolation=isolation, progress=progress)
    winner = result.winner
    if winner is None:
        failures = "; ".join(f"{row['mode']}: {row['failure']}" for row in result.rows)
        raise BenchError(f"no device could train the task: {failures}")
    return {"device": winner["device"], "precision": winner["precision"], "compile": winner["compile"],
            "why": explain(result), "table": result}


def explain(result: BenchResult) -> str:
    """One line: the winning row and the runner-up, with the ratio of their samples trained in the budget."""
    winner = result.winner
    assert winner is not None
    compiled = f", {winner['compile_seconds']:.1f} s compile included" if winner["compile"] else ""
    line = (f"{winner['mode']} trains fastest: {winner['throughput_in_budget']:.4g} samples/s over a "
            f"{result.budget_seconds:g} s budget at batch {winner['batch_size']}{compiled}")
    ranked = [row for row in result.rows if row["ok"]]
    if len(ranked) > 1:
        second = ranked[1]
        ratio = winner["throughput_in_budget"] / second["throughput_in_budget"] \
            if second["throughput_in_budget"] else math.inf
        line += f", {ratio:.2f}× the runner-up {second['mode']} ({second['throughput_in_budget']:.4g})"
    failed = [row["mode"] for row in result.rows if not row["ok"]]
    if failed:
        line += f"; failed: {', '.join(failed)}"
    return line


def trial_budget_seconds(trial_time: float | None, trial_steps: int | None, timeout: float | None,
                         n_trials: int) -> float:
    """The seconds a compiled mode must pay its compile time back within when `tune` chooses: one trial's
    (every trial builds and compiles a fresh model), else the timeout's share per trial, else `DEFAULT_BUDGET`."""
    if trial_time:
        return float(trial_time)
    if timeout:
        return float(timeout) / max(1, n_trials)
    return DEFAULT_BUDGET


def auto_device(task: Task | str, device: str | None, *, isolation: str = "process",
                say: Callable[[dict[str, Any]], None] | None = None, space: Any = None,
                budget: float = DEFAULT_BUDGET) -> dict[str, Any] | None:
    """For ``device == "auto"``: `choose_mode`'s answer over the devices and, with a search ``space``, its
    precision and compile choices, as ``{"device", "precision", "compile", "why", "table"}`` (a study records
    it), announced through ``say`` as a ``device`` event; None for any other device."""
    if device != "auto":
        return None
    chosen = choose_mode(task, precisions=space.precisions if space is not None else ["fp32"],
                         compile_modes=space.compile_modes if space is not None else [False], budget=budget,
                         isolation=isolation)
    if say is not None:
        say({"event": "device", "message": chosen["why"]})
    table = chosen["table"]
    return {**chosen, "table": table.to_dict() if table else None}


def with_global_batch(space: Any, global_batch: int | None, backend: Any, task: Task) -> None:
    """``--global-batch``: checked against the training set (one line, before a study exists) and set on the
    search space, whose trials then train at it (`autotune.space.SearchSpace.suggest`)."""
    if global_batch is None:
        return
    from autotune.training import check_global_batch

    check_global_batch(global_batch, backend.data_size(task.load_data())[0])
    space.global_batch = global_batch
