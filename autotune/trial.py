"""Work that runs inside a worker (or in-process): one tuning trial, and the learning-rate range test.

Both rebuild the task from its handle, train a fresh seeded model, and turn framework failures into
`TrialError` kinds the study understands (``oom``, ``diverged``, ``pruned``).
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator, Mapping

from autotune.backends import get_backend
from autotune.backends.base import TrainingSession
from autotune.devices import nvml_energy_reader
from autotune.errors import TrialError
from autotune.procmem import process_memory, reset_resident_peak
from autotune.task import resolve_task
from autotune.training import BatchSampler, Diverged, Pruned, lr_range_test, train_for_budget


def _short(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".strip().splitlines()[0][:300]


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
            raise TrialError("oom", _short(exc)) from None
        raise
    finally:
        if session is not None:
            session.close()
        backend.release_memory(device)


def run_trial(task: Any, config: Mapping[str, Any], device: str | None, *, seconds: float | None = None,
              steps: int | None = None, reports: int = 8, seed: int = 0, channel: Any = None) -> dict[str, Any]:
    """Train ``config`` (batch size, optimizer spec) for the budget and return its measurements.

    With a ``channel``, each intermediate validation loss is sent to the parent, which answers whether to prune.
    """
    task = resolve_task(task)
    backend = get_backend(task.backend)
    target = backend.resolve_device(device)
    data = task.load_data()
    optimizer = {"name": config["optimizer"], "lr": config["lr"], **config.get("optimizer_params", {})}
    reset_resident_peak()

    def report(index: int, value: float) -> bool:
        return bool(channel.ask(("report", index, value))) if channel is not None else False

    build = lambda: backend.session(task, data, target, batch_size=int(config["batch_size"]),  # noqa: E731
                                    optimizer=optimizer, seed=seed)
    try:
        with fresh_session(backend, target, build) as session:
            session.reset_peak_memory()
            n_train, _ = backend.data_size(data)
            sampler = BatchSampler(n_train, int(config["batch_size"]), seed)
            figures = train_for_budget(session, sampler, seconds=seconds, steps=steps, reports=reports,
                                       report=report, energy=nvml_energy_reader(target))
            device_peak = session.peak_memory()
    except Diverged as exc:
        raise TrialError("diverged", str(exc)) from None
    except Pruned as exc:
        raise TrialError("pruned", str(exc)) from None
    memory = process_memory()
    figures["peak_memory_bytes"] = device_peak if device_peak is not None else memory["resident_peak"]
    figures["device"] = target.id
    return figures


def run_range_test(task: Any, optimizer: Mapping[str, Any], batch_size: int, device: str | None, low: float,
                   high: float, steps: int = 60, seed: int = 0) -> dict[str, Any]:
    """The learning-rate range test for one optimizer at ``batch_size`` (see `autotune.training.lr_range_test`)."""
    task = resolve_task(task)
    backend = get_backend(task.backend)
    target = backend.resolve_device(device)
    data = task.load_data()
    build = lambda: backend.session(task, data, target, batch_size=batch_size,  # noqa: E731
                                    optimizer={**optimizer, "lr": low}, seed=seed)
    with fresh_session(backend, target, build) as session:
        n_train, _ = backend.data_size(data)
        return lr_range_test(session, BatchSampler(n_train, batch_size, seed), low, high, steps=steps)


def run_range_tests(task: Any, optimizers: list[str], batch_size: int, device: str | None, low: float, high: float,
                    steps: int = 60, seed: int = 0) -> dict[str, Any]:
    """`run_range_test` for several optimizers in one worker (one start-up instead of one per optimizer).

    An optimizer whose test fails (out of memory, an error) maps to None; the others keep their results.
    """
    results: dict[str, Any] = {}
    for name in optimizers:
        try:
            results[name] = run_range_test(task, {"name": name}, batch_size, device, low, high, steps=steps, seed=seed)
        except TrialError:
            results[name] = None
    return results
