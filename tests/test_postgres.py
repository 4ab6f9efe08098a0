"""Many `autotune tune` processes on one study in a real PostgreSQL server started for these tests.

Three processes join one study: one fits the ceiling and the others reuse it, one is killed with SIGKILL in the
middle of a trial and the heartbeat fails that trial while the others go on, every trial ends in a final state
with its owner, the finished trials count the whole study's, and the password is in no output or attribute.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import optuna
import pytest

from autotune import records
from autotune.ceiling_cache import PREFIX
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
    return [sys.executable, "-m", "autotune", "tune", TASK, "--storage", url, "--study", study,
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
    command = _tune(url, "shared", "--trials", str(TRIALS), "--trial-time", "1", "--no-pruning", "--heartbeat", "1")
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
    assert "no heartbeat" in reason and str(victim.pid) in reason
    finished = [t for t in trials if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)]
    # --trials counts the study's finished trials: each process stops once there are that many, so at most the
    # trials the other survivor had in flight come on top
    assert TRIALS <= len(finished) <= TRIALS + 1, len(finished)
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
