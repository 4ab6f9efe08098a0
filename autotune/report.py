"""Reports from a stored study: JSON for machines, Markdown to read and share, HTML with plots.

A report says where its numbers came from (hardware, package versions, task, search space, batch ceiling),
what was chosen and why (every trial's figures, the Pareto front of throughput against validation loss, the
reason each failed or pruned trial stopped). Plots use Optuna's visualisation module (plotly, optional).
"""

from __future__ import annotations

import html
import json
import warnings
from typing import Any

import optuna

from autotune.failures import shown_state
from autotune.study import best_trial, result_from_trial
from autotune.units import format_size


def trial_rows(study: optuna.Study) -> list[dict[str, Any]]:
    """One flat record per trial: configuration, figures and, for the unfinished, the reason."""
    rows = []
    for trial in study.get_trials(deepcopy=False):
        config, measured = trial.user_attrs.get("config", {}), trial.user_attrs.get("measured", {})
        rows.append({
            "number": trial.number, "state": shown_state(trial), "batch_size": config.get("batch_size"),
            "optimizer": config.get("optimizer"), "lr": config.get("lr"),
            "optimizer_params": config.get("optimizer_params"), "val_loss": measured.get("val_loss"),
            "throughput": measured.get("throughput"), "step_seconds_p50": measured.get("step_seconds_p50"),
            "step_seconds_p95": measured.get("step_seconds_p95"), "peak_memory_bytes": measured.get("peak_memory_bytes"),
            "energy_per_sample_joules": measured.get("energy_per_sample_joules"),
            "reason": trial.user_attrs.get("failure"),
            "seconds": trial.duration.total_seconds() if trial.duration else None,
        })
    return rows


def pareto_front(rows: list[dict[str, Any]]) -> list[int]:
    """Trial numbers not beaten on both validation loss (lower) and throughput (higher)."""
    done = [r for r in rows if r["val_loss"] is not None and r["throughput"] is not None]
    front = []
    for row in done:
        dominated = any(o["val_loss"] <= row["val_loss"] and o["throughput"] >= row["throughput"]
                        and (o["val_loss"], o["throughput"]) != (row["val_loss"], row["throughput"]) for o in done)
        if not dominated:
            front.append(row["number"])
    return sorted(front)


def report_data(study: optuna.Study) -> dict[str, Any]:
    """Everything a report shows, as plain data (the JSON report)."""
    info = dict(study.user_attrs)
    objective = info.get("objective", "convergence")
    chosen = best_trial(study, objective)
    rows = trial_rows(study)
    ceilings = {k.split(":", 1)[1]: v for k, v in info.items() if k.startswith("ceiling:")}
    return {
        "study": study.study_name, "objective": objective, "task": info.get("task"), "backend": info.get("backend"),
        "device": info.get("device"), "trial_budget": info.get("trial_budget"),
        "chosen": result_from_trial(study, chosen).to_dict() if chosen else None,
        "ceilings": ceilings, "hardware": info.get("hardware"), "versions": info.get("versions"),
        "search_space": info.get("search_space"), "trials": rows, "pareto_front": pareto_front(rows),
        "counts": {state: sum(1 for r in rows if r["state"] == state) for state in ("COMPLETE", "PRUNED", "FAIL")},
    }


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def markdown(data: dict[str, Any]) -> str:
    """A Markdown report a person can read and share."""
    lines = [f"# autotune study `{data['study']}`", ""]
    chosen = data["chosen"]
    cpu = (data.get("hardware") or {}).get("cpu", {})
    lines += [f"Task `{data['task']}` on **{data['backend']}** `{data['device']}`; objective **{data['objective']}**; "
              f"per-trial budget {data.get('trial_budget')}.", "",
              f"Host: {cpu.get('model', '?')}, {cpu.get('logical_cores', '?')} cores, "
              f"{format_size(cpu.get('ram_total'))} RAM. Versions: "
              + ", ".join(f"{k} {v}" for k, v in (data.get("versions") or {}).items()), ""]
    for device, ceiling in data["ceilings"].items():
        lines.append(f"Batch-size ceiling on {device}: **{ceiling['batch_size']}** (limited by {ceiling.get('limited_by')}, "
                     f"peak {format_size(ceiling.get('peak_memory_bytes'))} of {format_size(ceiling.get('budget_bytes'))}).")
    lines.append("")
    if chosen:
        lines += ["## Chosen configuration", "",
                  "| batch size | optimizer | lr | parameters | val loss | samples/s | step p50 / p95 (ms) | peak memory |",
                  "|---|---|---|---|---|---|---|---|",
                  f"| {chosen['batch_size']} | {chosen['optimizer']} | {chosen['lr']:.4g} | "
                  f"{', '.join(f'{k}={_fmt(v)}' for k, v in chosen['optimizer_params'].items()) or '-'} | "
                  f"{_fmt(chosen['val_loss'])} | {_fmt(chosen['throughput'])} | "
                  f"{_fmt(chosen['step_seconds_p50'] and chosen['step_seconds_p50'] * 1000, 3)} / "
                  f"{_fmt(chosen['step_seconds_p95'] and chosen['step_seconds_p95'] * 1000, 3)} | "
                  f"{format_size(chosen['peak_memory_bytes'])} |", "",
                  f"Learning rate: {chosen['lr_scaling']}.", ""]
    counts = data["counts"]
    lines += ["## Trials", "", f"{counts['COMPLETE']} complete, {counts['PRUNED']} pruned, {counts['FAIL']} failed. "
              f"Pareto front (throughput vs validation loss): trials {', '.join(map(str, data['pareto_front'])) or '-'}.", "",
              "| # | state | batch | optimizer | lr | val loss | samples/s | p95 ms | peak memory | reason |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for r in data["trials"]:
        lines.append(f"| {r['number']} | {r['state']} | {_fmt(r['batch_size'])} | {_fmt(r['optimizer'])} | {_fmt(r['lr'], 3)} | "
                     f"{_fmt(r['val_loss'])} | {_fmt(r['throughput'])} | "
                     f"{_fmt(r['step_seconds_p95'] and r['step_seconds_p95'] * 1000, 3)} | "
                     f"{format_size(r['peak_memory_bytes'])} | {(r['reason'] or '').replace('|', '/')[:120]} |")
    ranges = (data.get("search_space") or {}).get("lr_ranges") or {}
    if ranges:
        lines += ["", "## Learning-rate ranges after the range test (at the reference batch)", ""]
        lines += [f"- {name}: {low:.3g} to {high:.3g}" for name, (low, high) in sorted(ranges.items())]
    return "\n".join(lines) + "\n"


def _figures(study: optuna.Study, data: dict[str, Any]) -> list[tuple[str, Any]]:
    import plotly.graph_objects as go
    from optuna import visualization as vis

    figures: list[tuple[str, Any]] = []
    done = [r for r in data["trials"] if r["val_loss"] is not None and r["throughput"] is not None]
    if done:
        front = set(data["pareto_front"])
        scatter = go.Figure()
        for on_front in (False, True):
            part = [r for r in done if (r["number"] in front) == on_front]
            scatter.add_trace(go.Scatter(
                x=[r["throughput"] for r in part], y=[r["val_loss"] for r in part], mode="markers",
                name="Pareto front" if on_front else "trials",
                text=[f"#{r['number']} batch {r['batch_size']} {r['optimizer']} lr {r['lr']:.3g}" for r in part]))
        scatter.update_layout(title="Throughput against validation loss", xaxis_title="samples/s",
                              yaxis_title="validation loss")
        figures.append(("pareto", scatter))
    single = len(study.directions) == 1
    for name, make in (("history", vis.plot_optimization_history), ("curves", vis.plot_intermediate_values),
                       ("importance", vis.plot_param_importances)):
        if not single and name != "importance":
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "too few trials for an accurate importance" is said in the plot
                figures.append((name, make(study) if single else make(study, target=lambda t: t.values[0])))
        except Exception:  # too few trials for a plot is not an error
            continue
    return figures


def html_report(study: optuna.Study, data: dict[str, Any]) -> str:
    """A self-contained HTML page: the Markdown report's tables plus interactive plots (needs plotly)."""
    try:
        figures = _figures(study, data)
        plots = "".join(fig.to_html(full_html=False, include_plotlyjs="cdn" if i else True)
                        for i, (_, fig) in enumerate(figures))
    except ImportError:
        plots = "<p>Install plotly for plots: pip install 'autotune[plots]'</p>"
    body = html.escape(markdown(data))
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>autotune {html.escape(data['study'])}</title>"
            f"</head><body><pre>{body}</pre>{plots}</body></html>")


def render(study: optuna.Study, fmt: str) -> str:
    data = report_data(study)
    if fmt == "json":
        return json.dumps(data, indent=2, default=str)
    if fmt == "html":
        return html_report(study, data)
    return markdown(data)
