"""Processes joining one study: different trials from one seed, one ceiling fit and one range test in all."""

import os
import subprocess
import sys

import optuna

from autotune.failures import surplus
from autotune.sampler import TrialSeededTPESampler, trial_seed
from autotune.space import load_space
from autotune.backends import get_backend
from tests.conftest import ROOT, TASKS

SPACE = load_space("torch", get_backend("torch").optimizer_names, ROOT / "tests" / "spaces" / "small.yaml")


def _configs(study, numbers):
    sampler = TrialSeededTPESampler(seed=0, multivariate=True, group=True, n_startup_trials=4)
    study.sampler = sampler
    out = []
    for _ in numbers:
        trial = study.ask()
        out.append((trial.number, SPACE.suggest(trial, 64)))
        study.tell(trial, 1.0)
    return out


def test_a_trial_draws_from_the_study_seed_and_its_number():
    alone = dict(_configs(optuna.create_study(), range(3)))
    again = dict(_configs(optuna.create_study(), range(3)))
    assert alone == again  # one process: reproducible
    shifted = optuna.create_study()
    shifted.enqueue_trial({"log2_batch_size": 5.0, "optimizer": "sgd", "sgd.lr": 0.01})
    _configs(shifted, range(1))  # trial 0 taken by "another process"
    joined = dict(_configs(shifted, range(3)))
    assert joined[1] == alone[1] and joined[2] == alone[2]  # the number, not the process, picks the draws
    assert len({trial_seed(0, n) for n in range(1000)}) == 1000 and trial_seed(1, 0) != trial_seed(0, 0)


def test_two_processes_on_one_study_share_the_fit_and_range_test_and_draw_different_trials(tmp_path):
    storage = f"sqlite:///{tmp_path / 's.db'}"
    command = [sys.executable, "-m", "autotune", "tune", "--confirm", "0", f"{TASKS / 'torch_tasks.py'}:small", "--trials", "10",
               "--trial-steps", "150", "--search-space", str(ROOT / "tests" / "spaces" / "small.yaml"),
               "--storage", storage, "--study", "both", "--seed", "0", "--confirm", "0", "--no-report"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    first = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    second = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    outputs = [process.communicate(timeout=600) for process in (first, second)]
    assert first.returncode == 0 and second.returncode == 0, outputs
    errs = [err for _, err in outputs]
    assert sum("fitting the batch-size ceiling" in err for err in errs) == 1, errs
    assert sum("learning-rate range test:" in err for err in errs) == 1, errs
    study = optuna.load_study(study_name="both", storage=storage)
    by_process = {}
    for trial in study.trials:
        by_process.setdefault(trial.user_attrs["owner"]["pid"], []).append(trial)
    assert len(by_process) == 2, "one process did every trial: nothing was run side by side"
    # a surplus trial (both processes started one for the last place) never ran: no configuration drawn.
    # The sampled reference rate, not the trial's rate: scaling to a large batch clips that at lr.high, so two
    # different draws may share it (a CI run had two trials at 64, adam, 0.3)
    configs = [(t.user_attrs["config"]["batch_size"], t.user_attrs["config"]["optimizer"],
                round(t.user_attrs["config"]["lr_reference"], 12)) for t in study.trials if not surplus(t)]
    assert len(set(configs)) == len(configs), configs  # with one seed per process the first ones were twins


def test_three_processes_end_the_study_with_exactly_its_trials(tmp_path):
    storage = f"sqlite:///{tmp_path / 's.db'}"
    command = [sys.executable, "-m", "autotune", "tune", f"{TASKS / 'torch_tasks.py'}:small", "--trials", "4",
               "--trial-steps", "40", "--search-space", str(ROOT / "tests" / "spaces" / "small.yaml"),
               "--storage", storage, "--study", "exact", "--no-range-test", "--confirm", "0", "--no-report"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    processes = [subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  env=env) for _ in range(3)]
    outputs = [process.communicate(timeout=600) for process in processes]
    assert [p.returncode for p in processes] == [0, 0, 0], outputs
    trials = optuna.load_study(study_name="exact", storage=storage).get_trials(deepcopy=False)
    states = [t.state for t in trials]
    finished = [t for t in trials if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)]
    # each process stopped starting trials once the study's finished and running ones made 4: none overshot
    assert len(finished) == 4 and optuna.trial.TrialState.RUNNING not in states, states
    unrun = [t for t in trials if t.state == optuna.trial.TrialState.FAIL]
    assert all(t.user_attrs["failure"].startswith("surplus") for t in unrun), [t.user_attrs for t in unrun]
