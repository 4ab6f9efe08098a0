"""The learning-rate range test against its share of the study when a step must be traced or compiled first:
the one-off cost is not counted against the sweep, and a share shorter than that cost runs no test at all."""

import time

import optuna
import pytest

import autotune
from autotune.backends import get_backend
from autotune.budget import Phases
from autotune.narrowing import fresh_first_step, narrow_learning_rates, shared_lr_ranges
from autotune.space import load_space
from autotune.training import RANGE_TEST_MIN_STEPS, BatchSampler, lr_range_test
from tests.conftest import TASKS


def test_a_one_off_first_step_leaves_the_rest_of_the_share_to_the_sweep():
    """A session whose first step traces or compiles (Keras, MindSpore's graph mode, torch.compile) pays that
    once: the sweep is sized by the second step, from what the first left of the budget. Here a real torch
    session's first step carries a 2 s stand-in for a trace; sized by the first step, as before, the 5 s share
    fitted two steps and the test was skipped."""
    task = autotune.load_task(f"{TASKS / 'torch_tasks.py'}:small")
    backend = get_backend("torch")
    data = task.load_data()
    session = backend.session(task, data, backend.resolve_device("cpu"), batch_size=16,
                              optimizer={"name": "adam", "lr": 1e-4})
    step, calls = session.train_step, []

    def traced_once(batch):
        if not calls:
            time.sleep(2.0)
        calls.append(1)
        return step(batch)

    session.train_step, session.first_step_compiles = traced_once, True
    n_train, _ = backend.data_size(data)
    test = lr_range_test(session, BatchSampler(n_train, 16, 0), 1e-4, 1.0, steps=60, seconds=5.0)
    assert test.get("skipped") is None and len(test["rates"]) >= RANGE_TEST_MIN_STEPS, test.get("skipped")
    assert test["best_lr"] is not None
    assert test["step_seconds"] < 0.5  # the steady step's time is reported, not the first one's


def _narrow(study, space, first_step_seconds, runs):
    backend = get_backend("torch")

    def run(function, kwargs, limit, receive):
        runs.append(kwargs)
        return function(**kwargs)

    events = []
    narrow_learning_rates(study, space, handle=f"{TASKS / 'torch_tasks.py'}:small", device=backend.resolve_device("cpu"),
                          batch_size=16, seed=0, n_trials=2, trial_time=4.0, trial_steps=None, timeout=None, run=run,
                          phases=Phases(), say=events.append, first_step_seconds=first_step_seconds)
    return events


def test_a_share_shorter_than_a_fresh_first_step_runs_no_range_test_and_says_why():
    backend = get_backend("torch")
    space = load_space("torch", backend.optimizer_names, overrides={"optimizers": {"adam": {}, "sgd": {}}})
    study, runs = optuna.create_study(), []
    events = _narrow(study, space, 17.0, runs)  # MobileNetV2's first step in a fresh process; the share is 1.2 s
    assert runs == [] and space.lr_ranges == {}
    (warning,) = [e for e in events if e.get("event") == "warning"]
    assert "range test is skipped" in warning["message"] and "took 17 s" in warning["message"]
    tests = study.user_attrs["search_space"]["range_tests"]
    assert set(tests) == {"adam", "sgd"} and all("17 s" in test["skipped"] for test in tests.values())
    assert shared_lr_ranges(study.user_attrs) == {"lr_ranges": {}}  # a process joining the study does not wait
    # nor decides again (its own first step, or its device's, might pass): every process searches the same rates
    _narrow(study, space, 0.05, runs)
    assert runs == [] and space.lr_ranges == {}


def test_a_share_longer_than_the_first_step_runs_the_range_test():
    backend = get_backend("torch")
    space = load_space("torch", backend.optimizer_names, overrides={"optimizers": {"adam": {}}})
    study, runs = optuna.create_study(), []
    events = _narrow(study, space, 0.05, runs)
    assert len(runs) == 1 and not [e for e in events if e.get("event") == "warning"]
    assert set(study.user_attrs["search_space"]["range_tests"]) == {"adam"}


def test_the_fresh_first_step_is_the_first_probe_of_a_fit():
    def record(*firsts):
        return {"probes": [{"batch_size": 8 * (i + 1), "first_step_seconds": f} for i, f in enumerate(firsts)]}

    assert fresh_first_step([record(17.2, 0.3, 0.4)]) == 17.2  # later probes reuse the traced step
    assert fresh_first_step([record(9.0), record(12.0), None]) == 9.0  # the precision that starts soonest
    assert fresh_first_step([{"probes": [{"batch_size": 8}]}, None, {}]) is None  # a record from before the figure
