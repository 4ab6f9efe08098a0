"""A worker keeps its last Keras session between trials (autotune/backends/tensorflow_kept.py): the next trial
of the same task starts from the same variables a fresh session would, without tracing its steps again."""

import numpy as np
import pytest

pytest.importorskip("tensorflow")

from autotune.backends import get_backend  # noqa: E402
from autotune.backends import tensorflow_kept as keeping  # noqa: E402
from autotune.backends.tensorflow import keras, tf  # noqa: E402
from autotune.runner import Worker  # noqa: E402
from tests.tasks.keras_kept import (  # noqa: E402
    held_before_and_after_a_bench_session,
    regularised,
    sessions_in_turn,
    sessions_under_a_byte_budget,
)

ADAM = {"name": "adam", "lr": 1e-2}
RUNS = [(ADAM, 0), ({"name": "adam", "lr": 3e-3}, 0), ({"name": "rmsprop", "lr": 1e-3}, 0), (ADAM, 0), (ADAM, 1)]


def test_a_worker_renews_its_session_and_each_trial_trains_as_in_a_fresh_one():
    with Worker(preload=("tensorflow",)) as worker:
        outcome = worker.run(sessions_in_turn, {"runs": RUNS})
        bench = worker.run(held_before_and_after_a_bench_session, {})
    assert bench.ok and bench.value == [True, False], bench  # a bench session's model is not built beside it
    assert outcome.ok, outcome
    kept = outcome.value
    fresh = sessions_in_turn(RUNS)  # in the test's own process nothing is kept: a fresh session each time
    assert len({run["session"] for run in kept}) == 1  # one session served them all
    assert all(run["split"] for run in kept) and not any(run["split"] for run in fresh)  # fused where not kept
    for renewed, new in zip(kept, fresh):
        # the same weights, optimizer state, dropout seeds and moving statistics to start from (another seed's
        # from a new build): the same run
        np.testing.assert_allclose(renewed["losses"], new["losses"], rtol=1e-5)
    assert [run["gradient_traces"] for run in kept] == [1] * 5  # traced once for every optimizer and seed
    assert kept[0]["compile_seconds"] > 0
    assert kept[1]["compile_seconds"] == 0  # only the learning rate changed: nothing traced again
    assert kept[2]["compile_seconds"] > 0 and kept[2]["apply_traces"] == 1  # another optimizer traces its update
    assert kept[3]["compile_seconds"] == 0  # back to adam: its update was set aside, not traced again
    assert kept[4]["compile_seconds"] == 0  # another seed: a new build's values, the same traced steps
    assert fresh[3]["losses"] != fresh[4]["losses"]  # which do differ from seed 0's


# each optimizer twice in a row with other values of the parameters TPE draws: betas, rho, decoupled decay
HELD_RUNS = [({"name": "adam", "lr": 1e-2, "beta1": 0.9}, 0),
             ({"name": "adam", "lr": 1e-2, "beta1": 0.8, "beta2": 0.99}, 0),
             ({"name": "rmsprop", "lr": 1e-3, "rho": 0.9}, 0), ({"name": "rmsprop", "lr": 1e-3, "rho": 0.95}, 0),
             ({"name": "nadam", "lr": 1e-2, "beta1": 0.93}, 0), ({"name": "nadam", "lr": 1e-2, "beta1": 0.82}, 1),
             ({"name": "adamw", "lr": 1e-2, "weight_decay": 1e-4}, 0),
             ({"name": "adamw", "lr": 1e-2, "beta1": 0.85, "weight_decay": 0.05}, 0),
             ({"name": "lion", "lr": 1e-3, "beta1": 0.9}, 0), ({"name": "lion", "lr": 1e-3, "beta1": 0.86}, 0),
             ({"name": "rmsprop", "lr": 1e-3, "rho": 0.9, "momentum": 0.9}, 0)]


def test_an_optimizers_drawn_parameters_are_assigned_in_a_kept_session_not_traced_again():
    """TPE draws new betas (or rho, or decay) for almost every trial: held in variables, they change what the
    traced update computes without a new trace, and each trial still trains exactly as a fresh session would."""
    with Worker(preload=("tensorflow",)) as worker:
        outcome = worker.run(sessions_in_turn, {"runs": HELD_RUNS})
    assert outcome.ok, outcome
    kept, fresh = outcome.value, sessions_in_turn(HELD_RUNS)
    for renewed, new, (spec, _) in zip(kept, fresh, HELD_RUNS):
        np.testing.assert_allclose(renewed["losses"], new["losses"], rtol=1e-5, err_msg=str(spec))
    for first, second in zip(fresh[0:10:2], fresh[1:10:2]):
        assert first["losses"] != second["losses"]  # the other values do train differently
    # the last, rmsprop with momentum, builds a momentum state: another structure, so a new update
    assert [run["compile_seconds"] > 0 for run in kept] == [True, False] * 5 + [True]
    assert {run["apply_traces"] for run in kept} == {1}


def test_optimizers_set_aside_stay_within_the_kept_share():
    """The model's first values (3.2 kB) and RMSprop's state (3.0 kB) fit a 4 kB budget, Adam's (5.9 kB) does not:
    RMSprop comes back without a trace, Adam is traced again."""
    runs = [({"name": "rmsprop", "lr": 1e-3}, 0), ({"name": "adam", "lr": 1e-2}, 0),
            ({"name": "rmsprop", "lr": 1e-3}, 0), ({"name": "adam", "lr": 1e-2}, 0)]
    with Worker(preload=("tensorflow",)) as worker:
        outcome = worker.run(sessions_under_a_byte_budget, {"runs": runs, "budget": 4096})
    assert outcome.ok, outcome
    assert len({run["session"] for run in outcome.value}) == 1  # kept throughout
    assert [run["compile_seconds"] > 0 for run in outcome.value] == [True, True, False, True]


def test_outside_a_worker_a_closed_session_is_dropped():
    backend = get_backend("tensorflow")
    session = backend.session(regularised, regularised.load_data(), backend.resolve_device("cpu"), batch_size=32,
                              optimizer=ADAM, seed=0)
    session.close()
    assert session.model is None and not keeping.holding()


def test_keras_state_is_not_cleared_while_a_session_is_held():
    # clearing it (keras.backend.clear_session) would make TensorFlow optimise the held session's steps again
    backend = get_backend("tensorflow")
    cpu = backend.resolve_device("cpu")

    class Held:
        def release(self):
            pass

    keras.backend.get_uid("kept_probe")
    keeping.keep(Held())
    try:
        backend.release_memory(cpu)
        assert keras.backend.get_uid("kept_probe") > 1  # Keras's counters survived
    finally:
        keeping.take()
    backend.release_memory(cpu)
    assert keras.backend.get_uid("kept_probe") == 1  # with nothing held, the state is cleared as before


def test_initial_values_keep_a_filled_variable_as_one_value():
    weights = tf.Variable(np.arange(6, dtype=np.float32).reshape(2, 3))
    zeros, steps = tf.Variable(tf.zeros([1000])), tf.Variable(0, dtype=tf.int64)
    initial = keeping.InitialValues([weights, zeros, steps])
    assert initial.nbytes == weights.numpy().nbytes  # the zeros and the counter cost one value each
    weights.assign_add(tf.ones([2, 3]))
    zeros.assign(tf.fill([1000], 5.0))
    steps.assign(7)
    initial.restore()
    np.testing.assert_array_equal(weights.numpy(), np.arange(6).reshape(2, 3))
    assert not zeros.numpy().any() and steps.numpy() == 0 and steps.dtype == tf.int64


def test_a_copy_is_kept_only_where_it_is_a_small_share_of_memory():
    assert keeping.worth_keeping(1 << 20)
    assert not keeping.worth_keeping(1 << 50)
