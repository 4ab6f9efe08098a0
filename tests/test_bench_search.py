"""Precision and compilation as search dimensions: the search-space keys, and real trials that use them."""

from __future__ import annotations

import optuna
import pytest

from autotune.backends import get_backend, is_installed
from autotune.errors import AutotuneError, SearchSpaceError
from autotune.space import load_space
from autotune.task import load_task
from autotune.trial import run_trial
from autotune.training import BatchSampler
from tests.conftest import EXAMPLES


def _space(**overrides):
    return load_space("torch", get_backend("torch").optimizer_names, overrides=overrides)


def test_the_defaults_train_in_fp32_without_compiling_and_search_neither():
    space = _space()
    trial = optuna.create_study().ask()
    config = space.suggest(trial, ceiling=256)
    assert (config["precision"], config["compile"]) == ("fp32", False)
    assert "precision" not in trial.params and "compile" not in trial.params


def test_several_choices_are_searched():
    space = _space(precision={"choices": ["fp32", "bf16"]}, compile={"choices": [False, True]})
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    seen = set()
    for _ in range(24):
        trial = study.ask()
        config = space.suggest(trial, ceiling=256)
        seen.add((config["precision"], config["compile"]))
        assert trial.params["precision"] == config["precision"] and trial.params["compile"] == config["compile"]
        study.tell(trial, 1.0)
    assert seen == {("fp32", False), ("fp32", True), ("bf16", False), ("bf16", True)}
    assert {"precision", "compile"} <= set(space.distributions())


@pytest.mark.parametrize("key, value, fragment", [
    ("precision", {"choices": ["fp8"]}, "'fp8' is not one of"),
    ("precision", {"choices": []}, "non-empty list"),
    ("compile", {"choices": ["yes"]}, "'yes' is not one of"),
    ("compile", {"values": [True]}, "values"),
])
def test_bad_choices_are_one_line_errors(key, value, fragment):
    with pytest.raises(SearchSpaceError, match=fragment):
        _space(**{key: value})


def _config(**extra):
    return {"batch_size": 64, "optimizer": "adam", "lr": 1e-3, **extra}


@pytest.mark.skipif("bf16" not in get_backend("torch").precisions(get_backend("torch").resolve_device("cpu")),
                    reason="this CPU's torch build has no bf16 kernels")
def test_a_torch_trial_trains_in_bf16():
    figures = run_trial(str(EXAMPLES / "torch_digits.py"), _config(precision="bf16"), "cpu", steps=20, reports=2)
    assert figures["val_loss"] < figures["initial_val_loss"]


def test_a_compiled_keras_trial_reports_its_compile_time_apart():
    if not is_installed("tensorflow"):
        pytest.skip("tensorflow is not installed")
    figures = run_trial(str(EXAMPLES / "tensorflow_digits.py"), _config(compile=True), "cpu", steps=20, reports=2)
    plain = run_trial(str(EXAMPLES / "tensorflow_digits.py"), _config(), "cpu", steps=20, reports=2)
    assert figures["compile_seconds"] > 0 and figures["val_loss"] < figures["initial_val_loss"]
    assert figures["val_loss"] == pytest.approx(plain["val_loss"], rel=1e-3)  # XLA: the same training


def test_a_precision_the_device_lacks_stops_with_the_fix():
    with pytest.raises(AutotuneError, match="drop it from precision.choices"):
        run_trial(str(EXAMPLES / "torch_digits.py"), _config(precision="fp16"), "cpu", steps=2, reports=1)


def _tensorflow():
    if not is_installed("tensorflow"):
        pytest.skip("tensorflow is not installed")
    return get_backend("tensorflow")


def test_a_keras_fp16_trial_trains_with_a_loss_scale_optimizer():
    import keras

    backend = _tensorflow()
    cpu = backend.resolve_device("cpu")
    if "fp16" not in backend.precisions(cpu):
        assert backend.precision_notes(cpu)["fp16"]  # listed as unsupported, with the reason
        pytest.skip(backend.precision_notes(cpu)["fp16"])
    task = load_task(str(EXAMPLES / "tensorflow_digits.py"))
    session = backend.bench_session(task, task.load_data(), cpu, batch_size=32, optimizer={"name": "adam"},
                                    precision="fp16")
    assert isinstance(session.optimizer, keras.optimizers.LossScaleOptimizer)
    assert session.model.layers[-1].compute_dtype == "float16"
    session.close()
    figures = run_trial(str(EXAMPLES / "tensorflow_digits.py"),
                        _config(optimizer="adamw", optimizer_params={"weight_decay": 0.01}, precision="fp16"),
                        "cpu", steps=20, reports=2)
    assert figures["val_loss"] < figures["initial_val_loss"]


def test_keras_precisions_follow_the_documented_hardware_rules():
    from autotune.devices import Device

    backend = _tensorflow()
    tpu = Device(id="TPU:0", kind="tpu", index=0, name="TPU v4")
    old_gpu = Device(id="GPU:0", kind="gpu", index=0, name="T4", details={"capability": "7.5"})
    new_gpu = Device(id="GPU:0", kind="gpu", index=0, name="H100", details={"capability": "9.0"})
    assert backend.precisions(tpu) == ("fp32", "bf16") and "float16" in backend.precision_notes(tpu)["fp16"]
    assert backend.precisions(old_gpu) == ("fp32", "fp16") and "7.5" in backend.precision_notes(old_gpu)["bf16"]
    assert backend.precisions(new_gpu) == ("fp32", "bf16", "fp16")


def test_a_mindspore_fp16_trial_trains_with_a_dynamic_loss_scaler():
    if not is_installed("mindspore"):
        pytest.skip("mindspore is not installed")
    import mindspore as ms

    backend = get_backend("mindspore")
    cpu = backend.resolve_device("cpu")
    if "fp16" not in backend.precisions(cpu):
        pytest.skip("this CPU's MindSpore build has no float16 matmul")
    task = load_task(str(EXAMPLES / "mindspore_digits.py"))
    session = backend.bench_session(task, task.load_data(), cpu, batch_size=32, optimizer={"name": "adam"},
                                    precision="fp16")
    assert isinstance(session.loss_scaler, ms.amp.DynamicLossScaler)
    session.close()
    figures = run_trial(str(EXAMPLES / "mindspore_digits.py"), _config(precision="fp16"), "cpu", steps=20, reports=2)
    assert figures["val_loss"] < figures["initial_val_loss"]


def test_keras_fp16_accumulation_follows_the_full_batch():
    """Micro-batches in float16 scale each loss as the plain step does: the LossScaleOptimizer unscales the sum,
    so unscaled micro-batch gradients would train about 32768 times too slowly. Momentum with coupled weight
    decay covers the decay term too."""
    from autotune.training import accumulating

    backend = _tensorflow()
    cpu = backend.resolve_device("cpu")
    if "fp16" not in backend.precisions(cpu):
        pytest.skip(backend.precision_notes(cpu)["fp16"])
    task = load_task(str(EXAMPLES / "tensorflow_digits.py"))
    data = task.load_data()

    def trajectory(accumulation_steps):
        session = accumulating(backend.bench_session(
            task, data, cpu, batch_size=128 // accumulation_steps, precision="fp16", seed=3,
            optimizer={"name": "momentum", "lr": 0.05, "weight_decay": 1e-3}), accumulation_steps)
        sampler = BatchSampler(backend.data_size(data)[0], 128, seed=5)
        try:
            for _ in range(8):
                session.train_step(sampler.next())
            return session.evaluate()
        finally:
            session.close()

    untrained = backend.bench_session(task, data, cpu, batch_size=128, precision="fp16", seed=3,
                                      optimizer={"name": "momentum", "lr": 0.05})
    start = untrained.evaluate()
    untrained.close()
    full, accumulated = trajectory(1), trajectory(4)
    assert full < 0.9 * start, (start, full)
    assert abs(accumulated - full) < 0.05 * (start - full), (start, full, accumulated)
