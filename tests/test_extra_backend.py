"""A backend from outside the package (tests/backends/numpy_backend.py, NumPy only) registers through
`autotune.register_backend` and passes the same shipped conformance suite as the built-in ones."""

from pathlib import Path

import pytest

import autotune
from autotune.backends import backend_names, get_backend, install_hint
from autotune.space import load_space
from autotune.testing import BackendCase, BackendConformanceSuite, temporarily_registered

TASKS = Path(__file__).resolve().parent / "backends" / "numpy_tasks.py"


class TestNumpyBackend(BackendConformanceSuite):
    @pytest.fixture
    def backend_case(self):
        autotune.load_task(f"{TASKS}:small")  # its module registers the backend, as in every worker
        return BackendCase("numpy_mlp", tasks=TASKS, cap="900MiB")


def test_a_registered_backend_brings_its_hint_and_default_space():
    autotune.load_task(f"{TASKS}:small")
    assert "numpy_mlp" in backend_names() and install_hint("numpy_mlp") == "pip install numpy"
    backend = get_backend("numpy_mlp")
    space = load_space("numpy_mlp", backend.optimizer_names)
    assert set(space.to_dict()["optimizers"]) == {"sgd", "momentum", "adam"}


def test_registration_is_checked_and_can_be_undone():
    with pytest.raises(autotune.AutotuneError, match="class_path must be 'module:Class'"):
        autotune.register_backend("other", class_path="nocolon", framework="numpy", install_hint="-",
                                  default_space="x.yaml")
    with temporarily_registered("ghost2", class_path="ghost:Ghost", framework="ghost_framework_xyz",
                                install_hint="pip install ghost", default_space="ghost.yaml", aliases=("gh",)):
        assert autotune.Task(backend="gh", model=lambda: None, data=((1,), (1,))).backend == "ghost2"
        with pytest.raises(autotune.BackendNotInstalled, match="pip install ghost"):
            get_backend("ghost2")
    assert "ghost2" not in backend_names()
