"""The fit's planner on synthetic memory curves, with no process and no framework: OOMs, probes and probes near
the edge that are not the answer, per curve, over a range of limits (a GPU-like budget: probes run under the
cap, so a size over it is an OOM).

    .venv/bin/python benchmarks/planner_curves.py [--against COMMIT]

``--against`` also runs the planner of an earlier commit (`git show COMMIT:autotune/fitting/planner.py`).
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import subprocess
import sys
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from autotune.fitting import Budget, Probe  # noqa: E402
from autotune.fitting import planner as current  # noqa: E402

MIB, GIB = 1024**2, 1024**3
CURVES: dict[str, Callable[[int], float]] = {
    "linear": lambda b: 1.5 * GIB + 3 * MIB * b,
    "32 MiB chunks": lambda b: math.ceil((1.5 * GIB + 3 * MIB * b) / (32 * MIB)) * 32 * MIB,
    "convex": lambda b: GIB + 2 * MIB * b + 900 * b * b,
    "concave": lambda b: GIB + 200 * MIB * math.sqrt(b),
}


def planner_at(commit: str) -> ModuleType:
    source = subprocess.run(["git", "show", f"{commit}:autotune/fitting/planner.py"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "planner_then.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("planner_then", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["planner_then"] = module
    spec.loader.exec_module(module)
    return module


def fit(module: ModuleType, curve: Callable[[int], float], budget: Budget) -> tuple[object, list[Probe]]:
    planner = module.Planner(budget, ceiling=100_000, resident_slope=False)
    probes: list[Probe] = []
    decision = planner.next(probes)
    while isinstance(decision, module.ProbeAt):
        need = int(curve(decision.batch_size))
        probes.append(Probe(decision.batch_size, fits=False, oom=True) if need > budget.oom_at
                      else Probe(decision.batch_size, fits=budget.fits(need), peak_memory_bytes=need))
        decision = planner.next(probes)
    return decision, probes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", help="also run the planner of this commit")
    args = parser.parse_args()
    planners = ([(args.against, planner_at(args.against))] if args.against else []) + [("now", current)]
    print("| curve | planner | fits with > 1 OOM | mean OOMs | mean probes | mean near-edge extra | answers in granule |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for name, curve in CURVES.items():
        for label, module in planners:
            rows = []
            for limit_mib in range(2200, 14000, 53):
                budget = Budget("device_peak", limit_mib * MIB, 0.0)
                answer, probes = fit(module, curve, budget)
                truth = max(b for b in range(1, 20_000) if curve(b) <= budget.effective_bytes)
                extra = [p for p in probes if p.batch_size >= 0.75 * answer.batch_size
                         and not (p.fits and p.batch_size == answer.batch_size)]
                rows.append((sum(p.oom for p in probes), len(probes), len(extra),
                             truth - answer.granularity < answer.batch_size <= truth))
            r = np.array(rows, dtype=float)
            print(f"| {name} | {label} | {int((r[:, 0] > 1).sum())} of {len(r)} | {r[:, 0].mean():.2f} | "
                  f"{r[:, 1].mean():.2f} | {r[:, 2].mean():.2f} | {r[:, 3].mean():.0%} |")


if __name__ == "__main__":
    main()
