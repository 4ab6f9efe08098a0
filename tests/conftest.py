"""Shared test helpers: paths, the CLI in a subprocess, and which backends are installed here."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from exclusive import pytest_runtest_protocol, pytest_xdist_auto_num_workers  # noqa: F401 - timing tests run alone

ROOT = Path(__file__).resolve().parent.parent
TASKS = ROOT / "tests" / "tasks"
EXAMPLES = ROOT / "examples"


def load_example(name: str) -> Any:
    """The module ``examples/NAME.py``, imported from its file (examples are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m autotune ARGS`` and capture its output (text)."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "autotune", *args], cwd=cwd or ROOT, capture_output=True, text=True,
        timeout=timeout, env=full_env,
    )


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    """Exit code 2, one line on stderr naming the problem, no traceback."""
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in lines if "error" in line.lower()]
    assert len(errors) == 1 and lines[-1] == errors[0], result.stderr  # progress lines may come before it
    assert errors[0].startswith("autotune: error: "), errors[0]
    for fragment in fragments:
        assert fragment in errors[0], (fragment, errors[0])


@pytest.fixture
def tmp_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


# Each backend's conformance case: its small and memory-hungry tasks and a CPU address-space cap under which
# the hungry task fits a few hundred samples. Backends whose framework or task file is missing are skipped.
BACKEND_CASES = {
    "torch": {"tasks": TASKS / "torch_tasks.py", "cap": "1GiB"},
    "tensorflow": {"tasks": TASKS / "tensorflow_tasks.py", "cap": "1.4GiB"},
    # MindSpore 2.10's CPU memory pool takes address space in 1 GiB blocks (its growth unit is fixed on the
    # CPU: set_memory's increase_size is ignored there): a worker maps 816 MiB after import and about 1.9 GiB
    # once the first block is taken, so under 2.5 GiB the pool gets one block, and the hungry task's boundary is
    # where its tensors outgrow it. fit-batch reckons with whole blocks (Backend.cpu_pool_block_bytes).
    "mindspore": {"tasks": TASKS / "mindspore_tasks.py", "cap": "2.5GiB"},
}


def backend_params():
    """pytest params for every backend case, skipped where it cannot run here."""
    from autotune.backends import is_installed

    params = []
    for name, case in BACKEND_CASES.items():
        marks = []
        if not is_installed(name):
            marks.append(pytest.mark.skip(reason=f"{name} is not installed"))
        elif not case["tasks"].exists():
            marks.append(pytest.mark.skip(reason=f"no test tasks for {name} yet"))
        params.append(pytest.param(name, id=name, marks=marks))
    return params
