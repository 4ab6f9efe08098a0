"""A trial's fixed cost: one-step digits trials through `autotune.tune` (worker round trip, sampling, storage
writes), against a plain Optuna TPE loop on the same SQLite file with the same attribute writes.

Run ``.venv/bin/python benchmarks/trial_overhead.py [TRIALS]``; quote it only from a quiet machine (the figure
follows the load more than the code).
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import optuna

import autotune
from autotune import runner

EXAMPLE = str(Path(__file__).resolve().parent.parent / "examples" / "torch_digits.py")


def main(trials: int = 20) -> None:
    round_trips: list[float] = []
    unit = runner.Worker.run

    def timed(self, *args, **kwargs):  # the real Worker.run, with a clock around it
        tick = time.perf_counter()
        try:
            return unit(self, *args, **kwargs)
        finally:
            round_trips.append(time.perf_counter() - tick)

    runner.Worker.run = timed
    storage = f"sqlite:///{Path(tempfile.mkdtemp(prefix='autotune-overhead-')) / 'o.db'}"
    print(f"load {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    result = autotune.tune(EXAMPLE, n_trials=trials, trial_steps=1, storage=storage, study_name="overhead",
                           range_test=False, pruning=False)
    runner.Worker.run = unit
    starts = [t.datetime_start for t in result.study.get_trials()]
    gaps = [(b - a).total_seconds() for a, b in zip(starts[2:], starts[3:])]  # the first two carry start-up
    start_to_start, worker = statistics.median(gaps), statistics.median(round_trips[2:])

    plain = optuna.create_study(storage=storage, study_name="plain")

    def objective(trial: optuna.Trial) -> float:
        trial.suggest_float("x", 0, 1)
        trial.suggest_categorical("o", ["a", "b"])
        trial.set_user_attr("config", {"a": 1})
        trial.set_user_attr("measured", {"b": 2})
        return 0.0

    tick = time.perf_counter()
    plain.optimize(objective, n_trials=trials)
    per_plain = (time.perf_counter() - tick) / trials
    print("| | ms per trial |\n|---|---:|")
    print(f"| autotune, start to start | {start_to_start * 1000:.0f} |")
    print(f"| of which the worker round trip | {worker * 1000:.0f} |")
    print(f"| plain Optuna TPE loop, same storage and writes | {per_plain * 1000:.0f} |")
    print(f"| autotune above the storage's own | {(start_to_start - per_plain) * 1000:.0f} |")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 20)
