"""Many `autotune tune` processes on one study in a real PostgreSQL server started for these tests.

Three processes join one study: one fits the ceiling and the others reuse it, one is killed with SIGKILL in the
middle of a trial and the heartbeat fails that trial while the others go on, every trial ends in a final state
with its owner, the finished trials count the whole study's, and the password is in no output or attribute.
"""

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time

import optuna
import pytest
import sqlalchemy.exc

from autotune import records
from autotune.ceiling_cache import PREFIX
from autotune.storage import open_storage
from tests.conftest import EXAMPLES, ROOT, run_cli
from tests.postgres_server import postgres_bin, running_server

pytestmark = pytest.mark.skipif(postgres_bin() is None, reason="PostgreSQL's binaries (initdb, pg_ctl) are not "
                                "installed: apt-get install postgresql (.ci/run does)")

TASK = str(EXAMPLES / "torch_digits.py")
SPACE = str(ROOT / "tests" / "spaces" / "small.yaml")  # batches of 16 to 64: trials of a second or so
TRIALS = 12


@pytest.fixture(scope="module")
def server():
    with running_server() as started:
        yield started


def _tune(url, study, *extra):
    return [sys.executable, "-m", "autotune", "tune", "--confirm", "0", TASK, "--storage", url, "--study", study,
            "--search-space", SPACE, "--no-range-test", *extra]


def _everything_stored(url):
    """Every study's and trial's attributes in the storage, as one text (for the password check)."""
    storage = optuna.storages.RDBStorage(url)
    parts = []
    for summary in optuna.get_all_study_summaries(storage, include_best_trial=False):
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        parts.append([summary.study_name, study.user_attrs, storage.get_study_system_attrs(study._study_id)])
        parts.extend([t.user_attrs, t.system_attrs, t.params] for t in study.get_trials(deepcopy=False))
    return json.dumps(parts, default=repr)


def _wait_for_running_trial(url, study_name, pid, timeout=300):
    storage = optuna.storages.RDBStorage(url)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            trials = optuna.load_study(study_name=study_name, storage=storage).get_trials(deepcopy=False)
        except KeyError:
            trials = []
        for trial in trials:
            if trial.state == optuna.trial.TrialState.RUNNING and trial.user_attrs.get("owner", {}).get("pid") == pid:
                return trial.number
        time.sleep(0.1)
    raise AssertionError(f"process {pid} ran no trial in {timeout} s")


def test_three_processes_share_one_study_and_a_killed_one_loses_only_its_trial(server, tmp_path):
    url = server.fresh_database("three")
    # trials of a second of training each (a time budget: as long on a loaded machine), none pruned, so that the
    # survivors still start trials after the killed one's 2 s grace, when the heartbeat check runs
    command = _tune(url, "shared", "--trials", str(TRIALS), "--trial-time", "1", "--no-pruning", "--heartbeat", "1",
                    "--confirm", "0", "--no-report")
    logs = [tmp_path / f"p{i}.log" for i in range(3)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    processes = [subprocess.Popen(command, cwd=ROOT, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env,
                                  start_new_session=True) for log in logs]
    victim = processes[2]
    killed_trial = _wait_for_running_trial(url, "shared", victim.pid)
    os.killpg(victim.pid, signal.SIGKILL)  # the process and its trial worker, as a lost machine would be
    victim.wait(timeout=30)
    for process in processes[:2]:
        assert process.wait(timeout=600) == 0, [log.read_text()[-3000:] for log in logs]
    outputs = [log.read_text() for log in logs]

    study = optuna.load_study(study_name="shared", storage=url)
    trials = study.get_trials(deepcopy=False)
    states = [t.state for t in trials]
    assert optuna.trial.TrialState.RUNNING not in states, states  # nothing left hanging
    assert sorted(t.number for t in trials) == list(range(len(trials)))  # none lost, none twice
    killed = trials[killed_trial]
    assert killed.state == optuna.trial.TrialState.FAIL, killed
    reason = records.read(killed, study.user_attrs).failure or ""
    # a survivor on this host sees the victim's process gone (its owner record) before its heartbeat goes stale;
    # on another host the heartbeat check fails it (test_study_parts)
    assert reason.startswith("interrupted: ") and str(victim.pid) in reason, reason
    finished = [t for t in trials if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)]
    # --trials counts the study's finished trials: no process starts one while finished and running ones make
    # that many, and the killed one's running trial held no place
    assert len(finished) == TRIALS, len(finished)
    owners = {t.user_attrs["owner"]["pid"] for t in trials}
    assert owners <= {p.pid for p in processes} and len(owners) == 3, owners
    survivors = {t.user_attrs["owner"]["pid"] for t in finished}
    assert survivors == {processes[0].pid, processes[1].pid}, "both survivors went on after the kill"

    fitters = [i for i, out in enumerate(outputs) if "fitting the batch-size ceiling" in out]
    assert len(fitters) == 1, outputs  # one fit for the three processes, no race
    (key,) = [k for k in study.user_attrs if k.startswith("ceiling:")]
    record = study.user_attrs[key]
    assert record["fitted_by"]["pid"] == processes[fitters[0]].pid
    assert record["fitted_by"]["host"] == socket.gethostname()
    assert all(t.user_attrs["config"]["batch_size"] <= record["batch_size"] for t in trials if "config" in t.user_attrs)

    stored = _everything_stored(url)
    for text in (*outputs, stored):
        assert server.password not in text
    assert all("autotune:***@127.0.0.1" in out for out in outputs), outputs[0][:500]


def test_a_repeat_tune_reuses_the_stored_ceiling_and_refit_fits_again(server):
    url = server.fresh_database("repeat")
    quick = ("--trials", "1", "--trial-steps", "20")
    first = run_cli(*_tune(url, "first", *quick)[3:])
    assert first.returncode == 0, first.stderr
    assert "fitting the batch-size ceiling" in first.stderr
    again = run_cli(*_tune(url, "again", *quick)[3:])
    assert again.returncode == 0, again.stderr
    assert "fitting the batch-size ceiling" not in again.stderr and "reusing the ceiling" in again.stderr
    refit = run_cli(*_tune(url, "refit", *quick, "--refit")[3:])
    assert refit.returncode == 0, refit.stderr
    assert "fitting the batch-size ceiling" in refit.stderr and "reusing" not in refit.stderr
    storage = optuna.storages.RDBStorage(url)
    ceilings = {name: optuna.load_study(study_name=name, storage=storage).user_attrs for name in ("first", "again")}
    (key,) = [k for k in ceilings["first"] if k.startswith("ceiling:")]
    assert ceilings["again"][key]["batch_size"] == ceilings["first"][key]["batch_size"]
    assert ceilings["again"][key]["fitted_by"] == ceilings["first"][key]["fitted_by"]  # the first run's fit
    assert ceilings["again"][key]["cached"] == ceilings["again"][key]["fingerprint"]
    entries = {s.study_name: [k for k in s.system_attrs if k.startswith(PREFIX)] for s in storage.get_all_studies()}
    assert entries == {"first": [PREFIX + ceilings["again"][key]["cached"]], "again": [],
                       "refit": [PREFIX + ceilings["again"][key]["cached"]]}  # the fitting studies keep the fits
    for result in (first, again, refit):
        assert server.password not in result.stdout + result.stderr
    assert server.password not in _everything_stored(url)


def test_a_short_heartbeat_cuts_the_default_retry_and_a_longer_chosen_one_is_warned(server):
    url = server.fresh_database("beat")
    # the default wait stays under the grace less one beat: 20 s under 30 - 10, 1 s under --heartbeat 1's 2 - 1
    assert open_storage(url).retry_seconds == 20
    assert open_storage(url, heartbeat=1, grace=2).retry_seconds == 1
    assert open_storage(url, heartbeat=1, grace=2, retry=30).retry_seconds == 30  # a chosen wait is kept
    quick = ("--trials", "1", "--trial-steps", "2", "--no-report", "--heartbeat", "1")
    chosen = run_cli(*_tune(url, "beat", *quick, "--storage-retry", "5")[3:])
    assert chosen.returncode == 0, chosen.stderr
    warnings = [line for line in chosen.stderr.splitlines() if line.startswith("autotune: warning: ")]
    assert len(warnings) == 1 and "--storage-retry 5 s outlasts the heartbeat's grace" in warnings[0], chosen.stderr
    assert "--storage-retry 1 or less" in warnings[0] and server.password not in chosen.stderr


def _running_at_least(url, study_name, number, timeout=300):
    """Wait until trial ``number`` or a later one of ``study_name`` is RUNNING (so earlier ones have ended)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(KeyError, optuna.exceptions.OptunaError, sqlalchemy.exc.SQLAlchemyError):
            trials = optuna.load_study(study_name=study_name, storage=url).get_trials(deepcopy=False)
            if any(t.number >= number and t.state == optuna.trial.TrialState.RUNNING for t in trials):
                return
        time.sleep(0.1)
    raise AssertionError(f"no trial {number} of {study_name!r} ran in {timeout} s")


def _lost_server_run(server, url, study, retry, tmp_path):
    """A `tune` whose server is stopped while its second trial runs; returns the process and its log."""
    log = tmp_path / f"{study}.log"
    command = _tune(url, study, "--trials", "4", "--trial-time", "1", "--confirm", "0", "--no-report",
                    "--storage-retry", str(retry))
    process = subprocess.Popen(command, cwd=ROOT, stdout=log.open("w"), stderr=subprocess.STDOUT,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    _running_at_least(url, study, 1)
    # while the trial trains: a statement of Optuna's cut in flight (a rare instant) ends the run, not waits
    time.sleep(0.5)
    server.halt()
    return process, log


@pytest.fixture(scope="module")
def lost_url(server):
    """One database for the lost-server tests: the second reuses the first one's ceiling fit."""
    return server.fresh_database("lost")


def test_a_server_back_within_the_retry_window_loses_nothing(server, lost_url, tmp_path):
    url = lost_url
    process, log = _lost_server_run(server, url, "back", 60, tmp_path)
    time.sleep(3)
    server.restart()
    assert process.wait(timeout=300) == 0, log.read_text()[-3000:]
    output = log.read_text()
    assert output.count("waiting up to 60 s") == 1 and "answers again" in output, output[-3000:]
    assert server.password not in output and "Traceback" not in output
    trials = optuna.load_study(study_name="back", storage=url).get_trials(deepcopy=False)
    assert sorted(t.number for t in trials) == list(range(len(trials)))  # none lost, none twice
    assert all(t.state != optuna.trial.TrialState.RUNNING for t in trials)
    assert len([t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]) >= 4 - sum(
        t.state == optuna.trial.TrialState.PRUNED for t in trials)


def test_a_server_lost_for_longer_stops_in_one_line_and_resume_fails_the_orphan(server, lost_url, tmp_path):
    url = lost_url
    process, log = _lost_server_run(server, url, "gone", 2, tmp_path)
    try:
        assert process.wait(timeout=120) == 2, log.read_text()[-3000:]
    finally:
        server.restart()
    output = log.read_text()
    assert "Traceback" not in output and server.password not in output, output[-3000:]
    last = output.strip().splitlines()[-1]
    assert last.startswith("autotune: error: lost the storage server postgresql://autotune:***@127.0.0.1:"), last
    study = optuna.load_study(study_name="gone", storage=url)
    before = {t.number: t.values for t in study.get_trials(deepcopy=False) if t.state.is_finished()}
    (orphan,) = [t.number for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.RUNNING]
    assert before, "the trial that ended before the fault is stored"

    resumed = run_cli(*_tune(url, "gone", "--trials", str(len(before) + 1), "--trial-time", "1", "--confirm", "0",
                             "--no-report")[3:])
    # a 1 s budget may leave no trial better than the untrained model: exit 1 then, a verdict on the model
    assert resumed.returncode == 0 or "does not learn" in resumed.stderr, resumed.stderr[-3000:]
    assert "1 orphaned trial(s) marked failed" in resumed.stderr, resumed.stderr[-3000:]
    trials = {t.number: t for t in optuna.load_study(study_name="gone", storage=url).get_trials(deepcopy=False)}
    assert trials[orphan].state == optuna.trial.TrialState.FAIL
    assert trials[orphan].user_attrs["failure"].endswith("ended without finishing")
    assert {n: trials[n].values for n in before} == before  # the finished trials intact
