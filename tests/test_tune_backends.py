"""The search on TensorFlow and MindSpore: the same guarantees as torch (quality, resume, bad input)."""

import numpy as np
import optuna
import pytest

import autotune
from autotune.backends import is_installed
from autotune.trial import run_trial
from tests.conftest import EXAMPLES, TASKS, assert_one_line_error, run_cli

BACKENDS = [pytest.param(name, marks=pytest.mark.skipif(not is_installed(name), reason=f"{name} not installed"))
            for name in ("tensorflow", "mindspore")]
LACKS = {"tensorflow": "radam", "mindspore": "adafactor"}


def _example(backend):
    return str(EXAMPLES / f"{backend}_digits.py")


def _digits(backend):
    """The digits example, compiled on MindSpore (`digits_graph`: PyNative's steps made this the slowest test)."""
    return f"{TASKS / 'mindspore_tasks.py'}:digits_graph" if backend == "mindspore" else _example(backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_tuned_beats_the_default_and_resumes(tmp_path, backend):
    budget, storage = 60, f"sqlite:///{tmp_path / 's.db'}"  # steps: independent of the machine's load
    first = autotune.tune(_digits(backend), n_trials=8, trial_steps=budget, storage=storage, study_name="d", seed=0, confirm=0)
    assert first.backend == backend
    result = autotune.tune(_digits(backend), n_trials=12, trial_steps=budget, storage=storage, study_name="d", seed=0, confirm=0)
    study = result.study
    finished = [t for t in study.trials if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)]
    assert len(finished) == 12, "the resumed study keeps and counts the first run's trials"
    task = autotune.load_task(_digits(backend))

    def rescore(config):
        return float(np.median([run_trial(task, config, "cpu", steps=budget, seed=s)["val_loss"] for s in (0, 1, 2)]))

    tuned = rescore({"batch_size": result.batch_size, "optimizer": result.optimizer, "lr": result.lr,
                     "optimizer_params": result.optimizer_params})
    default = rescore({"batch_size": 32, "optimizer": "adam", "lr": 1e-3, "optimizer_params": {}})
    assert tuned < default, (result, tuned, default)


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_input_on_the_backend(tmp_path, backend):
    space = tmp_path / "space.yaml"
    space.write_text(f"optimizers:\n  {LACKS[backend]}: {{}}\n")
    result = run_cli("tune", "--confirm", "0", _example(backend), "--search-space", str(space), "--storage",
                     f"sqlite:///{tmp_path / 's.db'}")
    assert_one_line_error(result, f"optimizers.{LACKS[backend]}", f"not available on backend {backend}")
    wrong = run_cli("tune", "--confirm", "0", _example(backend), "--backend", "torch", "--storage", f"sqlite:///{tmp_path / 's.db'}")
    assert_one_line_error(wrong, "does not match")
    assert_one_line_error(run_cli("fit-batch", _example(backend), "--optimizer", "shampoo"), "not available")
