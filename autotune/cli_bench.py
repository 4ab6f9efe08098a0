"""The ``autotune bench`` command: a task measured on every device, precision and compile mode, ranked."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from autotune.console import number, status, table
from autotune.units import format_size


def _batch(text: str) -> int | str:
    from autotune.cli import _positive_int

    return "ceiling" if text.strip().lower() == "ceiling" else _positive_int(text)


def register(sub: Any) -> None:
    """Add ``bench`` to the CLI's subparsers."""
    from autotune.cli import _non_empty, _seconds

    bench = sub.add_parser("bench", help="measure the task on every device, precision and compile mode")
    bench.add_argument("task", help="path/file.py[:attr] or package.module:attr")
    bench.add_argument("--devices", default="all", type=_non_empty,
                       help="all (default) or a comma list of device ids from `autotune probe`")
    bench.add_argument("--precision", help="comma list of fp32, bf16, fp16 (default: all the device supports)")
    bench.add_argument("--compile", help="comma list of off, on (default: both)")
    bench.add_argument("--batch", type=_batch, help="batch size, or 'ceiling' to fit it per device and precision first "
                       "(default 256, capped at the training set)")
    bench.add_argument("--budget", type=_seconds, default=300.0, help="seconds of training a compiled mode must "
                       "pay its compile time back within (default 300)")
    bench.add_argument("--seconds", type=_seconds, default=2.0, help="timed training seconds per mode (default 2)")
    bench.add_argument("--in-process", action="store_true", help="measure in this process (peak memory shared)")
    bench.add_argument("--json", action="store_true", help="print one JSON object")
    bench.add_argument("--quiet", action="store_true", help="no progress lines")
    bench.set_defaults(handler=cmd_bench)


def _ms(seconds: float | None) -> str | None:
    return None if seconds is None else f"{seconds * 1000:.3g}"


def _pair(latency: dict[str, Any] | None) -> str | None:
    if not latency:
        return None
    return f"{_ms(latency['p50'])}/{_ms(latency['p95'])}"


def cmd_bench(args: argparse.Namespace) -> int:
    from autotune.bench import bench

    result = bench(args.task, devices=args.devices, precisions=args.precision, compile_modes=args.compile,
                   batch_size=args.batch, budget=args.budget, seconds=args.seconds,
                   isolation="none" if args.in_process else "process",
                   progress=None if args.json or args.quiet else status)
    ran = any(row["ok"] for row in result.rows)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print(render(result))
    if not ran:  # a table of failures is no measurement: the caller's script must see it
        reasons = "; ".join(f"{row['mode']}: {row.get('failure', '')[:160]}" for row in result.rows)
        print(f"autotune: no mode ran ({reasons})", file=sys.stderr)
        return 1
    return 0


def render(result: Any) -> str:
    """The ranked table, the winner marked with ``*``, and the notes under it."""
    from autotune.training import CONTENDED_CORES

    rows = []
    for row in result.rows:
        if not row["ok"]:
            rows.append(["", "-", row["mode"], row["batch_size"], "failed", *([None] * 11)])
            continue
        inference = row["inference_seconds"] or {}
        int8 = row["inference_int8_seconds"] or {}
        rows.append([
            "*" if row["rank"] == 1 else "", row["rank"], row["mode"], row["batch_size"],
            number(row["throughput_in_budget"]),
            f"{number(row['throughput'])} ±{row['throughput_spread']:.0%}",
            f"{row['compile_seconds']:.2f}",
            f"{_ms(row['step_seconds_p50'])}/{_ms(row['step_seconds_p95'])}/{_ms(row['step_seconds_p99'])}",
            _pair(inference.get("batch_1")), _pair(inference.get("batch")),
            _pair(int8.get("batch_1")), _pair(int8.get("batch")),
            format_size(row["peak_memory_bytes"]) if row["peak_memory_bytes"] else None,
            number(row["energy_per_sample_joules"], 3),
            f"{row['mfu']:.2%}" if row["mfu"] is not None else None,
            number(row["peak_flops"] / 1e9 if row["peak_flops"] else None, 4),
        ])
    lines = [table(["", "rank", "mode", "batch", f"samples/s in {result.budget_seconds:g} s", "samples/s",
                    "compile s", "step ms p50/95/99", "infer b1 ms p50/95", "infer batch ms", "int8 b1 ms",
                    "int8 batch ms", "peak memory", "J/sample", "MFU", "peak GFLOP/s"], rows)]
    winner = result.winner
    if winner:
        lines.append(f"winner: {winner['mode']} ({number(winner['throughput_in_budget'])} samples/s over "
                     f"{result.budget_seconds:g} s of training, compile time included)")
    for row in result.rows:
        if not row["ok"]:
            lines.append(f"failed: {row['mode']}: {row['failure'].splitlines()[0][:200]}")
    busy = [row["mode"] for row in result.rows if row.get("busy")]
    if busy:
        lines.append(f"busy: other processes took over {CONTENDED_CORES:g} CPU core while {', '.join(busy)} "
                     "ran: rerun on a quiet machine before trusting the ranking")
    energy_notes = {row["energy_note"] for row in result.rows if row.get("ok") and row.get("energy_note")}
    lines.extend(f"energy: {note}" for note in sorted(energy_notes))
    lines.extend(f"skipped: {item['mode']}: {item['reason']}" for item in result.skipped)
    cache = next((row["peak_flops_cache"] for row in result.rows if row.get("ok")), None)
    if cache:
        lines.append(f"MFU: FLOPs per sample by {result.rows[0].get('flop_count') or '-'}; device peaks from a "
                     f"matmul benchmark, cached in {cache}")
    return "\n".join(lines)
