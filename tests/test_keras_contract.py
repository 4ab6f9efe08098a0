"""The Task contract on Keras with real training code (issue 10): PyDataset data, losses that follow the model's
output (keras.applications' MobileNetV2 ends in a softmax), integer targets that stay integer, compute_loss, and
one-line errors for broken contracts. Real TensorFlow throughout, no mocks."""

import math
import os
import re
import subprocess
import sys
import warnings

import numpy as np
import pytest

pytest.importorskip("tensorflow")

from autotune import Task, TaskError, load_task  # noqa: E402
from autotune.backends import get_backend  # noqa: E402
from autotune.backends.tensorflow import keras, tf  # noqa: E402
from autotune.testing import cpu_session, train as _train  # noqa: E402
from tests.conftest import ROOT, TASKS, assert_one_line_error, run_cli  # noqa: E402
from tests.tasks.blobs import make_blobs  # noqa: E402
from tests.tasks.keras_tasks import Batches, small_model  # noqa: E402

BACKEND = get_backend("tensorflow")
TASKS_FILE = TASKS / "keras_tasks.py"


def _session(task, batch_size=32, optimizer=None, seed=0):
    return cpu_session("tensorflow", task, batch_size, optimizer, seed)


def _one_line(error):
    assert "\n" not in str(error.value), str(error.value)
    return str(error.value)


# --- PyDataset --------------------------------------------------------------------------------------------

def test_pydataset_task_trains_like_the_same_arrays():
    """Batches of a PyDataset are read once, in order, into the arrays the steps index: training on them gives
    the numbers the same arrays give."""
    task = load_task(f"{TASKS_FILE}:pydataset")
    assert BACKEND.data_size(task.load_data()) == (480, 120)
    session, sampler = _session(task, seed=3)
    np.testing.assert_array_equal(session.train[0], make_blobs()[0][0])
    before = session.evaluate()
    after = _train(session, sampler)
    assert math.isfinite(after) and after < 0.5 * before, (before, after)
    arrays = Task(backend="tensorflow", model=small_model, data=make_blobs, loss="cross_entropy")
    assert after == pytest.approx(_train(*_session(arrays, seed=3)), rel=1e-5)


class DictBatches(Batches):
    """(x, y) batches whose x is a dict of arrays, one per named model input."""

    def __len__(self):
        return -(-len(self.y) // self.batch_size)

    def __getitem__(self, index):
        rows = slice(index * self.batch_size, (index + 1) * self.batch_size)
        return {key: value[rows] for key, value in self.x.items()}, self.y[rows]


def test_pydataset_with_dict_inputs_for_a_two_input_model():
    """x may be a dict of arrays (a functional model with named inputs), in a PyDataset as in arrays."""
    (x, y), (xv, yv) = make_blobs()
    halves = lambda a: {"left": a[:, :8], "right": a[:, 8:]}  # noqa: E731

    def model():
        left, right = keras.Input((8,), name="left"), keras.Input((8,), name="right")
        joined = keras.layers.Concatenate()([left, right])
        return keras.Model({"left": left, "right": right}, keras.layers.Dense(4)(joined))

    task = Task(backend="tensorflow", model=model, loss="cross_entropy",
                data=lambda: (DictBatches(halves(x), y), (halves(xv), yv)))
    session, sampler = _session(task)
    assert BACKEND.data_size(task.load_data()) == (480, 120)
    before = session.evaluate()
    assert _train(session, sampler) < 0.5 * before


@pytest.mark.parametrize("item, fragment", [
    (lambda x, y: x, "item 0 is not an (x, y) pair (got ndarray)"),
    (lambda x, y: (x, "labels"), "item 0 holds a value that is not an array or tensor (got str)"),
    (lambda x, y: (x, y[:3]), "item 0 has parts of [3, 50] rows"),
])
def test_pydataset_items_that_are_not_pairs_of_arrays(item, fragment):
    (x, y), val = make_blobs()

    class Bad(Batches):
        def __getitem__(self, index):
            return item(*super().__getitem__(index))

    task = Task(backend="tensorflow", model=small_model, data=lambda: (Bad(x, y), val), loss="cross_entropy")
    with pytest.raises(TaskError, match=re.escape(fragment)) as caught:
        BACKEND.data_size(task.load_data())
    assert "make __getitem__ return (x, y) batches of NumPy arrays or tensors" in _one_line(caught)


def test_pydataset_without_a_length_and_a_lone_pydataset():
    (x, y), val = make_blobs()

    class Endless(Batches):
        @property
        def num_batches(self):
            return None

    endless = Task(backend="tensorflow", model=small_model, data=lambda: (Endless(x, y), val))
    with pytest.raises(TaskError, match="has no length"):
        BACKEND.data_size(endless.load_data())
    lone = Task(backend="tensorflow", model=small_model, data=lambda: Batches(x, y))
    with pytest.raises(TaskError, match=r"one Batches: return a pair \(train_dataset, validation_dataset\)"):
        BACKEND.data_size(lone.load_data())


# --- the loss follows the model ---------------------------------------------------------------------------

def test_mobilenet_v2_gets_the_loss_on_probabilities():
    """keras.applications' MobileNetV2 ends in a softmax: the named cross entropy is Keras's from_logits=False
    form, Keras does not warn about it, and the untrained model's loss is chance level (ln 10)."""
    task = load_task(f"{TASKS_FILE}:mobilenet_v2")
    session, _ = _session(task, batch_size=16)
    assert session.from_logits is False
    assert session.loss_fn.get_config()["from_logits"] is False
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loss = session.evaluate()
    assert not [w for w in caught if "from_logits" in str(w.message)], [str(w.message) for w in caught]
    assert loss == pytest.approx(math.log(10), abs=0.3)


def _softmax_head(kind):
    layers = {"dense": [keras.layers.Dense(4, activation="softmax")],
              "activation": [keras.layers.Dense(4), keras.layers.Activation("softmax")],
              "layer": [keras.layers.Dense(4), keras.layers.Softmax()],
              "logits": [keras.layers.Dense(4)]}[kind]
    return keras.Sequential([keras.Input((16,)), keras.layers.Dense(32, activation="relu"), *layers])


@pytest.mark.parametrize("kind, from_logits", [("dense", False), ("activation", False), ("layer", False),
                                               ("logits", True)])
def test_final_softmax_is_found_in_sequential_and_nested_models(kind, from_logits):
    task = Task(backend="tensorflow", model=lambda: _softmax_head(kind), data=make_blobs)
    assert _session(task)[0].from_logits is from_logits
    nested = Task(backend="tensorflow", data=make_blobs,
                  model=lambda: keras.Sequential([keras.Input((16,)), _softmax_head(kind)]))
    assert _session(nested)[0].from_logits is from_logits


def test_the_loss_on_probabilities_is_the_cross_entropy_of_the_outputs():
    """The value is -mean(log p[y]) of the model's own outputs, not a softmax applied to probabilities again."""
    (_, _), (xv, yv) = make_blobs()
    task = Task(backend="tensorflow", model=lambda: _softmax_head("dense"), data=make_blobs)
    session, sampler = _session(task)
    _train(session, sampler, steps=5)
    p = session.model.predict(xv, verbose=0)
    expected = -np.mean(np.log(np.clip(p[np.arange(len(yv)), yv], 1e-7, 1)))
    assert session.evaluate(max_batches=None) == pytest.approx(expected, rel=1e-4)


def test_subclassed_softmax_model_is_read_from_its_traced_output():
    class Classifier(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(4)

        def call(self, x):
            return keras.activations.softmax(self.dense(x))

    task = Task(backend="tensorflow", model=Classifier, data=make_blobs)
    session, sampler = _session(task)
    assert session.from_logits is None  # a subclassed model lists no call order: the first trace decides
    before = session.evaluate()
    assert session.from_logits is False and session.loss_fn.get_config()["from_logits"] is False
    assert _train(session, sampler) < 0.5 * before


def test_explicit_from_logits_overrides_the_model():
    forced = Task(backend="tensorflow", model=lambda: _softmax_head("dense"), data=make_blobs, from_logits=True)
    session, _ = _session(forced)
    assert session.from_logits is True
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        session.evaluate()  # Keras's "received from_logits=True" warning: the user said so, not repeated
    assert not [w for w in caught if "from_logits" in str(w.message)]
    probabilities = Task(backend="tensorflow", model=lambda: _softmax_head("logits"), data=make_blobs,
                         from_logits=False)
    assert _session(probabilities)[0].loss_fn.get_config()["from_logits"] is False


def test_sigmoid_output_gets_binary_cross_entropy_on_probabilities():
    (x, y), (xv, yv) = make_blobs()
    data = lambda: ((x, (y % 2)[:, None]), (xv, (yv % 2)[:, None]))  # noqa: E731
    model = lambda: keras.Sequential([keras.Input((16,)), keras.layers.Dense(1, activation="sigmoid")])  # noqa: E731
    session, sampler = _session(Task(backend="tensorflow", model=model, data=data, loss="binary_cross_entropy"))
    assert session.from_logits is False
    before = session.evaluate()
    assert before == pytest.approx(_bce(session.model.predict(xv, verbose=0), (yv % 2)[:, None]), rel=1e-4)
    assert _train(session, sampler) < before


def _bce(p, y):
    p = np.clip(p, 1e-7, 1 - 1e-7)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


# --- integer targets stay integer ---------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.int64, np.int32])
def test_custom_loss_receives_the_integer_targets_of_the_data(dtype):
    (x, y), (xv, yv) = make_blobs()
    seen = []

    def loss(y_true, y_pred):
        seen.append(y_true.dtype)
        return keras.losses.sparse_categorical_crossentropy(y_true, y_pred, from_logits=True)

    data = lambda: ((x.astype(np.float64), y.astype(dtype)), (xv, yv.astype(dtype)))  # noqa: E731
    session, sampler = _session(Task(backend="tensorflow", model=small_model, data=data, loss=loss))
    before = session.evaluate()
    assert _train(session, sampler) < 0.5 * before
    assert set(seen) == {tf.as_dtype(dtype)}, seen  # both traces, training and evaluation
    assert session.train[0].dtype == np.float32  # floating inputs may still become float32


# --- compute_loss -------------------------------------------------------------------------------------------

def test_compute_loss_trains_and_gets_the_batch_as_the_data_has_it():
    seen = {}

    def compute_loss(model, batch, training):
        x, y = batch
        seen.setdefault(training, (x.dtype, y.dtype))
        logits = model(x, training=training)
        return keras.ops.mean(keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True))

    task = Task(backend="tensorflow", model=small_model, data=make_blobs, compute_loss=compute_loss)
    session, sampler = _session(task)
    before = session.evaluate()
    assert _train(session, sampler) < 0.5 * before
    assert seen == {True: (tf.float32, tf.int64), False: (tf.float32, tf.int64)}  # training= as the step runs


def test_compute_loss_with_dict_batches_from_tf_data():
    """A tf.data pipeline of dicts (a model that takes its labels along) feeds compute_loss the dict."""
    (x, y), (xv, yv) = make_blobs()

    def data():
        train = tf.data.Dataset.from_tensor_slices({"features": x, "labels": y}).batch(64)
        return train, tf.data.Dataset.from_tensor_slices({"features": xv, "labels": yv})

    def compute_loss(model, batch):
        logits = model(batch["features"])
        return keras.ops.mean(keras.losses.sparse_categorical_crossentropy(batch["labels"], logits, from_logits=True))

    task = Task(backend="tensorflow", model=small_model, data=data, compute_loss=compute_loss)
    session, sampler = _session(task)
    assert session.train["labels"].dtype == np.int64
    before = session.evaluate()
    assert _train(session, sampler) < 0.5 * before


def test_compute_loss_matches_the_named_loss():
    by_name = Task(backend="tensorflow", model=small_model, data=make_blobs, loss="cross_entropy")
    own = load_task(f"{TASKS_FILE}:own_loss")
    assert _train(*_session(own, seed=7), steps=10) == pytest.approx(_train(*_session(by_name, seed=7), steps=10),
                                                                     rel=1e-5)


@pytest.mark.parametrize("returned, fragment", [
    (lambda loss: loss, r"compute_loss must return a scalar loss tensor, got shape \(None,\): reduce it"),
    (lambda loss: {"loss": loss}, "compute_loss must return a scalar loss tensor, got dict: return the loss itself"),
    (lambda loss: None, "compute_loss must return a scalar loss tensor, got NoneType"),
])
def test_compute_loss_that_returns_no_scalar_is_one_line(returned, fragment):
    def compute_loss(model, batch):
        x, y = batch
        return returned(keras.losses.sparse_categorical_crossentropy(y, model(x), from_logits=True))

    session, sampler = _session(Task(backend="tensorflow", model=small_model, data=make_blobs,
                                     compute_loss=compute_loss))
    with pytest.raises(TaskError, match=fragment) as caught:
        session.train_step(sampler.next())
    _one_line(caught)


def test_compute_loss_without_a_scalar_from_the_cli_is_one_line():
    """The contract error crosses the worker boundary as itself: exit 2, one line, no traceback."""
    result = run_cli("fit-batch", f"{TASKS_FILE}:per_sample", "--max-batch", "64")
    assert_one_line_error(result, "compute_loss must return a scalar loss tensor, got shape (None,)")


def test_batches_that_are_not_pairs_need_compute_loss():
    (x, y), (xv, yv) = make_blobs()
    task = Task(backend="tensorflow", model=small_model, loss="cross_entropy",
                data=lambda: ((x, y), tf.data.Dataset.from_tensor_slices((xv, yv, np.ones(len(yv))))))
    with pytest.raises(TaskError, match=r"validation data yields 3-part tuples, not \(x, y\) pairs") as caught:
        _session(task)
    _one_line(caught)


# --- noise ----------------------------------------------------------------------------------------------------

def test_no_gpu_lines_are_dropped_and_other_lines_kept():
    """The full `tensorflow` package logs `failed call to cuInit` (ERROR level, so TF_CPP_MIN_LOG_LEVEL=2 keeps
    it) at a CPU-only machine's first device listing; the backend drops exactly such lines."""
    code = (
        "import os\n"
        "from autotune.backends import tensorflow as backend\n"
        "with backend._quiet_native_noise(backend._NO_ACCELERATOR_NOISE):\n"
        "    os.write(2, b'E0000 00:00:1796158945.308738    5026 cuda_platform.cc:52] failed call to cuInit: "
        "INTERNAL: CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)\\n')\n"
        "    os.write(2, b'I0000 00:00:1796158944.351396    5026 cudart_stub.cc:31] Could not find cuda drivers on "
        "your machine, GPU will not be used.\\n')\n"
        "    os.write(2, b'E0000 00:00:1796158945.308738    5026 other.cc:1] a real error\\n')\n"
        "print(os.environ.get('TF_CPP_MIN_LOG_LEVEL'))\n"
    )
    environment = {key: value for key, value in os.environ.items() if key != "TF_CPP_MIN_LOG_LEVEL"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120,
                            env={**environment, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr
    assert "cuInit" not in result.stderr and "cuda drivers" not in result.stderr, result.stderr
    assert "a real error" in result.stderr
    assert result.stdout.strip() == "None"  # set for TensorFlow's import only, not left in the caller's environment


def test_importing_autotune_leaves_the_environment_alone():
    code = "import os; before = dict(os.environ); import autotune; print(dict(os.environ) == before)"
    environment = {key: value for key, value in os.environ.items() if key != "TF_CPP_MIN_LOG_LEVEL"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60,
                            env={**environment, "PYTHONPATH": str(ROOT)})
    assert result.stdout.strip() == "True", result.stderr
