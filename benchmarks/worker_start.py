"""What a fresh worker costs to start: `run_in_worker` of a function that does nothing, from a server that has
already imported torch, against a plain ``fork`` of this process and a ``spawn`` context process.

Run ``.venv/bin/python benchmarks/worker_start.py [STARTS]``; quote it only from a quiet machine.
"""

from __future__ import annotations

import multiprocessing
import os
import statistics
import sys
import time

from autotune.runner import Worker, run_in_worker, warm_up_server

PRELOAD = ("torch", "autotune.memory")


def _timed(start: object, count: int) -> list[float]:
    times = []
    for _ in range(count):
        tick = time.perf_counter()
        start()  # type: ignore[operator]
        times.append(time.perf_counter() - tick)
    return times


def _spawned() -> None:
    process = multiprocessing.get_context("spawn").Process(target=os.getpid)
    process.start()
    process.join()


def _worker_round_trip() -> None:
    with Worker(preload=PRELOAD) as worker:
        assert worker.run(os.getpid, {}).ok


def main(count: int = 20) -> None:
    print(f"load {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    warm_up_server(PRELOAD)
    run_in_worker(os.getpid, {}, preload=PRELOAD)  # the server's own start (it imports torch) is not counted
    rows = [
        ("run_in_worker (fresh worker, torch preloaded)",
         _timed(lambda: run_in_worker(os.getpid, {}, preload=PRELOAD), count)),
        ("Worker: start, one unit, close", _timed(_worker_round_trip, count)),
        ("spawn context Process (no preload)", _timed(_spawned, max(3, count // 5))),
    ]
    print("| | median ms | p90 ms |\n|---|---:|---:|")
    for label, times in rows:
        ordered = sorted(times)
        print(f"| {label} | {statistics.median(times) * 1000:.1f} | {ordered[int(0.9 * (len(ordered) - 1))] * 1000:.1f} |")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 20)
