"""Bad input is caught before work starts: one line, exit 2, no study left behind; SIGTERM is Ctrl-C."""

import os
import signal
import subprocess
import sys
import time

import optuna
import psutil
import pytest

import autotune
from autotune.failures import finished
from tests.conftest import ROOT, TASKS, assert_one_line_error, run_cli

SMALL_TASK = f"{TASKS / 'torch_tasks.py'}:small"
SMALL_SPACE = str(ROOT / "tests" / "spaces" / "small.yaml")


@pytest.mark.parametrize("option, value, message", [
    ("--memory-limit", "-1GiB", "--memory-limit: -1GiB must be a positive size"),
    ("--trial-time", "nan", "--trial-time: nan must be a finite number of seconds above 0"),
    ("--trial-time", "-2", "--trial-time: -2 must be a finite number"),
    ("--timeout", "-5", "--timeout: -5 must be a finite number"),
    ("--timeout", "inf", "--timeout: inf must be a finite number"),
    ("--trial-timeout", "-1", "--trial-timeout: -1 must be a finite number"),
    ("--trial-timeout", "0", "--trial-timeout: 0 must be a finite number"),
    ("--storage-retry", "nan", "--storage-retry"),
    ("--storage-retry", "-1", "--storage-retry"),
    ("--devices", "", "--devices: is empty"),
])
def test_bad_options_are_one_line_before_anything_runs(tmp_path, option, value, message):
    result = run_cli("tune", "--confirm", "0", SMALL_TASK, option, value, cwd=tmp_path)
    assert_one_line_error(result, message)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", ["tune", "fit-batch"])
def test_a_memory_limit_beyond_the_machine_is_one_line_before_anything_runs(tmp_path, command):
    total = autotune.format_size(psutil.virtual_memory().total)
    result = run_cli(command, SMALL_TASK, "--memory-limit", "999TiB", cwd=tmp_path)
    assert_one_line_error(result, "--memory-limit 999.00 TiB is more than the", f"{total} of memory cpu has")
    assert "fit:" not in result.stderr and list(tmp_path.iterdir()) == []


def test_the_library_refuses_non_finite_times_too(tmp_path):
    for kwargs in ({"trial_time": float("nan")}, {"timeout": -1.0}, {"trial_timeout": float("inf")},
                   {"storage_retry": float("nan")}):
        with pytest.raises(autotune.AutotuneError, match="finite number of seconds"):
            autotune.tune(SMALL_TASK, storage=f"sqlite:///{tmp_path / 's.db'}", **kwargs, confirm=0)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("attr, message", [
    ("nan_inputs", "training inputs hold 1 NaN and 0 infinite value(s), the first in sample 7"),
    ("inf_targets", "training targets hold 0 NaN and 1 infinite value(s), the first in sample 5"),
    ("wider_validation", "training inputs have shape (16) per sample, validation inputs (17)"),
])
def test_bad_data_is_one_line_before_any_fit_and_leaves_no_study(tmp_path, attr, message):
    started = time.monotonic()
    result = run_cli("tune", "--confirm", "0", f"{TASKS / 'torch_bad_data.py'}:{attr}", cwd=tmp_path)
    assert_one_line_error(result, message)
    assert "fit:" not in result.stderr and time.monotonic() - started < 30
    assert list(tmp_path.iterdir()) == []  # not even the default database


@pytest.mark.parametrize("task, message", [
    ("torch_tasks.py:broken", "the model fails on 2 training samples (RuntimeError: mat1 and mat2 shapes cannot be "
                              "multiplied (2x16 and 17x4)): the model and the data do not fit together (each "
                              "training input has shape (16))"),
    ("tensorflow_tasks.py:broken", "expected axis -1 of input shape to have value 17, but received input with "
                                   "shape (2, 16)"),
    ("torch_bad_data.py:too_few_outputs", "the targets hold class labels from 0 to 3, but the model gives 3 outputs "
                                          "for loss cross_entropy (labels 0 to 2): give the model's last layer 4 "
                                          "outputs, or map the labels to 0..2"),
    ("tensorflow_tasks.py:too_few_outputs", "the targets hold class labels from 0 to 3, but the model gives 3 "
                                            "outputs for loss cross_entropy (labels 0 to 2)"),
])
def test_a_model_that_does_not_fit_its_data_is_one_line_before_any_fit_or_study(tmp_path, task, message):
    storage = f"sqlite:///{tmp_path / 's.db'}"
    result = run_cli("tune", "--confirm", "0", str(TASKS / task), "--storage", storage)
    assert_one_line_error(result, message)
    assert "fit:" not in result.stderr and "study" not in result.stderr
    assert not (tmp_path / "s.db").exists()  # no storage opened, so no study either


def test_report_writes_only_inside_studies(tmp_path):
    storage = f"sqlite:///{tmp_path / 'db' / 's.db'}"
    (tmp_path / "db").mkdir()
    optuna.create_study(study_name="../../escape", storage=storage)
    result = run_cli("report", "../../escape", "--format", "md,json", "--storage", storage, cwd=tmp_path / "db")
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "db" / "studies").iterdir()) == ["_.._escape"]
    assert sorted(p.name for p in (tmp_path / "db" / "studies" / "_.._escape").iterdir()) == ["report.json", "report.md"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["db"]


def test_sigterm_stops_like_ctrl_c(tmp_path):
    storage = f"sqlite:///{tmp_path / 's.db'}"
    process = subprocess.Popen(
        [sys.executable, "-m", "autotune", "tune", "--confirm", "0", SMALL_TASK, "--trials", "40", "--trial-time", "1",
         "--search-space", SMALL_SPACE, "--storage", storage, "--study", "termed", "--no-range-test"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.time() + 240
    while time.time() < deadline:
        try:
            if finished(optuna.load_study(study_name="termed", storage=storage).trials):
                break
        except KeyError:
            pass
        time.sleep(0.5)
    time.sleep(0.3)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, err
    assert "interrupted (SIGTERM)" in err and "best so far" in err and "Traceback" not in err
    study = optuna.load_study(study_name="termed", storage=storage)
    assert optuna.trial.TrialState.RUNNING not in [t.state for t in study.trials]
    assert all(t.user_attrs.get("failure") == "interrupted: SIGTERM"
               for t in study.trials if t.state == optuna.trial.TrialState.FAIL)
