"""A fitted ceiling is kept in the storage under the task's fingerprint: the same model and data shapes on the
same device reuse it, anything that changes memory per sample misses it."""

import numpy as np
import optuna
import torch

import autotune
from autotune.ceiling_cache import CeilingCache, ceiling_key
from autotune.fingerprint import describe_task
from autotune.storage import open_storage
from tests.conftest import TASKS, run_cli
from tests.tasks.blobs import make_blobs

SMALL = f"{TASKS / 'torch_tasks.py'}:small"


def _task(width=32, dtype=np.float32):
    def data():
        (x, y), (xv, yv) = make_blobs()
        return (x.astype(dtype), y), (xv.astype(dtype), yv)

    return autotune.Task(backend="torch", data=data, loss="cross_entropy",
                         model=lambda: torch.nn.Sequential(torch.nn.Linear(16, width), torch.nn.ReLU(),
                                                           torch.nn.Linear(width, 4)))


def _key(task, **changes):
    from autotune.backends import get_backend

    options = {"device": get_backend("torch").resolve_device("cpu"), "versions": {"torch": torch.__version__},
               "memory_limit": None, "margin": 0.05, "max_batch": None, **changes}
    return ceiling_key(describe_task(task=task), **options)


def test_the_fingerprint_follows_shapes_and_dtypes_not_values():
    described = describe_task(task=_task())
    assert described["parameters"][0] == ["0.weight", [32, 16], "torch.float32"]
    assert described["data"]["x_train"][1] == "float32"
    assert _key(_task()) == _key(_task())  # fresh random weights: the same structure
    assert _key(_task()) != _key(_task(width=64))  # a wider layer
    assert _key(_task()) != _key(_task(dtype=np.float64))  # other data dtypes
    assert _key(_task()) != _key(_task(), memory_limit=2 ** 30)  # another budget
    assert _key(_task()) != _key(_task(), versions={"torch": "0.0"})


def test_the_newest_fit_of_a_key_is_found_in_any_study_of_the_storage(tmp_path):
    storage = open_storage(f"sqlite:///{tmp_path / 'c.db'}")
    cache = CeilingCache(storage, "abc")
    assert cache.lookup() is None
    first = optuna.create_study(storage=storage, study_name="first")
    said = []
    cache.remember(first, {"batch_size": 96, "fitted_by": {"host": "h", "pid": 1, "at": "2026-01-01T00:00:00"}})
    found = cache.lookup(said.append)
    assert found["batch_size"] == 96 and found["cached"] == "abc" and "fit is skipped" in said[0]["message"]
    assert CeilingCache(storage, "other").lookup() is None
    refit = optuna.create_study(storage=storage, study_name="refit")
    cache.remember(refit, {"batch_size": 80, "fitted_by": {"at": "2026-01-02T00:00:00"}})
    assert cache.lookup()["batch_size"] == 80  # a refit's newer answer wins
    optuna.delete_study(study_name="refit", storage=storage)
    assert cache.lookup()["batch_size"] == 96  # a deleted study takes its fit along
    assert [s.study_name for s in optuna.get_all_study_summaries(storage)] == ["first"]  # no study of its own


def test_a_second_tune_on_sqlite_skips_the_fit_and_refit_forces_it(tmp_path):
    common = ("--trials", "1", "--trial-steps", "10", "--no-range-test", "--storage", f"sqlite:///{tmp_path / 's.db'}")
    first = run_cli("tune", "--confirm", "0", SMALL, "--study", "a", *common)
    again = run_cli("tune", "--confirm", "0", SMALL, "--study", "b", *common)
    refit = run_cli("tune", "--confirm", "0", SMALL, "--study", "c", "--refit", *common)
    assert [r.returncode for r in (first, again, refit)] == [0, 0, 0], refit.stderr
    assert "fitting the batch-size ceiling" in first.stderr
    assert "reusing the ceiling" in again.stderr and "fitting the batch-size ceiling" not in again.stderr
    assert "fitting the batch-size ceiling" in refit.stderr
