"""The Task contract on MindSpore with real training code (issue 10): compute_loss in PyNative and graph mode,
integer targets that stay integer, losses that follow a final softmax or sigmoid, and one-line errors for broken
contracts. Real MindSpore throughout, no mocks."""

import math
import re

import numpy as np
import pytest

pytest.importorskip("mindspore")

import mindspore as ms  # noqa: E402
import mindspore.dataset as msds  # noqa: E402
from mindspore import nn, ops  # noqa: E402

from autotune import Task, TaskError, load_task  # noqa: E402
from autotune.backends import get_backend  # noqa: E402
from autotune.testing import cpu_session, train as _train  # noqa: E402
from tests.conftest import TASKS, assert_one_line_error, run_cli  # noqa: E402
from tests.tasks.blobs import make_blobs  # noqa: E402

BACKEND = get_backend("mindspore")
TASKS_FILE = TASKS / "mindspore_contract.py"


def _session(task, batch_size=32, optimizer=None, seed=0):
    return cpu_session("mindspore", task, batch_size, optimizer, seed)


def _mlp(*head):
    return nn.SequentialCell(nn.Dense(16, 32), nn.ReLU(), nn.Dense(32, 4), *head)


def _one_line(caught):
    assert "\n" not in str(caught.value), str(caught.value)
    return str(caught.value)


# --- integer targets stay integer ---------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.int64, np.int32])
def test_custom_loss_receives_the_integer_targets_of_the_data(dtype):
    (x, y), (xv, yv) = make_blobs()
    seen = []

    def loss(logits, labels):  # PyNative runs it as Python: each call records what it got
        seen.append(labels.dtype)
        return ops.nll_loss(ops.log_softmax(logits, axis=1), labels)

    data = lambda: ((x.astype(np.float64), y.astype(dtype)), (xv, yv.astype(dtype)))  # noqa: E731
    session, sampler = _session(Task(backend="mindspore", model=_mlp, data=data, loss=loss))
    before = session.evaluate()
    assert _train(session, sampler) < 0.5 * before
    assert set(seen) == {ms.int64 if dtype == np.int64 else ms.int32}, set(seen)
    assert session.train[0].dtype == np.float32  # floating inputs may still become float32


# --- compute_loss -------------------------------------------------------------------------------------------

def _mean_cross_entropy(model, batch):
    x, y = batch
    return ops.nll_loss(ops.log_softmax(model(x), axis=1), y)


@pytest.mark.parametrize("mode", ["pynative", "graph"])
def test_compute_loss_trains_and_matches_the_named_loss(mode):
    own = Task(backend="mindspore", model=_mlp, data=make_blobs, compute_loss=_mean_cross_entropy,
               options={"mode": mode})
    by_name = Task(backend="mindspore", model=_mlp, data=make_blobs, loss="cross_entropy", options={"mode": mode})
    session, sampler = _session(own, seed=3)
    assert session.train[1].dtype == np.int64  # compute_loss gets the labels as the data has them
    before = session.evaluate()
    after = _train(session, sampler, steps=10)
    assert after < 0.5 * before
    assert after == pytest.approx(_train(*_session(by_name, seed=3), steps=10), rel=1e-3)  # two kernels, one function


def test_compute_loss_gets_every_column_of_a_pipeline():
    """A pipeline of (x, y, weight) columns: compute_loss gets all three as tensors, the labels as int64."""
    (x, y), (xv, yv) = make_blobs()
    seen = []

    def columns(inputs, labels):
        return msds.NumpySlicesDataset((inputs, labels[:, None], np.ones((len(labels), 1), np.float32)),
                                       column_names=["x", "y", "weight"], shuffle=False)

    def weighted(model, batch):
        x_, y_, weight = batch
        seen.append((len(batch), y_.dtype))
        losses = ops.nll_loss(ops.log_softmax(model(x_), axis=1), y_[:, 0], reduction="none")
        return (losses * weight[:, 0]).mean()

    task = Task(backend="mindspore", model=_mlp, data=lambda: (columns(x, y).batch(40), columns(xv, yv)),
                compute_loss=weighted)
    session, sampler = _session(task)
    before = session.evaluate()
    assert _train(session, sampler) < 0.5 * before
    assert set(seen) == {(3, ms.int64)}


def test_compute_loss_trains_through_the_cli():
    result = run_cli("fit-batch", f"{TASKS_FILE}:own_loss", "--max-batch", "64", "--json")
    assert result.returncode == 0, result.stderr
    assert '"batch_size": 64' in result.stdout


@pytest.mark.parametrize("returned, fragment", [
    (lambda losses: losses, "compute_loss must return a scalar loss tensor, got shape (2,): reduce it"),
    (lambda losses: (losses.mean(), losses), "compute_loss must return a scalar loss tensor, got tuple"),
    (lambda losses: None, "compute_loss must return a scalar loss tensor, got NoneType"),
])
@pytest.mark.parametrize("mode", ["pynative", "graph"])
def test_compute_loss_that_returns_no_scalar_is_one_line(returned, fragment, mode):
    def compute_loss(model, batch):
        x, y = batch
        return returned(ops.nll_loss(ops.log_softmax(model(x), axis=1), y, reduction="none"))

    task = Task(backend="mindspore", model=_mlp, data=make_blobs, compute_loss=compute_loss, options={"mode": mode})
    with pytest.raises(TaskError, match=re.escape(fragment)) as caught:
        _session(task)
    _one_line(caught)


def test_compute_loss_without_a_scalar_from_the_cli_is_one_line():
    result = run_cli("fit-batch", f"{TASKS_FILE}:per_sample", "--max-batch", "64")
    assert_one_line_error(result, "compute_loss must return a scalar loss tensor, got shape (2,)")


def test_more_columns_than_input_and_target_need_compute_loss():
    (x, y), (xv, yv) = make_blobs()

    def three(a, b):
        return msds.NumpySlicesDataset((a, b[:, None], b[:, None]), column_names=["x", "y", "z"], shuffle=False)

    task = Task(backend="mindspore", model=_mlp, data=lambda: (three(x, y), three(xv, yv)))
    with pytest.raises(TaskError, match=re.escape("training data has 3 columns, not (input, target): give two, "
                                                  "or set Task(compute_loss=...)")) as caught:
        _session(task)
    _one_line(caught)


# --- the loss follows the model -------------------------------------------------------------------------------

@pytest.mark.parametrize("build, from_logits", [
    (lambda: _mlp(nn.Softmax()), False),
    (lambda: nn.SequentialCell(nn.Dense(16, 32), nn.ReLU(), nn.Dense(32, 4, activation="softmax")), False),
    (lambda: nn.SequentialCell(_mlp(), nn.SequentialCell(nn.Softmax())), False),
    (lambda: _mlp(nn.LogSoftmax()), True),  # log-probabilities are logits to a softmax cross entropy
    (_mlp, True),
])
def test_final_softmax_is_found(build, from_logits):
    session, _ = _session(Task(backend="mindspore", model=build, data=make_blobs))
    assert session.from_logits is from_logits


@pytest.mark.parametrize("mode", ["pynative", "graph"])
def test_softmax_model_trains_on_the_cross_entropy_of_its_probabilities(mode):
    """The value is -mean(log p[y]) of the model's own outputs (not a softmax of probabilities, which stays near
    ln 4 whatever the model does), and it trains."""
    (_, _), (xv, yv) = make_blobs()
    session, sampler = _session(Task(backend="mindspore", model=lambda: _mlp(nn.Softmax()), data=make_blobs,
                                     options={"mode": mode}))
    before = session.evaluate()
    session.model.set_train(False)
    p = session.model(ms.Tensor(xv)).asnumpy()
    assert before == pytest.approx(-np.mean(np.log(np.clip(p[np.arange(len(yv)), yv], 1e-7, 1))), rel=1e-4)
    after = _train(session, sampler)
    assert math.isfinite(after) and after < 0.2 * before, (before, after)


def test_sigmoid_output_gets_binary_cross_entropy_on_probabilities():
    (x, y), (xv, yv) = make_blobs()
    data = lambda: ((x, (y % 2)[:, None].astype(np.float32)), (xv, (yv % 2)[:, None].astype(np.float32)))  # noqa: E731
    model = lambda: nn.SequentialCell(nn.Dense(16, 1), nn.Sigmoid())  # noqa: E731
    session, sampler = _session(Task(backend="mindspore", model=model, data=data, loss="binary_cross_entropy"))
    assert session.from_logits is False
    before = session.evaluate()
    session.model.set_train(False)
    p = np.clip(session.model(ms.Tensor(xv)).asnumpy(), 1e-7, 1 - 1e-7)
    target = (yv % 2)[:, None]
    assert before == pytest.approx(float(-np.mean(target * np.log(p) + (1 - target) * np.log(1 - p))), rel=1e-4)
    assert _train(session, sampler) < before


def test_explicit_from_logits_overrides_the_model():
    softmax = Task(backend="mindspore", model=lambda: _mlp(nn.Softmax()), data=make_blobs, from_logits=True)
    assert _session(softmax)[0].from_logits is True
    custom = Task(backend="mindspore", model=_mlp, data=make_blobs, from_logits=False)
    assert _session(custom)[0].from_logits is False


def test_a_second_graph_session_compiles_without_mindspore_notices(caplog):
    """Every session jits its own step; MindSpore logs "has been compiled again" for the second in a process
    (trials share a worker): nothing the user can act on, so it is dropped."""
    task = Task(backend="mindspore", model=_mlp, data=make_blobs, options={"mode": "graph"})
    with caplog.at_level("INFO"):
        for seed in (0, 1):
            session, sampler = _session(task, seed=seed)
            _train(session, sampler, steps=2)
    assert not [r for r in caplog.records if "compiled again" in r.getMessage()], caplog.text


def test_loaded_task_file_builds():
    task = load_task(f"{TASKS_FILE}:softmax")
    assert _session(task)[0].from_logits is False
