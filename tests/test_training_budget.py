"""A trial's too-slow verdict on a real torch session: a first step that stalls (a process's first touch of
its memory) is judged by the second; a batch whose every step takes over half the budget is pruned as too slow."""

import time

import pytest
import torch

import autotune
from autotune.backends import get_backend
from autotune.training import BatchSampler, TooSlow, configured_session, train_for_budget
from tests.tasks.blobs import make_blobs


class Stalling(torch.nn.Module):
    """A small classifier whose forward passes in training sleep ``stall`` seconds, the first ``times`` of them."""

    def __init__(self, stall: float, times: int):
        super().__init__()
        self.layer = torch.nn.Linear(16, 4)
        self.stall, self.left = stall, times

    def forward(self, x):
        if self.training and self.left > 0:
            self.left -= 1
            time.sleep(self.stall)
        return self.layer(x)


def _train(stall, times, seconds=0.8, built=None):
    built = [] if built is None else built

    def model():
        built.append(Stalling(stall, times))
        return built[-1]

    task = autotune.Task(backend="torch", model=model, data=make_blobs,
                         loss="cross_entropy")
    backend = get_backend("torch")
    data = task.load_data()
    session = configured_session(backend, task, data, backend.resolve_device("cpu"), {"batch_size": 16},
                                 optimizer={"name": "sgd", "lr": 0.01}, seed=0)
    return train_for_budget(session, BatchSampler(480, 16, 0), seconds=seconds, reports=2)


def test_a_first_step_that_stalls_is_judged_by_the_second():
    result = _train(stall=0.5, times=1)  # over half the 0.8 s budget, once
    assert result["steps"] > 1 and result["val_loss"] is not None


def test_a_batch_whose_steps_all_take_over_half_the_budget_is_too_slow():
    with pytest.raises(TooSlow, match="over half the 0.8 s trial budget"):
        _train(stall=0.5, times=100)


def test_a_first_step_that_takes_the_whole_budget_is_too_slow_at_once():
    built = []
    with pytest.raises(TooSlow):
        _train(stall=0.9, times=100, built=built)
    assert [model.left for model in built] == [99]  # one stalled step, not a second


class SlowToEvaluate(torch.nn.Module):
    """A small classifier whose forward passes outside training sleep ``stall`` seconds: costly validation."""

    def __init__(self, stall: float):
        super().__init__()
        self.layer = torch.nn.Linear(16, 4)
        self.stall = stall

    def forward(self, x):
        if not self.training:
            time.sleep(self.stall)
        return self.layer(x)


def _reports(stall, seconds=1.0):
    task = autotune.Task(backend="torch", model=lambda: SlowToEvaluate(stall), data=make_blobs, loss="cross_entropy")
    backend = get_backend("torch")
    data = task.load_data()
    session = configured_session(backend, task, data, backend.resolve_device("cpu"), {"batch_size": 16},
                                 optimizer={"name": "sgd", "lr": 0.01}, seed=0)
    return train_for_budget(session, BatchSampler(480, 16, 0), seconds=seconds, reports=8, n_val=120,
                            pruner_reports=(2, 6))


@pytest.mark.timing
def test_cheap_validation_runs_at_every_report():
    # 4 s: every report evaluates while one timed batch stays under 26 ms (a 1 s budget leaves 6.7 ms, which one
    # preemption of a loaded machine outlasts)
    result = _reports(stall=0.0, seconds=4.0)
    assert [index for index, _loss, _seconds in result["history"]] == list(range(1, 9))


@pytest.mark.timing
def test_costly_validation_runs_only_where_the_pruner_reads_and_at_the_end():
    # one pass over the 120 validation samples (8 batches of 16, 12 ms each) fills the tenth of the 1 s budget
    # that evaluation may take (a quarter would leave room for a batch at every report)
    result = _reports(stall=0.012)
    assert [index for index, _loss, _seconds in result["history"]] == [2, 6, 8]
    assert result["report_subset_batches"] == 1  # intermediate reports on the first batch only
    assert result["eval_seconds"] < 0.012 * (8 + 2) + 0.15  # the final whole pass and two one-batch reports
