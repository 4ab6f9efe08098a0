"""A task file that imports its framework itself (``import tensorflow as tf``, as users write) gets the backend's
quiet import: TensorFlow's start-up noise never reaches the terminal, in the main process or in a worker, while
what the file itself writes to standard error comes through unchanged, and the environment is left as it was."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import ROOT, TASKS

from autotune.backends.native_noise import quiet_framework_imports

NOISE = ("oneDNN custom operations", "cpu_feature_guard", "absl::InitializeLog", "rebuild TensorFlow", "cuInit")

PLAIN_KERAS_TASK = '''
import sys

import keras
import numpy as np
import tensorflow as tf

import autotune

print("task says hello", file=sys.stderr)


def build_model():
    return keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])


def load_data():
    rng = np.random.default_rng(0)
    x = rng.random((64, 8), dtype=np.float32)
    y = rng.integers(0, 4, 64)
    return (x[:48], y[:48]), (x[48:], y[48:])


task = autotune.Task(backend="tensorflow", model=build_model, data=load_data, loss="cross_entropy")
'''


def _environment() -> dict[str, str]:
    """This environment without the variables that would quiet TensorFlow on their own."""
    kept = {key: value for key, value in os.environ.items() if key not in ("TF_CPP_MIN_LOG_LEVEL", "KERAS_BACKEND")}
    return {**kept, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}


def test_a_plain_tensorflow_task_file_prints_no_framework_noise(tmp_path):
    """fit-batch imports the file in this process and again in each probe's worker: no noise from either."""
    pytest.importorskip("tensorflow")
    path = tmp_path / "plain_keras.py"
    path.write_text(PLAIN_KERAS_TASK)
    result = subprocess.run(
        [sys.executable, "-m", "autotune", "fit-batch", str(path), "--memory-limit", "2GiB", "--max-batch", "8"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, env=_environment())
    assert result.returncode == 0, result.stderr
    assert not [line for line in result.stderr.splitlines() if any(noise in line for noise in NOISE)], result.stderr
    # the file's own line, once from this process's import and once from the probe worker's
    assert result.stderr.count("task says hello\n") >= 2, result.stderr


def test_other_lines_written_under_the_filter_come_back_unchanged(capfdbinary, monkeypatch):
    """Known noise written to file descriptor 2 is dropped; every other byte comes through as written, and the log
    level is set for the body only."""
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
    with quiet_framework_imports():
        level = os.environ.get("TF_CPP_MIN_LOG_LEVEL")
        os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n")
        os.write(2, b"I0000 00:00:1796322188.700524   10892 port.cc:153] oneDNN custom operations are on.\n")
        os.write(2, b"E0000 00:00:1796158945.308738    5026 cuda_platform.cc:52] failed call to cuInit: x\n")
        os.write(2, b"a user's line \xff\r\n")
        os.write(2, b"E0000 00:00:1796158945.308738    5026 other.cc:1] a real error\n")
    err = capfdbinary.readouterr().err
    assert err == (b"a user's line \xff\r\n"
                   b"E0000 00:00:1796158945.308738    5026 other.cc:1] a real error\n"), err
    assert level == "2" and "TF_CPP_MIN_LOG_LEVEL" not in os.environ


def test_a_task_file_that_loads_no_noisy_framework_writes_its_stderr_as_it_goes(tmp_path):
    """Only an import that loads TensorFlow is filtered: a torch task file's own line reaches the terminal even
    when the import then dies (a filter would have held it back until the import ended, that is never)."""
    path = tmp_path / "dies_at_import.py"
    path.write_text("import os\nimport sys\nimport torch\n\nprint('fatal: the data is gone', file=sys.stderr)\n"
                    "sys.stderr.flush()\nos._exit(3)\n")
    code = f"from autotune.task import load_task; load_task({str(path)!r})"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300,
                            env=_environment())
    assert result.returncode == 3 and "fatal: the data is gone" in result.stderr, result.stderr


def test_loading_a_torch_task_imports_no_tensorflow():
    """The filter knows TensorFlow's noise without importing TensorFlow."""
    reference = f"{TASKS / 'torch_tasks.py'}:small"
    code = (f"import sys; from autotune.task import load_task; load_task({reference!r}); "
            "print('tensorflow' in sys.modules, 'keras' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300,
                            env=_environment())
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "False"], result.stdout
