"""`autotune fit-batch` from the command line: JSON output, sizes as people write them, clear errors."""

import json

from tests.conftest import TASKS, assert_one_line_error, run_cli

HUNGRY = f"{TASKS / 'torch_tasks.py'}:hungry"
SMALL = f"{TASKS / 'torch_tasks.py'}:small"


def test_fit_batch_json_under_a_cap():
    result = run_cli("fit-batch", HUNGRY, "--memory-limit", "1GiB", "--margin", "0", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert {"batch_size", "peak_memory_bytes", "probes", "ooms", "model", "granularity", "throughput"} <= set(data)
    assert data["batch_size"] >= 64 and data["ooms"] <= 1
    assert all("throughput" in probe for probe in data["probes"])
    first = next(probe for probe in data["probes"] if probe["fits"])
    assert first["first_step_seconds"] > 0  # what a fresh session's first step costs: read by the range test


def test_fit_batch_table():
    result = run_cli("fit-batch", SMALL, "--max-batch", "128")
    assert result.returncode == 0, result.stderr
    assert "batch size" in result.stdout and "128" in result.stdout and "samples/s" in result.stdout


def test_max_batch_larger_than_dataset():
    assert_one_line_error(run_cli("fit-batch", SMALL, "--max-batch", "5000"), "larger than the 480 training samples")


def test_limit_too_small():
    assert_one_line_error(run_cli("fit-batch", SMALL, "--memory-limit", "200MiB"), "does not fit", "--memory-limit")


def test_bad_size_and_unknown_optimizer():
    result = run_cli("fit-batch", SMALL, "--memory-limit", "lots")
    assert result.returncode == 2 and "cannot read size 'lots'" in result.stderr
    assert_one_line_error(run_cli("fit-batch", SMALL, "--optimizer", "shampoo"), "not available on backend torch")


def test_broken_model():
    assert_one_line_error(run_cli("fit-batch", f"{TASKS / 'torch_tasks.py'}:broken"), "other than memory")
