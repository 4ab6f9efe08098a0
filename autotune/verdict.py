"""Whether a study's trials learnt anything: a winner among models that never improved is no winner."""

from __future__ import annotations

import math
from typing import Any

import optuna

from autotune.records import read
from autotune.training import EVALUATION_SHARE

IMPROVEMENT = 0.01
"""A trial learns when some later validation report is this fraction below its first one."""


UNTRAINED_REPORT = -1
"""A pruned trial's history starts with the untrained model's loss as report -1 (`autotune.training`): a step no
user's loop reports, so a loop's own step 0 stays a report."""


def _reports(trial: optuna.trial.FrozenTrial) -> list[float]:
    """Validation reports with training between them (reports that followed the same step are one report)."""
    reports: list[float] = []
    trained = None
    for index, value, seconds in read(trial).history:  # the pruner's reports where the history was not kept
        if index != UNTRAINED_REPORT and seconds != trained:
            reports.append(float(value))
            trained = seconds
    return reports


UNTRAINED_MARGIN = 0.02
"""A trial whose untrained validation loss was measured learns when some report is this fraction below it
(MobileNetV2 at 32×32 in 4 s trials: 2.299 against ln 10 = 2.3026, 0.15 %, is no learning)."""


def _untrained(trial: optuna.trial.FrozenTrial) -> float | None:
    """The untrained model's validation loss: a complete trial's measured figure, a pruned one's report -1."""
    record = read(trial)
    found = record.measured.get("initial_val_loss")
    if found is None:
        found = next((value for index, value, _ in record.history if index == UNTRAINED_REPORT), None)
    return None if found is None else float(found)


def _learned(trial: optuna.trial.FrozenTrial) -> bool | None:
    """Whether the trial's reports show learning; None when they cannot tell (fewer than two points)."""
    reports = _reports(trial)
    initial = _untrained(trial)
    if initial is not None and reports:  # the untrained loss is the baseline where it was measured
        return min(reports) < initial * (1 - UNTRAINED_MARGIN)
    if len(reports) < 2:
        return None
    return min(reports[1:]) < reports[0] * (1 - IMPROVEMENT)


def not_learning(study: optuna.Study) -> str | None:
    """A one-line reason when no finished trial learnt anything, else None.

    A trial learns when a report falls `UNTRAINED_MARGIN` below the untrained model's loss (where it was
    measured: trials of autotune's own loop), else `IMPROVEMENT` below its own first report. Judged only where
    at least two trials can tell: one trial at a hopeless rate says nothing about the model."""
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    verdicts = [v for v in (_learned(t) for t in study.get_trials(deepcopy=False, states=states)) if v is not None]
    if len(verdicts) < 2 or any(verdicts):
        return None
    firsts = sorted(r[0] for r in (_reports(t) for t in study.get_trials(deepcopy=False, states=states)) if r)
    first = firsts[len(firsts) // 2] if firsts else float("nan")
    return (f"the model does not learn: no trial's validation loss fell below the untrained model's or its first "
            f"report (median {first:.4g}) in {len(verdicts)} trials; check the loss against the model's outputs "
            "(Task from_logits=), the data and labels, or give each trial more --trial-time")


def describe_busy(trials: list[Any]) -> str | None:
    """One line when some of these trials were measured while other processes used the CPU."""
    busy = [record for record in map(read, trials) if record.measured.get("busy")]
    if not busy:
        return None
    worst = max((record.measured.get("other_cpu_cores") or 0.0) for record in busy)
    return (f"{len(busy)} of {len(trials)} trials were measured on a busy machine (other processes used up to "
            f"{worst:.1f} CPU cores): their throughput is flagged; rerun on a quiet machine to trust it")


def describe_long_validation(record: Any, *, trial_time: float | None) -> str | None:
    """One line when a trial's whole validation pass outgrew its share of the trial (`EVALUATION_SHARE`) by
    enough to cost a tenth of its training or more: the trial then trained less than ``trial_time``, which the
    user should hear once, with the two ways out, rather than find in the trials' wall times."""
    measured = record.measured
    whole_pass, budget = measured.get("validation_pass_seconds"), measured.get("training_budget_seconds")
    if not trial_time or getattr(record, "reduced_budget", False):  # a re-run given a share of the budget
        return None
    if whole_pass is None or budget is None or budget > (1 - EVALUATION_SHARE) * trial_time:
        return None
    if whole_pass <= EVALUATION_SHARE * trial_time:  # the budget was cut by a projection the pass did not bear out
        return None  # (one validation batch timed slow on a loaded machine): no pass to blame
    samples = measured.get("validation_samples")
    return (f"one pass over the whole validation set ({samples} samples) takes {whole_pass:.2g} s, more than the "
            f"{EVALUATION_SHARE:.0%} of a {trial_time:g} s trial that evaluation may take: trial {record.number} "
            f"trained {budget:.2g} s of its {trial_time:g} s and ran longer; give a smaller validation set, or "
            f"--trial-time {math.ceil(whole_pass / EVALUATION_SHARE)} or more to keep evaluation within its share")


def describe_set_up(record: Any, *, trial_time: float | None) -> str | None:
    """One line when a trial's step took longer to trace or compile than the trial trained: off the clock, as
    it must be for the throughput, yet the trial lasted that much longer, which the user should hear once."""
    compiling = record.measured.get("compile_seconds")
    if not trial_time or getattr(record, "reduced_budget", False) or not compiling or compiling <= trial_time:
        return None
    return (f"trial {record.number} spent {compiling:.1f} s tracing or compiling its step, more than its "
            f"{trial_time:g} s of training: its figures leave it out, the study's time does not")
