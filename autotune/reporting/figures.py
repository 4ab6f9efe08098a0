"""The report's plots as plotly figures: Optuna's visualisation where it has the plot (history, importances),
our own for what only autotune records (memory and throughput against batch size, range tests, loss curves).

Every plot is a `Plot`: a figure, or none with the reason it is missing, so that a report of a study with
too little in it says why instead of leaving a gap.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable
from typing import Any

import optuna

from autotune.units import format_memory_line

BEST_CURVES = 5
"""Loss curves are drawn for this many best trials: more make the plot unreadable."""
MIB = 2 ** 20


@dataclasses.dataclass
class Plot:
    """One plot of the report: ``key`` names its PNG file, ``figure`` is None when ``note`` says why."""

    key: str
    title: str
    figure: Any = None
    note: str | None = None


PLOTS = {
    "memory": "Memory against batch size", "throughput": "Throughput against batch size",
    "pareto": "Pareto front: throughput against validation loss",
    "learning_rate": "Validation loss against learning rate", "range_tests": "Learning-rate range tests",
    "history": "Optimization history", "curves": f"Loss curves of the {BEST_CURVES} best trials",
    "importance": "Parameter importances",
}
"""Every plot of the report by key (its PNG's name), in the order the page shows them, with its title."""


def _new(key: str) -> Plot:
    return Plot(key, PLOTS[key])


def _layout(figure: Any, title: str, x: str, y: str, *, log_x: bool = False) -> Any:
    figure.update_layout(title=title, xaxis_title=x, yaxis_title=y, template="plotly_white",
                         margin={"l": 60, "r": 20, "t": 50, "b": 50}, legend={"orientation": "h", "y": -0.2})
    if log_x:
        figure.update_xaxes(type="log")
    return figure


def memory_formula(model: dict[str, Any]) -> str:
    """The fit's memory line in words: ``313.83 MiB + 2.10 KiB × batch``."""
    return format_memory_line(model["intercept_bytes"], model["bytes_per_sample"])


def _label(row: dict[str, Any]) -> str:
    return f"#{row['number']} {row['optimizer']} batch {row['batch_size']} lr {row['lr']:.2e}"


def _complete(data: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for r in data["trials"] if r["state"] == "COMPLETE" and r["val_loss"] is not None]


def memory_plot(data: dict[str, Any]) -> Plot:
    """Peak memory of the fit's probes against batch size, the fitted line, the budget and the ceiling."""
    import plotly.graph_objects as go

    plot = _new("memory")
    fitted = [(device, f) for device, f in data["fits"].items() if f.get("probes")]
    if not fitted:
        plot.note = ("no fit record in this study: the ceiling was given, not fitted (or fitted by a version "
                     "that did not keep the probes)")
        return plot
    figure = go.Figure()
    for device, fit in fitted:
        probes = [p for p in fit["probes"] if p.get("peak_memory_bytes")]
        figure.add_trace(go.Scatter(
            x=[p["batch_size"] for p in probes], y=[p["peak_memory_bytes"] / MIB for p in probes], mode="markers",
            name=f"probes that ran ({device})", marker={"size": 9}))
        failed = [p for p in fit["probes"] if not p.get("fits")]
        budget = fit.get("budget_bytes")
        if failed and budget:
            figure.add_trace(go.Scatter(x=[p["batch_size"] for p in failed], y=[budget / MIB] * len(failed),
                                        mode="markers", marker={"symbol": "x", "size": 11, "color": "crimson"},
                                        name="out of memory", text=[p.get("reason") for p in failed]))
        sizes = [p["batch_size"] for p in fit["probes"]] + [fit.get("batch_size") or 0]
        model = fit.get("model")
        if model:
            top = max(sizes) * 1.1
            figure.add_trace(go.Scatter(
                x=[0, top], y=[model["intercept_bytes"] / MIB, (model["intercept_bytes"]
                                                                + model["bytes_per_sample"] * top) / MIB],
                mode="lines", line={"dash": "dot"}, name=f"fitted: {memory_formula(model)}"))
        if budget:
            figure.add_hline(y=budget / MIB, line={"color": "crimson"}, annotation_text="budget",
                             annotation_position="top left")
        if fit.get("batch_size"):
            figure.add_vline(x=fit["batch_size"], line={"color": "green", "dash": "dash"},
                             annotation_text=f"ceiling {fit['batch_size']} ({fit.get('limited_by')})",
                             annotation_position="bottom left")
    plot.figure = _layout(figure, plot.title, "batch size", "peak memory (MiB)")
    return plot


def throughput_plot(data: dict[str, Any]) -> Plot:
    """Samples per second against batch size: each complete trial by optimizer, and the fit's probes."""
    import plotly.graph_objects as go

    plot = _new("throughput")
    figure = go.Figure()
    complete = [r for r in _complete(data) if r["throughput"]]
    for optimizer in sorted({r["optimizer"] for r in complete}):
        part = [r for r in complete if r["optimizer"] == optimizer]
        figure.add_trace(go.Scatter(x=[r["batch_size"] for r in part], y=[r["throughput"] for r in part],
                                    mode="markers", name=f"trials: {optimizer}", text=[_label(r) for r in part],
                                    marker={"size": 9}))
    for device, fit in data["fits"].items():
        probes = sorted((int(b), t) for b, t in (fit.get("throughput_by_batch") or {}).items() if t)
        if probes:
            figure.add_trace(go.Scatter(x=[b for b, _ in probes], y=[t for _, t in probes], mode="lines+markers",
                                        name=f"fit probes ({device})", line={"dash": "dot"}))
    if not figure.data:
        plot.note = "no trial completed with a throughput measurement, and the fit kept none"
        return plot
    plot.figure = _layout(figure, plot.title, "batch size", "samples/s", log_x=True)
    return plot


def pareto_plot(data: dict[str, Any]) -> Plot:
    """Throughput against validation loss: every complete trial, the front joined, the pick starred."""
    import plotly.graph_objects as go

    plot = _new("pareto")
    complete = [r for r in _complete(data) if r["throughput"]]
    if not complete:
        plot.note = "no trial completed with both a validation loss and a throughput"
        return plot
    front = set(data["pareto_front"])
    figure = go.Figure()
    others = [r for r in complete if r["number"] not in front]
    figure.add_trace(go.Scatter(x=[r["throughput"] for r in others], y=[r["val_loss"] for r in others],
                                mode="markers", name="trials", text=[_label(r) for r in others],
                                marker={"color": "#9aa5b1", "size": 8}))
    on_front = sorted((r for r in complete if r["number"] in front), key=lambda r: r["throughput"])
    figure.add_trace(go.Scatter(x=[r["throughput"] for r in on_front], y=[r["val_loss"] for r in on_front],
                                mode="lines+markers", name="Pareto front", text=[_label(r) for r in on_front],
                                marker={"size": 10}))
    chosen = data["chosen"]
    if chosen:
        figure.add_trace(go.Scatter(x=[chosen["throughput"]], y=[chosen["val_loss"]], mode="markers",
                                    name=f"pick (trial {chosen['trial']})",
                                    marker={"symbol": "star", "size": 18, "color": "gold",
                                            "line": {"color": "black", "width": 1}}))
    plot.figure = _layout(figure, plot.title, "samples/s", "validation loss")
    return plot


def lr_plot(data: dict[str, Any]) -> Plot:
    """Validation loss against learning rate, one series per optimizer; pruned trials at their last loss."""
    import plotly.graph_objects as go

    plot = _new("learning_rate")
    rows = [r for r in data["trials"] if r["lr"] and (r["val_loss"] is not None or r["last_loss"] is not None)]
    if not rows:
        plot.note = "no trial reached a validation report"
        return plot
    figure = go.Figure()
    for optimizer in sorted({r["optimizer"] for r in rows}):
        for complete in (True, False):
            part = [r for r in rows if r["optimizer"] == optimizer and (r["state"] == "COMPLETE") == complete]
            if not part:
                continue
            figure.add_trace(go.Scatter(
                x=[r["lr"] for r in part], y=[r["val_loss"] if complete else r["last_loss"] for r in part],
                mode="markers", name=optimizer if complete else f"{optimizer} (stopped early: last loss)",
                text=[_label(r) for r in part],
                marker={"size": 9, "symbol": "circle" if complete else "circle-open"}))
    plot.figure = _layout(figure, plot.title, "learning rate (at the trial's batch)", "validation loss", log_x=True)
    return plot


def range_test_plot(data: dict[str, Any]) -> Plot:
    """Each optimizer's range-test loss curve with its best rate marked."""
    import plotly.graph_objects as go

    plot = _new("range_tests")
    tests = data["range_tests"]
    curves = {name: t for name, t in sorted(tests.items()) if t.get("rates")}
    if not curves:
        why = ("every test was cut short (the table says why)" if tests
               else "trials of the user's own loop (autotune.Tuner) run none" if data.get("door") == "loop"
               else "it was not run (--no-range-test)")
        plot.note = f"no range-test curve in this study: {why}"
        return plot
    figure = go.Figure()
    for name, test in curves.items():
        figure.add_trace(go.Scatter(x=test["rates"], y=test["losses"], mode="lines", name=name))
        if test.get("best_lr") and test["best_lr"] in test["rates"]:
            figure.add_trace(go.Scatter(x=[test["best_lr"]], y=[test["losses"][test["rates"].index(test["best_lr"])]],
                                        mode="markers", marker={"symbol": "diamond", "size": 10},
                                        name=f"{name} best {test['best_lr']:.2e}"))
    plot.figure = _layout(figure, plot.title, "learning rate (at the reference batch)", "smoothed training loss",
                          log_x=True)
    return plot


def curves_plot(data: dict[str, Any]) -> Plot:
    """Validation loss against training time of the best trials, each labelled with its configuration."""
    import plotly.graph_objects as go

    plot = _new("curves")
    ranked = sorted((r for r in _complete(data) if r["history"]), key=lambda r: r["val_loss"])[:BEST_CURVES]
    if not ranked:
        plot.note = "no complete trial kept its validation history"
        return plot
    figure = go.Figure()
    for row in ranked:
        figure.add_trace(go.Scatter(x=[h[2] for h in row["history"]], y=[h[1] for h in row["history"]],
                                    mode="lines+markers", name=_label(row)))
    plot.figure = _layout(figure, plot.title, "training seconds", "validation loss")
    return plot


def _optuna_plot(study: optuna.Study, make: Callable[..., Any], **kwargs: Any) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna's experimental-feature warnings say nothing to a reader
        if len(study.directions) > 1:
            kwargs.update(target=lambda t: t.values[0], target_name="validation loss")
        return make(study, **kwargs)


def history_plot(study: optuna.Study, data: dict[str, Any]) -> Plot:
    """Optuna's optimization history (the first objective of a Pareto study)."""
    from optuna import visualization

    plot = _new("history")
    if not data["counts"]["COMPLETE"]:
        plot.note = "no trial completed yet"
        return plot
    plot.figure = _optuna_plot(study, visualization.plot_optimization_history)
    plot.figure.update_layout(template="plotly_white")
    return plot


def importance_plot(study: optuna.Study, data: dict[str, Any]) -> Plot:
    """Optuna's parameter importances, only with enough complete trials to mean something."""
    from optuna import visualization

    plot = _new("importance")
    if data["importance_note"]:
        plot.note = data["importance_note"]
        return plot
    try:
        plot.figure = _optuna_plot(study, visualization.plot_param_importances)
    except (ValueError, RuntimeError) as exc:  # a space with one varying parameter has nothing to rank
        plot.note = f"Optuna could not rank the parameters: {str(exc).splitlines()[0][:200]}"
    return plot


def all_plots(study: optuna.Study, data: dict[str, Any]) -> list[Plot]:
    """Every plot of the report, in the order of `PLOTS`; without plotly, each says how to install it."""
    import importlib.util

    if importlib.util.find_spec("plotly") is None:
        note = "plots need plotly: pip install 'autotune[plots]'"
        return [Plot(key, title, note=note) for key, title in PLOTS.items()]
    return [memory_plot(data), throughput_plot(data), pareto_plot(data), lr_plot(data), range_test_plot(data),
            history_plot(study, data), curves_plot(data), importance_plot(study, data)]
