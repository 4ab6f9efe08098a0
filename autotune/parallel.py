"""One machine, many devices: ``autotune tune TASK --devices ...`` runs one `tune` process per device on one study.

Each child is the single-device study loop (`autotune.study.tune` behind ``autotune tune --device D``) against
the same storage and study, so everything one process guarantees holds for each: its trials stored with their
owner, a ceiling fitted once per device kind and shared through the study (`autotune.shared`), per-trial seeds
and TPE's constant liar so that concurrent trials differ. CPU workers share the host's RAM: each gets 1/N of
the budget (``--memory-limit``, else the available RAM read once here; ``--memory-share N`` to the child), and
their ceiling, fitted under that share by the first of them, is kept apart from a whole-memory one. A child
that dies takes only its running trial down (failed by the heartbeat, or by the orphan check here once it is
gone); the others go on until the study has ``--trials`` finished trials. On the CPU the cores are split
between the workers and each is pinned to its share (``sched_setaffinity``, inherited by its trial workers) with
thread counts to match, so that workers do not compete for the same cores and each one's throughput is that of
its share.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

from autotune.errors import AutotuneError, DeviceError
from autotune.storage import WORKER_ENV
from autotune.verdict import not_learning

THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "TF_NUM_INTRAOP_THREADS")
"""Thread-pool sizes the frameworks read at start: set to a CPU worker's share of the cores."""
REAP_SECONDS = 0.2


@dataclass
class Slot:
    """One worker: its label, the device it trains on, and on the CPU the cores it is pinned to."""

    label: str
    device: str
    cpus: list[int] | None = None
    process: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None


def plan_slots(spec: str, backend: Any, *, cpus: Sequence[int] | None = None) -> list[Slot]:
    """The workers ``spec`` asks for on ``backend``'s devices, or `DeviceError` in one line.

    ``all``: every accelerator (the CPU as one worker where there is none); ``cuda:0,cuda:1``: those devices;
    ``cpu*N``: N CPU workers with the cores (``cpus``, default this process's) split into N contiguous shares.
    """
    spec = spec.strip().lower()
    available = sorted(cpus if cpus is not None else os.sched_getaffinity(0))
    if spec.startswith("cpu*"):
        count = spec[4:]
        if not count.isdigit() or int(count) < 1:
            raise DeviceError(f"--devices {spec}: the count after cpu* must be a whole number above 0, e.g. cpu*2")
        if int(count) > len(available):
            raise DeviceError(f"--devices {spec}: {len(available)} CPU cores are available, too few for "
                              f"{count} workers with a core each: use cpu*{len(available)} or fewer")
        return [Slot(f"cpu#{i}", "cpu", share) for i, share in enumerate(_split(available, int(count)))]
    if spec == "all":
        accelerators = [d for d in backend.devices() if d.kind != "cpu"]
        if not accelerators:
            return [Slot("cpu", "cpu", available)]
        return [Slot(d.id, d.id) for d in accelerators]
    names = [part.strip() for part in spec.split(",") if part.strip()]
    if not names:
        raise DeviceError("--devices needs all, a list such as cuda:0,cuda:1, or cpu*N")
    devices = [backend.resolve_device(name) for name in names]
    ids = [d.id for d in devices]
    if len(set(ids)) != len(ids):
        raise DeviceError(f"--devices {spec} names a device twice: for several CPU workers use cpu*N")
    cpu_slots = [d for d in devices if d.kind == "cpu"]
    return [Slot(d.id, d.id, available if d.kind == "cpu" and len(cpu_slots) == 1 else None) for d in devices]


def _split(cores: list[int], parts: int) -> list[list[int]]:
    size, extra = divmod(len(cores), parts)
    shares, start = [], 0
    for index in range(parts):
        end = start + size + (1 if index < extra else 0)
        shares.append(cores[start:end])
        start = end
    return shares


def child_arguments(argv: Sequence[str], slot: Slot) -> list[str]:
    """``argv`` (this command's arguments after the program name) for one worker: ``--devices`` replaced by
    the slot's ``--device``, and ``--json`` and the report left to the coordinator, which prints the one result
    and writes the one report once every worker has ended (workers writing it would race on its files)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg in ("--devices", "--device"):
            skip = True
            continue
        if arg.startswith(("--devices=", "--device=")) or arg in ("--json", "--no-report"):
            continue
        out.append(arg)
    return [*out, "--device", slot.device, "--no-report"]


def _environment(slot: Slot) -> dict[str, str]:
    env = {**os.environ, WORKER_ENV: slot.label, "PYTHONUNBUFFERED": "1"}
    if slot.cpus:
        env.update({name: str(len(slot.cpus)) for name in THREAD_VARIABLES})
    return env


def _start(slot: Slot, argv: Sequence[str]) -> subprocess.Popen:
    cpus = slot.cpus

    def pin() -> None:  # before the child's interpreter starts: every thread and worker it makes inherits it
        if cpus:
            os.sched_setaffinity(0, cpus)

    return subprocess.Popen([sys.executable, "-m", "autotune", *child_arguments(argv, slot)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=_environment(slot),
                            preexec_fn=pin)


class _SaidOnce:
    """Error lines already shown, up to the figures in them: the same bad input stops every worker, each
    measuring its own megabytes, and is said once, when the first worker says it."""

    def __init__(self) -> None:
        self._seen: set[str] = set()
        self._lock = threading.Lock()
        self.any = False

    def first(self, line: str) -> bool:
        key = re.sub(r"\d+(\.\d+)?", "#", line)
        with self._lock:
            self.any = True
            if key in self._seen:
                return False
            self._seen.add(key)
            return True


def _relay(slot: Slot, quiet: bool, said: _SaidOnce) -> None:
    """Copy the child's progress to stderr with its label (its result is the coordinator's to print: every
    worker's is the study's one best), and its error line as it comes, once for all workers (`_SaidOnce`)."""
    assert slot.process is not None and slot.process.stderr is not None
    for line in slot.process.stderr:
        if line.startswith(ERROR_PREFIX):
            if said.first(line):
                sys.stderr.write(line)
                sys.stderr.flush()
        elif not quiet:
            sys.stderr.write(f"[{slot.label}] {line}")
            sys.stderr.flush()


ERROR_PREFIX = "autotune: error:"


def _started(slot: Any) -> subprocess.Popen:
    if slot.process is None:
        raise RuntimeError(f"worker {slot.label} was never started")
    return slot.process


def shared_arguments(args: argparse.Namespace, task: Any, slots: Sequence[Slot], argv: Sequence[str],
                     backend: Any) -> list[str]:
    """``argv`` with what every worker must be given alike: the study's name (``args.study`` set to it too) and,
    for N CPU workers, ``--memory-share N`` and, without ``--memory-limit``, ``--memory-whole`` (the available RAM
    read once here: each worker reading it itself would read it at its own moment, after the others took some,
    and their shares would differ). Not ``--memory-limit``: that is the user's bound, part of the ceiling's
    cache key, and a moment's reading there would make every run fit again."""
    out = list(argv)
    if not args.study:  # every worker must name the same study; the default name comes from the task
        from autotune.study import _study_name

        args.study = _study_name(task)
        out += ["--study", args.study]
    cpu_workers = sum(1 for slot in slots if slot.device == "cpu")
    if cpu_workers > 1:  # they share the RAM: each fits its ceiling to, and is capped at, its share of the budget
        out += ["--memory-share", str(cpu_workers)]
        if not args.memory_limit:
            whole = backend.resolve_device("cpu").memory_free
            if not whole:
                raise AutotuneError(f"cannot split the RAM between {cpu_workers} workers: its available amount is "
                                    "unknown; give --memory-limit (the budget of all the workers together)")
            out += ["--memory-whole", str(int(whole))]
    return out


def tune_on_devices(args: argparse.Namespace, task: Any, argv: Sequence[str]) -> int:
    """``autotune tune --devices``: start the workers, wait for them, fail what a dead one left running, and
    print each worker's figures and the study's result. The exit code is the best of the workers'."""
    from autotune.backends import get_backend
    from autotune.checks import check_task_data

    if args.device:
        raise AutotuneError("give --device or --devices, not both")
    backend = get_backend(task.backend)
    slots = plan_slots(args.devices, backend)
    check_task_data(task)  # bad data: one line here, not one per worker
    argv = shared_arguments(args, task, slots, argv, backend)
    quiet = args.quiet or args.json
    said = _SaidOnce()
    relays = []
    previous = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}

    def stop(signum: int, frame: Any) -> None:  # a stop reaches every worker, which fails its running trial
        for slot in slots:
            if slot.process is not None and slot.process.poll() is None:
                slot.process.send_signal(signal.SIGTERM)

    for signum in previous:
        signal.signal(signum, stop)
    try:
        for slot in slots:
            slot.process = _start(slot, argv)
            relay = threading.Thread(target=_relay, args=(slot, quiet, said), daemon=True)
            relay.start()
            relays.append(relay)
        while any(_started(slot).poll() is None for slot in slots):  # each reaped as it ends: never left a zombie
            time.sleep(REAP_SECONDS)  # that the others' orphan checks would take for alive
        codes = {slot.label: _started(slot).returncode for slot in slots}
        for relay in relays:
            relay.join(timeout=10)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return _conclude(args, slots, codes, said)


def _conclude(args: argparse.Namespace, slots: list[Slot], codes: dict[str, int], said: _SaidOnce) -> int:
    from autotune.errors import StorageError
    from autotune.storage import fail_orphaned_trials, open_storage
    from autotune.study import best_trial, load_study, result_from_trial

    if all(code == 2 for code in codes.values()):  # bad input: its lines were said as they came
        if not said.any:
            print(f"{ERROR_PREFIX} every worker stopped on bad input", file=sys.stderr)
        return 2
    try:
        study = load_study(args.study, args.storage)
    except StorageError:
        print(f"autotune: error: no worker created study {args.study}: see the workers' lines above", file=sys.stderr)
        return max(codes.values())
    store = open_storage(args.storage, must_exist=True)
    orphans = fail_orphaned_trials(study, storage=store)  # a killed worker's running trial: failed now, not later
    rows = worker_rows(study, slots, codes)
    trial = best_trial(study, study.user_attrs.get("objective", "convergence"))
    no_winner = not_learning(study) if trial is not None else None  # as a one-process tune says it: no pick
    if no_winner:
        trial = None
    if args.json:
        result = result_from_trial(study, trial).to_dict() if trial is not None else None
        print(json.dumps({"workers": rows, "orphans_failed": orphans, "result": result, "no_winner": no_winner},
                         indent=2))
    else:
        from autotune.cli_study import _print_result
        from autotune.console import number, table
        from autotune.units import format_size

        print(table(["worker", "device", "cores", "pid", "exit", "complete", "pruned", "failed", "ceiling",
                     "memory budget", "samples/s per device"],
                    [[r["worker"], r["device"], r["cores"], r["pid"], r["exit"], r["complete"], r["pruned"],
                      r["failed"], r["ceiling"], format_size(r["budget_bytes"]), number(r["throughput"])]
                     for r in rows]), file=sys.stderr)
        print("samples/s per device: median over the worker's complete trials, measured on its own device (and "
              "cores), not the study's total; memory budget: the worker's share, its ceiling fitted under it",
              file=sys.stderr)
        for row in rows:
            if row["exit"] not in (0, 1):
                print(f"note: worker {row['worker']} ended with {_ending(row['exit'])}; its running trial is "
                      "failed, the other workers went on", file=sys.stderr)
        if trial is not None:
            print()
            _print_result(result_from_trial(study, trial), False)
    if not getattr(args, "no_report", False):
        from autotune.reporting.next_steps import report_after_tune

        report_after_tune(study, args.storage)
    if no_winner:
        print(f"autotune: {no_winner}\nno configuration is reported; the trials are stored in the study",
              file=sys.stderr)
        return 1
    if trial is None:
        return max(codes.values()) or 1
    return 0 if 0 in codes.values() else min(codes.values())


def _ending(code: int) -> str:
    return f"signal {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"


def worker_rows(study: Any, slots: list[Slot], codes: dict[str, int]) -> list[dict[str, Any]]:
    """Per worker: its trials of ``study`` by state, the ceiling it took and its memory budget (its record
    ``worker:LABEL``), and its median throughput (samples/s on its own device, per device)."""
    from autotune.failures import shown_state

    rows = []
    trials = study.get_trials(deepcopy=False)
    for slot in slots:
        mine = [t for t in trials if (t.user_attrs.get("owner") or {}).get("pid") == slot.pid]
        states = [shown_state(t) for t in mine]
        rates = [t.user_attrs.get("measured", {}).get("throughput") for t in mine if shown_state(t) == "COMPLETE"]
        rates = [r for r in rates if r]
        took = study.user_attrs.get(f"worker:{slot.label}") or {}
        rows.append({"worker": slot.label, "device": slot.device, "pid": slot.pid, "exit": codes[slot.label],
                     "ceiling": took.get("batch_size"), "budget_bytes": took.get("budget_bytes"),
                     "ceiling_key": took.get("ceiling"),
                     "cores": ",".join(map(str, slot.cpus)) if slot.cpus else None,
                     "complete": states.count("COMPLETE"), "pruned": states.count("PRUNED"),
                     "failed": states.count("FAIL"), "throughput": statistics.median(rates) if rates else None})
    return rows
