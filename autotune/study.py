"""The study from start to pick: `tune`, the library call behind ``autotune tune``, and reading a result back.

`tune` composes the study's parts, each a module of its own: open or resume it (`autotune.study_open`),
ensure the ceiling (`autotune.ceiling`), narrow the learning rates (`autotune.narrowing`), then run trials
through `autotune.Tuner` (`autotune.objective` trains and records each one, `autotune.stopping` says when to
stop). Failures never stop the study: an OOM or a diverging loss prunes the trial (the sampler learns the
region is bad), a crash, hang or error fails it with its reason.
"""

from __future__ import annotations

import dataclasses
import shlex
import time
from typing import Any, Callable, Mapping

import optuna

from autotune.backends import get_backend
from autotune.budget import Phases
from autotune.ceiling import ensure_ceilings
from autotune.ceiling_cache import CeilingCache
from autotune.checks import check_task_data, seconds
from autotune.confirm import DEFAULT_CONFIRM, run_context, trial_runner
from autotune.errors import AutotuneError, Interrupted, StorageError, TrialError
from autotune.failures import failure_summary, finished, none_completed, shortfall
from autotune.fitting.step_time import StepTimeLimit
from autotune.guard import guarded
from autotune.memory import DEFAULT_MARGIN
from autotune.narrowing import fresh_first_step, narrow_learning_rates
from autotune.objective import TrialPlan, run_and_record
from autotune.optimizers import SGD_FAMILY
from autotune.records import TrialRecord, read as read_record
from autotune.resume import check_same_setup
from autotune.runner import Worker, run_here, warm_up_for
from autotune.scoped import collector_skips_the_callers_heap, quiet_optuna
from autotune.space import load_space
from autotune.stopping import Deadline, Interrupts
from autotune.storage import (
    import_for as import_storage_for,
    open_storage,
    redact,
    retry_outlasts_grace,
    storage_option,
)
from autotune.study_open import (
    OBJECTIVES,
    OWN_LOOP,
    REPORTS,
    ceiling_key,
    check_objective,
    describe_new_study,
    open_study,
    resume_space,
    study_hardware,
    study_versions,
)
from autotune.task import Task, load_task, task_handle
from autotune.trial import check_contract, raise_for_contract, run_trial
from autotune.tuner import Tuner
from autotune.verdict import describe_busy, describe_long_validation, describe_set_up, not_learning

__all__ = ["OBJECTIVES", "ModelDoesNotLearn", "TuneResult", "best_trial", "load_best", "load_result", "load_study",
           "result_from_trial", "tune"]

Progress = Callable[[dict[str, Any]], None]
CONTRACT_TIMEOUT = 600.0
"""Seconds the model-and-data check may take: a large model's construction included, a hang excluded."""


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
    precision: str = "fp32"
    """The training precision of the chosen trial (searched, or picked by ``device="auto"``)."""
    compile: bool = False
    """Whether the chosen trial's step was compiled (`Backend.compile_name`)."""
    worker: dict[str, Any] | None = None
    """The ``--devices`` worker that ran the trial (``worker``, ``cpus``, ``threads``): ``throughput`` is that
    one device's (on the CPU, those cores'), not the study's total."""
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


def _study_name(task: Task) -> str:
    base = (task.reference or task.name or "task").rsplit("/", 1)[-1]
    return base.replace(".py:task", "").replace(".py", "").replace(":", "-")


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
                   f"at batch {info.get('reference_batch')}{_clipped(float(config.get('lr')), info)}",
        lr_reference=float(config.get("lr_reference")), reference_batch=int(info.get("reference_batch", 0)),
        step_seconds_p50=measured.get("step_seconds_p50"), step_seconds_p95=measured.get("step_seconds_p95"),
        energy_per_sample_joules=measured.get("energy_per_sample_joules"), trial=trial.number,
        study_name=study.study_name, objective=info.get("objective", "convergence"),
        throughput_busy=bool(measured.get("busy")), phases=dict((info.get("phases") or [{}])[-1]), study=study,
        accumulation=accumulation_of(config), precision=str(config.get("precision", "fp32")),
        compile=bool(config.get("compile", False)), worker=_worker_of(attrs.get("owner") or {}),
    )


def _worker_of(who: Mapping[str, Any]) -> dict[str, Any] | None:
    return {k: who[k] for k in ("worker", "cpus", "threads") if k in who} if who.get("worker") else None


def _clipped(lr: float, info: Mapping[str, Any]) -> str:
    """``, clipped at lr.high …`` where the batch-scaled rate was held at the space's top (else the rule's
    arithmetic on the line would not give the rate shown)."""
    high = ((info.get("search_space") or {}).get("lr") or {}).get("high")
    return f", clipped at lr.high {high:.4g}" if high is not None and lr >= high * (1 - 1e-9) else ""


def load_result(study_name: str, storage: str | None = None) -> TuneResult:
    """The chosen configuration of a stored study (``autotune best``).

    Raises `ModelDoesNotLearn` where no trial learnt (`autotune.verdict.not_learning`), as `tune` does: a
    training script must not silently train with a configuration that was never shown to learn; the
    exception's ``result`` is the best-valued trial, for a caller who wants to look at it anyway."""
    study = load_study(study_name, storage)
    rerun = ("run the training loop with its autotune.Tuner again" if study.user_attrs.get("task") == OWN_LOOP
             else f"run autotune tune TASK --study {shlex.quote(study_name)}{storage_option(storage)}")
    return chosen_result(study, study.user_attrs.get("objective", "convergence"), fix=f": {rerun}")


def chosen_result(study: optuna.Study, objective: str, *, fix: str = "") -> TuneResult:
    """The study's pick, as every door hands it out (`load_result`, `Tuner.best`): `StorageError` where no trial
    finished (``fix`` says what to run), `ModelDoesNotLearn` where no trial learnt (`autotune.verdict`)."""
    trial = best_trial(study, objective)
    if trial is None:  # what went wrong in the trials there were is the first thing to fix
        failures = failure_summary(study.get_trials(deepcopy=False), study.user_attrs)
        raise StorageError(f"study {study.study_name!r} has no finished trial yet"
                           + (f" ({failures})" if failures else "") + fix)
    result = result_from_trial(study, trial)
    reason = not_learning(study)
    if reason:
        raise ModelDoesNotLearn(f"study {study.study_name!r} has no winner: {reason}", result)
    return result


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
@collector_skips_the_callers_heap
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
    storage_retry: float | None = None,
    seed: int = 0,
    memory_limit: int | None = None,
    margin: float = DEFAULT_MARGIN,
    isolation: str = "process",
    range_test: bool = True,
    pruning: bool = True,
    trial_timeout: float | None = None,
    heartbeat: int | None = None,
    refit: bool = False,
    progress: Progress | None = None,
    global_batch: int | None = None,
    confirm: int = DEFAULT_CONFIRM,
    memory_share: int = 1,
    memory_whole: int | None = None,
) -> TuneResult:
    """Search batch size × optimizer × learning rate for ``task`` and return the best configuration.

    ``timeout`` bounds the whole call (ceiling fit and range test included; no trial starts that would end
    after it, judged by the median duration of this call's full-budget trials). The range test takes at most
    `autotune.budget.RANGE_TEST_SHARE` of the study's budget. Raises `ModelDoesNotLearn` (with the best trial
    as ``result``) when no trial improved on its first validation report. ``n_trials`` counts finished
    (complete or pruned, not failed) trials, those of a resumed study included. Each trial
    trains a fresh model from ``seed`` for ``trial_time`` seconds (or ``trial_steps`` steps). ``objective`` is
    ``convergence`` (validation loss at the budget), ``throughput`` (samples/s of trials that do not diverge)
    or ``pareto`` (both). ``isolation='process'`` runs every trial in a worker process. A ceiling fitted
    earlier for the same task structure, device and versions is reused from the storage unless ``refit``.
    On a database server, a lost connection waits up to ``storage_retry`` seconds for the server to return
    (None: `autotune.storage.retry_window`'s default, under the heartbeat's grace less one beat; an explicit
    longer one beside an explicit ``heartbeat`` is said as a ``warning`` event).
    ``global_batch``: every trial trains at that batch, in micro-batches with gradient accumulation where it
    exceeds the ceiling; ``device="auto"``: the device, precision and compilation mode (among the space's
    choices) that bench measures fastest within a trial's budget (`autotune.bench.auto_device`); trials run in
    it. Each precision the space searches gets its own ceiling, which bounds its trials' batch sizes.
    At the end, the backend's default configuration and the ``confirm`` best configurations with other
    seeds are trained at the same budget for the report (`autotune.confirm`; 0 skips them).
    ``memory_share``: on the CPU, this many workers share the host's RAM (``--devices cpu*N``): this one's budget
    is ``memory_limit`` (or the available RAM) divided by it, the ceiling is fitted under that share and its trial
    workers are capped to it, so that the workers at their ceilings together stay within the whole.
    ``memory_whole``: without ``memory_limit``, the available RAM the workers split, read once for all of them
    (`autotune.parallel`); None: read here.

    The trials run through `autotune.Tuner`, as a user's own loop does: one place samples, records, prunes
    and fails them.
    """
    say = progress or (lambda _event: None)
    # named as the library's caller wrote them: the CLI checked its own options already, in its own words
    timeout, trial_timeout = seconds("timeout", timeout), seconds("trial_timeout", trial_timeout)
    if storage_retry not in (None, 0):  # 0: stop at once
        storage_retry = seconds("storage_retry", storage_retry) or 0.0
    deadline = Deadline(timeout)
    check_objective(objective)
    if trial_steps is not None:
        trial_time = None
    trial_time = seconds("trial_time", trial_time)
    if (trial_time is None or trial_time <= 0) and (trial_steps is None or trial_steps < 1):
        raise AutotuneError("give a positive trial_time (seconds, --trial-time) or trial_steps (--trial-steps)")
    if isinstance(memory_share, bool) or not isinstance(memory_share, int) or memory_share < 1:
        raise AutotuneError(f"memory_share must be a positive number of workers, got {memory_share!r}")
    if memory_whole is not None and (isinstance(memory_whole, bool) or not isinstance(memory_whole, int)
                                     or memory_whole < 1):
        raise AutotuneError(f"memory_whole must be a positive number of bytes, got {memory_whole!r}")
    if isolation not in ("process", "none"):
        raise AutotuneError(f"isolation must be 'process' or 'none', got {isolation!r}")
    warm_up_for(task, isolation=isolation)  # the workers' server loads the task while this process does
    task = load_task(task)
    backend = get_backend(task.backend)
    target = backend.resolve_device(device)
    space = load_space(backend.name, backend.optimizer_names, search_space, space_overrides)
    handle = task_handle(task) if isolation == "process" else task
    check_task_data(task)  # NaN, infinities, mismatched shapes: before a study or a worker exists
    from autotune.bench import auto_device, trial_budget_seconds, with_global_batch  # issue 14's hooks

    with_global_batch(space, global_batch, backend, task)
    from autotune.memory import check_memory_limit, check_precision

    check_memory_limit(memory_limit, target)  # all the workers' budget together: the device's whole memory at most
    device_choice = auto_device(task, device, isolation=isolation, say=say, space=space,
                                budget=trial_budget_seconds(trial_time, trial_steps, timeout, n_trials))
    if device_choice:  # the trials run in the measured winner's mode: device, precision and compilation
        target = backend.resolve_device(device_choice["device"])
        space.precisions, space.compile_modes = [device_choice["precision"]], [device_choice["compile"]]
    check_memory_limit(memory_limit, target)  # the measured winner's memory, as the task's device's was below
    for precision in space.precisions:  # one line before a study exists, for a precision the device lacks
        check_precision(backend, target, precision, ": drop it from precision.choices in the search space")
    share = memory_share if target.kind == "cpu" else 1  # accelerators each have their own memory
    given_limit, memory_limit = memory_limit, _share_of(memory_limit, target, share, memory_whole)
    cpu_cap = memory_limit if (isolation == "process" and target.kind == "cpu") else None
    # one worker checks the model against its data, then runs the range test and trial after trial (a failed
    # trial's worker is replaced); on an accelerator it is closed during the fit, which measures device memory
    worker = Worker(memory_limit=cpu_cap, preload=backend.worker_preload(task)) if isolation == "process" else None
    try:  # a failure before the trials' own try below must not leave the worker running
        import_storage_for(storage)  # while the worker's server may still be loading the framework
        _check_contract(handle, target, worker, seed, share=share, limit_given=given_limit is not None)
        if worker is not None and target.kind != "cpu":
            worker.close()  # started again for the range test; it must hold no device memory during the fit
        beat: dict[str, Any] = {"heartbeat": heartbeat, "grace": max(2 * heartbeat, 2)} if heartbeat else {}
        clash = retry_outlasts_grace(storage, **beat, retry=storage_retry) if beat and storage_retry is not None \
            else None
        if clash:
            say({"event": "warning", "message": clash})
        store = open_storage(storage, retry=storage_retry, **beat)
        name = study_name or _study_name(task)
        study, orphans = open_study(name, store=store, objective=objective, seed=seed, n_trials=n_trials,
                                    pruning=pruning)
        resumed = not describe_new_study(study, {
            "objective": objective, "task": task.reference or task.name, "backend": backend.name,
            "device": target.id, "versions": study_versions(backend.name), "hardware": study_hardware(target),
            "search_space": space.to_dict(), "reference_batch": space.reference_batch, "seed": seed,
            "trial_budget": {"seconds": trial_time, "steps": trial_steps, "reports": REPORTS}}, store=store)
        if resumed:
            check_same_setup(study, task=task.reference or task.name,
                             trial_budget={"seconds": trial_time, "steps": trial_steps})
            resume_space(study, space)
        if device_choice:
            study.set_user_attr("device_choice", device_choice)
        say({"event": "start", "study": name, "storage": redact(storage or "sqlite:///studies/autotune.db"),
             "resumed": resumed, "orphans_failed": orphans, "finished": _finished(study), "wanted": n_trials})

        phases = Phases()
        cache = lambda precision: CeilingCache.for_task(  # noqa: E731 - built only when the study has no ceiling
            store, handle, device=target, versions=study_versions(backend.name), memory_limit=given_limit,
            margin=margin, max_batch=space.batch_high, share=share, preload=backend.worker_preload(task),
            isolation=isolation, precision=precision)
        ceilings = ensure_ceilings(study, task, precisions=space.precisions, backend=backend, device=target,
                                   memory_limit=memory_limit, margin=margin, isolation=isolation,
                                   max_batch=space.batch_high, phases=phases, say=say, cache=cache, refit=refit,
                                   share=share,
                                   # a global batch's step is the same whatever its micro-batch: no step-time bound
                                   step_time_limit=None if global_batch else StepTimeLimit.for_trials(
                                       trial_time, floor=space.smallest_batch))
        ceiling = min(ceilings.values())  # what every precision fits: the range test and the default configuration
    except BaseException:
        if worker is not None:
            worker.close()
        raise
    interrupts = Interrupts()
    try:
        if range_test:
            narrow_learning_rates(study, space, handle=handle, device=target,
                                  batch_size=min(space.reference_batch, ceiling), seed=seed, n_trials=n_trials,
                                  trial_time=trial_time, trial_steps=trial_steps, timeout=timeout,
                                  run=lambda function, kwargs, limit, receive: _run(function, kwargs, worker,
                                                                                    limit, receive),
                                  phases=phases, say=say, first_step_seconds=fresh_first_step(
                                      [study.user_attrs.get(ceiling_key(backend.name, target, precision, share=share))
                                       for precision in space.precisions]))
        tuner = Tuner.attached(study, store=store, backend=backend, device=target, space=space, objective=objective,
                               ceiling=ceilings)
        plan = TrialPlan(objective=objective, seconds=trial_time, steps=trial_steps, pruning=pruning)
        limit = trial_timeout or ((trial_time or 0) * 3 + 120 if trial_time else 600)

        def run(kwargs: dict[str, Any], on_report: Callable[[Any], Any]) -> Any:
            with interrupts.interruptible():
                if worker is not None:
                    return worker.run(run_trial, kwargs, timeout=limit, on_message=on_report)
                return run_here(run_trial, kwargs, on_message=on_report)

        started, attempts, short = time.monotonic(), Tuner.attempts(max(1, n_trials - _finished(study))), None
        told: set[str] = set()  # what a trial did beyond its budget, each said once, after the first it concerns
        if _finished(study) < n_trials:
            # trial outcomes and their reasons are reported through `progress` and stored; Optuna's own lines
            # would only repeat them
            with interrupts.installed(), phases.timed("trials"), quiet_optuna(optuna.logging.ERROR):
                for trial in tuner.trials(n_trials, stop=lambda: interrupts.requested or deadline.reached()):
                    deadline.started += 1
                    run_and_record(trial, plan, run, {"task": handle, "device": target.id, "seed": seed})
                    trials = study.get_trials(deepcopy=False)  # one read per trial serves the record and the line
                    record = read_record(next(t for t in reversed(trials) if t.number == trial.number))
                    deadline.record(record.seconds if record.state == "complete" else None,
                                    full_budget=not record.reduced_budget)
                    _say_trial(say, study, objective, record, trials, n_trials=n_trials, started=started,
                               deadline=deadline)
                    for kind, describe in (("validation", describe_long_validation), ("set-up", describe_set_up)):
                        if kind not in told and (line := describe(record, trial_time=trial_time)):
                            told.add(kind)
                            say({"event": "warning", "message": line})
            if interrupts.requested:
                raise Interrupted(interrupts.signum)
            short = shortfall(study, n_trials, timed_out=deadline.at is not None and deadline.started < attempts,
                              attempts=attempts, storage=storage)
            if short and best_trial(study, objective) is not None:
                say({"event": "shortfall", "message": short})
        # the pick in context: the default configuration and re-runs with other seeds (autotune.confirm); with no
        # complete trial there is no pick to put in context
        if confirm and best_trial(study, objective) is not None:
            say({"event": "confirm", "count": confirm})
            with phases.timed("confirm"):
                run_context(study, trial_runner(worker=worker, timeout=limit, trial_kwargs=dict(
                    task=handle, device=target.id, seconds=trial_time, steps=trial_steps, reports=REPORTS)),
                    optimizers=sorted(space.optimizers), ceiling=ceiling, objective=objective, seed=seed,
                    count=confirm, deadline=deadline.at)
        study.set_user_attr("phases", [*study.user_attrs.get("phases", []), phases.to_dict()])
        say({"event": "phases", "seconds": phases.to_dict(), "summary": phases.describe()})
        chosen = best_trial(study, objective)
        if chosen is None:
            raise AutotuneError(short or none_completed(study, storage=storage))
        result = result_from_trial(study, chosen)
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


def _check_contract(handle: Any, target: Any, worker: Worker | None, seed: int, *, share: int = 1,
                    limit_given: bool = True) -> None:
    """The model run with its loss on two samples and the labels checked against its outputs
    (`autotune.trial.check_contract`), in ``worker`` or here: a mismatch is one line before any study or fit;
    so is a worker that the memory cap (its ``share`` of ``--memory-limit``) leaves no room to run in."""
    kwargs = {"task": handle, "device": target.id, "seed": seed}
    outcome = worker.run(check_contract, kwargs, timeout=CONTRACT_TIMEOUT) if worker is not None \
        else run_here(check_contract, kwargs)
    raise_for_contract(outcome, memory_limit=worker.memory_limit if worker is not None else None, share=share,
                       limit_given=limit_given)


def _say_trial(say: Progress, study: optuna.Study, objective: str, record: TrialRecord,
               trials: list[optuna.trial.FrozenTrial], *, n_trials: int, started: float, deadline: Deadline) -> None:
    say({"event": "trial", "number": record.number, "state": record.state.upper() if record.state != "failed"
         else "FAIL", "value": record.values[0] if record.values else None, "failure": record.failure,
         "config": record.config, "best": _best_value(study, objective, trials),
         "done": len(finished(trials)), "total": n_trials, "elapsed": time.monotonic() - started,
         "time_left": deadline.left()})


def _best_value(study: optuna.Study, objective: str, trials: list[optuna.trial.FrozenTrial]) -> float | None:
    """The progress line's best value, from trials already read (the Pareto pick asks the study)."""
    if objective == "pareto":
        best = best_trial(study, objective)
        return best.values[0] if best is not None else None
    values = [t.values[0] for t in trials if t.state == optuna.trial.TrialState.COMPLETE and t.values]
    if not values:
        return None
    return max(values) if study.direction == optuna.study.StudyDirection.MAXIMIZE else min(values)


class ModelDoesNotLearn(AutotuneError):
    """No trial improved on its first validation report: there is no winner to report. ``result`` is the
    best-valued trial anyway, for a caller who wants to look at it."""

    def __init__(self, message: str, result: TuneResult) -> None:
        super().__init__(message)
        self.result = result


def _share_of(memory_limit: int | None, device: Any, share: int, available: int | None = None) -> int | None:
    """One of ``share`` workers' memory budget on ``device``: the limit given, else the ``available`` memory read
    for all the workers (else its available memory now), split."""
    if share == 1:
        return memory_limit
    whole = memory_limit or available or device.memory_free
    if not whole:
        raise AutotuneError(f"cannot split the memory of {device.id} between {share} workers: its available memory "
                            "is unknown; give --memory-limit (the budget of all the workers together)")
    return int(whole) // share


def _finished(study: optuna.Study) -> int:
    return len(finished(study.get_trials(deepcopy=False)))


def _run(function: Callable[..., Any], kwargs: dict[str, Any], worker: Worker | None, timeout: float,
         receive: Callable[[Any], Any] | None = None) -> Any:
    if worker is not None:
        outcome = worker.run(function, kwargs, timeout=timeout, on_message=receive)
        if outcome.kind == "fatal":
            raise AutotuneError(outcome.message)
        return outcome.value if outcome.ok else None
    try:
        return function(**kwargs)
    except TrialError:
        return None
