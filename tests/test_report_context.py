"""The report's judgements on their own, from study records written here: the verdict on the winner's lead
against the seed spread, the baseline comparison, values at a bound of the space, and the number notation."""

from __future__ import annotations

import pytest

from autotune.reporting import numbers
from autotune.reporting.context import context_summary
from autotune.reporting.data import bound_flags


def _rows(values):
    return [{"number": n, "batch_size": 64, "optimizer": "adam", "lr": 1e-3, "val_loss": v, "throughput": 1000.0}
            for n, v in enumerate(values)]


def _runs(per_trial):
    return [{"trial": n, "seed": seed, "measured": {"val_loss": v, "throughput": 1000.0}, "failure": None}
            for n, values in per_trial.items() for seed, v in enumerate(values, start=1)]


@pytest.mark.parametrize("first, second, real, says", [
    ([0.10, 0.11], [0.20, 0.21], True, "the lead is real"),
    ([0.10, 0.30], [0.20, 0.19], False, "inside the seed spread"),
    ([0.40, 0.45], [0.20, 0.21], False, "was luck"),
])
def test_the_verdict_weighs_the_lead_against_the_seed_spread(first, second, real, says):
    rows = _rows([0.09, 0.19])
    info = {"seed": 0, "context:confirm": {"runs": _runs({0: first, 1: second})}}
    summary = context_summary(info, rows, {"trial": 0, "val_loss": 0.09, "throughput": 1000.0}, "convergence")
    assert summary["verdict"]["lead_is_real"] is real and says in summary["verdict"]["text"]
    assert summary["confirm"][0]["values"] == [0.09, *first] and summary["confirm"][0]["seeds"] == [0, 1, 2]


def test_the_baseline_comparison_and_a_failed_rerun():
    rows = _rows([0.2, 0.4])
    info = {"seed": 0, "context:baseline": {"config": {"batch_size": 32, "optimizer": "adam", "lr": 1e-3},
                                            "seed": 0, "measured": {"val_loss": 0.5, "throughput": 500.0}},
            "context:confirm": {"runs": [{"trial": 0, "seed": 1, "measured": None, "failure": "oom: out of memory"}]}}
    summary = context_summary(info, rows, {"trial": 0, "val_loss": 0.2, "throughput": 1500.0}, "convergence")
    assert summary["baseline"]["val_loss_lower_percent"] == pytest.approx(60.0)
    assert summary["baseline"]["throughput_ratio"] == pytest.approx(3.0)
    assert summary["confirm"][0]["failures"] == ["seed 1: oom: out of memory"]
    assert summary["verdict"]["lead_is_real"] is None  # nothing to compare with


def test_a_study_without_context_says_why():
    summary = context_summary({}, _rows([0.2]), {"trial": 0, "val_loss": 0.2, "throughput": 1.0}, "convergence")
    assert summary["baseline"] is None and "--confirm 0" in summary["note"]


def test_values_at_a_bound_of_the_space_are_flagged():
    space = {"lr": {"low": 1e-4, "high": 0.1, "log": True}, "batch_size": {"low": 16},
             "optimizers": {"adam": {"beta1": {"low": 0.8, "high": 0.95, "log": False}}}}
    chosen = {"optimizer": "adam", "lr": 0.1, "lr_reference": 0.099, "reference_batch": 32, "batch_size": 1437,
              "optimizer_params": {"beta1": 0.87}}
    flags = bound_flags(chosen, space, {"cpu": {"batch_size": 1437}})
    assert len(flags) == 3, flags
    assert "high end" in flags[0] and "clipped" in flags[1] and "fitted ceiling" in flags[2]
    inside = {**chosen, "lr": 0.01, "lr_reference": 0.005, "batch_size": 256}
    assert bound_flags(inside, space, {"cpu": {"batch_size": 1437}}) == []


def test_one_notation_per_kind_of_figure():
    assert [numbers.loss(v) for v in (0.24226, 2.2563, 12.345, 51047.5)] == ["0.2423", "2.256", "12.35", "51,048"]
    assert numbers.throughput(51047.5) == "51,048" and numbers.throughput(3470.37) == "3,470"
    assert numbers.rate(0.000219) == "2.19e-04" and numbers.rate(0.1) == "1.00e-01"
    assert numbers.budget({"seconds": 1.0, "steps": None, "reports": 8}) == "1 s of training, 8 validation reports"
    assert numbers.budget({"seconds": None, "steps": 50, "reports": 8}) == "50 training steps, 8 validation reports"


def _study_with(values):
    import optuna

    study = optuna.create_study()
    for value in values:
        config = {"batch_size": 64, "optimizer": "sgd", "lr": value / 10, "optimizer_params": {}}
        study.add_trial(optuna.trial.create_trial(value=value, user_attrs={"config": config,
                                                                           "measured": {"val_loss": value}}))
    return study


def test_run_context_reruns_the_best_once_and_stops_at_the_deadline():
    import time

    from autotune.confirm import run_context

    calls = []

    def run(config, seed):
        calls.append((config["lr"], seed))
        return {"val_loss": config["lr"] * 10 + seed / 100, "throughput": 10.0}, None

    study = _study_with([0.3, 0.1, 0.2, 0.4])
    run_context(study, run, optimizers=["sgd", "adam"], ceiling=16, objective="convergence", seed=5, count=2)
    assert calls[0] == (1e-3, 5)  # the default configuration first: adam, lr 1e-3, at the ceiling below 32
    assert study.user_attrs["context:baseline"]["config"] == {"batch_size": 16, "optimizer": "adam", "lr": 1e-3,
                                                              "optimizer_params": {}}
    assert sorted((r["trial"], r["seed"]) for r in study.user_attrs["context:confirm"]["runs"]) == [
        (1, 6), (1, 7), (2, 6), (2, 7)]
    run_context(study, run, optimizers=["sgd"], ceiling=16, objective="convergence", seed=5, count=2)
    assert len(calls) == 5  # resumed: nothing left to run
    late = _study_with([0.3, 0.1])
    run_context(late, run, optimizers=["sgd"], ceiling=64, objective="convergence", seed=0, deadline=time.monotonic())
    assert "context:baseline" not in late.user_attrs
    assert late.user_attrs["context:confirm"]["skipped"].startswith("the --timeout was reached")


def test_run_context_without_a_complete_trial_runs_nothing():
    import optuna

    from autotune.confirm import run_context

    study = optuna.create_study()
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.PRUNED))
    run_context(study, lambda config, seed: (_ for _ in ()).throw(AssertionError("ran")), optimizers=["sgd"],
                ceiling=16, objective="convergence", seed=0)
    assert study.user_attrs == {}


def _searched(n_trials):
    import optuna

    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))

    def objective(trial):
        lr = trial.suggest_float("adam.lr", 1e-4, 1e-1, log=True)
        exponent = trial.suggest_float("log2_batch_size", 4, 8)
        loss = (lr - 0.01) ** 2 * 1e3 + exponent / 100
        trial.set_user_attr("config", {"batch_size": int(2 ** exponent), "optimizer": "adam", "lr": lr,
                                       "lr_reference": lr, "optimizer_params": {}})
        trial.set_user_attr("measured", {"val_loss": loss, "throughput": 1000.0 * exponent})
        trial.set_user_attr("history", [[8, loss, 1.0]])
        return loss

    study.optimize(objective, n_trials=n_trials)
    return study


@pytest.mark.parametrize("n_trials, drawn", [(9, False), (10, True)])
def test_importances_are_drawn_only_from_ten_complete_trials(n_trials, drawn):
    from autotune.reporting.data import report_data
    from autotune.reporting.figures import all_plots

    study = _searched(n_trials)
    plots = {plot.key: plot for plot in all_plots(study, report_data(study))}
    assert (plots["importance"].figure is not None) is drawn
    assert drawn or "at least 10 complete trials" in plots["importance"].note
    assert plots["history"].figure is not None and plots["curves"].figure is not None
    assert len(plots["curves"].figure.data) == 5  # the five best, each labelled with its configuration
    assert all(trace.name.startswith("#") and "adam batch" in trace.name for trace in plots["curves"].figure.data)
