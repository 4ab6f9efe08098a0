"""Importing autotune or one of its backend modules changes nothing global of the caller beyond what the
framework's own import changes: no warnings filter, logger level or handler, environment variable or file
descriptor, and no framework operator runs (MindSpore's would print NumPy's ABI message under NumPy 2).

Each case runs two fresh interpreters from the same environment: one imports only the third-party modules the
autotune module stands on, the other imports the autotune module; what each leaves behind must be the same.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT

_SNAPSHOT = r"""
import importlib, json, logging, os, sys, warnings
def snapshot():
    loggers = {name: [item.level, len(item.handlers), item.disabled, item.propagate]
               for name, item in logging.Logger.manager.loggerDict.items() if isinstance(item, logging.Logger)}
    loggers[""] = [logging.root.level, len(logging.root.handlers), logging.root.disabled, True]
    return {"filters": sorted(repr(f) for f in warnings.filters), "environ": dict(os.environ),
            "fds": sorted(os.listdir("/proc/self/fd")), "loggers": loggers,
            "disabled_below": logging.root.manager.disable}
before = snapshot()
for name in sys.argv[1:]:
    importlib.import_module(name)
after = snapshot()
print(json.dumps({"before": before, "after": after}))
"""

_BASE = ["optuna", "numpy", "psutil", "yaml"]
CASES = {
    "autotune": (["autotune"], _BASE),
    "autotune.backends.torch": (["autotune", "autotune.backends.torch"], [*_BASE, "torch"]),
    "autotune.backends.tensorflow": (["autotune", "autotune.backends.tensorflow"], [*_BASE, "keras", "tensorflow"]),
    "autotune.backends.mindspore": (["autotune", "autotune.backends.mindspore"],
                                    [*_BASE, "mindspore", "mindspore.dataset", "mindspore.experimental.optim"]),
}
_FRAMEWORK = {"autotune": "optuna", "autotune.backends.torch": "torch",
              "autotune.backends.tensorflow": "tensorflow", "autotune.backends.mindspore": "mindspore"}


def _imported(modules: list[str]) -> tuple[dict, str]:
    environment = {key: value for key, value in os.environ.items()
                   if key not in ("TF_CPP_MIN_LOG_LEVEL", "KERAS_BACKEND")}
    result = subprocess.run([sys.executable, "-c", _SNAPSHOT, *modules], capture_output=True, text=True,
                            cwd=ROOT, timeout=300, env={**environment, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1]), result.stderr


def _changed_loggers(state: dict) -> dict:
    before, after = state["before"]["loggers"], state["after"]["loggers"]
    return {name: after[name] for name in before if after.get(name) != before[name]}


@pytest.mark.parametrize("module", list(CASES))
def test_importing_changes_nothing_beyond_the_framework(module):
    if importlib.util.find_spec(_FRAMEWORK[module]) is None:
        pytest.skip(f"{_FRAMEWORK[module]} is not installed")
    ours_modules, theirs_modules = CASES[module]
    ours, ours_stderr = _imported(ours_modules)
    theirs, _ = _imported(theirs_modules)
    assert ours["before"] == {**theirs["before"], "environ": ours["before"]["environ"]}  # the same start
    assert set(ours["after"]["filters"]) == set(theirs["after"]["filters"])
    assert ours["after"]["environ"] == theirs["after"]["environ"]
    assert ours["after"]["fds"] == theirs["after"]["fds"]
    assert _changed_loggers(ours) == _changed_loggers(theirs)
    assert ours["after"]["disabled_below"] == ours["before"]["disabled_below"]
    assert "compiled using NumPy 1.x" not in ours_stderr and "Numpy init failed" not in ours_stderr
