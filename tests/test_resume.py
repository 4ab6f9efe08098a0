"""Resuming a study under a changed search space or ceiling: the same study goes on, or one line refuses it."""

import optuna
import pytest

from autotune import SearchSpaceError
from autotune.backends import get_backend
from autotune.resume import check_resumable
from autotune.space import BATCH_PARAM, batch_exponent_range, load_space, snap_batch_size
from autotune.study_open import sampler as _study_sampler
from tests.conftest import ROOT, TASKS, assert_one_line_error, run_cli

TORCH_OPTIMIZERS = get_backend("torch").optimizer_names
SMALL_TASK = f"{TASKS / 'torch_tasks.py'}:small"
SMALL_SPACE = ROOT / "tests" / "spaces" / "small.yaml"


def _space(choices, optimizers=None):
    return load_space("torch", TORCH_OPTIMIZERS, overrides={
        "batch_size": {"choices": choices}, "optimizers": optimizers or {"adam": {}, "sgd": {}}})


def _shares(sizes, n=4000):
    low, high = batch_exponent_range(sizes)
    draws = [low + (high - low) * (i + 0.5) / n for i in range(n)]
    return [sum(snap_batch_size(sizes, e) == size for e in draws) / n for size in sizes]


def test_a_uniform_exponent_picks_each_power_of_two_equally_often():
    assert _shares([16, 32, 64, 128]) == pytest.approx([0.25] * 4, abs=0.002)
    # a ceiling of 100 owns half the gap to 64 and as much beyond: log2(100 / 64) of the 3.46 octaves
    assert _shares([16, 32, 64, 100])[-1] == pytest.approx(0.644 / 3.466, abs=0.002)
    assert snap_batch_size([128], 2.0) == 128


def _fill(study, space, ceiling, n, value):
    for _ in range(n):
        trial = study.ask()
        config = space.suggest(trial, ceiling)
        study.tell(trial, value(config))


def _picks_of_16_after_resume(seed, informative):
    """How often a resumed study, under a narrowed list and a lower ceiling, draws batch 16 in 10 trials whose
    own results say nothing (all 1.0): what steers it is the 30 earlier trials, sampled from another list."""
    study = optuna.create_study(sampler=_study_sampler(seed, 30))
    _fill(study, _space([16, 32, 64, 128, 256, 512]), 10_000, 30,
          lambda c: (0.1 if c["batch_size"] == 16 else 1.0 + c["batch_size"] / 512) if informative else 1.0)
    study.sampler = _study_sampler(seed + 1, 30)
    narrowed = _space([16, 48, 128, 256])
    check_resumable(study, narrowed)
    sizes = []
    _fill(study, narrowed, 200, 10, lambda c: sizes.append(c["batch_size"]) or 1.0)
    assert set(sizes) <= {16, 48, 128}
    return sizes.count(16)


def test_changed_choices_and_ceiling_resume_and_old_trials_still_guide_the_sampler():
    informed = sum(_picks_of_16_after_resume(seed, True) for seed in range(4))
    flat = sum(_picks_of_16_after_resume(seed, False) for seed in range(4))
    # measured: 30 and 9 of 40 (the flat history draws 16 about a third of the time, as a fresh sampler would)
    assert informed >= 20 and informed >= flat + 8, (informed, flat)


def test_a_changed_optimizer_list_is_refused_in_one_line_before_any_trial(tmp_path):
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 's.db'}")
    _fill(study, _space([16, 32]), 64, 2, lambda c: 1.0)
    with pytest.raises(SearchSpaceError) as info:
        check_resumable(study, _space([16, 32], optimizers={"adam": {}}))
    message = str(info.value)
    assert "optimizer from choices [adam, sgd]" in message and "gives choices [adam]" in message
    assert "--study NEW_NAME" in message and "\n" not in message
    log_change = _space([16, 32], optimizers={"adam": {"beta1": {"low": 0.8, "high": 0.9}}, "sgd": {}})
    study.enqueue_trial({"optimizer": "adam"})
    _fill(study, log_change, 64, 1, lambda c: 1.0)
    with pytest.raises(SearchSpaceError, match="adam.beta1 from a range 0.8..0.9, .* gives a log range"):
        check_resumable(study, _space([16, 32], optimizers={
            "adam": {"beta1": {"low": 0.8, "high": 0.9, "log": True}}, "sgd": {}}))
    assert len(study.trials) == 3


def test_a_study_of_the_former_categorical_batch_size_still_resumes(tmp_path):
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 's.db'}")
    trial = study.ask()
    trial.suggest_categorical("batch_size", [16, 32, 64])
    trial.suggest_categorical("optimizer", ["adam", "sgd"])
    study.tell(trial, 1.0)
    space = _space([16, 32])
    check_resumable(study, space)
    config = space.suggest(study.ask(), 64)
    assert config["batch_size"] in (16, 32) and BATCH_PARAM in study.trials[-1].params


def test_cli_resumes_a_narrowed_space_and_refuses_a_changed_optimizer_list(tmp_path):
    storage = f"sqlite:///{tmp_path / 's.db'}"
    common = ("--trial-time", "0.3", "--storage", storage, "--study", "moving", "--no-range-test")
    first = run_cli("tune", "--confirm", "0", SMALL_TASK, "--trials", "2", "--search-space", str(SMALL_SPACE), *common)
    assert first.returncode == 0, first.stderr
    narrowed = tmp_path / "narrowed.yaml"
    narrowed.write_text(SMALL_SPACE.read_text().replace("[16, 32, 64]", "[16, 32]"))
    again = run_cli("tune", "--confirm", "0", SMALL_TASK, "--trials", "4", "--search-space", str(narrowed), *common)
    assert again.returncode == 0, again.stderr
    assert "resuming study moving" in again.stderr and "Traceback" not in again.stderr
    study = optuna.load_study(study_name="moving", storage=storage)
    assert len(study.trials) == 4 and all(t.state != optuna.trial.TrialState.FAIL for t in study.trials)
    assert all(t.user_attrs["config"]["batch_size"] in (16, 32) for t in study.trials[2:])
    other = tmp_path / "other.yaml"
    other.write_text("batch_size: {choices: [16, 32]}\noptimizers:\n  adam: {}\n")
    refused = run_cli("tune", "--confirm", "0", SMALL_TASK, "--trials", "6", "--search-space", str(other), *common)
    assert_one_line_error(refused, "sampled optimizer from choices [adam, sgd]", "--study NEW_NAME")
    assert len(optuna.load_study(study_name="moving", storage=storage).trials) == 4


def test_a_resumed_study_refuses_another_task_budget_or_learning_rate_range(tmp_path):
    """Trials of another task, another budget per trial or another lr range would be ranked against the study's
    own as if they compared: each is one line, exit 2, before any work; a moved task file still resumes."""
    storage = f"sqlite:///{tmp_path / 's.db'}"
    common = ("--confirm", "0", "--storage", storage, "--study", "kept", "--no-range-test", "--search-space",
              str(SMALL_SPACE))
    first = run_cli("tune", SMALL_TASK, "--trials", "1", "--trial-time", "0.3", *common)
    assert first.returncode == 0, first.stderr
    other_task = run_cli("tune", f"{TASKS / 'torch_tasks.py'}:regression", "--trials", "2", "--trial-time", "0.3",
                         *common)
    assert_one_line_error(other_task, "tunes the task torch_tasks.py:small, not torch_tasks.py:regression",
                          "--study NEW_NAME")
    other_budget = run_cli("tune", SMALL_TASK, "--trials", "2", "--trial-time", "0.5", *common)
    assert_one_line_error(other_budget, "gives each trial --trial-time 0.3, this run --trial-time 0.5",
                          "resume it with that")
    other_lr = tmp_path / "lr.yaml"
    other_lr.write_text(SMALL_SPACE.read_text().replace("high: 3.0e-1", "high: 1.0e-2"))
    changed_lr = run_cli("tune", SMALL_TASK, "--trials", "2", "--trial-time", "0.3", *common[:-1], str(other_lr))
    assert_one_line_error(changed_lr, "searched lr 0.0001..0.3", "gives 0.0001..0.01")
    assert len(optuna.load_study(study_name="kept", storage=storage).trials) == 1
    moved = tmp_path / "moved"
    moved.mkdir()
    for name in ("torch_tasks.py", "blobs.py"):
        (moved / name).write_text((TASKS / name).read_text())
    again = run_cli("tune", f"{moved / 'torch_tasks.py'}:small", "--trials", "2", "--trial-time", "0.3", *common)
    assert again.returncode == 0, again.stderr
    assert len(optuna.load_study(study_name="kept", storage=storage).trials) == 2
