"""The search on real torch training: quality, resume after a kill, Ctrl-C, crashing and hanging workers."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import optuna
import pytest

import autotune
from autotune.failures import failed, finished
from autotune.records import read as read_record
from autotune.study import load_study
from autotune.trial import run_trial
from tests.conftest import EXAMPLES, ROOT, TASKS, assert_one_line_error, run_cli

SMALL_SPACE = str(ROOT / "tests" / "spaces" / "small.yaml")
SMALL_TASK = f"{TASKS / 'torch_tasks.py'}:small"


def _states(study):
    return [t.state for t in study.get_trials(deepcopy=False)]


def _rescore(config, steps, seeds=(0, 1, 2)):
    """Median validation loss of ``config`` trained from scratch for ``steps`` steps, in this process.

    A step budget, not seconds: on a shared machine the steps done in a second vary tenfold with the load,
    which would make the comparison a measure of the load, not of the configurations.
    """
    task = autotune.load_task(str(EXAMPLES / "torch_digits.py"))
    losses = [run_trial(task, config, "cpu", steps=steps, seed=seed)["val_loss"] for seed in seeds]
    return float(np.median(losses))


def test_tuned_configuration_beats_the_default_on_digits(tmp_path):
    budget = 60
    result = autotune.tune(str(EXAMPLES / "torch_digits.py"), n_trials=14, trial_steps=budget,
                           storage=f"sqlite:///{tmp_path / 's.db'}", study_name="digits", seed=0, confirm=0)
    assert result.backend == "torch" and result.device == "cpu"
    tuned = {"batch_size": result.batch_size, "optimizer": result.optimizer, "lr": result.lr,
             "optimizer_params": result.optimizer_params}
    default = {"batch_size": 32, "optimizer": "adam", "lr": 1e-3, "optimizer_params": {}}
    tuned_loss, default_loss = _rescore(tuned, budget), _rescore(default, budget)
    assert tuned_loss < default_loss, (tuned, tuned_loss, default_loss)
    study = result.study
    assert {"hardware", "versions", "task", "search_space", "objective"} <= set(study.user_attrs)
    assert any(key.startswith("ceiling:torch:cpu") for key in study.user_attrs)
    assert study.user_attrs["search_space"]["lr_ranges"], "the range test narrowed nothing"
    measured = study.best_trial.user_attrs["measured"]
    assert measured["step_seconds_p95"] >= measured["step_seconds_p50"] > 0
    assert measured["peak_memory_bytes"] > 0


def test_cli_tune_best_and_studies(tmp_path):
    storage = f"sqlite:///{tmp_path / 's.db'}"
    tuned = run_cli("tune", "--confirm", "0", SMALL_TASK, "--trials", "3", "--trial-time", "0.5", "--search-space", SMALL_SPACE,
                    "--storage", storage, "--study", "small", "--json", "--no-range-test")
    assert tuned.returncode == 0, tuned.stderr
    result = json.loads(tuned.stdout)
    for key in ("batch_size", "optimizer", "lr", "optimizer_params", "throughput", "val_loss", "peak_memory_bytes",
                "device", "backend"):
        assert key in result, key
    best = json.loads(run_cli("best", "small", "--storage", storage, "--json").stdout)
    assert best == result
    table = run_cli("best", "small", "--storage", storage)
    assert "learning rate" in table.stdout and "batch size" in table.stdout
    studies = json.loads(run_cli("studies", "--storage", storage, "--json").stdout)
    assert studies[0]["study"] == "small" and studies[0]["complete"] + studies[0]["pruned"] == 3
    assert_one_line_error(run_cli("best", "nope", "--storage", storage), "no study 'nope'", "small")
    markdown = run_cli("report", "small", "--storage", storage, "--format", "md", "-o", "-")
    assert "## Chosen configuration" in markdown.stdout and "| # | state |" in markdown.stdout
    report = json.loads(run_cli("report", "small", "--storage", storage, "--format", "json", "-o", "-").stdout)
    assert report["chosen"] == result and len(report["trials"]) >= 3 and report["pareto_front"]
    page = run_cli("report", "small", "--storage", storage, "--format", "html", "-o", str(tmp_path / "r"))
    assert page.returncode == 0 and "plotly" in (tmp_path / "r" / "report.html").read_text()


def _wait_for(predicate, timeout=240):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.5)
    return False


def _finished(storage, name):
    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except Exception:
        return 0
    return len(finished(study.trials))


def _start_tune(storage, name, trials, *extra):
    args = [sys.executable, "-m", "autotune", "tune", "--confirm", "0", SMALL_TASK, "--trials", str(trials), "--trial-time", "1",
            "--search-space", SMALL_SPACE, "--storage", storage, "--study", name, "--no-range-test", *extra]
    return subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def test_resume_after_kill_keeps_trials_and_fails_the_orphan(tmp_path):
    storage = f"sqlite:///{tmp_path / 's.db'}"
    process = _start_tune(storage, "killed", 40, "--heartbeat", "1")
    assert _wait_for(lambda: _finished(storage, "killed") >= 2)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    time.sleep(3)  # past the 2 s heartbeat grace, so even a trial killed before it named its owner is stale
    before = optuna.load_study(study_name="killed", storage=storage)
    kept = [t.number for t in finished(before.trials)]
    again = run_cli("tune", "--confirm", "0", SMALL_TASK, "--trials", str(len(kept) + 2), "--trial-time", "1", "--search-space",
                    SMALL_SPACE, "--storage", storage, "--study", "killed", "--no-range-test", "--heartbeat", "1")
    assert again.returncode == 0, again.stderr
    assert "resuming study killed" in again.stderr
    study = load_study("killed", storage)
    by_number = {t.number: t for t in study.trials}
    assert all(by_number[n].state.is_finished() for n in kept)
    assert optuna.trial.TrialState.RUNNING not in _states(study)
    assert _finished(storage, "killed") == len(kept) + 2
    orphans = [t for t in study.trials if t.state == optuna.trial.TrialState.FAIL]
    for trial in orphans:
        # a trial killed before it named its owner is failed by Optuna's heartbeat check, which leaves it
        # unwritable: its reason is then the study's `failure:NUMBER`, which `records.read` joins to it
        assert read_record(trial, study.user_attrs).failure, (trial.number, study.user_attrs)


def test_ctrl_c_stops_cleanly(tmp_path):
    storage = f"sqlite:///{tmp_path / 's.db'}"
    process = _start_tune(storage, "interrupted", 40)
    assert _wait_for(lambda: _finished(storage, "interrupted") >= 1)
    time.sleep(0.3)
    os.kill(process.pid, signal.SIGINT)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    assert "best so far" in err
    study = load_study("interrupted", storage)
    assert optuna.trial.TrialState.RUNNING not in _states(study)
    assert _finished(storage, "interrupted") >= 1
    for trial in study.trials:
        if trial.state == optuna.trial.TrialState.FAIL:
            assert trial.user_attrs.get("failure", "").startswith("interrupted")


@pytest.mark.parametrize("close_after", ["new study", "trial 0:"])
def test_a_closed_output_pipe_stops_like_ctrl_c(tmp_path, close_after):
    """`autotune tune … 2>&1 | head`: the reader goes away; the run stops through the interrupt path, exit
    141 (128 + SIGPIPE), keeping what finished and removing a new study that holds nothing yet."""
    storage = f"sqlite:///{tmp_path / 's.db'}"
    args = [sys.executable, "-m", "autotune", "tune", "--confirm", "0", SMALL_TASK, "--trials", "40", "--trial-time",
            "1", "--search-space", SMALL_SPACE, "--storage", storage, "--study", "piped", "--no-range-test"]
    # stdout buffered, as in a shell pipe: what the run prints last must not fail at the interpreter's exit
    env = {key: value for key, value in os.environ.items() if key != "PYTHONUNBUFFERED"}
    process = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    seen = []
    for line in process.stdout:
        seen.append(line)
        if line.startswith(close_after):
            break
    process.stdout.close()  # as `head` exits
    assert process.wait(timeout=120) == 128 + signal.SIGPIPE, seen
    if close_after == "new study":  # closed during the fit: nothing was stored, so nothing is left
        assert "piped" not in optuna.get_all_study_names(storage)
        return
    study = load_study("piped", storage)
    assert optuna.trial.TrialState.RUNNING not in _states(study)
    assert 1 <= _finished(storage, "piped") < 40


@pytest.mark.parametrize("attr, reason", [("segfault", "SIGSEGV"), ("hang", "timeout")])
def test_crashing_and_hanging_workers_fail_their_trial_and_the_study_goes_on(tmp_path, attr, reason):
    result = autotune.tune(f"{TASKS / 'torch_faulty.py'}:{attr}", n_trials=3, trial_time=0.5,
                           search_space=str(ROOT / "tests" / "spaces" / "batch_16_32.yaml"),
                           storage=f"sqlite:///{tmp_path / 's.db'}", study_name=attr, range_test=False,
                           trial_timeout=8, seed=10, confirm=0)  # seed 10 draws 16, 32, 16, 16
    study = result.study
    bad = [t for t in study.trials if failed(t)]
    assert bad, "no trial hit the faulty batch size"
    assert all(t.user_attrs["config"]["batch_size"] == 32 and reason.lower() in t.user_attrs["failure"].lower()
               for t in bad)
    assert all(t.constraints and max(t.constraints.values()) > 0 for t in bad)  # what TPE reads as infeasible
    assert result.batch_size == 16
    assert _finished(f"sqlite:///{tmp_path / 's.db'}", attr) == 3


def test_throughput_and_pareto_objectives(tmp_path):
    storage = f"sqlite:///{tmp_path / 's.db'}"
    fast = autotune.tune(SMALL_TASK, n_trials=4, trial_time=0.3, objective="throughput", search_space=SMALL_SPACE,
                         storage=storage, study_name="fast", range_test=False, confirm=0)
    assert fast.throughput > 0 and fast.objective == "throughput"
    both = autotune.tune(SMALL_TASK, n_trials=3, trial_time=0.3, objective="pareto", search_space=SMALL_SPACE,
                         storage=storage, study_name="both", range_test=False, confirm=0)
    assert both.objective == "pareto" and both.val_loss is not None
    with pytest.raises(autotune.StorageError, match="created with --objective throughput"):
        autotune.tune(SMALL_TASK, n_trials=1, trial_time=0.3, objective="convergence", search_space=SMALL_SPACE,
                      storage=storage, study_name="fast", range_test=False, confirm=0)


def test_in_process_trials_and_journal_storage(tmp_path):
    result = autotune.tune(SMALL_TASK, n_trials=3, trial_time=0.3, search_space=SMALL_SPACE, isolation="none",
                           storage=f"journal:{tmp_path / 'j.log'}", study_name="journal", range_test=False, confirm=0)
    assert result.val_loss is not None and (tmp_path / "j.log").exists()


def test_unreachable_storage_is_one_line_and_hides_the_password(tmp_path):
    result = run_cli("tune", "--confirm", "0", SMALL_TASK, "--storage", "postgresql://alice:hunter2@127.0.0.1:9/none")
    assert_one_line_error(result, "cannot open storage", "alice:***@")
    assert "hunter2" not in result.stderr + result.stdout


def test_resuming_a_study_that_holds_the_trials_asked_for_says_so(tmp_path):
    storage = f"sqlite:///{tmp_path / 's.db'}"
    args = ("tune", "--confirm", "0", SMALL_TASK, "--trials", "1", "--trial-time", "0.3", "--search-space",
            SMALL_SPACE, "--storage", storage, "--study", "full", "--no-range-test", "--no-report")
    assert run_cli(*args).returncode == 0
    again = run_cli(*args)
    assert again.returncode == 0, again.stderr
    assert "--trials 1 are done already: give a larger --trials to add more" in again.stderr
    assert _finished(storage, "full") == 1
