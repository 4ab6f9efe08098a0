"""Fit the batch size to memory: measure, model, predict, verify, correct.

Peak memory is measured for the whole of a short training run at a few batch sizes (optimizer state, a
training step, an evaluation batch: `autotune.training.measure_probe`). The first, growth probes share one
worker; every size that may be the answer runs in a fresh one, so that no allocator leftovers distort it (a
training run starts fresh too). A line ``peak = intercept + bytes_per_sample * batch`` is fitted to the
measurements, the largest batch under the budget (less a margin) is predicted and verified with a real run;
the model is refitted with every new point and the answer corrected by bisection when a run fails or leaves
room. On the CPU a memory limit is enforced for real: the worker's address space is capped, so exceeding it
is a genuine allocation failure.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Callable, Mapping

import numpy as np

from autotune.backends import get_backend
from autotune.errors import FitError
from autotune.procmem import pool_blocks, process_memory, reset_resident_peak
from autotune.runner import run_here, run_in_worker, warm_up_server
from autotune.task import Task, load_task, resolve_task, task_handle
from autotune.training import BatchSampler, LargestSampler, measure_probe
from autotune.trial import fresh_session
from autotune.units import format_size

DEFAULT_MARGIN = 0.05
MAX_PROBES = 14
GROWTH = 8
FAR = 1.2  # a prediction this many times the largest size that ran is an extrapolation ...
SETTLED = 0.05  # ... that is trusted once it moved less than this fraction since the previous probe ...
TOO_FAR = 4.0  # ... and reaches less than this many times that size; else it is ...
AIM = 0.85  # ... aimed at only this fraction of the way, then refitted
BACK_OFF = 0.01  # after the model overshot, the next probe sits this fraction (at least a granule) below the failure


@dataclasses.dataclass
class Probe:
    """One measured run at ``batch_size``: its peak memory, or why it failed."""

    batch_size: int
    fits: bool
    oom: bool = False
    peak_memory_bytes: int | None = None
    resident_peak_bytes: int | None = None
    pool: dict[str, int] | None = None  # a block-granular CPU pool's blocks and touched bytes (procmem.pool_blocks)
    throughput: float | None = None
    train_steps: int = 0  # training steps the probe ran (an OOM'd probe: unknown, 0)
    seconds: float = 0.0
    reason: str = ""


@dataclasses.dataclass
class MemoryModel:
    """``peak(batch) = intercept_bytes + bytes_per_sample * batch``, fitted by least squares."""

    intercept_bytes: float
    bytes_per_sample: float
    max_residual_bytes: float = 0.0

    @classmethod
    def fit(cls, points: list[tuple[int, int]]) -> "MemoryModel | None":
        if len({batch for batch, _ in points}) < 2:
            return None
        batches = np.array([batch for batch, _ in points], dtype=float)
        peaks = np.array([peak for _, peak in points], dtype=float)
        slope, intercept = np.polyfit(batches, peaks, 1)
        residual = float(np.max(np.abs(peaks - (intercept + slope * batches))))
        return cls(float(intercept), float(slope), residual)

    @classmethod
    def local(cls, probes: list["Probe"], resident_slope: bool = True) -> "MemoryModel | None":
        """A line through the largest measured point, with the slope of resident memory.

        Address space and allocator reservations grow in coarse chunks (a 64 MiB glibc arena, 2 MiB CUDA
        segments), so at small sizes they stay flat and a slope taken from them undershoots; the resident set
        grows smoothly from the first sample. The slope comes from the smallest and largest resident peaks (or
        the last stretch's, if steeper), the height from the largest measured peak of the budgeted metric.
        Device memory (``resident_slope`` False) takes its slope from the device peaks themselves.
        """
        measured = sorted((p for p in probes if p.peak_memory_bytes), key=lambda p: p.batch_size)
        if len(measured) < 2 or measured[0].batch_size == measured[-1].batch_size:
            return None
        small, large = measured[0], measured[-1]

        def rising(probe: Probe) -> int:
            return (probe.resident_peak_bytes if resident_slope else None) or probe.peak_memory_bytes

        slope = (rising(large) - rising(small)) / (large.batch_size - small.batch_size)
        if slope <= 0:
            slope = (large.peak_memory_bytes - small.peak_memory_bytes) / (large.batch_size - small.batch_size)
        # Memory that grows faster than the batch (convex) is under-read by the slope from the smallest point: the
        # slope over the last stretch (from a point at most 3/4 of the largest, far enough apart that a page or
        # chunk does not swamp it) is the steeper one then.
        near = [p for p in measured if p.batch_size <= 0.75 * large.batch_size]
        if near and near[-1] is not small:
            slope = max(slope, (rising(large) - rising(near[-1])) / (large.batch_size - near[-1].batch_size))
        intercept = large.peak_memory_bytes - slope * large.batch_size
        residual = max(abs(p.peak_memory_bytes - (intercept + slope * p.batch_size)) for p in measured[-2:])
        return cls(float(intercept), float(slope), float(residual))

    def predict(self, batch_size: float) -> float:
        return self.intercept_bytes + self.bytes_per_sample * batch_size

    def largest_under(self, budget_bytes: float) -> float:
        if self.bytes_per_sample <= 0:
            return math.inf
        return (budget_bytes - self.intercept_bytes) / self.bytes_per_sample

    def describe(self) -> str:
        return f"{format_size(self.intercept_bytes)} + {format_size(self.bytes_per_sample)} × batch"


@dataclasses.dataclass
class BatchFit:
    """The answer of `fit_batch_size` and how it was reached."""

    batch_size: int
    peak_memory_bytes: int | None
    budget_bytes: int
    margin: float
    memory_metric: str
    limited_by: str
    granularity: int
    model: MemoryModel | None
    probes: list[Probe]
    device: str
    backend: str
    seconds: float
    notes: list[str] = dataclasses.field(default_factory=list)

    @property
    def ooms(self) -> int:
        return sum(1 for probe in self.probes if probe.oom)

    @property
    def throughput(self) -> float | None:
        for probe in self.probes:
            if probe.batch_size == self.batch_size and probe.fits:
                return probe.throughput
        return None

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["ooms"] = self.ooms
        data["probe_steps"] = len(self.probes)
        data["throughput"] = self.throughput
        data["model"] = None if self.model is None else {
            **dataclasses.asdict(self.model), "formula": self.model.describe()}
        return data


def _probe_setup(task: Any, device: str | None, device_memory_limit: int | None) -> tuple[Any, Any, Any, Any]:
    task = resolve_task(task)
    backend = get_backend(task.backend)
    target = backend.resolve_device(device)
    if device_memory_limit and target.kind != "cpu":
        backend.limit_memory(target, device_memory_limit)
    return task, backend, target, task.load_data()


def _measure(task: Any, backend: Any, target: Any, data: Any, batch_size: int, optimizer: Mapping[str, Any],
             steps: int, seed: int, largest: Any = None, first_in_process: bool = False) -> dict[str, Any]:
    free_at_start = backend.free_memory(target) if target.kind != "cpu" else None
    reset_resident_peak()
    build = lambda: backend.session(task, data, target, batch_size=batch_size, optimizer=optimizer,  # noqa: E731
                                    seed=seed)
    with fresh_session(backend, target, build) as session:
        session.reset_peak_memory()
        n_train, _ = backend.data_size(data)
        sampler = (LargestSampler(largest, batch_size) if largest is not None
                   else BatchSampler(n_train, batch_size, seed))
        figures = measure_probe(session, sampler, steps=steps, first_in_process=first_in_process)
        device_peak = session.peak_memory()
    pool = pool_blocks(backend.cpu_pool_block_bytes) if backend.cpu_pool_block_bytes and target.kind == "cpu" \
        else None
    return {**figures, "device_peak": device_peak, "free_at_start": free_at_start, **process_memory(),
            "pool": pool or None}


def _probe_run(task: Any, batch_size: int, device: str | None, optimizer: Mapping[str, Any], steps: int,
               seed: int, device_memory_limit: int | None, largest: Any = None) -> dict[str, Any]:
    """Build a fresh session at ``batch_size``, run `measure_probe`, return the peak; OOM → TrialError('oom')."""
    task, backend, target, data = _probe_setup(task, device, device_memory_limit)
    return _measure(task, backend, target, data, batch_size, optimizer, steps, seed, largest)


def _probe_series(task: Any, device: str | None, optimizer: Mapping[str, Any], steps: int, seed: int,
                  device_memory_limit: int | None, channel: Any, largest: Any = None,
                  retime_first: bool = False) -> int:
    """Probe the sizes the parent asks for, one after another in this worker, until it answers None.

    Saves a worker start (and a device context) per probe. The parent asks for a size here only while the
    figures need not be exact (growth probes, which feed the slope, not the answer): a process that has run
    other sizes is not a fresh one, and a training run is. A failure (an OOM included) ends the worker with
    its kind, as `_probe_run` would.
    """
    task, backend, target, data = _probe_setup(task, device, device_memory_limit)
    reply = channel.ask(("ready", None))
    count = 0
    while reply is not None:
        batch_size, limit = reply
        if limit and target.kind != "cpu" and limit != device_memory_limit:
            backend.limit_memory(target, limit)
            device_memory_limit = limit
        # the fit's first probe (a small growth size) carries the process's first-call set-up: a second,
        # timed step costs little there
        result = _measure(task, backend, target, data, batch_size, optimizer, steps, seed, largest,
                          first_in_process=retime_first and count == 0)
        count += 1
        reply = channel.ask(("ok", result))
    return count


def _points(probes: list[Probe]) -> list[tuple[int, int]]:
    return [(p.batch_size, p.peak_memory_bytes) for p in probes if p.peak_memory_bytes]


def fit_batch_size(
    task: Task | str,
    *,
    device: str | None = None,
    memory_limit: int | None = None,
    margin: float = DEFAULT_MARGIN,
    max_batch: int | None = None,
    granularity: int | None = None,
    optimizer: Mapping[str, Any] | None = None,
    steps: int = 1,
    seed: int = 0,
    isolation: str = "process",
    probe_timeout: float = 600.0,
    progress: Callable[[str], None] | None = None,
) -> BatchFit:
    """The largest batch size whose whole training step fits the device's memory budget.

    The budget is ``memory_limit`` (bytes) or the device's free memory, less ``margin`` (a fraction).
    ``granularity`` is the resolution of the answer (the next size up does not fit); by default a power of
    two near 1/64 of the answer, so that the search stays short, and after an OOM up to two of those (a size
    the model puts over the cap is not risked for a second OOM; `BatchFit.granularity` says which).
    ``optimizer`` defaults to Adam (its state is counted). ``isolation='process'`` probes in capped worker
    processes (exact, and the only way a CPU limit is enforced); ``'none'`` probes in this process, releasing
    memory in between (less exact: allocators keep some memory).
    """
    started = time.perf_counter()
    say = progress or (lambda _message: None)
    task = load_task(task)
    backend = get_backend(task.backend)
    target = backend.resolve_device(device)
    spec = backend.validate_optimizer(optimizer or {"name": "adam"})
    if not 0 <= margin < 1:
        raise FitError(f"margin must be a fraction in [0, 1), got {margin}")
    granularity_given = granularity is not None
    granularity = granularity or 1
    if granularity < 1:
        raise FitError(f"granularity must be a positive integer, got {granularity}")
    if isolation not in ("process", "none"):
        raise FitError(f"isolation must be 'process' or 'none', got {isolation!r}")
    preload = backend.worker_preload(task)
    if isolation == "process":
        warm_up_server(preload)  # the server imports the framework while this process reads the data
    data = task.load_data()
    n_train, _ = backend.data_size(data)
    sizes = backend.sample_sizes(task, data)
    # samples that differ in size (padded sequences): every probe trains on the largest ones, so the ceiling
    # holds for any batch the data can make
    largest = None if sizes is None else np.argsort(-np.asarray(sizes), kind="stable")[:max_batch or n_train]
    del data
    if max_batch is not None and max_batch > n_train:
        raise FitError(
            f"--max-batch {max_batch} is larger than the {n_train} training samples: "
            f"use at most {n_train}, or give the task more data"
        )
    ceiling = min(max_batch or n_train, n_train)
    if ceiling < 1:
        raise FitError("max batch must be at least 1")
    notes: list[str] = []
    on_cpu = target.kind == "cpu"
    if on_cpu and memory_limit and isolation == "process":
        metric, budget = "address_space", memory_limit
    elif on_cpu:
        metric = "resident"
        budget = memory_limit or target.memory_free or 0
        if memory_limit:
            notes.append("in-process on the CPU the limit is measured against, not enforced")
    else:
        metric, budget = "device_peak", memory_limit or 0
    handle = task_handle(task) if isolation == "process" else task
    # A CPU pool that reserves whole blocks: the address space says how many blocks, not how full they are.
    block = backend.cpu_pool_block_bytes if (on_cpu and memory_limit and isolation == "process") else None
    # Probes run capped at the budget less the margin, as on a device: a size over the budget then fails at
    # once, as an OOM, instead of running a whole step only to be measured over it. A block pool keeps the whole
    # limit (its margin is kept inside the blocks, see _largest_in_blocks).
    cpu_cap = None
    if on_cpu and memory_limit and isolation == "process":
        cpu_cap = memory_limit if block else int(memory_limit * (1 - margin))

    probes: list[Probe] = []
    fits_at, fails_at = 0, ceiling + 1
    step = granularity if granularity_given else 1
    growing = True  # the next probe only grows the batch to learn the slope; it does not test the answer

    def device_cap() -> int | None:
        """On a device, probes run under the budget less margin: a probe that runs is a probe that fits. In this
        process (``isolation='none'``) only a limit the caller gave is applied: the cap would outlive the fit."""
        if on_cpu or not budget or (isolation == "none" and not memory_limit):
            return None
        return int(budget * (1 - margin))

    def to_probe(batch_size: int, ok: bool, value: Any, kind: str | None, message: str, elapsed: float,
                 killed_by_signal: bool = False) -> Probe:
        nonlocal budget
        if kind == "fatal":
            raise FitError(message)
        if kind == "oom" and message.startswith("the worker alone"):
            raise FitError(f"batch size {batch_size} does not fit: {message}; raise --memory-limit")
        if not ok:
            # Under an enforced cap, a size larger than one that ran can fail in other ways than the
            # framework's OOM error (oneDNN: "could not create a primitive"; a C++ abort): that is memory too.
            crashed_under_cap = killed_by_signal and cpu_cap is not None
            failed_above_a_fit = cpu_cap is not None and kind in ("error", "crash") and 0 < fits_at < batch_size
            if kind == "oom" or crashed_under_cap or failed_above_a_fit:
                probe = Probe(batch_size, fits=False, oom=True, seconds=elapsed, reason=message)
            else:
                raise FitError(
                    f"the model fails at batch {batch_size} for a reason other than memory ({kind}: {message}); "
                    "fix the task before fitting"
                )
        else:
            peak = _peak_of(value, metric)
            if not on_cpu and not budget:
                budget = int(value.get("free_at_start") or 0)
            fits = peak <= budget * (1 - margin)
            pool = value.get("pool")
            if fits and block and pool and pool.get("blocks"):
                # The margin is kept inside the pool too (on top of the address space's): the pool's blocks fill to
                # the brim, so the address space's margin alone leaves a longer run no room in its last block.
                fits = pool["touched"] <= _pool_capacity(pool, peak, budget * (1 - margin), block, margin)
            probe = Probe(batch_size, fits=fits, peak_memory_bytes=peak,
                          resident_peak_bytes=value.get("resident_peak"), pool=pool,
                          throughput=value.get("throughput"), train_steps=int(value.get("train_steps") or 0),
                          seconds=elapsed, reason="" if fits else "over the budget less margin")
        probes.append(probe)
        state = "fits" if probe.fits else ("OOM" if probe.oom else "over budget")
        say(f"  batch {batch_size}: {state}, peak {format_size(probe.peak_memory_bytes)}, {elapsed:.1f} s")
        return probe

    def plan() -> Any:
        """The search, as a generator: yields the next batch size to probe, is sent its `Probe`."""
        nonlocal fits_at, fails_at, step, growing
        previous_prediction: float | None = None
        explore = 0
        backed_off = False  # after an overshoot, one step back below the failure has been tried
        probe_at = min(max(step, _round_down(8, step)), ceiling)
        while True:
            probe = yield probe_at
            if probe.fits:
                fits_at = probe_at
            else:
                fails_at = probe_at
            effective = budget * (1 - margin)
            if fits_at == 0:
                if probe_at <= step:
                    raise FitError(_too_small_message(probe, budget, margin, metric))
                probe_at = max(step, _round_down(probe_at // 2, step))  # even the first size failed: halve
                continue
            if fits_at >= ceiling or fails_at - fits_at <= step:
                return
            if len(probes) >= MAX_PROBES:
                notes.append(f"stopped after {MAX_PROBES} probes: sizes between {fits_at} and "
                             f"{min(fails_at, ceiling + 1) - 1} were not tried")
                step = max(step, min(fails_at, ceiling + 1) - fits_at)  # the resolution actually reached
                return
            model = MemoryModel.local(probes, resident_slope=on_cpu)
            predicted = model.largest_under(effective) if model else math.inf
            searching = False  # ``predicted`` is a bisection or exploration step, not the model's answer
            if block and model is not None:
                predicted = _largest_in_blocks(probes, effective, block, margin)
                searching = fails_at <= ceiling or predicted < fits_at + 2 * step
                if fails_at <= ceiling:
                    predicted = (fits_at + fails_at) / 2  # the edge is bracketed by real runs: bisect
                elif predicted < fits_at + 2 * step:
                    # The estimate is spent and the run still fits (the pool's use is noisy near the edge, about
                    # ±30 MiB): step up one granule at a time, so the first failure ends the search; after
                    # two such steps, double them, should the estimate be far off.
                    explore += 1
                    predicted = fits_at + step * 2 ** max(0, explore - 2)
                else:
                    explore = 0
            if not granularity_given and model is not None and math.isfinite(predicted) and predicted > 0:
                step = max(step, 2 ** int(math.log2(max(1.0, min(predicted, ceiling) / 64))))
            # No stop on the model's word alone: peaks grow in chunks (pages, arenas, allocator segments) about
            # as large as one step's worth of memory (TensorFlow's hungry task peaked at 1433 MiB at both 848
            # and 856, and a stop that trusted the line flaked), so the edge is proven by a real run (a fit below
            # it, a failure above; for the one exception after an OOM, see below).
            # An extrapolation whose prediction still moves from probe to probe is not trusted: TensorFlow's
            # address space grows faster past the growth probes (predictions 563 then 719, edge 700), a conv net's
            # settles early (1367 then 1405, edge 1408-1418).
            settled = previous_prediction is not None and math.isfinite(predicted) \
                and abs(predicted - previous_prediction) <= SETTLED * predicted
            previous_prediction = predicted if math.isfinite(predicted) else None
            if math.isfinite(predicted) and predicted > FAR * fits_at and not searching \
                    and (not settled or predicted > TOO_FAR * fits_at):
                predicted = fits_at + AIM * (predicted - fits_at)  # land short, then refit
            # Aim at the answer itself, rounded down (rounding to the nearest granule went past TensorFlow's edge,
            # where its address space jumps by tens of MB, and cost a second OOM in CI).
            candidate = _round_down(int(min(predicted, fits_at * GROWTH, ceiling)), step)
            candidate = max(candidate, fits_at + step)
            if candidate >= ceiling - step and ceiling < fails_at:
                candidate = ceiling  # within one step of the data or --max-batch limit: try the limit itself
            if candidate >= fails_at:
                # The model overshot a size already seen to fail. An OOM adds no point, so the prediction stays
                # where it was: step back from the failure by one granule or 1 % (overshoots are small: chunky
                # peaks), once, to a size that most likely runs and refines the model near the edge; else (no
                # model, or after that) bisect.
                below = 0
                if not backed_off and math.isfinite(predicted):
                    below, backed_off = min(_round_down(int(fails_at * (1 - BACK_OFF)), step), fails_at - step), True
                candidate = below if fits_at < below < fails_at else \
                    fits_at + max(step, _round_down((fails_at - fits_at) // 2, step))
            if candidate >= fails_at:
                return
            oom_at = cpu_cap or device_cap() or budget  # where a run fails for real (the enforced cap, if any)
            if any(p.oom for p in probes) and not granularity_given and not block and model is not None \
                    and fails_at - fits_at <= 2 * step and model.predict(fits_at + step) > oom_at:
                # The one exception to proving the edge by a run: an OOM is spent, the edge is bracketed within two
                # granules and the line puts the size between past the cap. Near the edge a run's peak moves by a
                # MB or so from one fresh worker to the next (TensorFlow: 848 fitted at 1501.5 and at 1502.8 MB of
                # 1503.2, and 856 after it failed once in six fits), so probing it risks a second OOM; it is left
                # untried, at the cost of up to a granule, and the answer's resolution is the bracket (proven by the
                # OOM). Not for a block pool, whose estimate is noisy (about ±30 MiB) near the edge.
                notes.append(f"{fits_at + step} was not tried: the memory model puts it over the cap, and after "
                             "an OOM it would risk a second one")
                step = fails_at - fits_at
                return
            growing = candidate < ceiling and candidate == fits_at * GROWTH < predicted
            probe_at = candidate

    planner = plan()
    next_size: int | None = next(planner)

    def advance(probe: Probe) -> int | None:
        try:
            return planner.send(probe)
        except StopIteration:
            return None

    kwargs = dict(task=handle, device=target.id, optimizer=spec, steps=steps, seed=seed, largest=largest)
    if largest is not None:
        notes.append(f"samples differ in size: probes train on the largest ones ({int(sizes.max())} elements "
                     f"against a median of {int(np.median(sizes))})")
    while next_size is not None:
        if isolation == "none":
            say(f"probe batch {next_size} ...")
            tick = time.perf_counter()
            outcome = run_here(_probe_run, {**kwargs, "batch_size": next_size, "device_memory_limit": device_cap()})
            next_size = advance(to_probe(next_size, outcome.ok, outcome.value, outcome.kind, outcome.message,
                                         time.perf_counter() - tick))
            continue
        # One worker runs probes for as long as its figures stay exact (see _probe_series); then a fresh one.
        in_flight: dict[str, Any] = {"size": next_size, "since": time.perf_counter()}

        def serve(message: tuple[str, Any]) -> tuple[int, int | None] | None:
            nonlocal next_size
            kind, value = message
            if kind != "ready":
                size = in_flight["size"]
                probe = to_probe(size, kind == "ok", value if kind == "ok" else None, None if kind == "ok" else kind,
                                 "" if kind == "ok" else value, time.perf_counter() - in_flight["since"])
                next_size = advance(probe)
                in_flight["size"] = None
                # Only growth probes, whose figures feed the slope and not the answer, share a worker; a size
                # that may be the answer gets a fresh one. On the CPU the peak address space only grows over a
                # worker's life and earlier probes leave some behind (measured: 6 to 12 MiB each); on an H100
                # the caching allocator, warmed by a probe at 1600 (or by an OOM), then ran 1616 (or 1728),
                # which a fresh process could not.
                same_worker = next_size is not None and probe.fits and next_size > size and growing
                if not same_worker:
                    return None
                in_flight["size"], in_flight["since"] = next_size, time.perf_counter()
            say(f"probe batch {in_flight['size']} ...")
            return in_flight["size"], device_cap()

        series = {**kwargs, "device_memory_limit": device_cap(), "retime_first": not probes}
        outcome = run_in_worker(_probe_series, series,
                                memory_limit=cpu_cap, timeout=probe_timeout, preload=preload, on_message=serve,
                                timeout_per_message=True)
        if in_flight["size"] is not None:  # the worker ended during a probe: that probe failed
            next_size = advance(to_probe(in_flight["size"], False, None, outcome.kind or "crash",
                                         outcome.message or "the worker ended without a result",
                                         time.perf_counter() - in_flight["since"], outcome.killed_by_signal))
    granularity = step
    model = MemoryModel.local(probes, resident_slope=on_cpu) or MemoryModel.fit(_points(probes))
    best = next(p for p in probes if p.batch_size == fits_at and p.fits)
    limited_by = "dataset" if fits_at >= n_train else ("max_batch" if fits_at >= ceiling else "memory")
    if limited_by == "dataset":
        notes.append(f"the whole training set ({n_train} samples) fits in one batch")
    if isolation == "none":
        notes.append("probed in-process: allocator caches make the figures less exact than worker probes")
    return BatchFit(
        batch_size=fits_at, peak_memory_bytes=best.peak_memory_bytes, budget_bytes=int(budget), margin=margin,
        memory_metric=metric, limited_by=limited_by, granularity=granularity, model=model, probes=probes,
        device=target.id, backend=backend.name, seconds=time.perf_counter() - started, notes=notes,
    )


def _pool_capacity(pool: Mapping[str, int], peak: int, budget: float, block: int, margin: float) -> float:
    """Bytes a block pool may use: the blocks it holds plus those the budget has room for, less the margin."""
    blocks = pool["blocks"] + max(0, int((budget - peak) // block))
    return blocks * block * (1 - margin)


def _largest_in_blocks(probes: list[Probe], budget: float, block: int, margin: float = 0.0) -> float:
    """The largest batch when the CPU pool takes address space in ``block``-sized reservations.

    The pool's blocks are mappings of exactly that size; their touched pages are the high-water mark of its
    use (measured on MindSpore 2.10: 54, 429 and 813 MiB at batch 64, 512 and 1024, a straight line). The run
    can grow until that use fills the blocks it holds plus as many more as the budget still has room for, less
    the margin (kept inside the pool too: a run of more steps than the probe's needed more than a full block).
    """
    measured = sorted((p for p in probes if p.fits and p.pool and p.pool.get("blocks")), key=lambda p: p.batch_size)
    if len(measured) < 2 or measured[0].batch_size == measured[-1].batch_size:
        return math.inf
    small, large = measured[0], measured[-1]
    slope = (large.pool["touched"] - small.pool["touched"]) / (large.batch_size - small.batch_size)
    if slope <= 0:
        return math.inf
    capacity = _pool_capacity(large.pool, large.peak_memory_bytes, budget, block, margin)
    return large.batch_size + (capacity - large.pool["touched"]) / slope


def _peak_of(value: Mapping[str, Any], metric: str) -> int:
    if metric == "address_space":
        return int(value["address_space_peak"])
    if metric == "device_peak":
        return int(value["device_peak"] or 0)
    return int(value["resident_peak"])


def _round_down(value: int, granularity: int) -> int:
    return (value // granularity) * granularity


def _too_small_message(probe: Probe, budget: float, margin: float, metric: str) -> str:
    what = "address space (framework included)" if metric == "address_space" else "memory"
    if probe.oom:
        return (f"batch size {probe.batch_size} does not fit in {format_size(budget)} of {what}: "
                f"raise --memory-limit or use a smaller model")
    return (f"batch size {probe.batch_size} needs {format_size(probe.peak_memory_bytes)}, over the budget of "
            f"{format_size(budget * (1 - margin))} ({format_size(budget)} less a {margin:.0%} margin): "
            "raise --memory-limit, lower --margin or use a smaller model")
