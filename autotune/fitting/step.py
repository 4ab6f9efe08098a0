"""`find_batch_size`: the largest batch the user's own training step runs at, with fit-batch's budget, planner
and memory model (the drop-in for accelerate's ``find_executable_batch_size``)."""

from __future__ import annotations

import importlib
import sys
import time
from typing import Any, Callable

import psutil

from autotune.backends import backend_names, framework_module, get_backend
from autotune.errors import FitError, TrialError
from autotune.fitting.budget import Budget
from autotune.fitting.executor import ProbeExecutor, serve_probes
from autotune.fitting.model import Probe
from autotune.fitting.planner import Planner
from autotune.fitting.result import BatchFit, result_of, run_plan
from autotune.procmem import process_memory, reset_resident_peak
from autotune.scoped import collector_skips_the_callers_heap

DEFAULT_MAX_BATCH = 65536
"""The largest size tried when ``max_batch`` is not given (a step has no dataset to bound it)."""


@collector_skips_the_callers_heap
def find_batch_size(
    step: Callable[[int], Any],
    *,
    device: str | None = None,
    memory_limit: int | None = None,
    max_batch: int | None = None,
    backend: str | None = None,
    margin: float | None = None,
    granularity: int | None = None,
    isolation: str | None = None,
    probe_timeout: float = 600.0,
    progress: Callable[[str], None] | None = None,
) -> BatchFit:
    """The largest batch size at which ``step(batch_size)`` (one training step of your code) fits the memory
    budget, found as fit-batch finds it; returns the same `BatchFit`.

    ``step`` builds what it needs at that size and runs one step (forward, backward, optimizer update, so that
    the optimizer's state is counted); it is called once per probed size. The budget is ``memory_limit``
    (bytes) or the device's free memory, less ``margin`` (default 5 %); ``max_batch`` bounds the search
    (default 65536). ``backend`` is the framework's backend name, by default the one framework that is already
    imported. An out-of-memory error is recognised as the backend recognises it; any other exception ends the
    search with a `FitError` naming it.

    ``isolation``: ``'process'`` runs each probe in a fresh worker process, as fit-batch does (exact; on the
    CPU ``memory_limit`` caps the worker's address space, so going over is a real allocation failure); it
    needs ``step`` importable by name (a module-level function of a module other than ``__main__``), and is
    the default when it is. Each worker imports the step's module itself, under the cap (what a framework
    creates at import, such as a built Keras model, does not survive a fork). ``'none'`` (the default
    otherwise) calls ``step`` in this process, which costs exactness: the framework's caching allocator keeps
    what earlier probes freed, so a later probe may run a size a fresh process could not; on CUDA the peak is
    the allocator's peak allocated, reset before each probe (``torch.cuda.reset_peak_memory_stats`` through
    the backend); on the CPU the peak is this process's resident high-water mark, reset before each probe
    where Linux allows it (``clear_refs``) and counting everything the process already holds, and a
    ``memory_limit`` is measured against, not enforced.
    """
    started = time.perf_counter()
    if not callable(step):
        raise FitError(f"step must be a callable taking the batch size, got {type(step).__name__}")
    name = backend or _imported_backend()
    framework = get_backend(name)
    target = framework.resolve_device(device)
    margin = 0.05 if margin is None else margin
    if not 0 <= margin < 1:
        raise FitError(f"margin must be a fraction in [0, 1), got {margin}")
    if max_batch is not None and max_batch < 1:
        raise FitError(f"max_batch must be at least 1, got {max_batch}")
    reference = step_reference(step)
    isolation = isolation or ("process" if reference else "none")
    if isolation not in ("process", "none"):
        raise FitError(f"isolation must be 'process' or 'none', got {isolation!r}")
    if isolation == "process" and reference is None:
        raise FitError("isolation='process' needs a step importable by name: define it at module level in a "
                       "module other than __main__, or use isolation='none'")
    in_worker = isolation == "process"
    on_cpu = target.kind == "cpu"
    host_free = process_memory().get("resident", 0) + psutil.virtual_memory().available if on_cpu else None
    budget = Budget.for_device(on_cpu=on_cpu, memory_limit=memory_limit, margin=margin, in_worker=in_worker,
                               host_free=host_free)
    ceiling = max_batch or DEFAULT_MAX_BATCH
    planner = Planner(budget, ceiling=ceiling, granularity=granularity, resident_slope=on_cpu)
    notes = []
    if on_cpu and memory_limit and not in_worker:
        notes.append("in-process on the CPU the limit is measured against, not enforced")
    if not in_worker:
        notes.append("probed in-process: allocator caches make the figures less exact than worker probes")
    probes: list[Probe] = []
    executor = ProbeExecutor(
        budget, probes, in_worker=in_worker, function=_step_probe, series=_step_series,
        kwargs={"step": reference if in_worker else step, "backend": name, "device": target.id},
        preload=framework.preload_modules() if in_worker else (),
        timeout=probe_timeout, say=progress or (lambda _message: None))
    answer = run_plan(planner, executor, probes)
    return result_of(answer, budget, probes, limit=ceiling, device=target.id, backend=name, started=started,
                     notes=notes)


def step_reference(step: Callable[..., Any]) -> str | None:
    """``'module:qualname'`` by which a worker imports ``step``, or None when it cannot."""
    module, qualname = getattr(step, "__module__", None), getattr(step, "__qualname__", "")
    if not module or module == "__main__" or "<" in qualname:
        return None
    try:
        found: Any = importlib.import_module(module)
        for part in qualname.split("."):
            found = getattr(found, part)
    except (ImportError, AttributeError):
        return None
    return f"{module}:{qualname}" if found is step else None


def _imported_backend() -> str:
    """The backend whose framework the caller has imported (its step uses it); FitError unless exactly one."""
    imported = [name for name in backend_names() if framework_module(name) in sys.modules]
    if len(imported) != 1:
        found = ", ".join(imported) or "none"
        raise FitError(f"cannot tell the step's framework (imported backends: {found}): pass backend='torch', "
                       "'tensorflow' or 'mindspore'")
    return imported[0]


def _resolve_step(step: Any) -> Callable[[int], Any]:
    if not isinstance(step, str):
        return step
    module, _, qualname = step.partition(":")
    found: Any = importlib.import_module(module)
    for part in qualname.split("."):
        found = getattr(found, part)
    return found


def _measure_step(step: Callable[[int], Any], framework: Any, target: Any, batch_size: int) -> dict[str, Any]:
    """One call of ``step(batch_size)``: its peak (device, resident, address space) and throughput."""
    free_at_start = framework.free_memory(target) if target.kind != "cpu" else None
    framework.release_memory(target)  # cached blocks back and, on CUDA, the peak statistics reset
    reset_resident_peak()
    tick = time.perf_counter()
    try:
        step(batch_size)
        framework.synchronize(target)
    except Exception as exc:
        if framework.is_oom(exc):
            raise TrialError("oom", f"{type(exc).__name__}: {exc}"[:300]) from None
        raise
    seconds = time.perf_counter() - tick
    figures = {**process_memory(), "device_peak": framework.peak_memory(target), "free_at_start": free_at_start,
               "throughput": batch_size / seconds if seconds > 0 else None, "train_steps": 1}
    framework.release_memory(target)
    return figures


def _step_probe(step: Any, batch_size: int, backend: str, device: str,
                device_memory_limit: int | None) -> dict[str, Any]:
    """Probe ``step`` at one size (in this process, or a fresh worker); OOM → TrialError('oom')."""
    framework = get_backend(backend)
    target = framework.resolve_device(device)
    if device_memory_limit and target.kind != "cpu":
        framework.limit_memory(target, device_memory_limit)
    return _measure_step(_resolve_step(step), framework, target, batch_size)


def _step_series(step: Any, backend: str, device: str, device_memory_limit: int | None, channel: Any,
                 retime_first: bool = False) -> int:
    """Probe the sizes the parent asks for in this worker (growth probes), until it answers None."""
    framework = get_backend(backend)
    target = framework.resolve_device(device)
    function = _resolve_step(step)
    return serve_probes(channel, lambda batch_size, _first: _measure_step(function, framework, target, batch_size),
                        lambda limit: framework.limit_memory(target, limit) if target.kind != "cpu" else None,
                        device_memory_limit)
