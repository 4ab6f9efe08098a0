"""The ``autotune`` command: probe, fit-batch, bench, tune, best, studies, report.

Every user mistake ends as one line on stderr (``autotune: error: ...``) and exit code 2; nothing below this
module prints except through the progress callback it passes in.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import re
import sys
from typing import Any, Callable, Sequence

from autotune.backends import backend_names
from autotune.backends.base import PRECISIONS
from autotune.console import key_values, number, status, table
from autotune.errors import AutotuneError
from autotune.units import format_size, parse_size

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    """argparse with the CLI's error contract: one line ``autotune: error: ...``, exit code 2, no usage dump."""

    def error(self, message: str) -> Any:
        self.exit(EXIT_USAGE, f"autotune: error: {message} (see {self.prog} --help)\n")


# argparse takes "-1GiB" for an option and "-5" for a value: joined to their option ("--timeout=-5"), both reach
# the option's own check, which says what is wrong with them
_NEGATIVE = re.compile(r"^-(\d|\.\d|inf|nan)", re.IGNORECASE)


def _join_negative_values(argv: Sequence[str]) -> list[str]:
    joined: list[str] = []
    for token in argv:
        if joined and joined[-1].startswith("--") and "=" not in joined[-1] and _NEGATIVE.match(token):
            joined[-1] = f"{joined[-1]}={token}"
        else:
            joined.append(token)
    return joined


def _seconds(text: str, *, zero: bool = False) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not math.isfinite(value) or value < 0 or (value == 0 and not zero):
        least = "of 0 or more" if zero else "above 0"
        raise argparse.ArgumentTypeError(f"{text} must be a finite number of seconds {least}")
    return value


def _seconds_or_zero(text: str) -> float:
    return _seconds(text, zero=True)


def _size(text: str) -> int:
    if text.strip().startswith("-"):
        raise argparse.ArgumentTypeError(f"{text} must be a positive size such as 2GiB")
    try:
        return parse_size(text)
    except AutotuneError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"{text} must be a fraction in [0, 1), e.g. 0.05")
    return value


def _whole_number(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"{text} must be at least {minimum}")
    return value


def _positive_int(text: str) -> int:
    return _whole_number(text, 1)


def _count(text: str) -> int:
    """A whole number, 0 included (``--confirm 0``)."""
    return _whole_number(text, 0)


def _non_empty(text: str) -> str:
    """A value that must say something (``--devices ''`` would otherwise read as not given)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("is empty: give a value, or leave the option out")
    return text.strip()


def _json_out(data: Any) -> None:
    print(json.dumps(data, indent=2, default=_jsonable))


def _jsonable(value: Any) -> Any:
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if hasattr(value, "item"):
        return value.item()
    return str(value)


# ----------------------------------------------------------------------------------------------- probe
def cmd_probe(args: argparse.Namespace) -> int:
    from autotune.devices import probe

    result = probe([args.backend] if args.backend else None)
    if args.json:
        _json_out(result)
        return 0
    cpu = result["cpu"]
    print(f"Host  {result['host']['hostname']}  ({result['host']['os']}, Python {result['host']['python']})")
    print(key_values([
        ("CPU", cpu["model"]),
        ("cores", f"{cpu['physical_cores']} physical, {cpu['logical_cores']} logical, {cpu['usable_cores']} usable"),
        ("RAM", f"{format_size(cpu['ram_total'])} total, {format_size(cpu['ram_available'])} available"),
    ]))
    print()
    gpus = result["nvidia"]["gpus"]
    if gpus:
        print(table(
            ["GPU", "name", "memory total", "free", "used", "util %", "power W", "limit W", "driver", "CUDA"],
            [[g["index"], g["name"], format_size(g["memory_total"]), format_size(g["memory_free"]),
              format_size(g["memory_used"]), g["utilization_percent"], number(g["power_draw_watts"], 4),
              number(g["power_limit_watts"], 4), g["driver_version"], g["cuda_version"]] for g in gpus],
        ))
    else:
        print(result["nvidia"]["note"])
    print()
    rows = []
    for name, info in result["backends"].items():
        if not info["installed"]:
            rows.append([name, "not installed", "-", "-", "-", info["hint"]])
        elif "error" in info:
            rows.append([name, "error", "-", "-", "-", info["error"]])
        else:
            for device in info["devices"]:
                rows.append([name, info["version"], device["id"], device["kind"], device["name"],
                             format_size(device["memory_total"])])
    print(table(["backend", "version", "device", "kind", "name", "memory"], rows))
    return 0


# ------------------------------------------------------------------------------------------- fit-batch
def cmd_fit_batch(args: argparse.Namespace) -> int:
    from autotune.memory import fit_batch_size
    from autotune.runner import warm_up_for
    from autotune.task import load_task

    warm_up_for(args.task, isolation="none" if args.in_process else "process")  # the workers' server starts now
    task = load_task(args.task)
    optimizer = {"name": args.optimizer} if args.optimizer else None
    from autotune.bench import auto_device

    quiet = args.json or args.quiet
    chosen = auto_device(task, args.device, isolation="none" if args.in_process else "process",
                         say=None if quiet else (lambda event: status(f"device: {event['message']}")))
    fit = fit_batch_size(
        task, device=chosen["device"] if chosen else args.device, memory_limit=args.memory_limit,
        margin=args.margin, max_batch=args.max_batch,
        granularity=args.granularity, optimizer=optimizer, isolation="none" if args.in_process else "process",
        progress=None if args.json or args.quiet else status, precision=args.precision,
    )
    if args.json:
        _json_out(fit.to_dict())
        return 0
    model = fit.model.describe() if fit.model else "-"
    print(key_values([
        ("batch size", f"{fit.batch_size}  (granularity {fit.granularity}; limited by {fit.limited_by})"),
        ("peak memory", f"{format_size(fit.peak_memory_bytes)} ({fit.memory_metric.replace('_', ' ')})"),
        ("budget", f"{format_size(fit.budget_bytes)} less a {fit.margin:.0%} margin"),
        ("memory model", model),
        ("probe steps", f"{len(fit.probes)} ({fit.ooms} out of memory)"),
        ("device", f"{fit.device} ({fit.backend}), {fit.precision} training"),
        ("time", f"{fit.seconds:.1f} s"),
    ]))
    print()
    print(table(
        ["batch", "result", "peak memory", "samples/s", "seconds"],
        [[p.batch_size, "fits" if p.fits else ("OOM" if p.oom else "over budget"), format_size(p.peak_memory_bytes),
          number(p.throughput), f"{p.seconds:.1f}"] for p in sorted(fit.probes, key=lambda p: p.batch_size)],
    ))
    for note in fit.notes:
        print(f"note: {note}")
    return 0


# ------------------------------------------------------------------------------------------------ main
def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="autotune",
        description="Tune a training job to the hardware it runs on: probe devices, fit the batch size to memory, "
        "search batch size, optimizer and learning rate with Optuna.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    probe = sub.add_parser("probe", help="show every device the installed backends can use")
    probe.add_argument("--backend", help=f"only this framework ({', '.join(backend_names())})")
    probe.add_argument("--json", action="store_true", help="print one JSON object")
    probe.set_defaults(handler=cmd_probe)

    fit = sub.add_parser("fit-batch", help="find the largest batch size that fits in memory")
    fit.add_argument("task", help="path/file.py[:attr] or package.module:attr")
    fit.add_argument("--device", help="device id from `autotune probe` (default: first accelerator, else cpu); "
                     "auto: the fastest for this task, measured by bench")
    fit.add_argument("--memory-limit", type=_size, help="memory budget such as 2GiB (default: free device memory); "
                     "on the CPU it caps each probe worker's address space for real")
    fit.add_argument("--margin", type=_fraction, default=0.05, help="fraction of the budget kept free (default 0.05)")
    fit.add_argument("--max-batch", type=_positive_int, help="never go above this batch size")
    fit.add_argument("--granularity", type=_positive_int,
                     help="resolution of the answer (default: a power of two near 1/64 of it)")
    fit.add_argument("--optimizer", help="optimizer whose state is counted (default adam)")
    fit.add_argument("--precision", type=str.lower, default="fp32", choices=PRECISIONS,
                     help="training precision the probes run in (default fp32); each has its own ceiling")
    fit.add_argument("--in-process", action="store_true", help="probe in this process (less exact; no CPU cap)")
    fit.add_argument("--json", action="store_true", help="print one JSON object")
    fit.add_argument("--quiet", action="store_true", help="no progress lines")
    fit.set_defaults(handler=cmd_fit_batch)

    _add_study_commands(sub)
    from autotune import cli_bench

    cli_bench.register(sub)
    return parser


def _add_study_commands(sub: Any) -> None:
    """Commands of the search (tune, best, studies, report), registered when that module is present."""
    try:
        from autotune import cli_study
    except ImportError:
        return
    cli_study.register(sub)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(_join_negative_values(sys.argv[1:] if argv is None else argv))
    handler: Callable[[argparse.Namespace], int] = args.handler
    from autotune.closed_output import output_closed, stop_reason, stop_signal, stopped_when_output_closes
    from autotune.redact import redact, url_secrets  # no optuna: probe and fit-batch do not import it
    from autotune.scoped import quiet_optuna

    secrets = url_secrets(getattr(args, "storage", None))
    try:
        # the commands report trials themselves: Optuna's INFO lines would repeat them
        with quiet_optuna(), stopped_when_output_closes():
            return handler(args)
    except AutotuneError as exc:
        print(redact(f"autotune: error: {exc}", secrets), file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt as exc:
        if not output_closed():  # a closed output takes no more lines
            print(f"autotune: interrupted ({stop_reason(exc)})", file=sys.stderr)
        return 128 + stop_signal(exc)
    except Exception:  # a bug: its traceback is for a report, but even a traceback must not show a password
        import traceback

        print(redact(traceback.format_exc(), secrets), file=sys.stderr, end="")
        return 1


def run() -> None:
    """The ``autotune`` command: `main`, then exit. The cycle collector's passes at interpreter exit walk every
    object a framework loaded (torch and transformers: 1.6 s of a command's wall, 0.2 s frozen first), and the
    command needs none of them: what it stores is committed and its workers have ended."""
    code = main()
    gc.freeze()
    sys.exit(code)


if __name__ == "__main__":
    run()
