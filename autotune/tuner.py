"""The in-loop door: ask-and-tell trials for the user's own training loop, stored as `autotune tune` stores them.

    tuner = autotune.Tuner(study="my-run", backend="torch", ceiling=256)
    for trial in tuner.trials(20):
        with trial:                                     # an exception fails this trial only; the loop goes on
            optimizer = trial.optimizer(model.parameters())
            for step, batch in enumerate(loader_with(trial.batch_size)):
                with trial.step(samples=len(batch[0])):  # timed: throughput and step-time percentiles
                    ...
                trial.report(val_loss, step)
                if trial.should_prune():
                    break
            trial.finish(val_loss)
    print(tuner.best)

Trials land in the same storage with the same attributes (``config``, ``measured``, ``history``, ``failure``)
as CLI trials, so ``autotune best``, ``studies`` and ``report`` read them unchanged.
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from typing import Any, Iterator, Mapping

import optuna

from autotune.backends import get_backend
from autotune.errors import AutotuneError, StorageError
from autotune.failures import finished, mark_infeasible
from autotune.procmem import process_memory
from autotune.space import load_space
from autotune.storage import open_storage, owner
from autotune.training import percentile


class TunerTrial:
    """One sampled configuration for the user's loop; a context manager that records how it ended."""

    def __init__(self, tuner: "Tuner", trial: optuna.Trial, config: Mapping[str, Any]) -> None:
        self._tuner = tuner
        self._trial = trial
        self.config: dict[str, Any] = dict(config)
        self.batch_size: int = int(config["batch_size"])
        self.lr: float = float(config["lr"])
        """The learning rate for this batch size (the sampled reference rate, already scaled)."""
        self.optimizer_name: str = str(config["optimizer"])
        self.params: dict[str, Any] = dict(config.get("optimizer_params", {}))
        self.number: int = trial.number
        self._steps: list[float] = []
        self._samples: list[int] = []
        self._history: list[tuple[int, float, float]] = []
        self._started = time.perf_counter()
        self._last: float | None = None
        self.state: str | None = None
        """``complete``, ``pruned`` or ``failed`` once the trial has ended."""

    # --- what the loop uses -------------------------------------------------------------------------------
    def optimizer(self, parameters: Any) -> Any:
        """The backend's optimizer for ``parameters`` from this trial's spec (name, rate, its own parameters)."""
        spec = {"name": self.optimizer_name, "lr": self.lr, **self.params}
        return self._tuner.backend.make_optimizer(parameters, spec)

    @contextlib.contextmanager
    def step(self, *, samples: int) -> Iterator[None]:
        """Time one training step of ``samples`` samples (the device is synchronised before the clock stops)."""
        tick = time.perf_counter()
        yield
        self._tuner.backend.synchronize(self._tuner.device)
        self.record_step(time.perf_counter() - tick, samples=samples)

    def record_step(self, seconds: float, *, samples: int) -> None:
        """A training step timed elsewhere (a framework callback), for throughput and step-time percentiles."""
        self._steps.append(float(seconds))
        self._samples.append(int(samples))

    def callback(self, **options: Any) -> Any:
        """The framework's training callback bound to this trial: it times steps, reports the validation loss
        each epoch and stops training when the pruner says so (Keras ``fit``: ``monitor='val_loss'``;
        MindSpore ``Model.train``: ``evaluate=`` a function returning the validation loss)."""
        return self._tuner.backend.loop_callback(self, **options)

    def report(self, value: float, step: int) -> None:
        """An intermediate validation loss at ``step``, for the pruner and the trial's history."""
        value = float(value)
        self._history.append((int(step), value, time.perf_counter() - self._started))
        self._last = value
        if math.isfinite(value):
            self._trial.report(value, int(step))

    def should_prune(self) -> bool:
        """Whether the pruner judges this trial hopeless after its last report (then leave the loop)."""
        if self._last is not None and not math.isfinite(self._last):
            return True
        return self._tuner.objective == "convergence" and self._trial.should_prune()

    def finish(self, value: float | None = None) -> None:
        """End the trial with its final validation loss (default: the last report). Pruned if the pruner
        asked for it, failed if no finite value was ever given."""
        if self.state is not None:
            return
        value = self._last if value is None else float(value)
        if value is None or not math.isfinite(value):
            self._fail("error", f"no finite validation loss was reported (got {value})")
            return
        if self._pruned_by_pruner():
            self._end_pruned(f"pruned: pruned after step {self._history[-1][0]} (validation loss {value:.4g})")
            return
        measured = self._measured(value)
        self._trial.set_user_attr("measured", measured)
        self._trial.set_user_attr("history", self._history)
        objective = self._tuner.objective
        if objective == "throughput" and measured["throughput"] is None:
            self._fail("error", "no step was timed: wrap each training step in `with trial.step(samples=...)`")
            return
        values: Any = {"convergence": value, "throughput": measured["throughput"],
                       "pareto": (value, measured["throughput"] or 0.0)}[objective]
        self._tuner.study.tell(self._trial, values)
        self.state = "complete"

    # --- the context manager -----------------------------------------------------------------------------
    def __enter__(self) -> "TunerTrial":
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> bool:
        if exc is None:
            self.finish()
            return False
        if isinstance(exc, KeyboardInterrupt):
            self._fail("interrupted", "Ctrl-C")
            return False
        if isinstance(exc, optuna.TrialPruned):
            self._end_pruned(f"pruned: {exc}" if str(exc) else "pruned: by the loop")
            return True
        message = f"{type(exc).__name__}: {exc}".strip().splitlines()[0][:300]
        kind = "oom" if self._tuner.backend.is_oom(exc) else "error"
        if kind == "oom":
            self._tuner.backend.release_memory(self._tuner.device)
        # as in CLI trials: stored pruned with a violated constraint, so that the sampler steers away from it
        mark_infeasible(self._trial, kind, message)
        self._tuner.study.tell(self._trial, state=optuna.trial.TrialState.PRUNED)
        self.state = "pruned" if kind == "oom" else "failed"
        return True  # this trial only: the loop goes on

    # --- records -----------------------------------------------------------------------------------------
    def _pruned_by_pruner(self) -> bool:
        return bool(self._history) and self.should_prune()

    def _measured(self, value: float) -> dict[str, Any]:
        median = percentile(self._steps, 50)
        batch = int(percentile(self._samples, 50)) if self._samples else self.batch_size
        memory = process_memory()
        return {
            "throughput": batch / median if median else None, "val_loss": value,
            "steps_timed": len(self._steps), "step_seconds_p50": median,
            "step_seconds_p95": percentile(self._steps, 95), "step_seconds_p99": percentile(self._steps, 99),
            "train_seconds": sum(self._steps), "samples": sum(self._samples),
            "peak_memory_bytes": self._tuner.backend.peak_memory(self._tuner.device) or memory["resident_peak"],
            "device": self._tuner.device.id, "door": "loop",
        }

    def _end_pruned(self, reason: str) -> None:
        self._trial.set_user_attr("failure", reason)
        if self._history:
            self._trial.set_user_attr("history", self._history)
        self._tuner.study.tell(self._trial, state=optuna.trial.TrialState.PRUNED)
        self.state = "pruned"

    def _fail(self, kind: str, message: str) -> None:
        if self.state is not None:
            return
        self._trial.set_user_attr("failure", f"{kind}: {message}")
        self._tuner.study.tell(self._trial, state=optuna.trial.TrialState.FAIL)
        self.state = "failed"


class Tuner:
    """Ask-and-tell over autotune's search space for any training loop (see the module docstring).

    ``ceiling`` caps the batch size (an int), or ``"fit"`` fits it first from ``task`` (a Task or its
    reference) as ``autotune fit-batch`` does; None uses the search space's own ``batch_size.high`` or choices.
    A stored study of the same name is resumed: its finished trials count towards ``trials(n)``.
    """

    def __init__(self, study: str, *, backend: str, storage: str | None = None, search_space: str | None = None,
                 space_overrides: Mapping[str, Any] | None = None, objective: str = "convergence",
                 ceiling: int | str | None = None, device: str | None = None, task: Any = None,
                 memory_limit: int | None = None, seed: int = 0) -> None:
        from autotune.study import OBJECTIVES, _directions, _pruner, _sampler

        if objective not in OBJECTIVES:
            raise AutotuneError(f"unknown objective {objective!r}: use one of {', '.join(OBJECTIVES)}")
        self.backend = get_backend(backend)
        self.device = self.backend.resolve_device(device)
        self.objective = objective
        self.space = load_space(self.backend.name, self.backend.optimizer_names, search_space, space_overrides)
        store = open_storage(storage)
        try:
            self.study = optuna.create_study(study_name=study, storage=store, directions=_directions(objective),
                                             sampler=_sampler(objective, seed, 20), pruner=_pruner(objective),
                                             load_if_exists=True)
        except ValueError as exc:
            raise StorageError(f"study {study!r} cannot be resumed: {exc}") from None
        stored = self.study.user_attrs.get("objective")
        if stored is not None and stored != objective:
            raise StorageError(f"study {study!r} was created with objective {stored}: use that, or a new study name")
        self.ceiling = self._ceiling(ceiling, task, memory_limit)
        if not self.study.user_attrs:
            for key, value in {"objective": objective, "task": "own training loop", "backend": self.backend.name,
                               "device": self.device.id, "search_space": self.space.to_dict(),
                               "reference_batch": self.space.reference_batch, "seed": seed, "door": "loop",
                               f"ceiling:{self.backend.name}:{self.device.id}:{self.device.name}":
                                   {"batch_size": self.ceiling, "limited_by": "given"}}.items():
                self.study.set_user_attr(key, value)
        else:
            ranges = self.study.user_attrs.get("search_space", {}).get("lr_ranges", {})
            self.space.lr_ranges = {k: tuple(v) for k, v in ranges.items()}

    def _ceiling(self, ceiling: int | str | None, task: Any, memory_limit: int | None) -> int:
        if ceiling == "fit":
            if task is None:
                raise AutotuneError("ceiling='fit' needs task=: the Task (or path/file.py:attr) to fit the batch for")
            from autotune.memory import fit_batch_size

            return fit_batch_size(task, device=self.device.id, memory_limit=memory_limit,
                                  max_batch=self.space.batch_high).batch_size
        if ceiling is not None:
            if isinstance(ceiling, bool) or not isinstance(ceiling, int) or ceiling < 1:
                raise AutotuneError(f"ceiling must be a positive batch size or 'fit', got {ceiling!r}")
            return ceiling
        if self.space.batch_high or self.space.batch_choices:
            return int(self.space.batch_high or max(self.space.batch_choices))
        raise AutotuneError("no batch-size ceiling: give Tuner(ceiling=N), ceiling='fit' with task=, or "
                            "batch_size.high in the search space")

    def finished(self) -> int:
        """Complete and pruned trials in the study, not failed ones (those of earlier runs included)."""
        return len(finished(self.study.get_trials(deepcopy=False)))

    def trials(self, n: int) -> Iterator[TunerTrial]:
        """Yield trials until ``n`` have finished (complete or pruned); failed ones are retried, at most
        ``3 n + 2`` attempts in all, so that a loop that always raises ends."""
        if not isinstance(n, int) or n < 1:
            raise AutotuneError(f"trials(n) needs a positive number of trials, got {n!r}")
        for _attempt in range(3 * n + 2):
            if self.finished() >= n:
                return
            with warnings.catch_warnings():  # Optuna's heartbeat runs only under optimize(): nothing to warn of
                warnings.filterwarnings("ignore", message="Heartbeat of storage")
                trial = self.study.ask()
            trial.set_user_attr("owner", owner())
            config = self.space.suggest(trial, self.ceiling)
            trial.set_user_attr("config", config)
            handle = TunerTrial(self, trial, config)
            try:
                yield handle
            finally:
                if handle.state is None:  # the loop left the trial open (a break, or a generator closed)
                    handle.finish()

    @property
    def best(self) -> Any:
        """The chosen configuration, the same `TuneResult` as `autotune.tune()` returns."""
        from autotune.study import best_trial, result_from_trial

        trial = best_trial(self.study, self.objective)
        if trial is None:
            raise StorageError(f"study {self.study.study_name!r} has no finished trial yet")
        return result_from_trial(self.study, trial)
