"""Keras sessions opened one after another, as a worker's trials open them, for tests/test_tensorflow_kept.py:
module-level, so a worker can import it by name."""

from autotune import Task
from autotune.backends import get_backend
from autotune.training import BatchSampler
from tests.tasks.tensorflow_tasks import _blobs, keras


def regularised_model():
    """Batch normalisation (moving statistics) and dropout (a seed generator's state): variables that training
    changes besides the weights."""
    return keras.Sequential([keras.Input((16,)), keras.layers.Dense(32, activation="relu"),
                             keras.layers.BatchNormalization(), keras.layers.Dropout(0.3), keras.layers.Dense(4)])


regularised = Task(backend="tensorflow", model=regularised_model, data=_blobs, loss="cross_entropy")


def sessions_in_turn(runs: list[tuple[dict, int]], steps: int = 6) -> list[dict]:
    """For each (optimizer spec, seed), a session trains ``steps`` steps and evaluates, then is closed as a
    trial's is: what each saw (losses, compile time, which session object, how often its steps were traced)."""
    backend = get_backend("tensorflow")
    cpu = backend.resolve_device("cpu")
    data = regularised.load_data()
    seen = []
    for spec, seed in runs:
        session = backend.session(regularised, data, cpu, batch_size=32, optimizer=spec, seed=seed)
        sampler = BatchSampler(480, 32, 0)
        losses = []
        for _ in range(steps):
            session.train_step(sampler.next())
            losses.append(session.last_loss())
        losses.append(session.evaluate())
        seen.append({"session": id(session), "losses": losses, "compile_seconds": session.compile_seconds,
                     "split": session._gradients_fn is not None,  # a session that may be kept
                     "gradient_traces": session._gradients_fn and session._gradients_fn.experimental_get_tracing_count(),
                     "apply_traces": session._apply_fn.experimental_get_tracing_count()})
        session.close()
        backend.release_memory(cpu)
    return seen


def held_before_and_after_a_bench_session() -> list[bool]:
    """Whether a closed trial's session is held, and whether it still is once a bench session (another precision
    or compile mode, never kept) is opened: it must not be held beside that one's model."""
    from autotune.backends import tensorflow_kept as keeping

    backend = get_backend("tensorflow")
    cpu = backend.resolve_device("cpu")
    data = regularised.load_data()
    backend.session(regularised, data, cpu, batch_size=32, optimizer={"name": "adam", "lr": 1e-3}, seed=0).close()
    held = keeping.holding()
    bench = backend.bench_session(regularised, data, cpu, batch_size=32, optimizer={"name": "adam", "lr": 1e-3},
                                  precision="fp32", compile=True)
    after = keeping.holding()
    bench.close()
    return [held, after]


def sessions_under_a_byte_budget(runs: list[tuple[dict, int]], budget: int) -> list[dict]:
    """`sessions_in_turn` where what a worker may keep is at most ``budget`` bytes (instead of a share of its
    memory): an optimizer whose state exceeds it is not set aside."""
    from autotune.backends import tensorflow as backend_module

    backend_module.worth_keeping = lambda nbytes, share=None: nbytes <= budget
    return sessions_in_turn(runs)
