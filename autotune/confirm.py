"""The pick in context, measured in the study itself: the backend's default configuration trained once, and
the best few configurations trained again with other seeds, at the trials' budget.

Each run is a full-budget `autotune.trial.run_trial` in the study's worker, unpruned. The runs are stored as
study attributes (``context:baseline``, ``context:confirm``; read by `autotune.reporting.context`), not as
trials: they are measurements of configurations the study already holds, so neither the sampler, nor
``--trials``, nor ``autotune best`` should count them. A failed run is kept with its reason.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import optuna

from autotune.reporting.context import BASELINE_KEY, CONFIRM_KEY, metric_of
from autotune.runner import Worker, run_here
from autotune.trial import run_trial

DEFAULT_CONFIRM = 3
"""Configurations re-run at the end of a study (``--confirm``)."""
CONFIRM_SEEDS = 2
"""Other seeds each of them is re-run with: with the study's own run, three values give its spread."""
DEFAULT_OPTIMIZER, DEFAULT_LR, DEFAULT_BATCH_SIZE = "adam", 1e-3, 32
"""The configuration a user would start from without tuning (framework defaults for everything else)."""

Run = Callable[[dict[str, Any], int], tuple[dict[str, Any] | None, str | None]]


def trial_runner(*, worker: Worker | None, trial_kwargs: dict[str, Any], timeout: float) -> Run:
    """``run(config, seed) -> (measured, failure)``: one full-budget, unpruned trial run of ``config``."""
    def run(config: dict[str, Any], seed: int) -> tuple[dict[str, Any] | None, str | None]:
        kwargs = {**trial_kwargs, "config": config, "seed": seed}
        outcome = worker.run(run_trial, kwargs, timeout=timeout) if worker is not None else run_here(run_trial, kwargs)
        if not outcome.ok:
            return None, f"{outcome.kind}: {outcome.message}"
        measured = dict(outcome.value)
        measured.pop("history", None)
        return measured, None
    return run


def baseline_config(optimizers: list[str], ceiling: int) -> dict[str, Any]:
    """The default configuration, within this study: Adam if the space has it (else its first optimizer),
    batch 32 or the ceiling if smaller, the framework's own defaults for the optimizer's other parameters."""
    optimizer = DEFAULT_OPTIMIZER if DEFAULT_OPTIMIZER in optimizers else min(optimizers)
    return {"batch_size": min(DEFAULT_BATCH_SIZE, ceiling), "optimizer": optimizer, "lr": DEFAULT_LR,
            "optimizer_params": {}}


def _ranked(study: optuna.Study, objective: str) -> list[optuna.trial.FrozenTrial]:
    """Complete trials best first by the context's metric (throughput for a throughput study)."""
    metric = metric_of(objective)
    complete = [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
                if isinstance((t.user_attrs.get("measured") or {}).get(metric), (int, float))]
    sign = -1 if metric == "throughput" else 1
    return sorted(complete, key=lambda t: sign * t.user_attrs["measured"][metric])


def run_context(study: optuna.Study, run: Run, *, optimizers: list[str], ceiling: int, objective: str, seed: int,
                count: int = DEFAULT_CONFIRM, deadline: float | None = None) -> None:
    """Run the baseline (once per study) and re-run the ``count`` best configurations not yet re-run with
    `CONFIRM_SEEDS` other seeds; each result is stored as soon as it is measured. Stops at ``deadline``
    (``time.monotonic()``), saying so in the stored record."""
    lengths = [(t.datetime_complete - t.datetime_start).total_seconds() for t in _ranked(study, objective)
               if t.datetime_start and t.datetime_complete and not t.user_attrs.get("reduced_budget")]

    def out_of_time() -> bool:  # no run starts that would end after the deadline, judged by the runs so far
        left = None if deadline is None else deadline - time.monotonic()
        return left is not None and (left <= 0 or (bool(lengths) and left < statistics.median(lengths)))

    def timed(config: dict[str, Any], run_seed: int) -> tuple[dict[str, Any] | None, str | None]:
        tick = time.monotonic()
        try:
            return run(config, run_seed)
        finally:
            lengths.append(time.monotonic() - tick)

    if count <= 0 or not _ranked(study, objective):  # nothing completed: there is no pick to put in context
        return
    if BASELINE_KEY not in study.user_attrs and not out_of_time():
        config = baseline_config(optimizers, ceiling)
        measured, failure = timed(config, seed)
        study.set_user_attr(BASELINE_KEY, {"config": config, "seed": seed, "measured": measured, "failure": failure})
    for trial in _ranked(study, objective)[:count]:
        # read again before each configuration: another process on this study may have re-run it meanwhile
        record = dict(study.user_attrs.get(CONFIRM_KEY) or {"runs": []})
        record.pop("skipped", None)  # a resumed study may now finish what an earlier call had no time for
        if trial.number in {r["trial"] for r in record["runs"]}:
            continue
        for other in range(1, CONFIRM_SEEDS + 1):
            if out_of_time():
                record["skipped"] = "the --timeout was reached before every re-run"
                study.set_user_attr(CONFIRM_KEY, record)
                return
            measured, failure = timed(trial.user_attrs["config"], seed + other)
            record["runs"].append({"trial": trial.number, "seed": seed + other, "measured": measured,
                                   "failure": failure})
            study.set_user_attr(CONFIRM_KEY, record)
