"""The fit's planner on synthetic memory curves, with no process and no framework: OOMs, probes, probes near
the edge that are not the answer and the answer's share of the true largest, per curve, over a range of limits
(a GPU-like budget: probes run under the cap, so a size over it is an OOM; "block pool" is a MindSpore-like CPU
pool under an address-space cap; "jittery" adds a seeded ±4 MiB run-to-run spread, the truth is without it).

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
    # a bend that fades: concave over the growth probes, straight near the edge (a power law over-reads it)
    "concave, then linear": lambda b: 1.2 * GIB + 1.5 * MIB * b + 300 * MIB * (1 - math.exp(-b / 200)),
    # the per-sample cost halves past batch 800 (tests/test_planner.py's bent curve)
    "bent at 800": lambda b: 1.5 * GIB + 3 * MIB * min(b, 800) + 1.5 * MIB * max(0, b - 800),
}
JITTERY = ("linear", "convex", "concave")  # also run with a ±4 MiB spread
BLOCK, FRAMEWORK, BASE, PER_SAMPLE = GIB, 1.2 * GIB, 30 * MIB, 0.78 * MIB  # the block pool (tests/test_planner.py)


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


def fit(module: ModuleType, probe: Callable[[int], Probe], budget: Budget) -> tuple[object, list[Probe]]:
    planner = module.Planner(budget, ceiling=100_000, resident_slope=budget.block is not None)
    probes: list[Probe] = []
    decision = planner.next(probes)
    while isinstance(decision, module.ProbeAt):
        probes.append(probe(decision.batch_size))
        decision = planner.next(probes)
    return decision, probes


def device_case(curve: Callable[[int], float], limit_mib: int,
                jitter: Callable[[], float] | None) -> tuple[Budget, Callable[[int], Probe], int]:
    budget = Budget("device_peak", limit_mib * MIB, 0.0)

    def probe(batch: int) -> Probe:
        need = int(curve(batch) + (jitter() if jitter else 0))
        return Probe(batch, fits=False, oom=True) if need > budget.oom_at \
            else Probe(batch, fits=budget.fits(need), peak_memory_bytes=need)

    return budget, probe, max(b for b in range(1, 20_000) if curve(b) <= budget.effective_bytes)


def block_case(limit_mib: int) -> tuple[Budget, Callable[[int], Probe], int]:
    budget = Budget("address_space", limit_mib * MIB, 0.0, cpu_cap=limit_mib * MIB, block=BLOCK)

    def probe(batch: int) -> Probe:
        touched = BASE + PER_SAMPLE * batch
        blocks = math.ceil(touched / BLOCK)
        space = int(FRAMEWORK + blocks * BLOCK)
        if space > (budget.cpu_cap or 0):
            return Probe(batch, fits=False, oom=True)
        pool = {"blocks": blocks, "touched": int(touched)}
        return Probe(batch, fits=budget.fits(space, pool), peak_memory_bytes=space,
                     resident_peak_bytes=int(300 * MIB + touched), pool=pool)

    low, high = 0, 100_000  # the largest that fits, by bisection (the pool's need grows with the batch)
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if probe(middle).fits else (low, middle)
    return budget, probe, low


Case = Callable[[int], tuple[Budget, Callable[[int], Probe], int]]  # a limit in MiB -> budget, probe, truth


def cases() -> dict[str, Case]:
    found: dict[str, Case] = {
        name: lambda limit, curve=curve: device_case(curve, limit, None) for name, curve in CURVES.items()}
    for name in JITTERY:
        def jittery(limit: int, curve: Callable[[int], float] = CURVES[name]) -> tuple[Budget, Callable[[int], Probe],
                                                                                          int]:
            rng = np.random.default_rng(limit)
            return device_case(curve, limit, lambda: rng.uniform(-4, 4) * MIB)
        found[f"{name}, jittery"] = jittery
    found["block pool"] = block_case
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", help="also run the planner of this commit")
    args = parser.parse_args()
    planners = ([(args.against, planner_at(args.against))] if args.against else []) + [("now", current)]
    print("| curve | planner | fits with > 1 OOM | mean OOMs | mean probes | fits with > 1 near-edge extra | "
          "mean near-edge extra | answers in granule | % of true largest (min / mean) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, case in cases().items():
        for label, module in planners:
            rows = []
            for limit_mib in range(2200 if name != "block pool" else 2306, 14000, 53):
                budget, probe, truth = case(limit_mib)
                answer, probes = fit(module, probe, budget)
                extra = [p for p in probes if p.batch_size >= 0.75 * answer.batch_size
                         and not (p.fits and p.batch_size == answer.batch_size)]
                rows.append((sum(p.oom for p in probes), len(probes), len(extra),
                             truth - answer.granularity < answer.batch_size <= truth, answer.batch_size / truth))
            r = np.array(rows, dtype=float)
            print(f"| {name} | {label} | {int((r[:, 0] > 1).sum())} of {len(r)} | {r[:, 0].mean():.2f} | "
                  f"{r[:, 1].mean():.2f} | {int((r[:, 2] > 1).sum())} | {r[:, 2].mean():.2f} | {r[:, 3].mean():.0%} | "
                  f"{r[:, 4].min():.1%} / {r[:, 4].mean():.1%} |")


if __name__ == "__main__":
    main()
