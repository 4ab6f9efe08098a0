"""The study's parts, each on its own: opening and resuming, the trial plan, recording a worker's outcome,
stopping rules, the learning-rate narrowing rule, the stored ceiling, heartbeats and the trial record.

Real Optuna studies on real SQLite files; the worker outcomes are `WorkerOutcome` values as the runner returns
them (the runner itself is tested in test_worker.py)."""

import os
import signal
import socket
import time

import optuna
import pytest

from autotune import records
from autotune.backends import get_backend
from autotune.budget import Phases
from autotune.ceiling import ensure_ceiling
from autotune.errors import AutotuneError, Interrupted, StorageError
from autotune.failures import failed, finished
from autotune.heartbeat import Heartbeat, fail_stale
from autotune.narrowing import narrowed
from autotune.objective import TrialPlan, run_and_record
from autotune.runner import WorkerOutcome
from autotune.space import load_space
from autotune.stopping import Deadline, Interrupts
from autotune.storage import open_storage, owner
from autotune.study_open import describe_new_study, open_study
from autotune.tuner import Tuner

SPACE = {"batch_size": {"choices": [16, 32]}, "optimizers": {"adam": {}}}


def _tuner(tmp_path, objective="convergence", name="parts", url=None):
    store = open_storage(url or f"sqlite:///{tmp_path / 'p.db'}")
    study, _ = open_study(name, store=store, objective=objective)
    backend = get_backend("torch")
    space = load_space("torch", backend.optimizer_names, overrides=SPACE)
    return Tuner.attached(study, store=store, backend=backend, device=backend.resolve_device("cpu"), space=space,
                          objective=objective, ceiling=32)


def _measured(loss=0.5, speed=1000.0):
    return {"val_loss": loss, "throughput": speed, "step_seconds_p50": 0.01, "step_seconds_p95": 0.02,
            "peak_memory_bytes": 1 << 20, "busy": False, "device": "cpu", "history": [[2, 0.9, 0.1], [8, loss, 0.4]]}


def test_open_study_keeps_its_objective_and_describes_a_new_study_once(tmp_path):
    store = open_storage(f"sqlite:///{tmp_path / 'o.db'}")
    study, orphans = open_study("s", store=store, objective="pareto")
    assert orphans == 0 and study.directions == [optuna.study.StudyDirection.MINIMIZE,
                                                 optuna.study.StudyDirection.MAXIMIZE]
    assert describe_new_study(study, {"objective": "pareto", "task": "t"}, store=store) is True
    again, _ = open_study("s", store=store, objective="pareto")
    assert describe_new_study(again, {"objective": "pareto", "task": "other"}, store=store) is False
    assert again.user_attrs["task"] == "t"
    with pytest.raises(StorageError, match="created with --objective pareto"):
        open_study("s", store=store, objective="convergence")
    with pytest.raises(AutotuneError, match="unknown objective 'fast'"):
        open_study("s2", store=store, objective="fast")


def test_a_complete_outcome_is_stored_whole_and_flat(tmp_path):
    tuner = _tuner(tmp_path)
    plan = TrialPlan(objective="convergence", seconds=1.0, steps=None, pruning=True)
    trial = tuner.ask()
    run_and_record(trial, plan, lambda kwargs, on_report: WorkerOutcome(True, value=_measured()), {"device": "cpu"})
    (frozen,) = tuner.study.trials
    assert frozen.state == optuna.trial.TrialState.COMPLETE and frozen.value == 0.5
    attrs = frozen.user_attrs
    assert attrs["throughput"] == 1000.0 and attrs["val_loss"] == 0.5 and attrs["batch_size"] in (16, 32)
    assert attrs["lr_used"] == attrs["config"]["lr"] and frozen.params["optimizer"] == "adam"
    record = records.read(frozen)
    assert record.state == "complete" and record.history == [(2, 0.9, 0.1), (8, 0.5, 0.4)]
    assert record.last_loss == 0.5 and record.seconds is not None and "history" not in record.measured


@pytest.mark.parametrize("kind, state, counted", [("oom", "pruned", True), ("diverged", "pruned", True),
                                                  ("pruned", "pruned", True), ("crash", "failed", False),
                                                  ("timeout", "failed", False), ("error", "failed", False)])
def test_each_failure_kind_is_recorded_with_its_reason(tmp_path, kind, state, counted):
    tuner = _tuner(tmp_path)
    plan = TrialPlan(objective="convergence", seconds=1.0, steps=None, pruning=True)
    trial = tuner.ask()
    run_and_record(trial, plan, lambda kwargs, on_report: WorkerOutcome(False, kind=kind, message="why"), {})
    (frozen,) = tuner.study.trials
    assert trial.state == state and records.read(frozen).state == state
    assert frozen.user_attrs["failure"] == f"{kind}: why"
    assert (len(finished([frozen])) == 1) is counted and failed(frozen) is not counted


def test_pruner_reports_reach_storage_and_a_fatal_outcome_stops_the_run(tmp_path):
    tuner = _tuner(tmp_path)
    plan = TrialPlan(objective="convergence", seconds=1.0, steps=None, pruning=True)

    def run(kwargs, on_report):
        for index in range(1, 9):
            on_report(("report", index, 1.0 / index, 0.1 * index))
        return WorkerOutcome(False, kind="fatal", message="the task's data is broken")

    trial = tuner.ask()
    with pytest.raises(AutotuneError, match="data is broken"):
        run_and_record(trial, plan, run, {})
    (frozen,) = tuner.study.trials
    assert sorted(frozen.intermediate_values) == [2, 6, 8]  # only what Hyperband compares is written
    assert frozen.state == optuna.trial.TrialState.FAIL and records.read(frozen).last_loss == pytest.approx(1 / 8)


def test_a_pruned_trial_keeps_the_training_it_reported(tmp_path):
    tuner = _tuner(tmp_path)
    plan = TrialPlan(objective="convergence", seconds=1.0, steps=None, pruning=True)

    def run(kwargs, on_report):
        for index in (1, 2):
            on_report(("report", index, 1.0 / index, 0.125 * index))
        return WorkerOutcome(False, kind="pruned", message="pruned after report 2 of 8")

    run_and_record(tuner.ask(), plan, run, {})
    (frozen,) = tuner.study.trials
    assert frozen.state == optuna.trial.TrialState.PRUNED
    assert frozen.user_attrs["history"] == [[1, 1.0, 0.125], [2, 0.5, 0.25]]  # its training seconds, for overhead


def test_an_interrupted_trial_is_failed_and_the_interrupt_goes_on(tmp_path):
    tuner = _tuner(tmp_path)
    plan = TrialPlan(objective="convergence", seconds=1.0, steps=None, pruning=True)

    def run(kwargs, on_report):
        raise Interrupted(signal.SIGTERM)

    with pytest.raises(KeyboardInterrupt):
        run_and_record(tuner.ask(), plan, run, {})
    (frozen,) = tuner.study.trials
    assert frozen.state == optuna.trial.TrialState.FAIL and frozen.user_attrs["failure"] == "interrupted: SIGTERM"


def test_the_throughput_plan_gives_a_known_configuration_a_quarter_budget():
    plan = TrialPlan(objective="throughput", seconds=4.0, steps=None, pruning=False)
    config = {"batch_size": 32, "optimizer": "adam"}
    assert plan.budget(config) == (4.0, None) and not plan.reduced(config)
    assert plan.measured(config, {"throughput": 900.0})["throughput"] == 900.0
    assert plan.reduced(config) and plan.budget(config) == (1.0, None)
    assert plan.measured(config, {"throughput": 10.0})["throughput"] == 900.0  # the full-budget figure stands
    assert not plan.reports_to_pruner(2)
    convergence = TrialPlan(objective="convergence", seconds=None, steps=40, pruning=True)
    assert [i for i in range(1, 9) if convergence.reports_to_pruner(i)] == [2, 6, 8]
    assert convergence.budget(config) == (None, 40)


def test_the_deadline_lets_the_first_trial_start_and_no_trial_overrun():
    assert not Deadline(None).reached()
    spent = Deadline(0.0)
    assert not spent.reached()  # the first trial always starts
    spent.started = 1
    assert spent.reached()
    roomy = Deadline(3600.0)
    roomy.started = 1
    roomy.record(10.0, full_budget=True)
    assert not roomy.reached()
    roomy.record(7200.0, full_budget=True)
    roomy.record(7200.0, full_budget=False)  # a reduced trial says nothing about a full one's length
    assert roomy.full_runs == [10.0, 7200.0] and roomy.reached()


def test_a_noted_interrupt_is_raised_when_the_next_wait_begins():
    interrupts = Interrupts()
    with interrupts.interruptible():
        assert interrupts.waiting
    assert not interrupts.waiting
    interrupts.requested, interrupts.signum = True, int(signal.SIGTERM)
    with pytest.raises(Interrupted) as caught:
        with interrupts.interruptible():
            pass
    assert caught.value.reason == "SIGTERM"


def test_narrowing_keeps_a_decade_and_a_half_below_the_best_rate():
    space = load_space("torch", get_backend("torch").optimizer_names, overrides=SPACE)
    low, high = narrowed(space, {"best_lr": 0.01, "diverge_lr": 0.02})
    assert low == pytest.approx(0.01 / 30) and high == pytest.approx(0.02)
    low, high = narrowed(space, {"best_lr": 0.01, "diverge_lr": None})
    assert high == pytest.approx(0.03)


def test_a_stored_ceiling_is_used_without_a_fit(tmp_path):
    tuner = _tuner(tmp_path)
    tuner.study.set_user_attr(f"ceiling:torch:{tuner.device.id}:{tuner.device.name}",
                              {"batch_size": 48, "limited_by": "memory"})
    events = []
    got = ensure_ceiling(tuner.study, None, backend=tuner.backend, device=tuner.device, memory_limit=None,
                         margin=0.05, isolation="process", max_batch=None, phases=Phases(), say=events.append)
    assert got == 48 and events == [{"event": "ceiling", "batch_size": 48, "limited_by": "memory",
                                    "precision": "fp32"}]


def test_a_trial_whose_heartbeat_stops_is_failed_by_the_next_worker(tmp_path):
    store = open_storage(f"sqlite:///{tmp_path / 'h.db'}", heartbeat=1, grace=2)
    study, _ = open_study("beat", store=store, objective="convergence")
    trial = study.ask()
    trial.set_user_attr("owner", owner())
    beat = Heartbeat(store, study, trial.number)
    time.sleep(3)
    assert fail_stale(study) == 0  # still beating
    beat.stop()
    time.sleep(3)
    assert fail_stale(study) == 1
    assert study.trials[0].state == optuna.trial.TrialState.FAIL
    reason = records.read(study.trials[0], study.user_attrs).failure
    assert reason == f"interrupted: no heartbeat for over 2 s from process {os.getpid()} on {socket.gethostname()}"


class RacedJournal(optuna.storages.JournalStorage):
    """A real journal storage where, at each of a trial's owner writes listed in ``races``, another process's
    verdict lands first: ``"failed"`` (the trial is failed as abandoned, as a second worker past the owner-less
    grace would) or ``"disk full"`` (the write itself raises). It reproduces the two interleavings of
    `Tuner._asked` deterministically, on the real storage path."""

    def __init__(self, path, races):
        super().__init__(optuna.storages.journal.JournalFileBackend(str(path)))
        self.races = list(races)

    def set_trial_user_attr(self, trial_id, key, value):
        if key == "owner" and self.races:
            race = self.races.pop(0)
            if race == "failed":
                self.set_trial_state_values(trial_id, optuna.trial.TrialState.FAIL)
            elif race == "disk full":
                raise OSError(28, "No space left on device")
        super().set_trial_user_attr(trial_id, key, value)


def _raced_tuner(tmp_path, races):
    store = RacedJournal(tmp_path if tmp_path.suffix == ".log" else tmp_path / "raced.log", races)
    study, _ = open_study("raced", store=store, objective="convergence")
    backend = get_backend("torch")
    space = load_space("torch", backend.optimizer_names, overrides=SPACE)
    return Tuner.attached(study, store=store, backend=backend, device=backend.resolve_device("cpu"), space=space,
                          objective="convergence", ceiling=32)


def test_a_trial_failed_by_another_process_before_its_owner_is_written_is_asked_again(tmp_path):
    tuner = _raced_tuner(tmp_path, ["failed", "failed"])
    handle = tuner.ask()  # two trials lost to the race, the third named and configured
    trials = tuner.study.get_trials(deepcopy=False)
    assert [t.state for t in trials] == [optuna.trial.TrialState.FAIL] * 2 + [optuna.trial.TrialState.RUNNING]
    assert trials[2].user_attrs["owner"] == owner() and handle.config["batch_size"] in (16, 32)
    handle.fail("test", "ended by the test")
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):  # a race lost every time is not looped on
        _raced_tuner(tmp_path / "raced-again.log", ["failed"] * 3).ask()


def test_an_owner_write_that_fails_fails_its_trial_at_once(tmp_path):
    """The trial would otherwise hold a place in the study until the owner-less grace: the next run would wait."""
    tuner = _raced_tuner(tmp_path, ["disk full"])
    with pytest.raises(OSError, match="No space left"):
        tuner.ask()
    (trial,) = tuner.study.get_trials(deepcopy=False)
    assert trial.state == optuna.trial.TrialState.FAIL and "owner" not in trial.user_attrs
    handle = tuner.ask()  # the storage takes writes again: the study goes on
    assert handle.number == 1
    handle.fail("test", "ended by the test")


@pytest.mark.parametrize("kind", ["journal", "sqlite"])
def test_a_trial_cut_before_naming_its_owner_holds_its_place_only_until_the_unowned_grace(tmp_path, monkeypatch, kind):
    """A process cut between creating a trial and naming its owner (a full disk at that write) leaves a RUNNING
    trial no owner check can judge; on a local file it is failed once this process has seen it so for
    `LOCAL_UNOWNED_SECONDS`, with its reason, instead of holding the study's last place for ever."""
    import autotune.storage
    monkeypatch.setattr(autotune.storage, "LOCAL_UNOWNED_SECONDS", 1.5)
    url = f"journal:{tmp_path / 'j.log'}" if kind == "journal" else f"sqlite:///{tmp_path / 'p.db'}"
    tuner = _tuner(tmp_path, url=url)
    cut = tuner.study.ask()  # what the cut process left: created, no owner, no heartbeat
    started = time.monotonic()
    trials = tuner.trials(1)
    handle = next(trials)
    waited = time.monotonic() - started
    assert 1.5 <= waited < 10, waited  # it held the one place while young, and not for ever
    handle.fail("test", "ended by the test")
    trials.close()
    (frozen,) = [t for t in tuner.study.get_trials(deepcopy=False) if t.number == cut.number]
    assert frozen.state == optuna.trial.TrialState.FAIL
    assert "no owner recorded in 1.5 s" in frozen.user_attrs["failure"]
