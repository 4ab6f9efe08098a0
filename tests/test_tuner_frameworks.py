"""The in-loop door inside the frameworks' own loops: the Keras ``fit`` and MindSpore ``Model.train`` examples
with the trial's callback (timed steps, a validation loss per epoch, pruning by stopping training), stored as
CLI trials are."""

import json

import optuna
import pytest

import autotune
from autotune.errors import TaskError
from tests.conftest import load_example, run_cli


def _check_stored(tuner, storage, study, backend):
    complete = tuner.study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert complete, [t.user_attrs.get("failure") for t in tuner.study.trials]
    measured = complete[0].user_attrs["measured"]
    assert measured["steps_timed"] > 0 and measured["throughput"] > 0
    assert [h[0] for h in complete[0].user_attrs["history"]][:2] == [1, 2]
    best = json.loads(run_cli("best", study, "--storage", storage, "--json").stdout)
    assert best["backend"] == backend and best["batch_size"] in (32, 64)
    assert best["batch_size"] == tuner.best.batch_size


def test_the_keras_fit_example_reports_through_the_trial_callback(tmp_path):
    pytest.importorskip("tensorflow")
    storage = f"sqlite:///{tmp_path / 'k.db'}"
    _check_stored(load_example("keras_own_loop").main(trials=3, storage=storage), storage, "keras-own-loop",
                  "tensorflow")


def test_keras_callback_without_validation_data_is_one_line(tmp_path):
    pytest.importorskip("tensorflow")
    import keras

    example = load_example("keras_own_loop")
    (x, y), _ = example.blobs()
    tuner = autotune.Tuner(study="keras-noval", backend="tensorflow", storage=f"sqlite:///{tmp_path / 'n.db'}",
                           space_overrides=example.SPACE)
    for trial in tuner.trials(1):
        with pytest.raises(TaskError, match="validation_data"):
            model = keras.Sequential([keras.Input((16,)), keras.layers.Dense(4)])
            model.compile(optimizer=trial.optimizer(None), loss="sparse_categorical_crossentropy")
            model.fit(x, y, batch_size=trial.batch_size, epochs=1, callbacks=[trial.callback()], verbose=0)
        trial.finish(1.0)


def test_the_mindspore_model_train_example_reports_through_the_trial_callback(tmp_path):
    pytest.importorskip("mindspore")
    storage = f"sqlite:///{tmp_path / 'm.db'}"
    _check_stored(load_example("mindspore_own_loop").main(trials=2, storage=storage), storage, "mindspore-own-loop",
                  "mindspore")
