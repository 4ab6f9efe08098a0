"""One trial of autotune's own loop: its budget, the worker run, and its outcome recorded on the Tuner trial.

A trial's figures come from the worker (`autotune.trial.run_trial`); only the reports the pruner compares are
written to the storage as they come (a commit each), the others reach the history written once at the end.
"""

from __future__ import annotations

from typing import Any, Callable

from autotune.errors import AutotuneError
from autotune.failures import INFEASIBLE_KINDS
from autotune.study_open import REPORTS
from autotune.tuner import TunerTrial

PRUNER_REPORTS = (2, 6)
"""The reports Hyperband (min resource 2, reduction factor 3, max 8) compares trials at."""
PRUNED_KINDS = ("diverged", "pruned")
"""Worker outcomes that end a trial early for what it learnt, not for what it is: pruned, and counted."""

RunTrial = Callable[[dict[str, Any], Callable[[Any], Any]], Any]
"""Runs `autotune.trial.run_trial` with keyword arguments and a report handler; returns a `WorkerOutcome`."""


class TrialPlan:
    """What each trial trains for. Under the throughput objective, a batch size and optimizer whose
    throughput is already measured get a quarter budget, enough to check that they do not diverge."""

    def __init__(self, *, objective: str, seconds: float | None, steps: int | None, pruning: bool) -> None:
        self.objective, self.seconds, self.steps, self.pruning = objective, seconds, steps, pruning
        self._throughput: dict[str, float] = {}

    @staticmethod
    def key(config: dict[str, Any]) -> str:
        return f"{config['batch_size']}:{config['optimizer']}"

    def reduced(self, config: dict[str, Any]) -> bool:
        return self.objective == "throughput" and self.key(config) in self._throughput

    def budget(self, config: dict[str, Any]) -> tuple[float | None, int | None]:
        if not self.reduced(config):
            return self.seconds, self.steps
        return (self.seconds / 4 if self.seconds else None), (max(1, self.steps // 4) if self.steps else None)

    def measured(self, config: dict[str, Any], measured: dict[str, Any]) -> dict[str, Any]:
        """The figures to store: a reduced trial keeps the throughput its full-budget twin measured."""
        if self.objective == "throughput":
            key = self.key(config)
            if key in self._throughput:
                measured = {**measured, "throughput": self._throughput[key]}
            else:
                self._throughput[key] = measured["throughput"]
        return measured

    def reports_to_pruner(self, index: int) -> bool:
        return self.objective != "pareto" and self.pruning and index in (*PRUNER_REPORTS, REPORTS)


def run_and_record(trial: TunerTrial, plan: TrialPlan, run: RunTrial, base: dict[str, Any]) -> None:
    """Train ``trial`` in the worker and tell the study how it ended; an `AutotuneError` from the task
    (bad input found only now) fails the trial and stops the run."""
    config = trial.config
    seconds, steps = plan.budget(config)
    if plan.reduced(config):
        trial.set_user_attr("reduced_budget", True)

    reported: list[tuple[int, float, float]] = []  # a pruned trial keeps them: the training it did counts

    def on_report(message: Any) -> bool:
        _, index, value, train_seconds = message
        reported.append((index, value, train_seconds))
        if not plan.reports_to_pruner(index):
            return False
        trial.report(value, index, keep=False)
        return trial.should_prune()

    kwargs = dict(base, config=config, seconds=seconds, steps=steps, reports=REPORTS, pruner_reports=PRUNER_REPORTS)
    try:
        outcome = run(kwargs, on_report)
    except KeyboardInterrupt as exc:
        trial.fail("interrupted", getattr(exc, "reason", "Ctrl-C"))
        raise
    if outcome.kind == "fatal":
        trial.fail("error", outcome.message)
        raise AutotuneError(outcome.message)
    if not outcome.ok:
        if outcome.kind in INFEASIBLE_KINDS:  # pruned with a violated constraint: TPE reads no FAIL trial
            trial.infeasible(outcome.kind, outcome.message)
        elif outcome.kind in PRUNED_KINDS:
            trial.prune(f"{outcome.kind}: {outcome.message}", history=reported or None)
        else:
            trial.fail(outcome.kind, outcome.message)
        return
    value = dict(outcome.value)
    history = value.pop("history", [])
    trial.complete(plan.measured(config, value), history)
