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
