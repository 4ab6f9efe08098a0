"""TensorFlow-only behaviours (the shared ones are in test_backend_conformance.py): tf.data input, compile time,
Keras loss objects, weight-decay semantics, clear errors, a quiet CLI. Real TensorFlow throughout."""

import json
import math

import numpy as np
import pytest

pytest.importorskip("tensorflow")

from autotune import AutotuneError, TaskError, Task, fit_batch_size  # noqa: E402
from autotune.backends import get_backend  # noqa: E402
from autotune.backends.tensorflow import keras, tf  # noqa: E402
from autotune.training import BatchSampler  # noqa: E402
from tests.conftest import EXAMPLES, TASKS, run_cli  # noqa: E402
from tests.tasks.tensorflow_tasks import _blobs, small_model  # noqa: E402

BACKEND = get_backend("tensorflow")
CPU = BACKEND.resolve_device("cpu")


def _train(task, steps=60, batch_size=32, optimizer=None, seed=0):
    data = task.load_data()
    session = BACKEND.session(task, data, CPU, batch_size=batch_size, seed=seed,
                              optimizer=optimizer or {"name": "adam", "lr": 1e-2})
    sampler = BatchSampler(BACKEND.data_size(data)[0], batch_size, seed)
    before = session.evaluate()
    for _ in range(steps):
        session.train_step(sampler.next())
    session.synchronize()
    return session, before, session.evaluate()


def _datasets():
    (x, y), (xv, yv) = _blobs()
    train = tf.data.Dataset.from_tensor_slices((x, y)).batch(50)  # batches, the last one short
    val = tf.data.Dataset.from_tensor_slices((xv, yv))  # single samples
    return train, val


def test_tf_data_datasets_as_task_data():
    task = Task(backend="tensorflow", model=small_model, data=_datasets, loss="cross_entropy")
    data = task.load_data()
    assert BACKEND.data_size(data) == (480, 120)
    session, before, after = _train(task)
    np.testing.assert_array_equal(session.train[0], _blobs()[0][0])  # batches joined in order, nothing lost
    assert math.isfinite(after) and after < 0.5 * before
    fit = fit_batch_size(task, isolation="none", max_batch=64)  # the engine counts samples through the backend
    assert fit.batch_size == 64 and fit.limited_by == "max_batch"


def test_tf_data_task_fits_under_a_real_cap():
    """Workers read the datasets (which starts TensorFlow) under the cap: the fit still finds a linear boundary."""
    from tests.conftest import BACKEND_CASES
    from autotune import parse_size

    cap = parse_size(BACKEND_CASES["tensorflow"]["cap"])
    fit = fit_batch_size(f"{TASKS / 'tensorflow_tasks.py'}:hungry_datasets", memory_limit=cap, margin=0.0)
    assert fit.limited_by == "memory" and fit.batch_size >= 64 and fit.ooms <= 1, fit
    assert fit.peak_memory_bytes <= cap


def test_dataset_mistakes_are_clear_errors():
    (x, y), _ = _blobs()
    infinite = Task(backend="tensorflow", model=small_model, loss="cross_entropy",
                    data=lambda: (tf.data.Dataset.from_tensor_slices((x, y)).repeat(), (x, y)))
    with pytest.raises(TaskError, match="infinite"):
        BACKEND.data_size(infinite.load_data())
    dicts = Task(backend="tensorflow", model=small_model, loss="cross_entropy",
                 data=lambda: (tf.data.Dataset.from_tensor_slices({"x": x, "y": y}), (x, y)))
    with pytest.raises(TaskError, match=r"not \(x, y\) pairs: yield \(x, y\), or set Task\(compute_loss"):
        BACKEND.session(dicts, dicts.load_data(), CPU, batch_size=8, optimizer={"name": "adam"})  # dicts need it
    single = Task(backend="tensorflow", model=small_model, loss="cross_entropy",
                  data=lambda: tf.data.Dataset.from_tensor_slices((x, y)))
    with pytest.raises(TaskError, match="validation"):
        BACKEND.data_size(single.load_data())


def test_compile_seconds_is_the_first_call_only():
    task = Task(backend="tensorflow", model=small_model, data=_blobs, loss="cross_entropy")
    data = task.load_data()
    session = BACKEND.session(task, data, CPU, batch_size=32, optimizer={"name": "adam"}, seed=0)
    assert session.compile_seconds == 0.0
    sampler = BatchSampler(480, 32, 0)
    session.train_step(sampler.next())
    first = session.compile_seconds
    assert first > 0
    for _ in range(5):
        session.train_step(sampler.next())
    assert session.compile_seconds == first  # later steps run the traced graph: no more compile time
    session.evaluate()
    session.evaluate()
    assert session.compile_seconds > first  # the evaluation step is compiled once too
    assert session._train_fn.experimental_get_tracing_count() == 1  # one trace, whatever the batch


def test_keras_loss_object_matches_the_named_loss():
    named = Task(backend="tensorflow", model=small_model, data=_blobs, loss="cross_entropy")
    native = Task(backend="tensorflow", model=small_model, data=_blobs,
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    _, before, after = _train(native, steps=10, seed=5)
    _, named_before, named_after = _train(named, steps=10, seed=5)
    assert after < before
    assert (before, after) == pytest.approx((named_before, named_after), rel=1e-5)


def test_plain_callable_loss_with_per_sample_values():
    def squared(y_true, y_pred):  # Keras's argument order; per-sample values are averaged
        return tf.reduce_sum(tf.square(y_true - y_pred), axis=-1)

    (x, _), (xv, _) = _blobs()
    w = np.linspace(-1, 1, 16).astype(np.float32)
    task = Task(backend="tensorflow", loss=squared, data=lambda: ((x, (x @ w)[:, None]), (xv, (xv @ w)[:, None])),
                model=lambda: keras.Sequential([keras.Input((16,)), keras.layers.Dense(1)]))
    _, before, after = _train(task, optimizer={"name": "adam", "lr": 3e-2})
    assert after < 0.5 * before


def test_weight_decay_is_l2_except_for_adamw():
    """sgd's weight_decay is torch's L2 term; adamw's is decoupled, as Keras and torch both do it."""
    def zeros():  # zero input and target: zero loss and zero gradient, so only the decay moves a weight
        return (np.zeros((8, 16), np.float32), np.zeros((8, 4), np.float32)), (np.zeros((8, 16), np.float32),
                                                                              np.zeros((8, 4), np.float32))

    def one_step(name, decay):
        task = Task(backend="tensorflow", data=zeros, loss="mse", model=lambda: keras.Sequential(
            [keras.Input((16,)), keras.layers.Dense(4, kernel_initializer="ones", bias_initializer="zeros")]))
        session = BACKEND.session(task, task.load_data(), CPU, batch_size=1, seed=0,
                                  optimizer={"name": name, "lr": 0.1, "weight_decay": decay})
        session.train_step(np.array([0]))
        return float(session.model.layers[0].kernel.numpy()[0, 0])

    assert one_step("sgd", 0.5) == pytest.approx(1 - 0.1 * 0.5)  # w - lr·(g + wd·w)
    assert one_step("sgd", 0.0) == pytest.approx(1.0)
    assert one_step("adamw", 0.5) == pytest.approx(1 - 0.1 * 0.5)  # w·(1 - lr·wd), decoupled
    assert one_step("adam", 0.5) < 1 - 0.1 * 0.5 * 1.5  # L2 through Adam's normalisation: a whole lr step


def test_set_learning_rate():
    task = Task(backend="tensorflow", model=small_model, data=_blobs, loss="cross_entropy")
    session = BACKEND.session(task, task.load_data(), CPU, batch_size=32, optimizer={"name": "sgd", "lr": 0.1}, seed=0)
    session.set_learning_rate(0.25)
    assert float(session.optimizer.learning_rate.numpy()) == pytest.approx(0.25)


def test_model_that_is_not_keras_is_a_task_error():
    task = Task(backend="tensorflow", model=lambda: tf.Module(), data=_blobs, loss="cross_entropy")
    with pytest.raises(TaskError, match="not a keras.Model"):
        BACKEND.session(task, task.load_data(), CPU, batch_size=8, optimizer={"name": "adam"})
    with pytest.raises(AutotuneError, match="not available on backend tensorflow"):
        BACKEND.validate_optimizer({"name": "radam"})


def test_oom_recognition_is_narrow():
    assert BACKEND.is_oom(tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor"))
    assert BACKEND.is_oom(MemoryError("std::bad_alloc"))
    assert BACKEND.is_oom(tf.errors.InternalError(None, None, "Dst tensor is not initialized."))
    assert not BACKEND.is_oom(tf.errors.InternalError(None, None, "Blas GEMM launch failed"))
    assert not BACKEND.is_oom(tf.errors.InvalidArgumentError(None, None, "Incompatible shapes: [4] vs. [5]"))


def test_probe_lists_the_cpu_without_log_noise():
    result = run_cli("probe", "--backend", "tensorflow", "--json")
    assert result.returncode == 0, result.stderr
    devices = json.loads(result.stdout)["backends"]["tensorflow"]["devices"]
    assert devices[0]["id"] == "cpu" and devices[0]["backend"] == "tensorflow"
    assert "oneDNN" not in result.stderr and "absl::InitializeLog" not in result.stderr, result.stderr


def test_fit_batch_of_the_example_and_of_a_hungry_task_from_the_cli():
    result = run_cli("fit-batch", str(EXAMPLES / "tensorflow_digits.py"), "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["backend"] == "tensorflow" and data["batch_size"] == 1437 and data["limited_by"] == "dataset"
    assert "oneDNN" not in result.stderr, result.stderr
    result = run_cli("fit-batch", f"{TASKS / 'tensorflow_tasks.py'}:broken")
    assert result.returncode == 2 and "other than memory" in result.stderr


def test_a_session_resized_to_another_batch_runs_the_step_it_traced():
    """A fit's growth probes share one session: the larger batch trains without tracing the step again."""
    task = Task(backend="tensorflow", model=small_model, data=_blobs, loss="cross_entropy")
    data = task.load_data()
    session = BACKEND.session(task, data, CPU, batch_size=8, optimizer={"name": "adam"}, seed=0)
    session.train_step(np.arange(8))
    session.evaluate(max_batches=1)  # both steps traced at batch 8
    traced = session.compile_seconds
    assert traced > 0 and session.resize(64) and session.batch_size == 64
    session.train_step(np.arange(64))
    assert math.isfinite(session.last_loss()) and math.isfinite(session.evaluate(max_batches=1))
    assert session.compile_seconds == traced  # no second trace
    session.close()


def test_bench_of_every_precision_keeps_tensorflow_s_half_precision_fallback_line_off_stderr(tmp_path):
    """A CPU without AVX-512 runs float16 kernels through Eigen, and TensorFlow logs that at ERROR level at the
    first such kernel (the precision check, the peak matmul, the first step): the mode's figures say it."""
    result = run_cli("bench", str(EXAMPLES / "tensorflow_digits.py"), "--seconds", "0.2", "--compile", "off",
                     "--json", env={"AUTOTUNE_CACHE_DIR": str(tmp_path)})  # a fresh peak cache: its matmuls run
    assert result.returncode == 0, result.stderr
    assert "oneDNN supports" not in result.stderr, result.stderr
    assert {row["precision"] for row in json.loads(result.stdout)["rows"]} >= {"fp32"}


def test_the_half_precision_fallback_pattern_matches_tensorflow_s_line_and_no_other():
    from autotune.backends.native_noise import TENSORFLOW_CPU_HALF_NOISE

    line = ("E0000 00:00:1796404764.632157   16816 util.cc:131] oneDNN supports DT_HALF only on platforms with "
            "AVX-512. Falling back to the default Eigen-based implementation if present.")
    assert TENSORFLOW_CPU_HALF_NOISE.match(line)
    assert TENSORFLOW_CPU_HALF_NOISE.match(line.replace("DT_HALF", "DT_BFLOAT16"))
    assert not TENSORFLOW_CPU_HALF_NOISE.match("E0000 00:00:1796404764.632157   16816 op_kernel.cc:1] OOM when "
                                               "allocating tensor with shape[64,32]")
