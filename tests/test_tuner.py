"""The in-loop door on real PyTorch: ask-and-tell trials from the user's own loop, stored as CLI trials are."""

import json

import optuna
import pytest
import torch

import autotune
from autotune.errors import AutotuneError
from autotune.failures import failed
from tests.conftest import load_example, run_cli

SPACE = {"batch_size": {"choices": [16, 32, 64]}, "optimizers": {"adam": {}, "sgd": {}}}


def test_the_own_loop_example_stores_trials_that_best_reads(tmp_path):
    storage = f"sqlite:///{tmp_path / 'loop.db'}"
    best = load_example("torch_own_loop").main(trials=5, storage=storage)
    assert best.backend == "torch" and best.val_loss < 1.0
    study = optuna.load_study(study_name="own-loop-digits", storage=storage)
    done = [t for t in study.trials if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)]
    assert len(done) == 5
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    measured = complete[0].user_attrs["measured"]
    assert measured["throughput"] > 0 and measured["steps_timed"] > 0
    assert complete[0].user_attrs["config"]["batch_size"] in (16, 32, 64, 128, 256)
    shown = json.loads(run_cli("best", "own-loop-digits", "--storage", storage, "--json").stdout)
    assert shown["batch_size"] == best.batch_size and shown["optimizer"] == best.optimizer
    assert run_cli("report", "own-loop-digits", "--storage", storage, "-o", str(tmp_path / "report")).returncode == 0
    # the loop's study records what tune's does of the machine and the software, and its report says so
    assert study.user_attrs["versions"]["torch"] and study.user_attrs["hardware"]["cpu"]
    written = json.loads((tmp_path / "report" / "report.json").read_text())
    assert written["hardware"]["cpu"] and written["versions"]["optuna"] == optuna.__version__
    markdown = (tmp_path / "report" / "report.md").read_text()
    assert "--no-range-test" not in markdown and "own loop (autotune.Tuner) run none" in markdown
    loaded = autotune.load_best("own-loop-digits", storage)
    optimizer = loaded.make_optimizer(torch.nn.Linear(64, 10).parameters())
    assert optimizer.param_groups[0]["lr"] == pytest.approx(best.lr)


def test_a_raising_trial_fails_alone_and_the_loop_goes_on(tmp_path):
    tuner = autotune.Tuner(study="raising", backend="torch", storage=f"sqlite:///{tmp_path / 'r.db'}",
                           space_overrides=SPACE)
    seen = []
    with pytest.warns(RuntimeWarning, match=r"trial 0 failed \(ValueError: the user's loop broke\); recorded") as said:
        for trial in tuner.trials(3):
            with trial:
                seen.append(trial.number)
                if len(seen) == 1:
                    raise ValueError("the user's loop broke")
                model = torch.nn.Linear(4, 2)
                optimizer = trial.optimizer(model.parameters())
                assert isinstance(optimizer, torch.optim.Optimizer)
                assert optimizer.param_groups[0]["lr"] == pytest.approx(trial.lr)
                with trial.step(samples=trial.batch_size):
                    loss = model(torch.randn(trial.batch_size, 4)).pow(2).mean()
                    loss.backward()
                    optimizer.step()
                trial.report(1.0 / len(seen), 1)
    assert len([w for w in said if "failed" in str(w.message)]) == 1  # said once, for the one trial that raised
    states = [t.state for t in tuner.study.trials]
    assert failed(tuner.study.trials[0])  # stored pruned with a violated constraint: the sampler sees it
    assert tuner.study.trials[0].constraints == {"runs": 1.0}
    assert "ValueError: the user's loop broke" in tuner.study.trials[0].user_attrs["failure"]
    assert states.count(optuna.trial.TrialState.COMPLETE) == 3  # the block's end: the last report stands
    assert tuner.best.val_loss == pytest.approx(1 / 4)


def test_a_loop_that_always_raises_says_why_and_ends(tmp_path):
    """The exception never reaches the caller (the loop goes on), so each failure is said as a warning, the end
    of the attempts too, and `best` names the failures instead of only "no finished trial"."""
    storage = f"sqlite:///{tmp_path / 'b.db'}"
    tuner = autotune.Tuner(study="boom", backend="torch", storage=storage, space_overrides=SPACE)
    with pytest.warns(RuntimeWarning) as said:
        for trial in tuner.trials(2):
            with trial:
                raise RuntimeError("boom")
    messages = [str(w.message) for w in said]
    assert sum("failed (RuntimeError: boom)" in m for m in messages) == 8  # 3 n + 2 attempts
    assert any("has 0 of 2 finished trials: the run stops after 8 attempts" in m and "--storage" in m
               for m in messages), messages
    with pytest.raises(AutotuneError, match=r"has no finished trial yet \(8 failed .*last: error: RuntimeError: boom\)\)$"):
        tuner.best


def test_a_pruned_trial_is_recorded_as_pruned(tmp_path):
    tuner = autotune.Tuner(study="pruned", backend="torch", storage=f"sqlite:///{tmp_path / 'p.db'}",
                           space_overrides=SPACE)
    for trial in tuner.trials(2):
        with trial:
            if trial.number == 1:
                raise optuna.TrialPruned("too slow")
            trial.finish(0.5)
    assert [t.state for t in tuner.study.trials] == [optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED]
    assert "too slow" in tuner.study.trials[1].user_attrs["failure"]


def test_an_oom_in_the_loop_prunes_with_its_reason(tmp_path):
    tuner = autotune.Tuner(study="oom", backend="torch", storage=f"sqlite:///{tmp_path / 'o.db'}",
                           space_overrides=SPACE)
    for trial in tuner.trials(1):
        with trial:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    trial = tuner.study.trials[0]
    assert trial.state == optuna.trial.TrialState.PRUNED and trial.user_attrs["failure"].startswith("oom:")


def test_the_tuner_resumes_a_stored_study_and_needs_a_ceiling(tmp_path):
    storage = f"sqlite:///{tmp_path / 's.db'}"
    for count in (2, 3):
        tuner = autotune.Tuner(study="resume", backend="torch", storage=storage, space_overrides=SPACE)
        for trial in tuner.trials(count):
            with trial:
                trial.finish(float(trial.number))
    assert len(tuner.study.trials) == 3  # the second run added one trial to the two stored ones
    with pytest.raises(AutotuneError, match="ceiling"):
        autotune.Tuner(study="none", backend="torch", storage=storage)
    for bad in (0, -5, "fitt"):
        with pytest.raises(AutotuneError, match="positive"):
            autotune.Tuner(study="bad", backend="torch", storage=storage, ceiling=bad)
    # bad input leaves no empty study behind
    assert {s.study_name for s in optuna.get_all_study_summaries(storage)} == {"resume"}


def test_trials_count_the_whole_study_a_surplus_trial_never_runs_and_a_failed_one_frees_its_place(
        tmp_path, monkeypatch):
    monkeypatch.setattr(autotune.tuner, "WAIT_SECONDS", 0.05)
    storage = f"sqlite:///{tmp_path / 's.db'}"
    rival = autotune.Tuner(study="one", backend="torch", storage=storage, space_overrides=SPACE)
    mine = autotune.Tuner(study="one", backend="torch", storage=storage, space_overrides=SPACE)
    held = []

    def meanwhile():  # the rival process: it starts a trial just after this one looked, then that trial fails
        if not held:
            held.append(rival.ask())
        elif len(held) == 1:
            held.append("failed")
            held[0].fail("error", "the rival's loop broke")
        return False

    ran = []
    for trial in mine.trials(1, stop=meanwhile):
        with trial:
            ran.append(trial.number)
            trial.finish(1.0)
    trials = mine.study.get_trials(deepcopy=False)
    states = [(t.number, t.state.name, (t.user_attrs.get("failure") or "").split(":")[0]) for t in trials]
    # 0: the rival's, failed; 1: created while 0 ran, so over --trials 1, stored failed unrun; 2: the rival's
    # place, freed by its failure, taken by this process once it had waited for the outcome
    assert states == [(0, "FAIL", "error"), (1, "FAIL", "surplus"), (2, "COMPLETE", "")], states
    assert ran == [2] and "config" not in trials[1].user_attrs
    assert list(mine.trials(1)) == []  # the study has its one finished trial
