"""What a trial stores, declared once: written by the Tuner (both doors), read by study, report, CLI, benchmarks.

Each trial keeps its whole record in three user attributes (``config``, ``measured``, ``history``) and, beside
them, the figures people sort by as flat numeric attributes (``batch_size``, ``lr_used``, ``throughput``,
``val_loss``, ...): optuna-dashboard shows those as columns. Optuna's ``OPTIMIZER.lr`` parameter is the sampled
*reference* rate at the reference batch; ``lr_used`` is the rate the trial trained with.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import optuna

FLAT_CONFIG = {"batch_size": "batch_size", "lr": "lr_used"}
"""config key -> flat attribute: what the trial trained with (the optimizer is an Optuna parameter already)."""
FLAT_FIGURES = ("throughput", "val_loss", "step_seconds_p50", "step_seconds_p95", "peak_memory_bytes",
                "energy_per_sample_joules")
"""measured keys also stored flat (numbers only, so the dashboard can sort by them)."""

_STATES = {optuna.trial.TrialState.COMPLETE: "complete", optuna.trial.TrialState.PRUNED: "pruned",
           optuna.trial.TrialState.FAIL: "failed", optuna.trial.TrialState.RUNNING: "running",
           optuna.trial.TrialState.WAITING: "waiting"}


@dataclasses.dataclass(frozen=True)
class TrialRecord:
    """One stored trial as autotune reads it, whichever door ran it."""

    number: int
    state: str
    """``complete``, ``pruned``, ``failed`` (configuration failures stored PRUNED for the sampler included),
    ``running``, ``waiting`` or ``surplus`` (created over an exact ``--trials``, never ran: no failure)."""
    config: Mapping[str, Any]
    measured: Mapping[str, Any]
    history: list[tuple[int, float, float]]
    """``(report index or step, validation loss, seconds since the trial started)`` per report."""
    failure: str | None
    failure_kind: str | None
    owner: Mapping[str, Any]
    reduced_budget: bool
    values: tuple[float, ...] | None
    seconds: float | None
    """Wall time from start to end, None while running."""

    @property
    def batch_size(self) -> int | None:
        value = self.config.get("batch_size")
        return None if value is None else int(value)

    @property
    def optimizer(self) -> str | None:
        return self.config.get("optimizer")

    @property
    def lr(self) -> float | None:
        """The learning rate the trial trained with (scaled for its batch size)."""
        value = self.config.get("lr")
        return None if value is None else float(value)

    @property
    def val_loss(self) -> float | None:
        return self.measured.get("val_loss")

    @property
    def throughput(self) -> float | None:
        return self.measured.get("throughput")

    @property
    def last_loss(self) -> float | None:
        """The last validation loss the trial reached: its final one, or the last report of a pruned trial."""
        if self.val_loss is not None:
            return float(self.val_loss)
        finite = [value for _, value, _ in self.history if value is not None and math.isfinite(value)]
        return finite[-1] if finite else None


def read(trial: optuna.trial.FrozenTrial, study_attrs: Mapping[str, Any] | None = None) -> TrialRecord:
    """The record of a stored trial; with its study's attributes, a heartbeat failure's reason too (stored there,
    as the trial can no longer be written when Optuna fails it: `autotune.storage.stale_reason`)."""
    from autotune.failures import failed, reason, surplus

    attrs = trial.user_attrs
    history = [tuple(entry) for entry in attrs.get("history") or []]
    if not history and trial.intermediate_values:  # a trial cut short keeps only what reached the pruner
        history = [(int(step), float(value), math.nan) for step, value in sorted(trial.intermediate_values.items())]
    seconds = None
    if trial.datetime_start and trial.datetime_complete:
        seconds = (trial.datetime_complete - trial.datetime_start).total_seconds()
    state = "surplus" if surplus(trial) else "failed" if failed(trial) \
        else _STATES.get(trial.state, trial.state.name.lower())
    return TrialRecord(
        number=trial.number, state=state, config=dict(attrs.get("config") or {}),
        measured=dict(attrs.get("measured") or {}), history=history,
        failure=reason(trial, study_attrs), failure_kind=attrs.get("failure_kind"),
        owner=dict(attrs.get("owner") or {}),
        reduced_budget=bool(attrs.get("reduced_budget")),
        values=tuple(trial.values) if trial.values else None, seconds=seconds,
    )


def store_config(trial: optuna.Trial, config: Mapping[str, Any]) -> None:
    """The sampled configuration, whole and as flat attributes."""
    trial.set_user_attr("config", dict(config))
    for key, flat in FLAT_CONFIG.items():
        if config.get(key) is not None:
            trial.set_user_attr(flat, config[key])


def store_measured(trial: optuna.Trial, measured: Mapping[str, Any],
                   history: list[Any] | None = None) -> None:
    """A finished trial's figures, whole and (the numeric ones people sort by) flat, and its report history."""
    trial.set_user_attr("measured", dict(measured))
    for key in FLAT_FIGURES:
        value = measured.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            trial.set_user_attr(key, value)
    if history is not None:
        trial.set_user_attr("history", [list(entry) for entry in history])
