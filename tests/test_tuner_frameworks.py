"""The in-loop door inside the frameworks' own loops: Keras ``fit`` and MindSpore ``Model.train`` with the trial's
callback (timed steps, a validation loss per epoch, pruning by stopping training), stored as CLI trials are."""

import json

import numpy as np
import optuna
import pytest

import autotune
from autotune.errors import TaskError
from tests.conftest import run_cli
from tests.tasks.blobs import make_blobs

SPACE = {"batch_size": {"choices": [32, 64]}, "lr": {"low": 1e-3, "high": 3e-2, "log": True, "reference_batch": 32},
         "optimizers": {"adam": {}, "momentum": {"momentum": {"low": 0.8, "high": 0.95}}}}


def test_keras_fit_reports_through_the_trial_callback(tmp_path):
    pytest.importorskip("tensorflow")
    import keras

    (x, y), (x_val, y_val) = make_blobs()
    storage = f"sqlite:///{tmp_path / 'k.db'}"
    tuner = autotune.Tuner(study="keras-loop", backend="tensorflow", storage=storage, space_overrides=SPACE)
    for trial in tuner.trials(3):
        with trial:
            model = keras.Sequential([keras.Input((16,)), keras.layers.Dense(32, activation="relu"),
                                      keras.layers.Dense(4)])
            model.compile(optimizer=trial.optimizer(None),
                          loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
            history = model.fit(x, y, batch_size=trial.batch_size, epochs=3, validation_data=(x_val, y_val),
                                callbacks=[trial.callback()], verbose=0)
            assert abs(model.optimizer.learning_rate.numpy() - trial.lr) < 1e-6 * trial.lr
    complete = tuner.study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert complete, [t.user_attrs.get("failure") for t in tuner.study.trials]
    measured = complete[0].user_attrs["measured"]
    assert measured["steps_timed"] > 0 and measured["throughput"] > 0
    assert [h[0] for h in complete[0].user_attrs["history"]][:2] == [1, 2]
    assert complete[0].value == pytest.approx(history.history["val_loss"][-1], rel=1e-5) or len(complete) > 1
    best = json.loads(run_cli("best", "keras-loop", "--storage", storage, "--json").stdout)
    assert best["backend"] == "tensorflow" and best["batch_size"] in (32, 64)


def test_keras_callback_without_validation_data_is_one_line(tmp_path):
    pytest.importorskip("tensorflow")
    import keras

    (x, y), _ = make_blobs()
    tuner = autotune.Tuner(study="keras-noval", backend="tensorflow", storage=f"sqlite:///{tmp_path / 'n.db'}",
                           space_overrides=SPACE)
    for trial in tuner.trials(1):
        with pytest.raises(TaskError, match="validation_data"):
            model = keras.Sequential([keras.Input((16,)), keras.layers.Dense(4)])
            model.compile(optimizer=trial.optimizer(None), loss="sparse_categorical_crossentropy")
            model.fit(x, y, batch_size=trial.batch_size, epochs=1, callbacks=[trial.callback()], verbose=0)
        trial.finish(1.0)


def test_mindspore_model_train_reports_through_the_trial_callback(tmp_path):
    pytest.importorskip("mindspore")
    import mindspore as ms
    import mindspore.dataset as msds
    from mindspore import nn

    (x, y), (x_val, y_val) = make_blobs()
    # labels as a column: a mindspore.dataset row of NumPy scalars fails under NumPy 2 (see the README)
    y, y_val = y.astype(np.int32)[:, None], y_val.astype(np.int32)
    cross_entropy = nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean")

    class ColumnLabels(nn.Cell):
        def construct(self, logits, labels):
            return cross_entropy(logits, labels.squeeze(-1))

    storage = f"sqlite:///{tmp_path / 'm.db'}"
    tuner = autotune.Tuner(study="ms-loop", backend="mindspore", storage=storage, space_overrides=SPACE)
    for trial in tuner.trials(2):
        with trial:
            ms.set_seed(0)
            net = nn.SequentialCell([nn.Dense(16, 32), nn.ReLU(), nn.Dense(32, 4)])
            model = ms.Model(net, loss_fn=ColumnLabels(), optimizer=trial.optimizer(net.trainable_params()))
            data = msds.NumpySlicesDataset({"x": x, "y": y}, shuffle=False).batch(trial.batch_size)

            def validation_loss():
                logits = net(ms.Tensor(x_val))
                return float(cross_entropy(logits, ms.Tensor(y_val)).asnumpy())

            model.train(2, data, callbacks=[trial.callback(evaluate=validation_loss)], dataset_sink_mode=False)
    complete = tuner.study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert complete, [t.user_attrs.get("failure") for t in tuner.study.trials]
    assert complete[0].user_attrs["measured"]["steps_timed"] > 0
    assert [h[0] for h in complete[0].user_attrs["history"]] == [1, 2]
    assert tuner.best.backend == "mindspore"
