"""MindSpore-specific behaviour on real MindSpore: graph mode, mindspore.dataset data, loss cells, real OOMs
under a cap, and the NumPy 2 question (training numbers, conversions, MindSpore's NumPy C-API failure).

The shared behaviours come from test_backend_conformance.py with tests/tasks/mindspore_tasks.py.
"""

import math
import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("mindspore")

import mindspore as ms  # noqa: E402
import mindspore.dataset as msds  # noqa: E402
from mindspore import nn  # noqa: E402

import autotune  # noqa: E402
from autotune import TaskError, fit_batch_size, load_task, parse_size  # noqa: E402
from autotune.backends import get_backend  # noqa: E402
from autotune.memory import _probe_run  # noqa: E402
from autotune.runner import run_in_worker  # noqa: E402
from autotune.training import BatchSampler  # noqa: E402
from tests.conftest import ROOT, TASKS  # noqa: E402

TASKS_FILE = TASKS / "mindspore_tasks.py"
NUMPY_2 = int(np.__version__.split(".")[0]) >= 2


def _task(attr):
    return load_task(f"{TASKS_FILE}:{attr}")


def _blobs():
    return _task("small").data()  # the tasks file's generated blobs: ((x, y), (x_val, y_val))


def _session(task, batch_size=32, optimizer=None, seed=0):
    backend = get_backend("mindspore")
    data = task.load_data()
    session = backend.session(task, data, backend.resolve_device("cpu"), batch_size=batch_size,
                              optimizer=optimizer or {"name": "adam", "lr": 1e-2}, seed=seed)
    n_train, _ = backend.data_size(data)
    return session, BatchSampler(n_train, batch_size, seed)


def _train(session, sampler, steps):
    for _ in range(steps):
        session.train_step(sampler.next())
    session.synchronize()
    return session.evaluate()


# --- execution modes -----------------------------------------------------------------------------------------

def test_graph_mode_trains_and_reports_compile_time():
    session, sampler = _session(_task("small_graph"))
    assert session.mode == "graph"
    before = session.evaluate()
    after = _train(session, sampler, 40)
    assert after < 0.5 * before, (before, after)
    assert session.compile_seconds > 0.05, session.compile_seconds
    session.close()


def test_graph_and_pynative_give_the_same_numbers():
    results = {}
    for attr in ("small", "small_graph"):
        session, sampler = _session(_task(attr), optimizer={"name": "momentum", "lr": 1e-2}, seed=5)
        results[attr] = _train(session, sampler, 10)
        assert session.compile_seconds >= 0.0
        session.close()
    assert results["small"] == pytest.approx(results["small_graph"], rel=1e-4)


def test_graph_mode_in_worker_processes():
    fit = fit_batch_size(f"{TASKS_FILE}:small_graph", max_batch=64)
    assert fit.batch_size == 64 and fit.limited_by == "max_batch"
    assert all(p.throughput and p.throughput > 0 for p in fit.probes)


@pytest.mark.parametrize("options, fragment", [
    ({"mode": "eager"}, "use 'pynative' or 'graph'"),
    ({"jit": True}, "unknown mindspore task option 'jit'"),
])
def test_bad_task_options_are_one_line_errors(options, fragment):
    task = autotune.Task(backend="mindspore", model=_task("small").model, data=_blobs, options=options)
    with pytest.raises(TaskError, match=fragment) as caught:
        _session(task)
    assert "\n" not in str(caught.value)


# --- data: mindspore.dataset pipelines -----------------------------------------------------------------------

def _pipelines(batched=True, label_column=True):
    (x, y), (xv, yv) = _blobs()
    if label_column:  # under NumPy 2 MindSpore 2.10 cannot read scalar rows: labels travel as a column
        y, yv = y[:, None], yv[:, None]
    train = msds.NumpySlicesDataset((x, y), column_names=["x", "y"], shuffle=False)
    val = msds.NumpySlicesDataset((xv, yv), column_names=["x", "y"], shuffle=False)
    return (train.batch(50) if batched else train), val


def test_dataset_pipeline_as_task_data_trains_like_arrays():
    backend = get_backend("mindspore")
    task = autotune.Task(backend="mindspore", model=_task("small").model, data=_pipelines, loss="cross_entropy")
    assert backend.data_size(task.load_data()) == (480, 120)
    with_dataset = _train(*_session(task, seed=2), 30)
    with_arrays = _train(*_session(_task("small"), seed=2), 30)
    assert math.isfinite(with_dataset) and with_dataset == pytest.approx(with_arrays, rel=1e-5)


def test_generator_dataset_and_unbatched_pipelines():
    (x, y), (xv, yv) = _blobs()

    def rows():
        for index in range(len(x)):
            yield x[index], np.asarray([y[index]])

    def data():
        return msds.GeneratorDataset(rows, ["x", "y"], shuffle=False), _pipelines(batched=False)[1]

    task = autotune.Task(backend="mindspore", model=_task("small").model, data=data)
    session, sampler = _session(task)
    before = session.evaluate()
    assert _train(session, sampler, 40) < 0.5 * before


def test_pipeline_that_cannot_be_read_once_is_a_clear_error():
    def endless():
        train, val = _pipelines()
        return train.repeat(), val

    def single():
        return _pipelines()[0]

    for source, fragment in ((endless, "repeats forever"), (single, "not enough")):
        task = autotune.Task(backend="mindspore", model=_task("small").model, data=source)
        with pytest.raises(TaskError, match=fragment):
            get_backend("mindspore").data_size(task.load_data())


def test_scalar_rows_in_a_pipeline_under_numpy_2():
    """MindSpore 2.10 reads each dataset row with np.array(item, copy=False), which NumPy 2 refuses for scalars
    (1-D label arrays, numbers from a generator): a clear TaskError there; it just works under NumPy 1."""
    task = autotune.Task(backend="mindspore", model=_task("small").model,
                         data=lambda: _pipelines(label_column=False))
    backend = get_backend("mindspore")
    if NUMPY_2:
        with pytest.raises(TaskError, match=r"cannot read rows that hold a scalar.*numpy<2"):
            backend.data_size(task.load_data())
    else:
        assert backend.data_size(task.load_data()) == (480, 120)


# --- losses ----------------------------------------------------------------------------------------------------

def test_mindspore_loss_cell_as_loss():
    cell = nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean")
    task = autotune.Task(backend="mindspore", model=_task("small").model, data=_blobs, loss=cell)
    with_cell = _train(*_session(task, seed=4), 20)
    by_name = _train(*_session(_task("small"), seed=4), 20)
    assert with_cell == pytest.approx(by_name, rel=1e-3)  # two kernels for the same function


def test_named_losses_match_torch():
    import torch
    import torch.nn.functional as F

    from autotune.backends.mindspore import _named_loss

    rng = np.random.default_rng(0)
    logits = rng.normal(0, 2, (16, 5)).astype(np.float32)
    classes = rng.integers(0, 5, 16)
    values = rng.normal(0, 2, (16, 5)).astype(np.float32)
    bits = rng.integers(0, 2, (16, 5)).astype(np.float32)
    cases = {
        "cross_entropy": (classes.astype(np.int32), F.cross_entropy(torch.tensor(logits), torch.tensor(classes))),
        "mse": (values, F.mse_loss(torch.tensor(logits), torch.tensor(values))),
        "mae": (values, F.l1_loss(torch.tensor(logits), torch.tensor(values))),
        "binary_cross_entropy": (bits, F.binary_cross_entropy_with_logits(torch.tensor(logits), torch.tensor(bits))),
        "huber": (values, F.huber_loss(torch.tensor(logits), torch.tensor(values))),
    }
    for name, (target, expected) in cases.items():
        got = float(_named_loss(name)(ms.Tensor(logits), ms.Tensor(target)).asnumpy())
        assert got == pytest.approx(float(expected), rel=1e-5), name


# --- memory -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("attr", ["huge", "huge_graph"])
def test_real_oom_under_a_cap_is_recognised(attr):
    """A batch whose activations outgrow the 1 GiB CPU pool block that a 2.8 GiB cap leaves room for fails for
    real (the pool's malloc fails) and comes back as an OOM; a smaller one runs under the same cap."""
    backend = get_backend("mindspore")
    spec = backend.validate_optimizer({"name": "adam"})

    def run(batch):
        return run_in_worker(_probe_run, dict(task=f"{TASKS_FILE}:{attr}", batch_size=batch, device="cpu",
                                              optimizer=spec, steps=1, seed=0, device_memory_limit=None),
                             memory_limit=parse_size("2.8GiB"), timeout=300, preload=backend.preload_modules())

    over = run(1000)
    assert not over.ok and over.kind == "oom", over
    assert "MindSpore ran out of memory on cpu" in over.message
    assert run(100).ok


def test_is_oom_is_narrow():
    backend = get_backend("mindspore")
    assert backend.is_oom(MemoryError())
    assert backend.is_oom(RuntimeError("\n----\n- Memory not enough:\n----\nMemory isn't enough and alloc failed"))
    assert not backend.is_oom(RuntimeError("For 'MatMul', the input dimensions must be equal"))
    assert not backend.is_oom(TypeError("Allocate memory failed"))
    session, sampler = _session(_task("broken"))
    with pytest.raises(Exception) as caught:
        session.train_step(sampler.next())
        session.synchronize()
    assert not backend.is_oom(caught.value), caught.value


# --- the NumPy 2 question ---------------------------------------------------------------------------------------

def test_training_numbers_match_torch():
    """Same weights, same batches, 20 steps: MindSpore and PyTorch agree to float32 precision, so NumPy 2 does
    not corrupt arithmetic or the ndarray <-> Tensor path. Run it under any NumPy to catch a regression."""
    import torch

    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 16)).astype(np.float32)
    y = rng.integers(0, 4, 64)
    weights = [rng.normal(0, 0.3, (32, 16)), rng.normal(0, 0.1, 32), rng.normal(0, 0.3, (4, 32)), rng.normal(0, 0.1, 4)]
    weights = [w.astype(np.float32) for w in weights]
    backend = get_backend("mindspore")
    for name, torch_optimizer in (("momentum", lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9)),
                                  ("adamw", lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.01))):
        def model():
            net = nn.SequentialCell(nn.Dense(16, 32), nn.ReLU(), nn.Dense(32, 4))
            for parameter, value in zip(net.trainable_params(), weights):
                parameter.set_data(ms.Tensor(value))
            return net

        spec = {"name": name, "lr": 0.05 if name == "momentum" else 0.01}
        task = autotune.Task(backend="mindspore", model=model, data=((x, y), (x, y)))
        session = backend.session(task, task.load_data(), backend.resolve_device("cpu"), batch_size=64,
                                  optimizer=spec)
        reference = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
        with torch.no_grad():
            for parameter, value in zip(reference.parameters(), weights):
                parameter.copy_(torch.from_numpy(value))
        optimizer = torch_optimizer(reference.parameters())
        for _ in range(20):
            session.train_step(np.arange(64))
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(reference(torch.from_numpy(x)), torch.from_numpy(y))
            loss.backward()
            optimizer.step()
            assert session.last_loss() == pytest.approx(loss.item(), rel=1e-4, abs=1e-6), name
        for parameter, expected in zip(session.model.trainable_params(), reference.parameters()):
            np.testing.assert_allclose(parameter.asnumpy(), expected.detach().numpy(), rtol=1e-4, atol=1e-5)
        session.close()


def test_arrays_round_trip_through_tensors_exactly():
    base = np.arange(60).reshape(3, 4, 5)
    for dtype in (np.float32, np.float64, np.float16, np.int64, np.int32, np.uint8, np.bool_):
        array = (base % 7).astype(dtype)
        for view in (array, array[:, ::2, 1:], np.asfortranarray(array)):
            back = ms.Tensor(view).asnumpy()
            assert back.dtype == view.dtype and np.array_equal(back, view), (dtype, view.strides)


def test_first_operator_after_the_backend_is_created_is_clean_and_other_output_survives():
    """Creating the backend spends MindSpore's failing NumPy C-API import with nothing printed; the very next
    operator taking a Python number works (without that, under NumPy 2 it raises a spurious SystemError)."""
    code = (
        "import os, sys\n"
        "import numpy as np\n"
        "import autotune.backends.mindspore as backend\n"
        "from autotune.backends import get_backend\n"
        "get_backend('mindspore')\n"
        "from mindspore import Tensor, ops\n"
        "print([round(v, 4) for v in (ops.tanh(Tensor(np.ones(3, np.float32))) * 1.01).asnumpy().tolist()])\n"
        "with backend._without_numpy_abi_messages():\n"
        "    sys.stderr.write('python text stays\\n')\n"
        "    os.write(2, b'native text stays\\n')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[0.7692, 0.7692, 0.7692]"
    assert "compiled using NumPy 1.x" not in result.stderr and "Numpy init failed" not in result.stderr
    assert "python text stays" in result.stderr and "native text stays" in result.stderr


def test_numpy_scalar_in_a_model_under_numpy_2():
    """MindSpore 2.10 refuses NumPy scalars as operator arguments under NumPy 2: a one-line TaskError that says
    what to do; under NumPy 1 the same model trains."""

    class Scaled(nn.Cell):
        def __init__(self):
            super().__init__()
            self.dense = nn.Dense(16, 4)

        def construct(self, x):
            return self.dense(x) * np.float32(0.5)

    task = autotune.Task(backend="mindspore", model=Scaled, data=_blobs)
    session, sampler = _session(task)
    if NUMPY_2:
        with pytest.raises(TaskError, match="NumPy scalar") as caught:
            session.train_step(sampler.next())
        assert "\n" not in str(caught.value)
    else:
        session.train_step(sampler.next())
        assert math.isfinite(session.last_loss())
