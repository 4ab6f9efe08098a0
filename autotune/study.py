"""Optuna orchestration: fit the ceiling, narrow learning rates, run trials, keep every one of them.

`tune` is the library call behind ``autotune tune``: it opens (or resumes) a study, records where its numbers
come from (hardware, versions, task, search space, ceiling), runs trials in workers or in-process, and returns
the best configuration with the study. Failures never stop the study: an OOM or a diverging loss prunes the
trial (the sampler learns the region is bad), a crash, hang or error fails it with its reason.
"""

from __future__ import annotations

import contextlib
import dataclasses
import platform
import signal
import statistics
import threading
import time
from importlib import metadata
from typing import Any, Callable, Iterator, Mapping

import optuna

from autotune.backends import get_backend
from autotune.budget import Phases, range_test_budget
from autotune.checks import check_task_data, seconds
from autotune.errors import AutotuneError, Interrupted, StorageError, TrialError
from autotune.failures import INFEASIBLE_KINDS, finished, mark_infeasible, shortfall, shown_state
from autotune.guard import guarded, note_new_study
from autotune.memory import DEFAULT_MARGIN, fit_batch_size
from autotune.optimizers import SGD_FAMILY
from autotune.resume import check_resumable
from autotune.runner import Worker, run_here
from autotune.sampler import TrialSeededTPESampler
from autotune.shared import release, wait_for_shared
from autotune.space import SearchSpace, load_space
from autotune.storage import fail_orphaned_trials, open_storage, owner, redact
from autotune.task import Task, load_task, task_handle
from autotune.training import RANGE_TEST_MIN_STEPS
from autotune.trial import run_range_tests, run_trial
from autotune.verdict import describe_busy, not_learning

OBJECTIVES = ("convergence", "throughput", "pareto")
REPORTS = 8
PRUNER_REPORTS = (2, 6)
"""The reports Hyperband (min resource 2, reduction factor 3, max 8) compares trials at."""
PRUNED_KINDS = ("oom", "diverged", "pruned")

Progress = Callable[[dict[str, Any]], None]


@dataclasses.dataclass
class TuneResult:
    """The chosen configuration (DESIGN.md's output contract) and the Optuna study behind it."""

    batch_size: int
    optimizer: str
    lr: float
    optimizer_params: dict[str, Any]
    throughput: float | None
    val_loss: float | None
    peak_memory_bytes: int | None
    device: str
    backend: str
    lr_scaling: str
    lr_reference: float
    reference_batch: int
    step_seconds_p50: float | None
    step_seconds_p95: float | None
    energy_per_sample_joules: float | None
    trial: int
    study_name: str
    objective: str
    throughput_busy: bool = False
    """The throughput was measured while other processes used the CPU (see ``measured.busy_reason``)."""
    phases: dict[str, float] = dataclasses.field(default_factory=dict)
    """Seconds of each phase of the study's latest call (fit, range_test, trials)."""
    accumulation: dict[str, int] | None = None
    """With a global batch over the ceiling: ``micro_batch`` × ``accumulation_steps`` (see `autotune.training`)."""
    study: Any = dataclasses.field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data.pop("study")
        return data

    def make_optimizer(self, parameters: Any) -> Any:
        """The backend's optimizer over ``parameters`` with the chosen name, rate and parameters: a training
        script and a study meet in ``autotune.load_best(study).make_optimizer(model.parameters())``."""
        spec = {"name": self.optimizer, "lr": self.lr, **self.optimizer_params}
        return get_backend(self.backend).make_optimizer(parameters, spec)


def _versions(backend: str) -> dict[str, str]:
    from autotune.backends import framework_module

    names = {"autotune": "autotune", "optuna": "optuna", "numpy": "numpy",
             backend: {"torch": "torch", "tensorflow": "tensorflow", "mindspore": "mindspore"}.get(backend, backend)}
    found = {}
    for label, dist in names.items():
        for candidate in (dist, f"{dist}-cpu"):
            try:
                found[label] = metadata.version(candidate)
                break
            except metadata.PackageNotFoundError:
                continue
    found["python"] = platform.python_version()
    found.setdefault(backend, framework_module(backend))
    return found


def _hardware(device: Any) -> dict[str, Any]:
    from autotune.devices import cpu_info, nvidia_gpus

    gpus, note = nvidia_gpus()
    return {"host": platform.node(), "cpu": cpu_info(), "nvidia": gpus or note, "device": device.to_dict()}


def _directions(objective: str) -> list[str]:
    return {"convergence": ["minimize"], "throughput": ["maximize"], "pareto": ["minimize", "maximize"]}[objective]


def _study_name(task: Task) -> str:
    base = (task.reference or task.name or "task").rsplit("/", 1)[-1]
    return base.replace(".py:task", "").replace(".py", "").replace(":", "-")


def _sampler(objective: str, seed: int, n_trials: int) -> optuna.samplers.BaseSampler:
    startup = max(4, min(10, n_trials // 3))
    return TrialSeededTPESampler(seed=seed, multivariate=True, group=True, n_startup_trials=startup,
                                 constant_liar=True)


def _pruner(objective: str) -> optuna.pruners.BasePruner:
    if objective == "convergence":
        return optuna.pruners.HyperbandPruner(min_resource=2, max_resource=REPORTS, reduction_factor=3)
    return optuna.pruners.NopPruner()


def _lr_rule(optimizer: str) -> str:
    return "linear" if optimizer in SGD_FAMILY else "sqrt"


def best_trial(study: optuna.Study, objective: str) -> optuna.trial.FrozenTrial | None:
    """The chosen trial: the best value, or on a Pareto front the one with the lowest validation loss."""
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not complete:
        return None
    if objective == "pareto":
        return min(study.best_trials, key=lambda t: t.values[0])
    return study.best_trial


def accumulation_of(config: Mapping[str, Any]) -> dict[str, int] | None:
    return {k: config[k] for k in ("micro_batch", "accumulation_steps") if k in config} or None


def result_from_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> TuneResult:
    """The output contract from a stored trial and the study's attributes."""
    attrs, config = trial.user_attrs, trial.user_attrs.get("config", {})
    info = study.user_attrs
    measured = attrs.get("measured", {})
    return TuneResult(
        batch_size=int(config.get("batch_size")), optimizer=config.get("optimizer"), lr=float(config.get("lr")),
        optimizer_params=dict(config.get("optimizer_params", {})), throughput=measured.get("throughput"),
        val_loss=measured.get("val_loss"), peak_memory_bytes=measured.get("peak_memory_bytes"),
        device=measured.get("device") or info.get("device", "?"), backend=info.get("backend", "?"),
        lr_scaling=f"{_lr_rule(config.get('optimizer'))} in batch size from lr {config.get('lr_reference'):.4g} "
                   f"at batch {info.get('reference_batch')}",
        lr_reference=float(config.get("lr_reference")), reference_batch=int(info.get("reference_batch", 0)),
        step_seconds_p50=measured.get("step_seconds_p50"), step_seconds_p95=measured.get("step_seconds_p95"),
        energy_per_sample_joules=measured.get("energy_per_sample_joules"), trial=trial.number,
        study_name=study.study_name, objective=info.get("objective", "convergence"),
        throughput_busy=bool(measured.get("busy")), phases=dict((info.get("phases") or [{}])[-1]), study=study,
        accumulation=accumulation_of(config),
    )


def load_result(study_name: str, storage: str | None = None) -> TuneResult:
    """The chosen configuration of a stored study (``autotune best``)."""
    study = load_study(study_name, storage)
    objective = study.user_attrs.get("objective", "convergence")
    trial = best_trial(study, objective)
    if trial is None:
        raise StorageError(f"study {study_name!r} has no finished trial yet: run autotune tune --study {study_name}")
    return result_from_trial(study, trial)


load_best = load_result


def load_study(study_name: str, storage: str | None = None) -> optuna.Study:
    """An existing study, or `StorageError` naming the studies the storage has."""
    store = open_storage(storage, must_exist=True)  # a mistyped path must not become a new database
    names = [s.study_name for s in optuna.get_all_study_summaries(store, include_best_trial=False)]
    if study_name not in names:
        known = ", ".join(names) or "none"
        raise StorageError(f"no study {study_name!r} in {redact(storage or 'the default storage')} (studies: {known})")
    return optuna.load_study(study_name=study_name, storage=store)


@guarded
def tune(
    task: Task | str,
    *,
    device: str | None = None,
    n_trials: int = 20,
    timeout: float | None = None,
    trial_time: float | None = 5.0,
    trial_steps: int | None = None,
    objective: str = "convergence",
    search_space: str | None = None,
    space_overrides: Mapping[str, Any] | None = None,
    study_name: str | None = None,
    storage: str | None = None,
    seed: int = 0,
    memory_limit: int | None = None,
    margin: float = DEFAULT_MARGIN,
    isolation: str = "process",
    range_test: bool = True,
    pruning: bool = True,
    trial_timeout: float | None = None,
    heartbeat: int | None = None,
    progress: Progress | None = None,
    global_batch: int | None = None,
) -> TuneResult:
    """Search batch size × optimizer × learning rate for ``task`` and return the best configuration.

    ``timeout`` bounds the whole call (ceiling fit and range test included; no trial starts that would end
    after it, judged by the median duration of this call's full-budget trials). The range test takes at most
    `autotune.budget.RANGE_TEST_SHARE` of the study's budget. Raises `ModelDoesNotLearn` (with the best trial
    as ``result``) when no trial improved on its first validation report. ``n_trials`` counts finished
    (complete or pruned, not failed) trials, those of a resumed study included. Each trial
    trains a fresh model from ``seed`` for ``trial_time`` seconds (or ``trial_steps`` steps). ``objective`` is
    ``convergence`` (validation loss at the budget), ``throughput`` (samples/s of trials that do not diverge)
    or ``pareto`` (both). ``isolation='process'`` runs every trial in a worker process. ``global_batch``: every
    trial trains at that batch, in micro-batches with gradient accumulation where it exceeds the ceiling;
    ``device="auto"``: the device bench measures fastest (`autotune.bench.auto_device`).
    """
    say = progress or (lambda _event: None)
    timeout, trial_timeout = seconds("--timeout", timeout), seconds("--trial-timeout", trial_timeout)
    deadline = None if timeout is None else time.monotonic() + timeout
    if objective not in OBJECTIVES:
        raise AutotuneError(f"unknown objective {objective!r}: use one of {', '.join(OBJECTIVES)}")
    if trial_steps is not None:
        trial_time = None
    trial_time = seconds("--trial-time", trial_time)
    if (trial_time is None or trial_time <= 0) and (trial_steps is None or trial_steps < 1):
        raise AutotuneError("give a positive --trial-time (seconds) or --trial-steps")
    if isolation not in ("process", "none"):
        raise AutotuneError(f"isolation must be 'process' or 'none', got {isolation!r}")
    task = load_task(task)
    backend = get_backend(task.backend)
    target = backend.resolve_device(device)
    space = load_space(backend.name, backend.optimizer_names, search_space, space_overrides)
    handle = task_handle(task) if isolation == "process" else task
    check_task_data(task)  # NaN, infinities, mismatched shapes: before a study or a worker exists
    from autotune.bench import auto_device, with_global_batch  # issue 14's hooks: the logic lives there

    with_global_batch(space, global_batch, backend, task)
    device_choice = auto_device(task, device, isolation=isolation, say=say)
    if device_choice:
        target = backend.resolve_device(device_choice["device"])
    store = open_storage(storage, **({"heartbeat": heartbeat, "grace": max(2 * heartbeat, 2)} if heartbeat else {}))
    name = study_name or _study_name(task)
    try:
        study = optuna.create_study(study_name=name, storage=store, directions=_directions(objective),
                                    sampler=_sampler(objective, seed, n_trials),
                                    pruner=_pruner(objective) if pruning else optuna.pruners.NopPruner(),
                                    load_if_exists=True)
    except ValueError as exc:
        raise StorageError(f"study {name!r} cannot be resumed: {exc}") from None
    info = study.user_attrs
    if info.get("objective", objective) != objective:
        raise StorageError(f"study {name!r} was created with --objective {info['objective']}: resume it with that, "
                           "or pick a new --study name")
    orphans = fail_orphaned_trials(study)
    resumed = bool(info)
    if not resumed:
        note_new_study(study)  # removed again if this call fails before it holds a trial or a ceiling
        for key, value in {
            "objective": objective, "task": task.reference or task.name, "backend": backend.name,
            "device": target.id, "versions": _versions(backend.name), "hardware": _hardware(target),
            "search_space": space.to_dict(), "reference_batch": space.reference_batch, "seed": seed,
            "trial_budget": {"seconds": trial_time, "steps": trial_steps, "reports": REPORTS},
        }.items():
            study.set_user_attr(key, value)
    else:
        stored = info.get("search_space", {})
        space.lr_ranges = {k: tuple(v) for k, v in stored.get("lr_ranges", {}).items()}
        check_resumable(study, space)
    if device_choice:
        study.set_user_attr("device_choice", device_choice)
    say({"event": "start", "study": name, "storage": redact(storage or "sqlite:///studies/autotune.db"),
         "resumed": resumed, "orphans_failed": orphans, "finished": _finished(study)})

    phases = Phases()
    ceiling_key = f"ceiling:{backend.name}:{target.id}:{target.name}"
    # another process joining the study may be fitting this ceiling: wait for its answer rather than refit
    ceiling_info = wait_for_shared(study, ceiling_key, lambda attrs: attrs.get(ceiling_key), say=say)
    if ceiling_info is None:
        say({"event": "fit", "message": "fitting the batch-size ceiling to memory"})
        with phases.timed("fit"):
            fit = fit_batch_size(task, device=target.id, memory_limit=memory_limit, margin=margin, isolation=isolation,
                                 max_batch=space.batch_high, progress=lambda m: say({"event": "fit", "message": m}))
        ceiling_info = {"batch_size": fit.batch_size, "peak_memory_bytes": fit.peak_memory_bytes,
                        "budget_bytes": fit.budget_bytes, "limited_by": fit.limited_by,
                        "throughput_by_batch": {str(p.batch_size): p.throughput for p in fit.probes if p.fits}}
        study.set_user_attr(ceiling_key, ceiling_info)
    ceiling = int(ceiling_info["batch_size"])
    say({"event": "ceiling", "batch_size": ceiling, "limited_by": ceiling_info.get("limited_by")})

    cpu_cap = memory_limit if (isolation == "process" and target.kind == "cpu") else None
    preload = backend.worker_preload(task)
    # one worker runs the range test and trial after trial; a failed trial's worker is replaced
    worker = Worker(memory_limit=cpu_cap, preload=preload) if isolation == "process" else None
    try:
        reference_batch = min(space.reference_batch, ceiling)
        if range_test and not space.lr_ranges:  # another process on this study may be running it: use its ranges
            shared = wait_for_shared(study, "range_test", _shared_lr_ranges, say=say) or {}
            space.lr_ranges = {k: tuple(v) for k, v in shared.get("lr_ranges", {}).items()}
        rt_seconds, rt_steps = range_test_budget(n_trials=n_trials, trial_time=trial_time, trial_steps=trial_steps,
                                                 timeout=timeout, optimizers=len(space.optimizers))
        if range_test and not space.lr_ranges and rt_steps >= RANGE_TEST_MIN_STEPS:
            say({"event": "range_test", "optimizer": ", ".join(sorted(space.optimizers))})
            kwargs = dict(task=handle, optimizers=sorted(space.optimizers), batch_size=reference_batch, device=target.id,
                          low=space.lr_low, high=space.lr_high, seed=seed, steps=rt_steps, seconds=rt_seconds)
            with phases.timed("range_test"):
                tests = _run(run_range_tests, kwargs, worker, 600.0 if rt_seconds is None else rt_seconds + 120) or {}
            for optimizer, value in tests.items():
                if value is not None and value.get("best_lr"):
                    space.lr_ranges[optimizer] = _narrowed(space, value)
            stored = dict(study.user_attrs.get("search_space", {}))
            stored["lr_ranges"] = {k: list(v) for k, v in space.lr_ranges.items()}
            stored["range_tests"] = {k: {"best_lr": v.get("best_lr"), "diverge_lr": v.get("diverge_lr"),
                                         "skipped": v.get("skipped")}
                                     for k, v in tests.items() if v}
            study.set_user_attr("search_space", stored)
        release(study, "range_test")

        interrupts = _Interrupts()
        throughput_seen: dict[str, float] = {}
        limit = trial_timeout or ((trial_time or 0) * 3 + 120 if trial_time else 600)
        started = time.monotonic()

        def objective_fn(trial: optuna.Trial) -> Any:
            trial.set_user_attr("owner", owner())  # first: a kill from here on leaves a trial we can tell is orphaned
            config = space.suggest(trial, ceiling)
            trial.set_user_attr("config", config)
            key = f"{config['batch_size']}:{config['optimizer']}"
            budget_seconds, budget_steps = trial_time, trial_steps
            if objective == "throughput" and key in throughput_seen:
                # throughput of this batch size and optimizer is known: a quarter budget checks divergence only
                budget_seconds = trial_time / 4 if trial_time else None
                budget_steps = max(1, trial_steps // 4) if trial_steps else None
                trial.set_user_attr("reduced_budget", True)

            def on_report(message: Any) -> bool:
                # Only the reports the pruner compares are written to the storage (a commit each); every report
                # is kept in the trial's history attribute, written once at its end.
                _, index, value = message
                if objective == "pareto" or not pruning or index not in (*PRUNER_REPORTS, REPORTS):
                    return False
                trial.report(value, index)
                return bool(trial.should_prune())

            kwargs = dict(task=handle, config=config, device=target.id, seconds=budget_seconds, steps=budget_steps,
                          reports=REPORTS, seed=seed, pruner_reports=PRUNER_REPORTS)
            try:
                interrupts.waiting = True
                if interrupts.requested:
                    raise Interrupted(interrupts.signum)
                if isolation == "process":
                    outcome = worker.run(run_trial, kwargs, timeout=limit, on_message=on_report)
                    ok, value, kind, message = outcome.ok, outcome.value, outcome.kind, outcome.message
                else:
                    outcome = run_here(run_trial, kwargs, on_message=on_report)
                    ok, value, kind, message = outcome.ok, outcome.value, outcome.kind, outcome.message
            except KeyboardInterrupt as exc:
                trial.set_user_attr("failure", f"interrupted: {getattr(exc, 'reason', 'Ctrl-C')}")
                raise
            finally:
                interrupts.waiting = False
            if kind == "fatal":
                raise AutotuneError(message)
            if not ok:
                trial.set_user_attr("failure", f"{kind}: {message}")
                if kind in INFEASIBLE_KINDS:  # pruned, not failed: TPE reads no FAIL trial (autotune.failures)
                    mark_infeasible(trial, kind, message)
                if kind in PRUNED_KINDS or kind in INFEASIBLE_KINDS:
                    raise optuna.TrialPruned(f"{kind}: {message}")
                return float("nan") if objective != "pareto" else (float("nan"), float("nan"))
            history = value.pop("history", [])
            trial.set_user_attr("measured", value)
            trial.set_user_attr("history", history)
            if objective == "throughput":
                if key in throughput_seen:
                    value["throughput"] = throughput_seen[key]
                    trial.set_user_attr("measured", value)
                else:
                    throughput_seen[key] = value["throughput"]
                return value["throughput"]
            if objective == "pareto":
                return value["val_loss"], value["throughput"]
            return value["val_loss"]

        remaining = max(0, n_trials - _finished(study))

        full_runs: list[float] = []

        def after_trial(study_: optuna.Study, frozen: optuna.trial.FrozenTrial) -> None:
            if interrupts.requested:
                study_.stop()
            if frozen.state == optuna.trial.TrialState.COMPLETE and frozen.datetime_start \
                    and frozen.datetime_complete and not frozen.user_attrs.get("reduced_budget"):
                full_runs.append((frozen.datetime_complete - frozen.datetime_start).total_seconds())
            if deadline is not None and full_runs and deadline - time.monotonic() < statistics.median(full_runs):
                study_.stop()  # a trial started now would end after the deadline: --timeout bounds the whole call
            best = best_trial(study_, objective)
            say({"event": "trial", "number": frozen.number, "state": shown_state(frozen),
                 "value": frozen.values[0] if frozen.values else None,
                 "failure": frozen.user_attrs.get("failure"),
                 "config": frozen.user_attrs.get("config"),
                 "best": best.values[0] if best is not None else None,
                 "done": _finished(study_), "total": n_trials, "elapsed": time.monotonic() - started,
                 "time_left": None if deadline is None else max(0.0, deadline - time.monotonic())})

        # trial outcomes and their reasons are reported through `progress` and stored; Optuna's own warnings
        # (a traceback for an interrupted trial) would only repeat them
        optuna.logging.set_verbosity(optuna.logging.ERROR)
        short = None
        if remaining:
            # failed trials do not count towards n_trials; the bound keeps a task that always fails from looping
            attempts, attempted = 3 * remaining + 2, []

            def enough(study_: optuna.Study, frozen: optuna.trial.FrozenTrial) -> None:
                attempted.append(frozen.number)
                if _finished(study_) >= n_trials:
                    study_.stop()

            with interrupts.installed(), phases.timed("trials"):
                left = None if deadline is None else max(deadline - time.monotonic(), 1e-3)  # at least one trial
                study.optimize(objective_fn, n_trials=attempts, timeout=left,
                               callbacks=[after_trial, enough], catch=(TrialError,))
            if interrupts.requested:
                raise Interrupted(interrupts.signum)
            short = shortfall(study, n_trials, timed_out=deadline is not None and len(attempted) < attempts,
                              attempts=attempts)
            if short and best_trial(study, objective) is not None:
                say({"event": "shortfall", "message": short})
        study.set_user_attr("phases", [*study.user_attrs.get("phases", []), phases.to_dict()])
        say({"event": "phases", "seconds": phases.to_dict(), "summary": phases.describe()})
        trial = best_trial(study, objective)
        if trial is None:
            raise AutotuneError(short or f"no trial of study {name!r} finished")
        result = result_from_trial(study, trial)
        busy = describe_busy(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))
        if busy:
            say({"event": "busy", "message": busy})
        reason = not_learning(study)
        if reason:
            raise ModelDoesNotLearn(reason, result)
        return result
    finally:
        if worker is not None:
            worker.close()


class ModelDoesNotLearn(AutotuneError):
    """No trial improved on its first validation report: there is no winner to report. ``result`` is the
    best-valued trial anyway, for a caller who wants to look at it."""

    def __init__(self, message: str, result: TuneResult) -> None:
        super().__init__(message)
        self.result = result


class _Interrupts:
    """Ctrl-C or SIGTERM during a study: kill the running trial at once (it is recorded as interrupted);
    anywhere else (sampling, storage writes) only note it, so that Optuna's bookkeeping is never cut half-way.
    SIGTERM is Ctrl-C's twin: a scheduler's stop must not leave the trial RUNNING until the next run."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.requested = False
        self.waiting = False
        self.signum = int(signal.SIGINT)

    def _handler(self, signum: int, frame: Any) -> None:
        self.requested = True
        self.signum = signum
        if self.waiting:
            raise Interrupted(signum)

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {signum: signal.signal(signum, self._handler) for signum in self.SIGNALS}
        try:
            yield
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)


def _finished(study: optuna.Study) -> int:
    return len(finished(study.get_trials(deepcopy=False)))


def _shared_lr_ranges(attrs: Mapping[str, Any]) -> dict[str, Any] | None:
    """The range test's outcome once a process has stored it (``range_tests`` is written with the ranges)."""
    stored = attrs.get("search_space") or {}
    return {"lr_ranges": stored.get("lr_ranges") or {}} if "range_tests" in stored else None


def _narrowed(space: SearchSpace, test: Mapping[str, Any]) -> tuple[float, float]:
    """Learning-rate range after a range test: a decade and a half below the best rate, up to the edge."""
    best = float(test["best_lr"])
    edge = float(test["diverge_lr"]) if test.get("diverge_lr") else best * 3
    low = max(space.lr_low, best / 30)
    high = min(space.lr_high, max(best * 1.5, min(edge, best * 3)))
    if not low < high:
        low, high = space.lr_low, space.lr_high
    return low, high


def _run(function: Callable[..., Any], kwargs: dict[str, Any], worker: Worker | None, timeout: float) -> Any:
    if worker is not None:
        outcome = worker.run(function, kwargs, timeout=timeout)
        if outcome.kind == "fatal":
            raise AutotuneError(outcome.message)
        return outcome.value if outcome.ok else None
    try:
        return function(**kwargs)
    except TrialError:
        return None
