"""Everything a report shows, read from a stored study into plain data (what ``report.json`` holds).

The Markdown and HTML renderings and the plots read only this, so the three formats cannot disagree. A study
may be in any state: with failed trials, a single trial, only pruned trials, or still running; every part
that has nothing to show says why instead.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import optuna

from autotune.records import TrialRecord, read as read_record
from autotune.reporting.context import context_summary
from autotune.study import best_trial, result_from_trial
from autotune.verdict import not_learning

IMPORTANCE_MIN_TRIALS = 10
"""Parameter importances are computed from at least this many complete trials; fewer would rank noise."""
BOUND_SHARE = 0.02
"""A value within this share of its range (log range for a log-scaled one) from an end is "at the bound"."""


SHOWN_STATES = {"complete": "COMPLETE", "pruned": "PRUNED", "failed": "FAIL", "running": "RUNNING",
                "waiting": "WAITING", "surplus": "SURPLUS"}
"""A trial record's state as the report (and ``autotune studies``) shows it."""


def _last_report(record: TrialRecord) -> tuple[int | None, float | None]:
    """The last validation report a trial reached (pruned and failed ones included) and its number."""
    if record.val_loss is not None and record.history:
        return int(record.history[-1][0]), float(record.val_loss)
    finite = [(index, value) for index, value, _ in record.history if value is not None and math.isfinite(value)]
    return (int(finite[-1][0]), float(finite[-1][1])) if finite else (None, record.last_loss)


def trial_rows(study: optuna.Study) -> list[dict[str, Any]]:
    """One flat record per trial: configuration, figures, the last report reached and, if it stopped early, why."""
    rows = []
    study_attrs = study.user_attrs
    for trial in study.get_trials(deepcopy=False):
        record = read_record(trial, study_attrs)
        config, measured = record.config, record.measured
        last_report, last_loss = _last_report(record)
        rows.append({
            "number": record.number, "state": SHOWN_STATES.get(record.state, record.state.upper()),
            "batch_size": record.batch_size, "optimizer": record.optimizer, "lr": record.lr,
            "lr_reference": config.get("lr_reference"), "optimizer_params": dict(config.get("optimizer_params") or {}),
            "val_loss": record.val_loss, "last_loss": last_loss, "last_report": last_report,
            "throughput": record.throughput, "busy": bool(measured.get("busy")),
            "step_seconds_p50": measured.get("step_seconds_p50"), "step_seconds_p95": measured.get("step_seconds_p95"),
            "peak_memory_bytes": measured.get("peak_memory_bytes"),
            "energy_per_sample_joules": measured.get("energy_per_sample_joules"),
            "reason": record.failure, "seconds": record.seconds,
            "history": [[int(h[0]), float(h[1]), float(h[2])] for h in trial.user_attrs.get("history") or []],
        })
    return rows


def pareto_front(rows: list[dict[str, Any]]) -> list[int]:
    """Trial numbers not beaten on both validation loss (lower) and throughput (higher)."""
    done = [r for r in rows if r["state"] == "COMPLETE" and _finite(r["val_loss"]) and _finite(r["throughput"])]
    front = []
    for row in done:
        dominated = any(o["val_loss"] <= row["val_loss"] and o["throughput"] >= row["throughput"]
                        and (o["val_loss"], o["throughput"]) != (row["val_loss"], row["throughput"]) for o in done)
        if not dominated:
            front.append(row["number"])
    return sorted(front)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def shown_task(reference: str | None) -> str | None:
    """The task as a path relative to this folder, or its file name: a shared report holds no local path."""
    if not reference:
        return reference
    path, colon, attr = reference.rpartition(":") if reference.count(":") else (reference, "", "")
    file = Path(path or reference)
    if not file.is_absolute():
        return reference
    try:
        shown = str(file.relative_to(Path.cwd()))
    except ValueError:
        shown = file.name
    return shown + (colon + attr if path else "")


def _why(objective: str, chosen: dict[str, Any] | None, rows: list[dict[str, Any]], front: list[int]) -> str:
    complete = [r for r in rows if r["state"] == "COMPLETE" and _finite(r["val_loss"])]
    if chosen is None:
        return "no trial has finished yet, so there is no pick"
    if objective == "throughput":
        return f"the highest throughput of the {len(complete)} complete trial(s) that did not diverge"
    if objective == "pareto":
        return (f"the lowest validation loss on the Pareto front of throughput against validation loss "
                f"({len(front)} of {len(complete)} complete trial(s) on it)")
    others = sorted(r["val_loss"] for r in complete if r["number"] != chosen["trial"])
    text = f"the lowest validation loss of the {len(complete)} complete trial(s) at the same budget"
    if others:
        text += f"; the runner-up reached {others[0]:.4g}"
    return text


def _at_bound(value: float | None, low: float | None, high: float | None, log: bool) -> str | None:
    if low is None or high is None or not high > low or value is None:
        return None
    if log and low > 0 and value > 0:
        value, low, high = math.log(value), math.log(low), math.log(high)
    share = (value - low) / (high - low)
    if share <= BOUND_SHARE:
        return "low"
    if share >= 1 - BOUND_SHARE:
        return "high"
    return None


def bound_flags(chosen: dict[str, Any] | None, space: dict[str, Any], ceilings: dict[str, Any]) -> list[str]:
    """Values of the pick at an end of the searched range: the best may lie beyond it."""
    if not chosen:
        return []
    flags = []
    lr = space.get("lr") or {}
    low, high = (space.get("lr_ranges") or {}).get(chosen["optimizer"]) or (lr.get("low"), lr.get("high"))
    side = _at_bound(chosen.get("lr_reference"), low, high, bool(lr.get("log", True)))
    if side:
        flags.append(f"learning rate {chosen['lr_reference']:.2e} (at batch {chosen['reference_batch']}) is at the "
                     f"{side} end of its range {low:.2e} to {high:.2e}: the best rate may lie beyond it")
    if lr.get("high") is not None and chosen["lr"] >= lr["high"] * (1 - 1e-9):
        flags.append(f"the batch-scaled learning rate is clipped at lr.high {lr['high']:.2e}")
    ceiling = max((c.get("batch_size") or 0 for c in ceilings.values()), default=0)
    if ceiling and chosen["batch_size"] >= ceiling:
        flags.append(f"batch size {chosen['batch_size']} is the fitted ceiling: a larger batch did not fit "
                     "(or the data set is no larger)")
    batch_low = (space.get("batch_size") or {}).get("low")
    if batch_low and chosen["batch_size"] <= batch_low:
        flags.append(f"batch size {chosen['batch_size']} is the smallest the space allows")
    for name, spec in ((space.get("optimizers") or {}).get(chosen["optimizer"]) or {}).items():
        if "low" in spec and name in chosen["optimizer_params"]:
            side = _at_bound(chosen["optimizer_params"][name], spec["low"], spec["high"], bool(spec.get("log")))
            if side:
                flags.append(f"{name} {chosen['optimizer_params'][name]:.4g} is at the {side} end of its range "
                             f"{spec['low']:g} to {spec['high']:g}")
    return flags


def _fits(info: dict[str, Any]) -> dict[str, Any]:
    """The batch-size ceiling of every device the study fitted (or was given), with the fit's probes if kept."""
    fits = {}
    for key, value in info.items():
        if key.startswith("ceiling:") and isinstance(value, dict):
            # "ceiling:BACKEND:DEVICE_ID:DEVICE_NAME[|PRECISION]"; ids hold colons
            fits[key.split(":", 2)[-1].replace("|", " in ")] = value
    return fits


def _counts(rows: list[dict[str, Any]]) -> dict[str, int]:
    return {state: sum(1 for r in rows if r["state"] == state)
            for state in ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING", "SURPLUS")}


def _notes(rows: list[dict[str, Any]], counts: dict[str, int], chosen: dict[str, Any] | None,
           not_learning: str | None) -> list[str]:
    notes = [f"{not_learning}: the pick below is only the best-valued trial, not a winner"] if not_learning else []
    if counts["RUNNING"] or counts["WAITING"]:
        notes.append(f"{counts['RUNNING']} trial(s) still running: this report is a snapshot; run "
                     "autotune report again when the study ends")
    if not rows:
        notes.append("the study holds no trial yet")
    elif chosen is None:
        notes.append("no trial completed (pruned and failed trials reach no final validation loss), so there is "
                     "no pick: the trial table says where each one stopped")
    elif counts["COMPLETE"] == 1:
        notes.append("only one trial completed: the pick is not compared with any other")
    return notes


def importance_note(counts: dict[str, int]) -> str | None:
    """Why parameter importances are not shown, or None when there are enough complete trials."""
    if counts["COMPLETE"] >= IMPORTANCE_MIN_TRIALS:
        return None
    return (f"parameter importances need at least {IMPORTANCE_MIN_TRIALS} complete trials to rank more than noise; "
            f"this study has {counts['COMPLETE']}")


def report_data(study: optuna.Study) -> dict[str, Any]:
    """Everything a report shows, as plain data."""
    info = dict(study.user_attrs)
    objective = info.get("objective", "convergence")
    picked = best_trial(study, objective)
    rows = trial_rows(study)
    front = pareto_front(rows)
    chosen = result_from_trial(study, picked).to_dict() if picked is not None and picked.user_attrs.get("config") \
        else None
    space = info.get("search_space") or {}
    fits = _fits(info)
    counts = _counts(rows)
    return {
        "study": study.study_name, "objective": objective, "task": shown_task(info.get("task")),
        "backend": info.get("backend"), "device": info.get("device"), "seed": info.get("seed"),
        "door": info.get("door", "tune"),
        "trial_budget": info.get("trial_budget"), "reference_batch": info.get("reference_batch"),
        "chosen": chosen, "why": _why(objective, chosen, rows, front), "flags": bound_flags(chosen, space, fits),
        "context": context_summary(info, rows, chosen, objective),
        "hardware": info.get("hardware"), "versions": info.get("versions"), "phases": info.get("phases") or [],
        "fits": fits, "range_tests": space.get("range_tests") or {}, "lr_ranges": space.get("lr_ranges") or {},
        "search_space": {k: v for k, v in space.items() if k not in ("range_tests", "lr_ranges")},
        "trials": rows, "pareto_front": front, "counts": counts,
        "notes": _notes(rows, counts, chosen, not_learning(study)),
        "importance_note": importance_note(counts),
    }
