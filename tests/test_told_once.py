"""What a user is told when a trial did not get what it asked for, once: a whole validation pass that outgrows its
share of the trial (the trial trains less; the final figure still uses the whole set; its record says by how
much), a step that took longer to trace than the trial trained, a batch-scaled rate held at lr.high."""

from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest

import autotune
from autotune.training import EVALUATION_SHARE
from autotune.verdict import describe_long_validation, describe_set_up

TASK = f"{Path(__file__).parent / 'tasks' / 'torch_tasks.py'}:slow_to_validate"


def test_a_validation_pass_longer_than_its_share_is_recorded_and_said_once(tmp_path):
    storage = f"sqlite:///{tmp_path / 's.db'}"
    events: list[dict] = []
    autotune.tune(TASK, n_trials=2, trial_time=1.0, range_test=False, confirm=0, storage=storage,
                  study_name="slow", pruning=False, progress=events.append)
    warnings = [e["message"] for e in events if e["event"] == "warning" and "validation set" in e["message"]]
    assert len(warnings) == 1, events
    assert "(120 samples)" in warnings[0] and "--trial-time" in warnings[0], warnings

    for trial in optuna.load_study(study_name="slow", storage=storage).get_trials(deepcopy=False):
        measured = trial.user_attrs["measured"]
        # 120 samples at 4 ms: about 0.5 s against the tenth of a 1 s trial that evaluation may take
        assert measured["validation_pass_seconds"] >= 0.48 > EVALUATION_SHARE * 1.0, measured
        assert measured["validation_samples"] == 120
        assert 0.5 <= measured["training_budget_seconds"] < 1.0, measured
        assert measured["train_seconds"] < 0.9 * 1.0 + 0.3, measured  # the budget given up, not only recorded


@pytest.mark.timing  # the pass is projected from one batch's time: a preempted batch would inflate it
def test_a_validation_pass_within_its_share_is_not_mentioned(tmp_path):
    events: list[dict] = []
    autotune.tune(f"{Path(__file__).parent / 'tasks' / 'torch_tasks.py'}:small", n_trials=1, trial_time=3.0,
                  range_test=False, confirm=0, storage=f"sqlite:///{tmp_path / 's.db'}", progress=events.append)
    assert not [e for e in events if e["event"] == "warning" and "validation set" in e["message"]], events


def test_the_line_asks_for_a_trial_time_rounded_up_and_only_for_a_material_cut():
    def record(whole_pass, budget):
        return SimpleNamespace(number=0, measured={"validation_pass_seconds": whole_pass, "validation_samples": 96,
                                                   "training_budget_seconds": budget})

    assert describe_long_validation(record(0.31, 2.99), trial_time=3) is None  # a hundredth of the training
    line = describe_long_validation(record(0.61, 2.69), trial_time=3)
    assert line is not None and "--trial-time 7 or more" in line and "(96 samples)" in line, line
    assert describe_long_validation(record(0.61, 2.69), trial_time=None) is None  # a study counted in steps
    shortened = record(0.3, 0.75)  # a re-run given a quarter of the budget: its own budget, not the user's
    shortened.reduced_budget = True
    assert describe_long_validation(shortened, trial_time=3) is None


def test_a_learning_rate_held_at_the_top_of_its_range_says_so_in_the_result(tmp_path):
    space = tmp_path / "space.yaml"  # batch 256 scales adam's rate by sqrt(8) = 2.8: over lr.high at any draw
    space.write_text("batch_size: {choices: [256]}\nlr: {low: 1.0e-3, high: 1.1e-3, reference_batch: 32}\n"
                     "optimizers:\n  adam: {}\n")
    result = autotune.tune(f"{Path(__file__).parent / 'tasks' / 'torch_tasks.py'}:small", n_trials=1, trial_steps=3,
                           search_space=str(space), range_test=False, confirm=0,
                           storage=f"sqlite:///{tmp_path / 's.db'}")
    assert result.lr == pytest.approx(1.1e-3) and result.lr_scaling.endswith(", clipped at lr.high 0.0011"), \
        result.lr_scaling


def test_a_set_up_longer_than_the_trial_is_said_and_a_short_one_is_not():
    def record(compiling):
        return SimpleNamespace(number=2, measured={"compile_seconds": compiling})

    line = describe_set_up(record(26.1), trial_time=3)
    assert line is not None and "trial 2 spent 26.1 s tracing or compiling" in line and "3 s of training" in line
    assert describe_set_up(record(0.4), trial_time=3) is None and describe_set_up(record(None), trial_time=3) is None
    shortened = record(26.1)
    shortened.reduced_budget = True
    assert describe_set_up(shortened, trial_time=3) is None


def test_a_budget_cut_by_a_slow_projection_blames_no_fast_validation_pass():
    """Under load one timed validation batch can project a long pass and cut the training budget, while the
    pass itself then takes 0.3 ms: the line would say 0.0003 s is more than a tenth of 0.5 s (seen in CI)."""
    from types import SimpleNamespace

    from autotune.verdict import describe_long_validation

    record = SimpleNamespace(number=3, reduced_budget=False, measured={
        "validation_pass_seconds": 0.0003, "training_budget_seconds": 0.41, "validation_samples": 120})
    assert describe_long_validation(record, trial_time=0.5) is None
    record.measured["validation_pass_seconds"] = 0.14
    assert "takes 0.14 s, more than the 10% of a 0.5 s trial" in describe_long_validation(record, trial_time=0.5)
