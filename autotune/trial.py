"""Work that runs inside a worker (or in-process): one tuning trial, and the learning-rate range test.

Both rebuild the task from its handle, train a fresh seeded model, and turn framework failures into
`TrialError` kinds the study understands (``oom``, ``diverged``, ``pruned``).
"""

from __future__ import annotations

import contextlib
import time
from typing import Any, Callable, Iterator, Mapping

import numpy as np

from autotune.backends import get_backend
from autotune.backends.base import TrainingSession
from autotune.devices import nvml_energy_reader
from autotune.errors import AutotuneError, TaskError, TrialError, first_line
from autotune.procmem import process_memory, reset_resident_peak
from autotune.runner import in_worker
from autotune.scoped import collector_skips_the_callers_heap
from autotune.task import resolve_task
from autotune.training import (
    RANGE_TEST_MIN_STEPS,
    BatchSampler,
    Diverged,
    Pruned,
    TooSlow,
    accumulating,
    configured_session,
    lr_range_test,
    train_for_budget,
)
from autotune.units import format_size


@contextlib.contextmanager
def fresh_session(backend: Any, device: Any, build: Callable[[], TrainingSession]) -> Iterator[TrainingSession]:
    """A session built by ``build``, closed and its memory released afterwards; the framework's OOM becomes
    ``TrialError('oom')``, any other failure passes through."""
    session = None
    try:
        session = build()
        yield session
    except Exception as exc:
        if backend.is_oom(exc):
            raise TrialError("oom", first_line(exc)[:300]) from None
        raise
    finally:
        if session is not None:
            session.close()
        backend.release_memory(device)


_LOADED: dict[Any, tuple[Any, Any]] = {}
"""The last task and data this worker loaded, by handle: a reused worker's next trial skips reading the data."""


def loaded_task(handle: Any) -> tuple[Any, Any]:
    """``(task, data)`` for a task handle, loading the data once per worker (trials only read it); in the
    caller's own process (``isolation='none'``) nothing is kept."""
    if not (in_worker() and isinstance(handle, str)):
        task = resolve_task(handle)
        return task, task.load_data()
    if handle not in _LOADED:
        _LOADED.clear()
        task = resolve_task(handle)
        _LOADED[handle] = (task, task.load_data())
    return _LOADED[handle]


@collector_skips_the_callers_heap
def run_trial(task: Any, config: Mapping[str, Any], device: str | None, *, seconds: float | None = None,
              steps: int | None = None, reports: int = 8, seed: int = 0, channel: Any = None,
              pruner_reports: tuple[int, ...] = ()) -> dict[str, Any]:
    """Train ``config`` (batch size, optimizer spec) for the budget and return its measurements.

    With a ``channel``, each intermediate validation loss is sent to the parent, which answers whether to prune.
    """
    task, data = loaded_task(task)
    backend = get_backend(task.backend)
    target = backend.resolve_device(device)
    optimizer = {"name": config["optimizer"], "lr": config["lr"], **config.get("optimizer_params", {})}
    reset_resident_peak()

    def report(index: int, value: float, train_seconds: float) -> bool:
        return bool(channel.ask(("report", index, value, train_seconds))) if channel is not None else False

    build = lambda: accumulating(configured_session(  # noqa: E731
        backend, task, data, target, config, optimizer=optimizer, seed=seed), int(config.get("accumulation_steps", 1)))
    try:
        with fresh_session(backend, target, build) as session:
            session.reset_peak_memory()
            n_train, n_val = backend.data_size(data)
            sampler = BatchSampler(n_train, int(config["batch_size"]), seed)
            figures = train_for_budget(session, sampler, seconds=seconds, steps=steps, reports=reports,
                                       report=report, energy=nvml_energy_reader(target), n_val=n_val,
                                       pruner_reports=pruner_reports)
            device_peak = session.peak_memory()
    except Diverged as exc:
        raise TrialError("diverged", str(exc)) from None
    except (Pruned, TooSlow) as exc:
        raise TrialError("pruned", str(exc)) from None
    memory = process_memory()
    figures["peak_memory_bytes"] = device_peak if device_peak is not None else memory["resident_peak"]
    figures["device"] = target.id
    return figures


def run_range_test(task: Any, optimizer: Mapping[str, Any], batch_size: int, device: str | None, low: float,
                   high: float, steps: int = 60, seed: int = 0, seconds: float | None = None) -> dict[str, Any]:
    """The learning-rate range test for one optimizer at ``batch_size`` (see `autotune.training.lr_range_test`);
    ``seconds`` bounds its sweep."""
    task, data = loaded_task(task)
    backend = get_backend(task.backend)
    target = backend.resolve_device(device)
    build = lambda: backend.session(task, data, target, batch_size=batch_size,  # noqa: E731
                                    optimizer={**optimizer, "lr": low}, seed=seed)
    with fresh_session(backend, target, build) as session:
        n_train, _ = backend.data_size(data)
        return lr_range_test(session, BatchSampler(n_train, batch_size, seed), low, high, steps=steps,
                             seconds=seconds)


RANGE_TEST_ORDER = ("adam", "adamw", "momentum", "sgd", "nesterov", "rmsprop", "nadam", "radam", "adamax",
                    "amsgrad", "adagrad", "adafactor", "lion", "lamb", "adadelta", "ftrl", "asgd")
"""Which optimizers a short range-test budget serves first: the ones most trials are likely to use."""


def run_range_tests(task: Any, optimizers: list[str], batch_size: int, device: str | None, low: float, high: float,
                    steps: int = 60, seed: int = 0, seconds: float | None = None,
                    channel: Any = None) -> dict[str, Any]:
    """`run_range_test` for several optimizers in one worker (one start-up instead of one per optimizer).

    ``seconds`` bounds them all (model builds included): each optimizer gets an equal share of what is left,
    the common ones first, so a short budget tests a few well instead of every one badly. An optimizer whose
    test fails (out of memory, an error) maps to None; one the budget did not reach has ``skipped`` set.
    With a ``channel``, each optimizer's outcome is also sent as it is known, so that a run stopped at its
    budget keeps the tests it finished.
    """
    started = time.perf_counter()
    ordered = sorted(optimizers, key=lambda n: (RANGE_TEST_ORDER.index(n) if n in RANGE_TEST_ORDER else 99, n))
    results: dict[str, Any] = {}
    one_test = None  # seconds a test of RANGE_TEST_MIN_STEPS steps costs, model build included, once measured
    for position, name in enumerate(ordered):
        share = None
        if seconds is not None:
            left = seconds - (time.perf_counter() - started)
            # until one test is measured, assume the budget serves at most three optimizers well
            affordable = min(3, len(ordered) - position) if one_test is None else int(left // one_test)
            if left <= 0 or affordable < 1:
                results[name] = {"best_lr": None, "skipped": "the range-test budget was spent"}
                continue
            share = left / min(len(ordered) - position, affordable)
        tick = time.perf_counter()
        try:
            results[name] = run_range_test(task, {"name": name}, batch_size, device, low, high, steps=steps,
                                           seed=seed, seconds=share)
        except TrialError:
            results[name] = None
            continue
        finally:
            if channel is not None and name in results:
                channel.ask(("range_test", name, results[name]))
        step = results[name].get("step_seconds")
        if step and one_test is None:
            swept = max(len(results[name]["rates"]), 1)
            build = max(0.0, time.perf_counter() - tick - step * swept)
            one_test = build + step * RANGE_TEST_MIN_STEPS
    return results


CONTRACT_BATCH = 2
"""Samples in the contract check's batch: enough for batch-wise layers, too few to cost anything."""


def check_contract(task: Any, device: str | None, *, seed: int = 0) -> int | None:
    """Build the task's model and run it and its loss on `CONTRACT_BATCH` samples (`TrainingSession.check_contract`),
    then check the labels against its outputs: a model that does not fit its data is a one-line `TaskError`
    here, before any study or fit. Returns the class count found, if any."""
    from autotune.checks import labels_against

    task, data = loaded_task(task)
    backend = get_backend(task.backend)
    target = backend.resolve_device(device)
    n_train, _ = backend.data_size(data)
    build = lambda: backend.session(task, data, target, batch_size=CONTRACT_BATCH,  # noqa: E731
                                    optimizer=backend.validate_optimizer({"name": "sgd", "lr": 1e-3}), seed=seed)
    with fresh_session(backend, target, build) as session:
        try:
            classes = session.check_contract(np.arange(min(CONTRACT_BATCH, n_train)))
        except AutotuneError:
            raise
        except Exception as exc:
            if backend.is_oom(exc):
                raise
            gist = backend.error_gist(exc)
            if backend.is_type_error(gist):
                raise TaskError(f"the model or its loss refuses the data's types on {CONTRACT_BATCH} training "
                                f"samples ({gist}){_dtypes(data)}: cast the data to the types they take (int64 "
                                "class indices for a classification loss, float32 targets for a regression one), or "
                                "change the loss") from None
            raise TaskError(f"the model fails on {CONTRACT_BATCH} training samples ({gist}): "
                            f"the model and the data do not fit together{_shapes(data)}; fix the model's input or "
                            "output layer, or the data") from None
    labels_against(data, classes, task.loss)
    return classes


def raise_for_contract(outcome: Any, *, memory_limit: int | None = None, share: int = 1,
                       limit_given: bool = True) -> None:
    """`TaskError` for a `check_contract` run that did not pass (``outcome``: the worker's `Outcome`): its
    one-line reason, or, where the worker's cap (``memory_limit``: its ``share`` of ``--memory-limit``, or of the
    available RAM when no limit was ``limit_given``) left no room, the cap and its fix. Under a cap a crash or an
    allocation error is memory too, as the fit judges it (`autotune.fitting.executor.judge`)."""
    if outcome.ok:
        return
    if outcome.kind == "fatal":
        raise TaskError(outcome.message)
    why = outcome.message.strip().splitlines()[-1][:300]
    if memory_limit and (outcome.kind in ("oom", "crash") or "alloc" in why.lower()):
        each = f"each of the {share} workers' share, " if share > 1 else ""
        fix = "raise --memory-limit" if limit_given else "run fewer --devices workers, or free memory"
        raise TaskError(f"the model cannot run on two training samples within the memory cap of "
                        f"{format_size(memory_limit)} ({each}framework included): {why}; {fix}")
    raise TaskError(f"the model could not be run on two training samples ({outcome.kind}: {why}): check the "
                    "task's model and data")


def _dtypes(data: Any) -> str:
    from autotune.task import ArrayData

    if not isinstance(data, ArrayData) or not hasattr(data.x_train, "dtype") or not hasattr(data.y_train, "dtype"):
        return ""
    return f" (training inputs {data.x_train.dtype}, targets {data.y_train.dtype})"


def _shapes(data: Any) -> str:
    from autotune.task import ArrayData

    if not isinstance(data, ArrayData) or not hasattr(data.x_train, "shape"):
        return ""
    shape = ", ".join(str(d) for d in data.x_train.shape[1:])
    return f" (each training input has shape ({shape}))"
