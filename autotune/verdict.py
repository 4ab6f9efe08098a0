"""Whether a study's trials learnt anything: a winner among models that never improved is no winner."""

from __future__ import annotations

from typing import Any

import optuna

IMPROVEMENT = 0.01
"""A trial learns when some later validation report is this fraction below its first one."""


def _reports(trial: optuna.trial.FrozenTrial) -> list[float]:
    """Validation reports with training between them (reports that followed the same step are one report)."""
    history = trial.user_attrs.get("history")
    if history:
        reports, trained = [], None
        for _index, value, seconds in history:
            if seconds != trained:
                reports.append(float(value))
                trained = seconds
        return reports
    return [trial.intermediate_values[k] for k in sorted(trial.intermediate_values)]


def not_learning(study: optuna.Study) -> str | None:
    """A one-line reason when no finished trial's validation loss fell below its first report, else None.

    Only judged where at least one trial reported twice: one report says nothing about progress."""
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    series = [r for r in (_reports(t) for t in study.get_trials(deepcopy=False, states=states)) if len(r) >= 2]
    if not series:
        return None
    if any(min(r[1:]) < r[0] * (1 - IMPROVEMENT) for r in series):
        return None
    first = sorted(r[0] for r in series)[len(series) // 2]
    return (f"the model does not learn: no trial's validation loss fell below its first report (median "
            f"{first:.4g}) in {len(series)} trials; check the loss against the model's outputs (Task from_logits=), "
            "the data and labels, or give each trial more --trial-time")


def describe_busy(trials: list[Any]) -> str | None:
    """One line when some of these trials were measured while other processes used the CPU."""
    busy = [t for t in trials if (t.user_attrs.get("measured") or {}).get("busy")]
    if not busy:
        return None
    worst = max((t.user_attrs["measured"].get("other_cpu_cores") or 0.0) for t in busy)
    return (f"{len(busy)} of {len(trials)} trials were measured on a busy machine (other processes used up to "
            f"{worst:.1f} CPU cores): their throughput is flagged; rerun on a quiet machine to trust it")
