"""The report as a sequence of neutral blocks (headings, paragraphs, tables, lists, plots), built once from the
report data and rendered as Markdown or HTML, so that both say the same things in the same order.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from autotune.reporting import numbers as fmt
from autotune.reporting.figures import Plot, memory_formula


@dataclasses.dataclass
class Heading:
    level: int
    text: str


@dataclasses.dataclass
class Paragraph:
    text: str


@dataclasses.dataclass
class Bullets:
    items: list[str]


@dataclasses.dataclass
class Table:
    headers: list[str]
    rows: list[list[str]]


@dataclasses.dataclass
class Figure:
    plot: Plot


PHASE_ORDER = ("fit", "range_test", "trials", "confirm")

Block = Heading | Paragraph | Bullets | Table | Figure


def _params(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={fmt.plain(v)}" for k, v in params.items()) or fmt.MISSING


def _intro(data: dict[str, Any]) -> list[Block]:
    blocks: list[Block] = [Heading(1, f"autotune study {data['study']}"), Paragraph(
        f"Task {data['task'] or fmt.MISSING} on {data['backend'] or fmt.MISSING} ({data['device'] or fmt.MISSING}); "
        f"objective {data['objective']}; per-trial budget {fmt.budget(data['trial_budget'])}; seed {data['seed']}.")]
    if data["notes"]:
        blocks.append(Bullets(data["notes"]))
    return blocks


def _chosen(data: dict[str, Any]) -> list[Block]:
    blocks: list[Block] = [Heading(2, "Chosen configuration")]
    chosen = data["chosen"]
    if not chosen:
        return blocks + [Paragraph(f"None: {data['why']}.")]
    blocks += [Table(
        ["trial", "batch size", "optimizer", "learning rate", "parameters", "validation loss",
         "samples/s (one device)", "step p50 / p95", "peak memory"],
        [[str(chosen["trial"]), str(chosen["batch_size"]), chosen["optimizer"], fmt.rate(chosen["lr"]),
          _params(chosen["optimizer_params"]), fmt.loss(chosen["val_loss"]),
          fmt.throughput(chosen["throughput"]) + (" (busy machine)" if chosen["throughput_busy"] else ""),
          f"{fmt.milliseconds(chosen['step_seconds_p50'])} / {fmt.milliseconds(chosen['step_seconds_p95'])}",
          fmt.size(chosen["peak_memory_bytes"])]]),
        Paragraph(f"Why this one: {data['why']}. Learning rate: {chosen['lr_scaling']}.")]
    if data["flags"]:
        blocks += [Paragraph("At a bound of the searched space:"), Bullets(data["flags"])]
    return blocks


def _context(data: dict[str, Any]) -> list[Block]:
    context = data["context"]
    blocks: list[Block] = [Heading(2, "Against the default configuration and other seeds")]
    if context["note"]:
        return blocks + [Paragraph(context["note"] + ".")]
    baseline = context["baseline"]
    if baseline:
        config = baseline["config"] or {}
        blocks.append(Table(["run", "batch size", "optimizer", "learning rate", "validation loss", "samples/s"], [
            ["default configuration", str(config.get("batch_size")), str(config.get("optimizer")),
             fmt.rate(config.get("lr")), fmt.loss(baseline["val_loss"]), fmt.throughput(baseline["throughput"])]]))
        if baseline["failure"]:
            blocks.append(Paragraph(f"The default configuration did not finish: {baseline['failure']}."))
        elif baseline["val_loss_lower_percent"] is not None:
            ratio = baseline["throughput_ratio"]
            blocks.append(Paragraph(
                f"The pick's validation loss is {fmt.percent(baseline['val_loss_lower_percent'])} lower than the "
                f"default configuration's" + (f", and its throughput {ratio:.2f}× the default's." if ratio else ".")))
    if context["confirm"]:
        label = "samples/s" if context["metric"] == "throughput" else "validation loss"
        show = fmt.throughput if context["metric"] == "throughput" else fmt.loss
        blocks.append(Table(
            ["trial", "configuration", "seeds", f"{label} per seed", "mean", "spread (low to high)", "failed re-runs"],
            [[str(c["trial"]), f"{c['optimizer']} batch {c['batch_size']} lr {fmt.rate(c['lr'])}",
              ", ".join(map(str, c["seeds"])), ", ".join(show(v) for v in c["values"]), show(c["mean"]),
              f"{show(c['low'])} to {show(c['high'])}", "; ".join(c["failures"]) or fmt.MISSING]
             for c in context["confirm"]]))
        blocks.append(Paragraph(f"Verdict: {context['verdict']['text']}."))
    if context["confirm_skipped"]:
        blocks.append(Paragraph(f"Seed re-runs: {context['confirm_skipped']}."))
    return blocks


def _hardware(data: dict[str, Any]) -> list[Block]:
    hardware = data["hardware"] or {}
    cpu = hardware.get("cpu") or {}
    device = hardware.get("device") or {}
    nvidia = hardware.get("nvidia")
    gpus = ("; ".join(f"{g.get('name')} ({fmt.size(g.get('memory_total'))})" for g in nvidia)
            if isinstance(nvidia, list) else str(nvidia or fmt.MISSING))
    rows = [["host", str(hardware.get("host", fmt.MISSING))],
            ["CPU", f"{cpu.get('model', fmt.MISSING)}, {cpu.get('logical_cores', fmt.MISSING)} logical cores"],
            ["RAM", fmt.size(cpu.get("ram_total"))], ["NVIDIA GPUs", gpus],
            ["device", f"{device.get('id', data['device'])} {device.get('name', '')}".strip()]]
    rows += [[name, str(version)] for name, version in (data["versions"] or {}).items()]
    return [Heading(2, "Hardware and software"), Table(["", ""], rows)]


def _phases(data: dict[str, Any]) -> list[Block]:
    blocks: list[Block] = [Heading(2, "Time per phase")]
    calls = data["phases"]
    if not calls:
        return blocks + [Paragraph("No phase times stored (the study is still in its first call, or came from the "
                                   "in-loop door).")]
    seen = {name for call in calls for name in call}
    names = [n for n in PHASE_ORDER if n in seen] + sorted(seen - set(PHASE_ORDER))
    rows = [[f"call {i + 1}", *(fmt.duration(call.get(name)) for name in names),
             fmt.duration(sum(call.values()))] for i, call in enumerate(calls)]
    return blocks + [Table(["", *(n.replace("_", " ") for n in names), "in all"], rows)]


def _ceiling(data: dict[str, Any], plots: dict[str, Plot]) -> list[Block]:
    blocks: list[Block] = [Heading(2, "Batch-size ceiling")]
    rows = []
    for device, fit in data["fits"].items():
        model = fit.get("model")
        rows.append([device, str(fit.get("batch_size")), str(fit.get("limited_by")),
                     fmt.size(fit.get("peak_memory_bytes")), fmt.size(fit.get("budget_bytes")),
                     memory_formula(model) if model else fmt.MISSING,
                     str(len(fit["probes"])) if fit.get("probes") else fmt.MISSING])
    if rows:
        blocks.append(Table(["device", "ceiling", "limited by", "peak at the ceiling", "budget", "memory model",
                             "probes"], rows))
    else:
        blocks.append(Paragraph("No ceiling stored in this study."))
    return blocks + [Figure(plots["memory"]), Figure(plots["throughput"])]


def _search(data: dict[str, Any], plots: dict[str, Plot]) -> list[Block]:
    blocks: list[Block] = [Heading(2, "Search")]
    blocks += [Figure(plots[key]) for key in ("pareto", "learning_rate", "range_tests")]
    tests = data["range_tests"]
    if tests:
        blocks.append(Table(["optimizer", "best rate", "diverges at", "range searched", "skipped because"], [
            [name, fmt.rate(t.get("best_lr")), fmt.rate(t.get("diverge_lr")),
             " to ".join(fmt.rate(v) for v in data["lr_ranges"][name]) if name in data["lr_ranges"] else "full range",
             t.get("skipped") or fmt.MISSING] for name, t in sorted(tests.items())]))
    return blocks + [Figure(plots[key]) for key in ("history", "curves", "importance")]


def _last(row: dict[str, Any]) -> str:
    if row["last_loss"] is None:
        return fmt.MISSING
    return f"{fmt.loss(row['last_loss'])} (report {row['last_report']})"


def _trials(data: dict[str, Any]) -> list[Block]:
    counts = data["counts"]
    front = ", ".join(map(str, data["pareto_front"])) or fmt.MISSING
    # a surplus trial is no failure: processes starting at once made one too many, and it never ran
    surplus = f", {counts['SURPLUS']} surplus (never ran: the study had its --trials)" if counts["SURPLUS"] else ""
    rows = [[str(r["number"]), r["state"], fmt.plain(r["batch_size"]), fmt.plain(r["optimizer"]), fmt.rate(r["lr"]),
             fmt.loss(r["val_loss"]), _last(r), fmt.throughput(r["throughput"]),
             fmt.milliseconds(r["step_seconds_p95"]), fmt.size(r["peak_memory_bytes"]), fmt.duration(r["seconds"]),
             r["reason"] or fmt.MISSING] for r in data["trials"]]
    return [Heading(2, "Trials"), Paragraph(
        f"{counts['COMPLETE']} complete, {counts['PRUNED']} pruned, {counts['FAIL']} failed, {counts['RUNNING']} "
        f"running{surplus}. Pareto front (throughput against validation loss): trials {front}."),
        Table(["#", "state", "batch", "optimizer", "learning rate", "validation loss", "last loss reached",
               "samples/s (one device)", "step p95", "peak memory", "time", "reason"], rows)]


def build(data: dict[str, Any], plots: Sequence[Plot]) -> list[Block]:
    """The report's blocks in reading order: the pick first, then where it ran, then how it was found."""
    by_key = {plot.key: plot for plot in plots}
    return [*_intro(data), *_chosen(data), *_context(data), *_hardware(data), *_phases(data),
            *_ceiling(data, by_key), *_search(data, by_key), *_trials(data)]
