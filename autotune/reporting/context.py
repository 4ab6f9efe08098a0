"""The pick in context: how it compares with the backend's default configuration, and whether its lead over
the runner-up is larger than the spread that re-running with other seeds shows.

Reads the study attributes `autotune.confirm` writes (``context:baseline``, ``context:confirm``); a study
without them (run with ``--confirm 0``, by the in-loop door, or before they existed) says so.
"""

from __future__ import annotations

import math
import statistics
from typing import Any

BASELINE_KEY = "context:baseline"
CONFIRM_KEY = "context:confirm"


def metric_of(objective: str) -> str:
    """The figure the context compares: throughput for a throughput study, else the validation loss."""
    return "throughput" if objective == "throughput" else "val_loss"


def _value(measured: dict[str, Any] | None, metric: str) -> float | None:
    value = (measured or {}).get(metric)
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def _baseline(record: dict[str, Any] | None, chosen: dict[str, Any] | None) -> dict[str, Any] | None:
    if not record:
        return None
    measured = record.get("measured") or {}
    summary = {"config": record.get("config"), "seed": record.get("seed"), "failure": record.get("failure"),
               "val_loss": _value(measured, "val_loss"), "throughput": _value(measured, "throughput"),
               "val_loss_lower_percent": None, "throughput_ratio": None}
    if chosen and summary["val_loss"] and chosen.get("val_loss") is not None:
        summary["val_loss_lower_percent"] = 100 * (summary["val_loss"] - chosen["val_loss"]) / summary["val_loss"]
    if chosen and summary["throughput"] and chosen.get("throughput"):
        summary["throughput_ratio"] = chosen["throughput"] / summary["throughput"]
    return summary


def _confirmed(record: dict[str, Any], rows: list[dict[str, Any]], metric: str) -> list[dict[str, Any]]:
    """Per re-run configuration: its first value (the study's own trial) and those of the other seeds."""
    by_number = {r["number"]: r for r in rows}
    configs: dict[int, dict[str, Any]] = {}
    for run in record.get("runs") or []:
        number = run["trial"]
        original = by_number.get(number) or {}
        entry = configs.setdefault(number, {
            "trial": number, "batch_size": original.get("batch_size"), "optimizer": original.get("optimizer"),
            "lr": original.get("lr"), "seeds": [record.get("study_seed")], "values": [original.get(metric)],
            "failures": []})
        value = _value(run.get("measured"), metric)
        if value is None:
            entry["failures"].append(f"seed {run.get('seed')}: {run.get('failure') or 'no value'}")
            continue
        entry["seeds"].append(run.get("seed"))
        entry["values"].append(value)
    for entry in configs.values():
        values = [v for v in entry["values"] if v is not None]
        entry["values"] = values
        entry["low"], entry["high"] = (min(values), max(values)) if values else (None, None)
        entry["mean"] = statistics.fmean(values) if values else None
        entry["spread"] = (entry["high"] - entry["low"]) if values else None
    return sorted(configs.values(), key=lambda e: e["trial"])


def _verdict(configs: list[dict[str, Any]], metric: str, winner: int | None) -> dict[str, Any]:
    """The winner's lead over the runner-up (by mean over seeds) against the larger of their seed spreads."""
    measured = [c for c in configs if c["mean"] is not None and len(c["values"]) >= 2]
    first = next((c for c in measured if c["trial"] == winner), None)
    rest = [c for c in measured if c is not first]
    if first is None or not rest:
        return {"lead": None, "spread": None, "lead_is_real": None,
                "text": "too few re-runs finished to compare the winner with a runner-up"}
    better = (lambda c: -c["mean"]) if metric == "throughput" else (lambda c: c["mean"])
    runner_up = min(rest, key=better)
    lead = abs(runner_up["mean"] - first["mean"])
    ahead = better(first) <= better(runner_up)
    spread = max(first["spread"], runner_up["spread"])
    real = ahead and lead > spread
    if real:
        text = (f"the winner (trial {first['trial']}) leads trial {runner_up['trial']} by {lead:.4g} on the mean over "
                f"seeds, more than the seed spread {spread:.4g}: the lead is real at this budget")
    elif ahead:
        text = (f"the winner (trial {first['trial']}) leads trial {runner_up['trial']} by {lead:.4g} on the mean over "
                f"seeds, inside the seed spread {spread:.4g}: the two are not told apart at this budget")
    else:
        text = (f"over seeds, trial {runner_up['trial']} does better than the winner (trial {first['trial']}) by "
                f"{lead:.4g} (seed spread {spread:.4g}): the single-seed pick was luck")
    return {"lead": lead, "spread": spread, "lead_is_real": real, "runner_up": runner_up["trial"], "text": text}


def context_summary(info: dict[str, Any], rows: list[dict[str, Any]], chosen: dict[str, Any] | None,
                    objective: str) -> dict[str, Any]:
    """The baseline comparison and the seed re-runs' verdict, or a note on why they are absent."""
    metric = metric_of(objective)
    baseline = _baseline(info.get(BASELINE_KEY), chosen)
    record = info.get(CONFIRM_KEY) or {}
    configs = _confirmed({**record, "study_seed": info.get("seed")}, rows, metric) if record.get("runs") else []
    summary: dict[str, Any] = {"metric": metric, "baseline": baseline, "confirm": configs,
                               "confirm_skipped": record.get("skipped"), "verdict": None, "note": None}
    if configs:
        summary["verdict"] = _verdict(configs, metric, chosen["trial"] if chosen else None)
    if baseline is None and not configs:
        summary["note"] = ("no baseline or seed re-runs in this study: autotune tune runs them unless "
                           "--confirm 0 (the in-loop door does not)")
    return summary
