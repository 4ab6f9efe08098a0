"""CLI commands of the search: ``tune``, ``best``, ``studies`` and ``report``, and the progress display."""

from __future__ import annotations

import argparse
import json
import shlex
import signal
import sys
import time
from typing import Any

from autotune.console import key_values, number, status, table
from autotune.units import format_size


class ProgressDisplay:
    """Trials done, best so far and time left: one rewritten line on a terminal, plain lines otherwise."""

    def __init__(self, stream: Any = None, quiet: bool = False) -> None:
        self.stream = stream or sys.stderr
        self.live = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.quiet = quiet
        self.started = time.monotonic()

    def _line(self, text: str, final: bool = True) -> None:
        if self.live:
            self.stream.write("\r\033[2K" + text + ("\n" if final else ""))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def __call__(self, event: dict[str, Any]) -> None:
        if self.quiet:
            return
        kind = event["event"]
        if kind == "start":
            verb = "resuming" if event["resumed"] else "new"
            extra = f", {event['orphans_failed']} orphaned trial(s) marked failed" if event["orphans_failed"] else ""
            # a study that already holds the trials asked for runs none: said here, with how to add more
            full = (f"; --trials {event['wanted']} are done already: give a larger --trials to add more"
                    if event["resumed"] and event.get("wanted") and event["finished"] >= event["wanted"] else "")
            self._line(f"{verb} study {event['study']} in {event['storage']} ({event['finished']} finished{extra})"
                       f"{full}")
        elif kind == "fit":
            self._line(f"fit: {event['message'].strip()}", final=not self.live)
        elif kind == "ceiling":
            precision = "" if event.get("precision", "fp32") == "fp32" else f" in {event['precision']}"
            why = f": {event['note']}" if event.get("note") else ""
            self._line(f"batch-size ceiling {event['batch_size']}{precision} "
                       f"(limited by {event.get('limited_by') or 'memory'}{why})")
        elif kind == "range_test":
            self._line(f"learning-rate range test: {event['optimizer']}", final=not self.live)
        elif kind == "wait":
            self._line(event["message"])
        elif kind == "trial":
            self._trial(event)
        elif kind == "phases":
            self._line(f"time: {event['summary']}")
        elif kind == "confirm":
            self._line(f"context: the default configuration, and the {event['count']} best re-run with other seeds")
        elif kind == "busy":
            self._line(f"note: {event['message']}")
        elif kind == "device":
            self._line(f"device: {event['message']}")

    @staticmethod
    def warn(event: dict[str, Any]) -> None:
        """A line that must be seen even with --quiet or --json (a study that fell short, a risky setting)."""
        if event["event"] in ("shortfall", "warning"):
            print(f"autotune: warning: {event['message']}", file=sys.stderr, flush=True)

    def _trial(self, event: dict[str, Any]) -> None:
        config = event.get("config") or {}
        what = (f"batch {config.get('batch_size')} {config.get('optimizer')} lr {number(config.get('lr'), 3)}"
                if config else "")
        outcome = event["state"].lower()
        if event["state"] == "COMPLETE":
            outcome = f"value {number(event['value'])}"
        elif event.get("failure"):
            # a reason that already starts with the state ("pruned: pruned after report 2 …") is said once
            reason = event["failure"].removeprefix(f"{outcome}: ")[:160]
            outcome = reason if reason.startswith(outcome) else f"{outcome} ({reason})"
        left = ""
        if event.get("time_left") is not None:
            left = f", {event['time_left']:.0f} s left"
        elif event["done"]:
            per = event["elapsed"] / max(event["done"], 1)
            left = f", ~{per * max(event['total'] - event['done'], 0):.0f} s left"
        self._line(f"trial {event['number']}: {what}: {outcome} | {event['done']}/{event['total']} done, "
                   f"best {number(event['best'])}{left}")


def _add_storage(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--storage", help="Optuna storage URL (default sqlite:///studies/autotune.db); "
                        "postgresql://..., journal:path.log")


def register(sub: Any) -> None:
    """Add the search commands to the CLI's subparsers."""
    from autotune.cli import _count, _non_empty, _positive_int, _seconds, _seconds_or_zero, _size
    from autotune.confirm import CONFIRM_SEEDS, DEFAULT_CONFIRM
    from autotune.reconnect import STORAGE_RETRY_SECONDS

    tune = sub.add_parser("tune", help="search batch size, optimizer and learning rate with Optuna")
    tune.add_argument("task", help="path/file.py[:attr] or package.module:attr")
    tune.add_argument("--backend", help="check that the task uses this backend (torch, tensorflow, mindspore)")
    tune.add_argument("--device", help="device id from `autotune probe` (default: first accelerator, else cpu)")
    tune.add_argument("--trials", type=_positive_int, default=20,
                      help="finished trials wanted in the study (default 20)")
    tune.add_argument("--timeout", type=_seconds, help="bound on the whole call in seconds (ceiling fit and range "
                      "test included): no trial starts that would end after it")
    budget = tune.add_mutually_exclusive_group()
    budget.add_argument("--trial-time", type=_seconds, default=5.0, help="training seconds per trial (default 5)")
    budget.add_argument("--trial-steps", type=_positive_int, help="training steps per trial instead of seconds")
    tune.add_argument("--objective", choices=["convergence", "throughput", "pareto"], default="convergence")
    tune.add_argument("--search-space", help="YAML file narrowing or extending the backend's default space")
    tune.add_argument("--study", help="study name (default: from the task); an existing one is resumed")
    _add_storage(tune)
    tune.add_argument("--storage-retry", type=_seconds_or_zero, metavar="SECONDS",
                      help="on a database server, wait this long for a lost server to come back before stopping "
                           f"(default {STORAGE_RETRY_SECONDS:g}; 0: stop at once)")
    tune.add_argument("--seed", type=int, default=0)
    tune.add_argument("--memory-limit", type=_size, help="memory budget such as 2GiB (CPU: each trial process is "
                      "capped to it); with --devices cpu*N the budget of all N workers together: each gets 1/N")
    tune.add_argument("--memory-share", type=_positive_int, default=1, help=argparse.SUPPRESS)  # set by --devices
    tune.add_argument("--memory-whole", type=_size, help=argparse.SUPPRESS)  # the RAM the --devices workers split
    tune.add_argument("--in-process", action="store_true", help="run trials in this process (no isolation)")
    tune.add_argument("--no-range-test", action="store_true", help="skip the learning-rate range test")
    tune.add_argument("--no-pruning", action="store_true", help="run every trial to the end")
    tune.add_argument("--trial-timeout", type=_seconds,
                      help="kill a trial after this many seconds (default 3×trial time + 120)")
    tune.add_argument("--heartbeat", type=_positive_int, metavar="SECONDS",
                      help="beat every SECONDS while a trial runs (SQL storages): another process fails a trial "
                           "whose beat stopped for twice that (default: a beat every 10 s, a grace of 30 s)")
    tune.add_argument("--refit", action="store_true", help="fit the batch-size ceiling again instead of reusing "
                      "the one stored for this task, device and versions")
    tune.add_argument("--devices", type=_non_empty,
                      help="one worker per device, all on one study: all, cuda:0,cuda:1 or cpu*N (N CPU workers, the "
                      "cores split between them and the RAM budget too: each fits its own ceiling to --memory-limit, "
                      "or the available RAM, divided by N); samples/s are per worker")
    tune.add_argument("--global-batch", type=_positive_int, help="train every trial at this batch: in micro-batches "
                      "with gradient accumulation where it exceeds the fitted ceiling (learning rate scaled to it)")
    tune.add_argument("--json", action="store_true", help="print the result as JSON")
    tune.add_argument("--quiet", action="store_true", help="no progress lines")
    tune.add_argument("--no-report", action="store_true", help="do not write studies/STUDY/report.* at the end")
    tune.add_argument("--confirm", type=_count, default=DEFAULT_CONFIRM, metavar="K",
                      help=f"re-run the K best configurations with {CONFIRM_SEEDS} other seeds and train the default "
                           f"configuration once, for the report (default {DEFAULT_CONFIRM}; 0: neither)")
    tune.set_defaults(handler=cmd_tune)

    best = sub.add_parser("best", help="the chosen configuration of a study")
    best.add_argument("study")
    _add_storage(best)
    best.add_argument("--json", action="store_true", help="print one JSON object a training script can load")
    best.set_defaults(handler=cmd_best)

    report = sub.add_parser("report", help="write a study's report: HTML with plots, Markdown with PNGs, JSON")
    report.add_argument("study")
    _add_storage(report)
    report.add_argument("--format", default="html,md,json",
                        help="comma-separated: html, md, json (default all three)")
    report.add_argument("--output", "-o", help="folder to write into (default studies/STUDY/); "
                        "'-' prints one format (md, json or html) on stdout")
    report.set_defaults(handler=cmd_report)

    studies = sub.add_parser("studies", help="list the studies of a storage")
    _add_storage(studies)
    studies.add_argument("--json", action="store_true")
    studies.set_defaults(handler=cmd_studies)


def _print_result(result: Any, as_json: bool) -> None:
    if as_json:
        print(json.dumps(result.to_dict(), indent=2))
        return
    params = ", ".join(f"{k}={number(v) if isinstance(v, float) else v}" for k, v in result.optimizer_params.items())
    print(key_values([
        ("study", f"{result.study_name} (trial {result.trial}, objective {result.objective})"),
        ("batch size", result.batch_size if not result.accumulation else
         f"{result.batch_size} (micro-batch {result.accumulation['micro_batch']} × "
         f"{result.accumulation['accumulation_steps']} accumulation steps)"),
        ("optimizer", f"{result.optimizer}" + (f" ({params})" if params else "")),
        ("learning rate", f"{result.lr:.4g}  ({result.lr_scaling})"),
        ("validation loss", number(result.val_loss)),
        ("throughput", f"{number(result.throughput)} samples/s on one device" + _measured_by(result.worker)
                       + (" (measured on a busy machine)" if result.throughput_busy else "")),
        ("step time p50/p95", f"{number(result.step_seconds_p50 and result.step_seconds_p50 * 1000, 3)} / "
                              f"{number(result.step_seconds_p95 and result.step_seconds_p95 * 1000, 3)} ms"),
        ("peak memory", format_size(result.peak_memory_bytes)),
        ("energy", f"{number(result.energy_per_sample_joules)} J/sample" if result.energy_per_sample_joules else "-"),
        ("device", f"{result.device} ({result.backend}), {result.precision} "
                   f"{'compiled' if result.compile else 'eager'}"),
    ]))


def _measured_by(worker: dict[str, Any] | None) -> str:
    if not worker:
        return ""
    cores = f", cores {','.join(map(str, worker['cpus']))}" if worker.get("cpus") else ""
    return f" (worker {worker['worker']}{cores})"


def cmd_tune(args: argparse.Namespace) -> int:
    from autotune.backends import canonical_backend_name
    from autotune.errors import Interrupted, TaskError
    from autotune.runner import warm_up_for
    from autotune.study import ModelDoesNotLearn, best_trial, result_from_trial, tune
    from autotune.task import load_task

    warm_up_for(args.task, isolation="none" if args.in_process else "process")  # the workers' server starts now
    task = load_task(args.task)
    if args.backend and canonical_backend_name(args.backend) != task.backend:
        raise TaskError(f"--backend {args.backend} does not match the task's backend {task.backend}")
    if args.devices:  # a coordinator: one `tune` process per device on the same study (autotune.parallel)
        from autotune.parallel import tune_on_devices

        return tune_on_devices(args, task, sys.argv[1:])
    display = ProgressDisplay(quiet=args.quiet or args.json)
    study_holder: dict[str, Any] = {}

    def progress(event: dict[str, Any]) -> None:
        study_holder.update(event)
        display(event)
        display.warn(event)

    def terminated(signum: int, frame: Any) -> None:
        raise Interrupted(signum)

    # SIGTERM outside the trials (reading, fitting) stops like Ctrl-C too; the study installs its own handler
    signal.signal(signal.SIGTERM, terminated)
    try:
        result = tune(
            task, device=args.device, n_trials=args.trials, timeout=args.timeout, trial_time=args.trial_time,
            trial_steps=args.trial_steps, objective=args.objective, search_space=args.search_space,
            study_name=args.study, storage=args.storage, storage_retry=args.storage_retry, seed=args.seed,
            memory_limit=args.memory_limit,
            isolation="none" if args.in_process else "process", range_test=not args.no_range_test,
            pruning=not args.no_pruning, trial_timeout=args.trial_timeout, heartbeat=args.heartbeat,
            refit=args.refit, global_batch=args.global_batch, progress=progress, confirm=args.confirm,
            memory_share=args.memory_share, memory_whole=args.memory_whole,
        )
    except ModelDoesNotLearn as exc:
        print(f"autotune: {exc}", file=sys.stderr)
        print("no configuration is reported; the trials are stored in the study", file=sys.stderr)
        if not args.no_report:
            from autotune.reporting.next_steps import report_after_tune

            report_after_tune(exc.result.study, args.storage)
        return 1
    except KeyboardInterrupt as exc:
        from autotune.closed_output import stop_reason, stop_signal

        name = study_holder.get("study")
        print(f"autotune: interrupted ({stop_reason(exc)}): the running trial is marked failed, "
              "finished trials are kept", file=sys.stderr)
        if name:
            from autotune.errors import StorageError
            from autotune.study import load_study

            try:
                study = load_study(name, args.storage)
            except StorageError:  # a new study interrupted before its first trial is removed again
                return 128 + stop_signal(exc)
            trial = best_trial(study, study.user_attrs.get("objective", "convergence"))
            if trial is not None:
                print("best so far:", file=sys.stderr)
                _print_result(result_from_trial(study, trial), args.json)
        return 128 + stop_signal(exc)
    if not args.json:
        print()
    written = None
    if not args.no_report:  # written first, so that the result printed carries the report's seconds too
        from autotune.reporting.next_steps import say_next_steps, write_after_tune

        try:
            written = write_after_tune(result.study)
        except BaseException:  # Ctrl-C while it is written: the tuned result is printed all the same
            _print_result(result, args.json)
            raise
        if written is not None:
            result.phases["report"] = round(written["seconds"], 3)
    _print_result(result, args.json)
    if written is not None:
        say_next_steps(result.study, args.storage, written)
    return 0


def cmd_best(args: argparse.Namespace) -> int:
    from autotune.study import ModelDoesNotLearn, load_result

    try:
        result = load_result(args.study, args.storage)
    except ModelDoesNotLearn as exc:  # as `tune` ends such a study: no configuration to hand to training
        print(f"autotune: {exc}", file=sys.stderr)
        from autotune.storage import storage_option

        print(f"no configuration is reported; the best-valued trial is in autotune report "
              f"{shlex.quote(args.study)}{storage_option(args.storage)}", file=sys.stderr)
        return 1
    _print_result(result, args.json)
    return 0


def cmd_studies(args: argparse.Namespace) -> int:
    import optuna

    from autotune.failures import shown_state
    from autotune.storage import open_storage

    storage = open_storage(args.storage, must_exist=True)
    rows = []
    for summary in optuna.get_all_study_summaries(storage, include_best_trial=True):
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        trials = study.get_trials(deepcopy=False)
        counts = {state: sum(1 for t in trials if shown_state(t) == state)
                  for state in ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "SURPLUS")}
        objective = summary.user_attrs.get("objective", "?")
        best = summary.best_trial.values[0] if summary.best_trial is not None and summary.best_trial.values else None
        # a surplus trial never ran: it is not among the trials a person counts
        rows.append({"study": summary.study_name, "objective": objective, "backend": summary.user_attrs.get("backend"),
                     "trials": len(trials) - counts["SURPLUS"], **{k.lower(): v for k, v in counts.items()},
                     "best": best})
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        status("no studies in this storage yet: run autotune tune TASK")
        return 0
    print(table(["study", "objective", "backend", "trials", "complete", "pruned", "failed", "running", "best"],
                [[r["study"], r["objective"], r["backend"], r["trials"], r["complete"], r["pruned"], r["fail"],
                  r["running"], number(r["best"])] for r in rows]))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from autotune.errors import AutotuneError
    from autotune.reporting import parse_formats, render_text, write_report
    from autotune.study import load_study

    formats = parse_formats(args.format)
    if args.output == "-" and len(formats) != 1:
        raise AutotuneError("-o - prints one format on stdout: add --format md, --format json or --format html")
    study = load_study(args.study, args.storage)
    if args.output == "-":
        sys.stdout.write(render_text(study, formats[0]))
        return 0
    notes: list[str] = []
    for fmt, path in write_report(study, out_dir=args.output, formats=formats, notes=notes).items():
        status(f"report ({fmt}) written to {path}")
    for note in notes:
        status(f"note: {note}")
    return 0
