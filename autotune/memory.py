"""Fit the batch size to memory: measure, model, predict, verify, correct.

Three parts (`autotune.fitting`): the `Budget` says what must fit under which cap, the `Planner` (pure)
decides the next size to probe from the probes so far, and the `ProbeExecutor` runs each probe in a worker
process (exact, capped) or in this process. `fit_batch_size` wires them to a Task; `find_batch_size`
(`autotune.fitting.step`) to the user's own training step.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Mapping

import numpy as np

from autotune.backends import get_backend
from autotune.errors import FitError
from autotune.fitting.budget import Budget
from autotune.fitting.executor import ProbeExecutor, _probe_run, _probe_series
from autotune.fitting.model import MemoryModel, Probe
from autotune.fitting.planner import MAX_PROBES, Planner
from autotune.fitting.result import BatchFit, result_of, run_plan
from autotune.fitting.step_time import StepTimeLimit
from autotune.runner import warm_up_for, warm_up_server
from autotune.scoped import collector_skips_the_callers_heap
from autotune.task import Task, load_task, task_handle
from autotune.units import format_size

__all__ = ["DEFAULT_MARGIN", "MAX_PROBES", "BatchFit", "MemoryModel", "Probe", "fit_batch_size", "run_plan",
           "_probe_run", "_probe_series"]

DEFAULT_MARGIN = 0.05


@collector_skips_the_callers_heap
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
    precision: str = "fp32",
    step_time_limit: StepTimeLimit | None = None,
) -> BatchFit:
    """The largest batch size whose whole training step fits the device's memory budget.

    The budget is ``memory_limit`` (bytes) or the device's free memory, less ``margin`` (a fraction).
    ``granularity`` is the resolution of the answer (the next size up does not fit); by default a power of
    two near 1/64 of the answer, so that the search stays short, and after an OOM up to two of those (a size
    the model puts over the cap is not risked for a second OOM; `BatchFit.granularity` says which).
    ``optimizer`` defaults to Adam (its state is counted). ``isolation='process'`` probes in capped worker
    processes (exact, and the only way a CPU limit is enforced); ``'none'`` probes in this process, releasing
    memory in between (less exact: allocators keep some memory). ``precision`` (fp32, bf16, fp16) is the
    training precision the probes run in, as a trial in it would (`autotune.training.configured_session`): each
    precision has its own ceiling; one the device lacks is a `FitError` before any probe. ``step_time_limit``
    (`autotune.fitting.step_time`, for a study whose trials have a time budget) stops at the first size that
    fits but steps slower than a trial can use, with ``limited_by`` "step time".
    """
    started = time.perf_counter()
    say = progress or (lambda _message: None)
    warm_up_for(task, isolation=isolation)
    task = load_task(task)
    backend = get_backend(task.backend)
    target = backend.resolve_device(device)
    spec = backend.validate_optimizer(optimizer or {"name": "adam"})
    if not 0 <= margin < 1:
        raise FitError(f"margin must be a fraction in [0, 1), got {margin}")
    if granularity is not None and granularity < 1:
        raise FitError(f"granularity must be a positive integer, got {granularity}")
    if isolation not in ("process", "none"):
        raise FitError(f"isolation must be 'process' or 'none', got {isolation!r}")
    check_precision(backend, target, precision)
    check_memory_limit(memory_limit, target)
    in_worker = isolation == "process"
    preload = backend.worker_preload(task)
    if in_worker:
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
    on_cpu = target.kind == "cpu"
    budget = Budget.for_device(on_cpu=on_cpu, memory_limit=memory_limit, margin=margin, in_worker=in_worker,
                               host_free=target.memory_free, block_bytes=backend.cpu_pool_block_bytes)
    planner = Planner(budget, ceiling=ceiling, granularity=granularity, resident_slope=on_cpu,
                      max_probes=MAX_PROBES)
    notes: list[str] = []
    if on_cpu and memory_limit and not in_worker:
        notes.append("in-process on the CPU the limit is measured against, not enforced")
    if largest is not None and sizes is not None:
        notes.append(f"samples differ in size: probes train on the largest ones ({int(sizes.max())} elements "
                     f"against a median of {int(np.median(sizes))})")
    probes: list[Probe] = []
    kwargs = dict(task=task_handle(task) if in_worker else task, device=target.id, optimizer=spec, steps=steps,
                  seed=seed, largest=largest, precision=precision)
    executor = ProbeExecutor(budget, probes, in_worker=in_worker, function=_probe_run, series=_probe_series,
                             kwargs=kwargs, preload=preload, timeout=probe_timeout, say=say)
    answer = run_plan(planner, executor, probes, step_time_limit)
    fit = result_of(answer, budget, probes, limit=ceiling, device=target.id, backend=backend.name,
                    started=started, notes=notes)
    fit.precision = precision
    if answer.batch_size >= n_train:
        fit.limited_by = "dataset"
        fit.notes.append(f"the whole training set ({n_train} samples) fits in one batch")
    if not in_worker:
        fit.notes.append("probed in-process: allocator caches make the figures less exact than worker probes")
    return fit


def check_memory_limit(memory_limit: int | None, device: Any) -> None:
    """`FitError` (one line) for a limit larger than the device's whole memory: a fit would then probe past
    what exists (on the CPU, into swap or the kernel's OOM killer) instead of stopping at the budget."""
    total = getattr(device, "memory_total", None)
    if memory_limit and total and memory_limit > total:
        raise FitError(f"--memory-limit {format_size(memory_limit)} is more than the {format_size(total)} of memory "
                       f"{device.id} has: give at most that, or leave it out to use the memory available")


def check_precision(backend: Any, device: Any, precision: str, fix: str = "") -> None:
    """`FitError` (one line, naming what the device has, then ``fix``) unless ``backend`` trains in
    ``precision`` on ``device``."""
    if precision == "fp32":  # every backend trains in it; the others' probes (a matmul per dtype) are skipped
        return
    supported = backend.precisions(device)
    if precision not in supported:
        why = backend.precision_notes(device).get(precision)
        raise FitError(f"precision {precision!r}: {backend.name} has no {precision} training on {device.id} "
                       f"(it has {', '.join(supported)}{'; ' + why if why else ''}){fix}")
