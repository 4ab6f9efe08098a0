"""PyTorch-only behaviour that the conformance suite cannot see through the neutral interface."""

import torch

from autotune import load_task
from autotune.backends import get_backend
from autotune.training import BatchSampler

SMALL = "tests/tasks/torch_tasks.py:small"


def _session(optimizer):
    task = load_task(SMALL)
    backend = get_backend("torch")
    data = task.load_data()
    session = backend.session(task, data, backend.resolve_device("cpu"), batch_size=32, optimizer=optimizer, seed=1)
    return session, BatchSampler(data.n_train, 32, 1)


def _state_tensors(session):
    return {(id(p), key): value.clone() for p, state in session.optimizer.state.items()
            for key, value in state.items() if torch.is_tensor(value)}


def test_allocating_optimizer_state_fills_it_restores_lr_and_is_idempotent():
    for name in ("adam", "momentum", "adagrad", "rmsprop"):
        session, sampler = _session({"name": name, "lr": 0.05, "weight_decay": 0.1})
        trainable = [p for p in session.model.parameters() if p.requires_grad]
        before = [p.detach().clone() for p in trainable]
        session.allocate_optimizer_state()
        assert all(p in session.optimizer.state and session.optimizer.state[p] for p in trainable), name
        assert all(group["lr"] == 0.05 for group in session.optimizer.param_groups), name
        assert all(p.grad is None for p in trainable), name
        assert all(torch.equal(a, p) for a, p in zip(before, trainable)), name
        session.train_step(sampler.next())
        assert any(not torch.equal(a, p) for a, p in zip(before, trainable)), name  # it trains at its own lr
        state = _state_tensors(session)
        session.allocate_optimizer_state()  # state already there: nothing changes
        assert all(torch.equal(state[key], value) for key, value in _state_tensors(session).items()), name
        session.close()


def test_allocating_optimizer_state_fills_only_what_is_missing():
    session, sampler = _session({"name": "adam", "lr": 0.05, "weight_decay": 0.1})
    session.train_step(sampler.next())
    first, *others = [p for p in session.model.parameters() if p.requires_grad]
    kept = _state_tensors(session)
    del session.optimizer.state[first]  # as if this parameter had never had a gradient
    session.allocate_optimizer_state()
    assert session.optimizer.state[first] and "exp_avg" in session.optimizer.state[first]
    assert all(torch.equal(kept[(id(p), key)], value) for p in others
               for key, value in session.optimizer.state[p].items() if torch.is_tensor(value))
    session.close()
