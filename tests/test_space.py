"""Search spaces: defaults ship in the package, user files merge over them, every bad case is one line."""

import shutil
import subprocess
import sys
import zipfile

import optuna
import pytest

from autotune import SearchSpaceError
from autotune.backends import get_backend
from autotune.space import load_space
from tests.conftest import ROOT, TASKS, assert_one_line_error, run_cli

TORCH_OPTIMIZERS = get_backend("torch").optimizer_names


def test_default_space_loads_and_samples_conditionally():
    space = load_space("torch", TORCH_OPTIMIZERS)
    assert space.batch_sizes(1000) == [16, 32, 64, 128, 256, 512, 1000]
    assert space.smallest_batch == 16
    with pytest.raises(SearchSpaceError, match="no candidate at or below the ceiling of 8 .*lower batch_size.low"):
        space.batch_sizes(8)  # a ceiling set by memory or the data (step time stops at the smallest batch)
    study = optuna.create_study()
    trial = study.ask()
    config = space.suggest(trial, ceiling=200)
    assert config["batch_size"] <= 200 and config["optimizer"] in space.optimizers
    assert all(key.startswith(config["optimizer"] + ".") for key in trial.params if "." in key)
    assert config["lr"] == pytest.approx(min(config["lr_reference"] * config["lr_scale"], space.lr_high))


def test_lr_scaling_rules():
    space = load_space("torch", TORCH_OPTIMIZERS, overrides={"batch_size": {"choices": [128]},
                                                             "optimizers": {"sgd": {}}})
    config = space.suggest(optuna.create_study().ask(), ceiling=1000)
    assert config["lr_scale"] == pytest.approx(128 / 32)  # linear for SGD
    space = load_space("torch", TORCH_OPTIMIZERS, overrides={"batch_size": {"choices": [128]},
                                                             "optimizers": {"adam": {}}})
    config = space.suggest(optuna.create_study().ask(), ceiling=1000)
    assert config["lr_scale"] == pytest.approx(2.0)  # square root for adaptive methods


def test_user_file_narrows_the_default(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("optimizers:\n  adam: {}\nlr: {low: 1.0e-3, high: 1.0e-2}\n")
    space = load_space("torch", TORCH_OPTIMIZERS, path)
    assert list(space.optimizers) == ["adam"] and space.lr_low == 1e-3
    assert space.batch_low == 16  # kept from the default
    assert space.source == "mine.yaml"


BAD = {
    "unknown top key": ("momentum: 0.9\n", "mine.yaml: momentum: unknown key"),
    "unknown nested key": ("lr: {low: 1.0e-3, high: 1.0e-2, scale: 2}\n", "lr.scale: unknown key"),
    "wrong type": ("lr: {low: fast, high: 1.0e-2}\n", "lr.low: must be a number"),
    "empty choices": ("optimizers:\n  adam: {beta2: {choices: []}}\n", "optimizers.adam.beta2.choices: must be a non-empty list"),
    "low above high": ("lr: {low: 1.0e-1, high: 1.0e-3}\n", "lr: low (0.1) must be below high (0.001)"),
    "log with zero bound": ("optimizers:\n  adamw: {weight_decay: {low: 0.0, high: 0.1, log: true}}\n",
                            "optimizers.adamw.weight_decay.low: must be positive on a log scale"),
    "optimizer the backend lacks": ("optimizers:\n  lamb: {}\n", "optimizers.lamb: optimizer not available on backend torch"),
    "unknown optimizer parameter": ("optimizers:\n  sgd: {betas: {low: 0.1, high: 0.2}}\n", "optimizers.sgd.betas: unknown key"),
    "batch low above high": ("batch_size: {low: 64, high: 16}\n", "batch_size: low (64) must be below high (16)"),
    "not yaml": ("lr: [unclosed\n", "mine.yaml: line"),
    "not a mapping": ("- a\n- b\n", "must be a mapping"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_space_is_a_one_line_error_naming_file_and_key(tmp_path, case):
    text, message = BAD[case]
    path = tmp_path / "mine.yaml"
    path.write_text(text)
    with pytest.raises(SearchSpaceError) as info:
        load_space("torch", TORCH_OPTIMIZERS, path)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_bad_space_from_the_cli(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("lr: {low: 1.0e-1, high: 1.0e-3}\n")
    result = run_cli("tune", "--confirm", "0", f"{TASKS / 'torch_tasks.py'}:small", "--search-space", str(path),
                     "--storage", f"sqlite:///{tmp_path / 's.db'}")
    assert_one_line_error(result, "mine.yaml", "lr: low")
    missing = run_cli("tune", "--confirm", "0", f"{TASKS / 'torch_tasks.py'}:small", "--search-space", str(tmp_path / "no.yaml"),
                      "--storage", f"sqlite:///{tmp_path / 's.db'}")
    assert_one_line_error(missing, "not found")


def test_default_spaces_ship_in_the_wheel(tmp_path):
    # built from a copy of the sources alone: the checkout's own *.egg-info (from the editable install) lists
    # every file and would hide a subpackage that pyproject.toml leaves out
    source = tmp_path / "source"
    for part in ("pyproject.toml", "README.md"):
        source.mkdir(exist_ok=True)
        shutil.copy(ROOT / part, source / part)
    for folder in ("autotune", "search_spaces"):
        shutil.copytree(ROOT / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path), str(source)], check=True, capture_output=True)
    wheel = next(tmp_path.glob("autotune-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "autotune/search_spaces/torch.yaml" in names
    # every module of the source tree ships: a subpackage missing from pyproject's list works in an editable
    # install and breaks a real one
    modules = {path.relative_to(ROOT).as_posix() for path in (ROOT / "autotune").rglob("*.py")}
    assert modules <= names, sorted(modules - names)
