"""Trials per minute of one study with 1, 2 and 4 `autotune tune` processes on SQLite, a journal file and
PostgreSQL, and the storage's share of each process's time in its trials.

Each process is a real ``autotune tune examples/torch_digits.py`` on one study (as many machines on one
storage would be), with short trials (``--trial-steps``, small batches) so that the storage's cost shows. A
warm-up run per storage fits the ceiling once; the measured runs reuse it from the storage's ceiling cache, so
they time trials only. Every storage call a process makes on its main thread is timed by a wrapper around the
storage class's methods (the heartbeat thread's calls are not on a trial's path and are left out). Two shares
are given: of each trial's time (the calls that start between the trial's stored start and end, over that span;
the median over the study's trials), and of each process's time from its first trial's start to its last
trial's end (the calls between trials, sampling and waiting for others' trials included; the median over the
processes). The trials run with ``--confirm 0 --no-report``: only trials are timed, and no process's re-runs
compete with the others' trials.

Run ``.venv/bin/python benchmarks/storage_scaling.py [--workers 1,2,4] [--trials 24] [--trial-steps 5]``.
PostgreSQL needs its binaries (``apt-get install postgresql``); the script starts its own server.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TASK = str(ROOT / "examples" / "torch_digits.py")
SPACE = str(ROOT / "tests" / "spaces" / "small.yaml")


def _timed_storage_calls(record: list[tuple[float, float]]) -> None:
    """Wrap every method of Optuna's storage classes: each outermost call on the main thread is recorded as
    (wall-clock start, seconds)."""
    import optuna

    local = threading.local()

    def wrap(function):
        def timed(*args, **kwargs):
            if threading.current_thread() is not threading.main_thread() or getattr(local, "depth", 0):
                return function(*args, **kwargs)
            local.depth = 1
            start, tick = time.time(), time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                record.append((start, time.perf_counter() - tick))
                local.depth = 0
        return timed

    for cls in (optuna.storages.RDBStorage, optuna.storages.JournalStorage):
        for name, member in list(vars(cls).items()):
            if callable(member) and (not name.startswith("_") or name == "_get_stale_trial_ids"):
                setattr(cls, name, wrap(member))


def worker(out: str, argv: list[str]) -> int:
    """One `autotune tune` process with its storage calls timed; the calls go to ``out`` (JSON)."""
    record: list[tuple[float, float]] = []
    _timed_storage_calls(record)
    from autotune.cli import main

    try:
        return main(argv)
    finally:
        Path(out).write_text(json.dumps({"pid": os.getpid(), "calls": record}))


def _tune_args(url: str, study: str, trials: int, steps: int) -> list[str]:
    return ["tune", TASK, "--storage", url, "--study", study, "--trials", str(trials), "--trial-steps", str(steps),
            "--search-space", SPACE, "--no-range-test", "--no-pruning", "--quiet", "--confirm", "0",
            "--no-report"]


def measure(url: str, study: str, workers: int, trials: int, steps: int, scratch: Path) -> dict[str, Any]:
    """Run ``workers`` processes on one new study; trials per minute and the storage's share of their time."""
    import optuna

    from autotune.failures import finished as counted
    from autotune.storage import open_storage

    outs = [scratch / f"{study}-{i}.json" for i in range(workers)]
    processes = [subprocess.Popen([sys.executable, __file__, "--worker", str(out), "--",
                                   *_tune_args(url, study, trials, steps)], cwd=ROOT,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                 for out in outs]
    errors = [p.communicate()[1] for p in processes]
    if any(p.returncode for p in processes):
        raise SystemExit(f"a worker failed on {study}: {errors}")
    trials_done = optuna.load_study(study_name=study, storage=open_storage(url)).get_trials(deepcopy=False)
    finished = counted(trials_done)  # complete or pruned: a failed trial (a surplus one, stored unrun) ran nothing
    first = min(t.datetime_start for t in finished)
    last = max(t.datetime_complete for t in finished)
    minutes = (last - first).total_seconds() / 60
    shares, per_trial, trial_shares = [], [], []
    for out in outs:
        data = json.loads(out.read_text())
        mine = [t for t in finished if (t.user_attrs.get("owner") or {}).get("pid") == data["pid"]]
        if not mine:
            continue
        start = min(t.datetime_start for t in mine).timestamp()
        end = max(t.datetime_complete for t in mine).timestamp()
        in_storage = sum(seconds for at, seconds in data["calls"] if start <= at <= end)
        shares.append(in_storage / max(end - start, 1e-9))
        per_trial.append(in_storage / len(mine))
        for trial in mine:
            begun, ended = trial.datetime_start.timestamp(), trial.datetime_complete.timestamp()
            own = sum(seconds for at, seconds in data["calls"] if begun <= at <= ended)
            trial_shares.append(own / max(ended - begun, 1e-9))
    return {"workers": workers, "trials": len(finished), "trials_per_minute": len(finished) / minutes,
            "storage_share": statistics.median(shares), "storage_ms_per_trial": statistics.median(per_trial) * 1000,
            "trial_share": statistics.median(trial_shares)}


def storages(scratch: Path) -> list[tuple[str, str, Any]]:
    """(label, URL, server or None) of each storage to measure; PostgreSQL where its binaries are installed."""
    found: list[tuple[str, str, Any]] = [("SQLite", f"sqlite:///{scratch / 'bench.db'}", None),
                                         ("journal file", f"journal:{scratch / 'bench.log'}", None)]
    sys.path.insert(0, str(ROOT))
    from tests.postgres_server import PostgresServer, postgres_bin

    bin_dir = postgres_bin()
    if bin_dir is None:
        print("PostgreSQL is not installed: its rows are left out (apt-get install postgresql)")
        return found
    server = PostgresServer(bin_dir)
    server.start()
    found.append(("PostgreSQL", server.url, server))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--trials", type=int, default=24, help="finished trials per study")
    parser.add_argument("--trial-steps", type=int, default=5)
    args = parser.parse_args()
    counts = [int(n) for n in args.workers.split(",")]
    scratch = Path(tempfile.mkdtemp(prefix="autotune-storage-"))
    print(f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, load {os.getloadavg()[0]:.1f} "
          f"on {os.cpu_count()} CPUs; {args.trials} trials of {args.trial_steps} steps per study")
    rows = []
    found = storages(scratch)
    try:
        for label, url, _ in found:
            subprocess.run([sys.executable, "-m", "autotune", *_tune_args(url, "warm-up", 1, args.trial_steps)],
                           cwd=ROOT, check=True, capture_output=True)  # fits the ceiling once, into the cache
            base = None
            for count in counts:
                row = measure(url, f"w{count}", count, args.trials, args.trial_steps, scratch)
                base = base or row["trials_per_minute"]
                rows.append((label, row, row["trials_per_minute"] / base))
                print(f"  {label}, {count} worker(s): {row['trials_per_minute']:.0f} trials/min", flush=True)
    finally:  # the server started for the run goes, whichever storage failed
        for _, _, server in found:
            if server is not None:
                server.stop()
    print(f"load {os.getloadavg()[0]:.1f} at the end\n")
    print("| storage | workers | trials | trials / min | × 1 worker | storage ms / trial | storage share of a trial "
          "| storage share of a process's trial time |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for label, row, ratio in rows:
        print(f"| {label} | {row['workers']} | {row['trials']} | {row['trials_per_minute']:.0f} | {ratio:.2f} | "
              f"{row['storage_ms_per_trial']:.0f} | {row['trial_share'] * 100:.1f} % | "
              f"{row['storage_share'] * 100:.1f} % |")


if __name__ == "__main__":
    if len(sys.argv) > 3 and sys.argv[1] == "--worker" and sys.argv[3] == "--":
        sys.exit(worker(sys.argv[2], sys.argv[4:]))
    main()
