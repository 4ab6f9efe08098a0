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

``autotune tune`` runs its trials through this same class (`autotune.study`): a trial is sampled, recorded,
pruned and failed in one place, and both doors' trials have the same record (`autotune.records`), so
``autotune best``, ``studies`` and ``report`` read them alike.
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from typing import Any, Callable, Iterator, Mapping

import optuna

from autotune.backends import get_backend
from autotune.errors import AutotuneError, StorageError
from autotune.failures import SURPLUS, finished, mark_infeasible, shortfall
from autotune.guard import storage_fault
from autotune.heartbeat import Heartbeat, fail_stale
from autotune.procmem import process_memory
from autotune.records import store_config, store_measured
from autotune.scoped import quiet_optuna
from autotune.space import SearchSpace, load_space
from autotune.storage import UnownedWatch, abandoned, fail_orphaned_trials, open_storage, owner, unowned_grace
from autotune.study_open import (
    OWN_LOOP,
    ceiling_key,
    describe_new_study,
    open_study,
    resume_space,
    study_hardware,
    study_versions,
)
from autotune.training import percentile

WAIT_SECONDS = 1.0
"""How often a process that found the study's ``--trials`` all finished or running looks again."""


def _running(trials: list[optuna.trial.FrozenTrial], *, watch: UnownedWatch) -> list[optuna.trial.FrozenTrial]:
    """RUNNING trials that may still finish: all but the `abandoned` ones (about to be failed)."""
    running = [t for t in trials if t.state == optuna.trial.TrialState.RUNNING]
    return [t for t in running if abandoned(t, watch=watch) is None]


OWNER_WRITE_TRIES = 3
"""New trials asked for while other processes keep failing each one before its owner is written (each saw it
owner-less past the grace): a bounded retry, since losing that race three times means the storage is too slow
to write an owner within the grace, which asking again cannot mend."""


def _fail_quietly(study: optuna.Study, trial: optuna.Trial) -> None:
    """Fail ``trial`` if the storage still takes writes; a storage that failed leaves it to `abandoned`."""
    try:
        with quiet_optuna():
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
    except Exception:
        pass


class TunerTrial:
    """One sampled configuration; a context manager that records how the user's loop ended it.

    The user's loop calls `optimizer`, `step`, `report`, `should_prune` and `finish`; autotune's own loop
    records a worker's outcome with `complete`, `prune` and `fail`. Either way the trial is told exactly once.
    """

    def __init__(self, tuner: "Tuner", trial: optuna.Trial, config: Mapping[str, Any], *,
                 heartbeat: Heartbeat) -> None:
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
        self._heartbeat = heartbeat  # started by the Tuner as the trial was created
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

    def set_user_attr(self, key: str, value: Any) -> None:
        """An extra attribute stored with this trial (JSON-serialisable), for the loop's own bookkeeping."""
        self._trial.set_user_attr(key, value)

    def callback(self, **options: Any) -> Any:
        """The framework's training callback bound to this trial: it times steps, reports the validation loss
        each epoch and stops training when the pruner says so (Keras ``fit``: ``monitor='val_loss'``;
        MindSpore ``Model.train``: ``evaluate=`` a function returning the validation loss)."""
        return self._tuner.backend.loop_callback(self, **options)

    def report(self, value: float, step: int, *, keep: bool = True) -> None:
        """An intermediate validation loss at ``step``, for the pruner (and, with ``keep``, the history)."""
        value = float(value)
        if keep:
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
        if value is not None and not math.isfinite(value) and self._history:
            self.prune(f"diverged: the validation loss became {value} after step {self._history[-1][0]}")
            return  # as in CLI trials: a diverged run is pruned, so the sampler learns the region is bad
        if value is None or not math.isfinite(value):
            self.fail("error", f"no finite validation loss was reported (got {value})")
            return
        if self._history and self.should_prune():
            self.prune(f"pruned: pruned after step {self._history[-1][0]} (validation loss {value:.4g})")
            return
        measured = self._measured(value)
        if self._tuner.objective != "convergence" and measured["throughput"] is None:
            self.fail("error", "no step was timed: wrap each training step in `with trial.step(samples=...)`")
            return
        self.complete(measured, self._history)

    # --- how a trial ends (both doors) -------------------------------------------------------------------
    def complete(self, measured: Mapping[str, Any], history: list[Any] | None = None) -> None:
        """A finished trial: its figures stored, its objective value told."""
        store_measured(self._trial, measured, history)
        loss, speed = measured.get("val_loss"), measured.get("throughput")
        values: Any = {"convergence": loss, "throughput": speed, "pareto": (loss, speed or 0.0)}[self._tuner.objective]
        self._tell(values=values, state="complete")

    def prune(self, reason: str, *, history: list[Any] | None = None) -> None:
        """A trial the pruner stopped, or that diverged: it counts as finished, with what it reached."""
        self._trial.set_user_attr("failure", reason)
        kept = history if history is not None else self._history
        if kept:
            self._trial.set_user_attr("history", [list(entry) for entry in kept])
        self._tell(state="pruned")

    def infeasible(self, kind: str, message: str) -> None:
        """A configuration that cannot run here (OOM, crash, hang, error): stored pruned with a violated
        constraint, so that the sampler steers away from it (`autotune.failures`)."""
        mark_infeasible(self._trial, kind, message)
        self._tell(state="pruned" if kind == "oom" else "failed", stored=optuna.trial.TrialState.PRUNED)

    def fail(self, kind: str, message: str) -> None:
        """A trial that failed for a reason that is not its configuration's (an interruption, no result)."""
        self._trial.set_user_attr("failure", f"{kind}: {message}")
        self._tell(state="failed", stored=optuna.trial.TrialState.FAIL)

    def _tell(self, *, state: str, values: Any = None, stored: optuna.trial.TrialState | None = None) -> None:
        if self.state is not None:
            return
        self._heartbeat.stop()
        with quiet_optuna():  # autotune reports the trial's end; Optuna's INFO line would repeat it
            if values is not None:
                self._tuner.study.tell(self._trial, values)
            else:
                self._tuner.study.tell(self._trial, state=stored or optuna.trial.TrialState.PRUNED)
        self.state = state

    # --- the context manager -----------------------------------------------------------------------------
    def __enter__(self) -> "TunerTrial":
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> bool:
        if exc is None:
            self.finish()
            return False
        if isinstance(exc, KeyboardInterrupt):
            self.fail("interrupted", getattr(exc, "reason", None) or "Ctrl-C")
            return False
        if isinstance(exc, optuna.TrialPruned):
            self.prune(f"pruned: {exc}" if str(exc) else "pruned: by the loop")
            return True
        message = f"{type(exc).__name__}: {exc}".strip().splitlines()[0][:300]
        kind = "oom" if self._tuner.backend.is_oom(exc) else "error"
        if kind == "oom":
            self._tuner.backend.release_memory(self._tuner.device)
        self.infeasible(kind, message)
        # the loop goes on, so the exception is not raised: said here, else a loop that always raises is silent
        warnings.warn(f"autotune: trial {self.number} failed ({'out of memory: ' if kind == 'oom' else ''}{message}); "
                      "recorded, and the loop goes on with the next trial", RuntimeWarning, stacklevel=2)
        return True

    def _measured(self, value: float) -> dict[str, Any]:
        median = percentile(self._steps, 50)
        batch = int(sorted(self._samples)[len(self._samples) // 2]) if self._samples else self.batch_size
        memory = process_memory()
        return {
            "throughput": batch / median if median else None, "val_loss": value,
            "steps_timed": len(self._steps), "step_seconds_p50": median,
            "step_seconds_p95": percentile(self._steps, 95), "step_seconds_p99": percentile(self._steps, 99),
            "train_seconds": sum(self._steps), "samples": sum(self._samples),
            "peak_memory_bytes": self._tuner.backend.peak_memory(self._tuner.device) or memory["resident_peak"],
            "device": self._tuner.device.id, "door": "loop",
        }


class Tuner:
    """Ask-and-tell over autotune's search space for any training loop (see the module docstring).

    ``ceiling`` caps the batch size (an int), or ``"fit"`` fits it first from ``task`` (a Task or its
    reference) as ``autotune fit-batch`` does, once per precision the space searches; None uses the search
    space's own ``batch_size.high`` or choices.
    A stored study of the same name is resumed: its finished trials count towards ``trials(n)``.
    """

    study: optuna.Study
    store: Any
    backend: Any
    device: Any
    space: SearchSpace
    objective: str
    ceiling: int | dict[str, int]
    """The batch-size cap, or one per training precision the space searches."""

    def __init__(self, study: str, *, backend: str, storage: str | None = None, search_space: str | None = None,
                 space_overrides: Mapping[str, Any] | None = None, objective: str = "convergence",
                 ceiling: int | str | None = None, device: str | None = None, task: Any = None,
                 memory_limit: int | None = None, seed: int = 0) -> None:
        chosen = get_backend(backend)
        target = chosen.resolve_device(device)
        space = load_space(chosen.name, chosen.optimizer_names, search_space, space_overrides)
        store = open_storage(storage)
        # the ceiling (checked, or fitted) before the study exists: bad input leaves no empty study behind
        cap = self._ceiling(ceiling, task, memory_limit, chosen, target, space)
        opened, _ = open_study(study, store=store, objective=objective, seed=seed)
        self._attach(opened, store=store, backend=chosen, device=target, space=space, objective=objective,
                     ceiling=cap)
        self._storage_url = storage
        ceilings = self.ceiling if isinstance(self.ceiling, dict) else {"fp32": self.ceiling}
        new = describe_new_study(self.study, {
            "objective": objective, "task": OWN_LOOP, "backend": chosen.name, "device": target.id,
            "search_space": space.to_dict(), "reference_batch": space.reference_batch, "seed": seed, "door": "loop",
            "versions": study_versions(chosen.name), "hardware": study_hardware(target),
            **{ceiling_key(chosen.name, target, precision): {
                "batch_size": size, "precision": precision,
                "limited_by": "given" if ceiling != "fit" else "memory"} for precision, size in ceilings.items()}},
            store=store)
        if not new:
            resume_space(self.study, self.space)

    @classmethod
    def attached(cls, study: optuna.Study, *, store: Any, backend: Any, device: Any, space: SearchSpace,
                 objective: str, ceiling: int | dict[str, int]) -> "Tuner":
        """A Tuner over a study autotune's own loop has already opened and prepared (`autotune.study.tune`)."""
        tuner = cls.__new__(cls)
        tuner._attach(study, store=store, backend=backend, device=device, space=space, objective=objective,
                      ceiling=ceiling)
        tuner._says_shortfall = False  # that loop says its own, with its --timeout
        return tuner

    def _attach(self, study: optuna.Study, *, store: Any, backend: Any, device: Any, space: SearchSpace,
                objective: str, ceiling: int | dict[str, int]) -> None:
        self.study, self.store, self.backend, self.device = study, store, backend, device
        self.space, self.objective, self.ceiling = space, objective, ceiling
        self._study_id: int | None = None
        self._storage_url = None  # for the commands a message names (`autotune report … --storage`)
        self._says_shortfall = True  # the own loop's attempts ran out: a warning, as nothing else says it
        self._unowned = UnownedWatch(unowned_grace(store))

    @staticmethod
    def _ceiling(ceiling: int | str | None, task: Any, memory_limit: int | None, backend: Any, device: Any,
                 space: SearchSpace) -> int | dict[str, int]:
        if ceiling == "fit":
            if task is None:
                raise AutotuneError("ceiling='fit' needs task=: the Task (or path/file.py:attr) to fit the batch for")
            from autotune.memory import fit_batch_size

            fitted = {precision: fit_batch_size(task, device=device.id, memory_limit=memory_limit,
                                                max_batch=space.batch_high, precision=precision).batch_size
                      for precision in space.precisions}  # one ceiling per precision the space searches
            return fitted if len(fitted) > 1 else fitted[space.precisions[0]]
        if ceiling is not None:
            if isinstance(ceiling, bool) or not isinstance(ceiling, int) or ceiling < 1:
                raise AutotuneError(f"ceiling must be a positive batch size or 'fit', got {ceiling!r}")
            return ceiling
        if space.batch_high or space.batch_choices:
            return int(space.batch_high or max(space.batch_choices or [0]))
        raise AutotuneError("no batch-size ceiling: give Tuner(ceiling=N), ceiling='fit' with task=, or "
                            "batch_size.high in the search space")

    def study_id(self) -> int | None:
        """The study's id in its storage, looked up once (heartbeats need it; None without a heartbeat)."""
        if self._study_id is None and getattr(self.store, "get_heartbeat_interval", None):
            self._study_id = self.store.get_study_id_from_name(self.study.study_name)
        return self._study_id

    def finished(self) -> int:
        """Complete and pruned trials in the study, not failed ones (those of earlier runs included)."""
        return len(finished(self.study.get_trials(deepcopy=False)))

    def ask(self) -> TunerTrial:
        """One new trial: its owner recorded first (a kill from then on leaves a trial known to be orphaned),
        then its configuration sampled under the ceiling; its heartbeat runs until it is told."""
        return self._configured(*self._asked())

    def _asked(self, *, stale_possible: bool = True) -> tuple[optuna.Trial, Heartbeat]:
        if stale_possible:  # only a RUNNING trial can have a stopped heartbeat
            fail_stale(self.study)
        tries = 0
        while True:
            tries += 1
            with warnings.catch_warnings(), quiet_optuna():  # the heartbeat is ours (`autotune.heartbeat`)
                warnings.filterwarnings("ignore", message="Heartbeat of storage")
                trial = self.study.ask()
            # beating at once: a trial that never beat is never found stale, so a kill from here on must find one
            heartbeat = Heartbeat(self.store, self.study, trial.number, study_id=self.study_id())
            try:
                trial.set_user_attr("owner", owner())
                return trial, heartbeat
            except optuna.exceptions.UpdateFinishedTrialError:
                heartbeat.stop()  # another process judged it abandoned before its owner was written: ask again
                if tries >= OWNER_WRITE_TRIES:
                    raise
            except BaseException:
                heartbeat.stop()
                _fail_quietly(self.study, trial)  # else it holds a place until `abandoned` judges it dead
                raise

    def _configured(self, trial: optuna.Trial, heartbeat: Heartbeat) -> TunerTrial:
        try:
            config = self.space.suggest(trial, self.ceiling)
            store_config(trial, config)
        except BaseException:
            heartbeat.stop()
            raise
        return TunerTrial(self, trial, config, heartbeat=heartbeat)

    def trials(self, n: int, *, stop: Callable[[], bool] | None = None) -> Iterator[TunerTrial]:
        """Yield trials until the study has ``n`` finished (complete or pruned) or ``stop()`` says so; failed
        ones are retried, at most ``3 n + 2`` attempts in all, so that a loop that always raises ends.

        ``n`` counts the whole study's trials, every process's: no trial starts while finished and running ones
        already make ``n``; while other processes' running trials might still fail, this one waits and looks
        again (`WAIT_SECONDS`), so that the study ends with exactly ``n`` finished whenever it can."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise AutotuneError(f"trials(n) needs a positive number of trials, got {n!r}")
        attempts = allowed = self.attempts(max(1, n - self.finished()))
        while True:
            if attempts <= 0:
                short = self._says_shortfall and shortfall(self.study, n, timed_out=False, attempts=allowed,
                                                           storage=self._storage_url)
                if short:
                    warnings.warn(f"autotune: {short}", RuntimeWarning, stacklevel=2)
                return
            seen = self._room(n, stop)
            if seen is None:
                return
            handle = self._claimed(n, seen)
            if handle is None:  # another process's trial took the last place first: wait for its outcome
                continue
            attempts -= 1
            try:
                yield handle
            finally:
                if handle.state is None:  # the loop left the trial open (a break, or a generator closed)
                    try:
                        handle.finish()
                    except Exception as exc:
                        # a storage that failed cannot take the trial's end: it stays RUNNING, and the next
                        # run fails it (the fault itself reaches the caller from the loop's own write)
                        if not isinstance(exc, StorageError) and storage_fault(exc) is None:
                            raise

    def _room(self, n: int, stop: Callable[[], bool] | None) -> list[optuna.trial.FrozenTrial] | None:
        """The study's trials when a trial may start; None once ``n`` have finished or ``stop()`` says so; while
        finished and running trials make ``n``, wait until one ends either way (another host's, if its heartbeat
        stops)."""
        while True:
            trials = self.study.get_trials(deepcopy=False)
            done = len(finished(trials))
            if done >= n or (stop is not None and stop()):
                return None
            running = [t for t in trials if t.state == optuna.trial.TrialState.RUNNING]
            alive = _running(running, watch=self._unowned)
            if len(alive) < len(running):  # an abandoned trial is failed with its reason, not left RUNNING
                fail_orphaned_trials(self.study, storage=self.store, watch=self._unowned)
            if done + len(alive) < n:
                return self.study.get_trials(deepcopy=False) if len(alive) < len(running) else trials
            fail_stale(self.study)  # a lost machine's trial must not hold its place (a dead local one holds none)
            time.sleep(WAIT_SECONDS)

    def _claimed(self, n: int, seen: list[optuna.trial.FrozenTrial]) -> TunerTrial | None:
        """A new trial if it is among the first ``n`` not failed, by number (the storage numbers trials in the
        order they are created, so every process judges alike); else None, the trial stored failed unrun.

        ``seen``: the trials read just before; when no trial was created since, they are the ones ahead (their
        states can only have moved on from running), and the study is not read again."""
        trial, heartbeat = self._asked(stale_possible=any(t.state == optuna.trial.TrialState.RUNNING for t in seen))
        last_seen = max((t.number for t in seen), default=-1)
        ahead = seen if trial.number == last_seen + 1 else [
            t for t in self.study.get_trials(deepcopy=False) if t.number < trial.number]
        if len(finished(ahead)) + len(_running(ahead, watch=self._unowned)) < n:
            return self._configured(trial, heartbeat)
        heartbeat.stop()
        trial.set_user_attr("failure", f"{SURPLUS}: the study already had {n} trials finished or running when this "
                                       "one was created; it did not run")
        with quiet_optuna():
            self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
        return None

    @staticmethod
    def attempts(n: int) -> int:
        """Trials started at most to finish ``n``: failed ones do not count, and a task that always fails
        must still end."""
        return 3 * n + 2

    @property
    def best(self) -> Any:
        """The chosen configuration, the same `TuneResult` as `autotune.tune()` returns; `ModelDoesNotLearn`
        (its ``result`` the best-valued trial) where no trial learnt, as `tune` and `load_best` say it."""
        from autotune.study import chosen_result

        return chosen_result(self.study, self.objective)
