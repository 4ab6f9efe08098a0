"""Search strategies side by side on one task and one per-trial budget: autotune, plain Optuna TPE, random, grid.

Every method trains the same task (``examples/torch_digits.py`` by default) with the same training code
(`autotune.trial.run_trial`), for the same per-trial budget (``--trial-time`` seconds of training), so only the
search differs:

* ``autotune``        `autotune.tune` with its defaults: batch-ceiling fit, learning-rate range test, lr scaled
                      with the batch size, multivariate TPE + Hyperband pruning on 8 reports, worker processes,
                      a fresh SQLite storage in a temporary directory.
* ``autotune-half``   the same, with ``timeout`` = half of the plain Optuna loop's measured wall time (same seed).
                      ``tune``'s timeout bounds its trial loop only; the wall time reported is the whole call.
* ``optuna-tpe``      a hand-written loop: ``optuna.create_study()`` (in memory) with ``TPESampler(seed)``, the same
                      space (batch sizes from autotune's candidate list at the dataset ceiling, the same optimizers
                      and parameter ranges, lr log-uniform over the space's [low, high] used as is), no lr scaling,
                      no range test, no pruning; each trial calls ``run_trial(task, config, "cpu", seconds=T)``
                      in this process. A diverging trial is reported as pruned (worst), as autotune does.
* ``random``          the same loop with ``RandomSampler(seed)``.
* ``grid``            batch sizes × optimizers × ``--grid-lrs`` log-spaced lrs over [low, high], each optimizer at
                      its default parameters; run once. ``--grid auto`` picks the finest grid whose estimated time
                      (per-trial time of the plain loop × configurations) fits ``--grid-budget`` seconds, and says
                      so when it had to coarsen it (also to keep the whole run within ``--total-budget``).

``--trial-steps S`` trains every trial (and every re-score) for S steps instead: a budget that machine load does not
change, for quality comparisons on a busy machine (wall times are still measured, and still load-dependent).

The chosen configuration of every run is then re-scored from scratch: ``run_trial`` at the same budget with
``--rescore-seeds`` fresh model seeds (not the tuning seed), interleaved across methods so that machine load
falls on all of them alike; the table shows the median (and the range) of those losses.

Goals checked (and printed): (1) ``autotune-half`` re-scores no worse than ``optuna-tpe`` (within noise: the
larger of the two configurations' re-score ranges) in at most half its wall time; (2) an autotune run comes
within 10 % of the grid's best re-scored loss in under a third of the grid's wall time.

    .venv/bin/python benchmarks/search.py                      # full run (~15-25 min on 2 cores)
    .venv/bin/python benchmarks/search.py --quick              # smoke run (~2 min)
    .venv/bin/python benchmarks/search.py --trial-time 1.0 --trials 30 --repeats 2 --seed 0

``--backend tensorflow`` runs another comparison on ``examples/tensorflow_digits.py`` at a STEP budget
(``--trial-steps``, default 60; 12 trials, 1 tuning seed unless ``--repeats``): ``autotune.tune(trial_steps=N)`` against
Keras Tuner (``--keras-tuner bayesian``: ``BayesianOptimization``, the default, or ``random``: ``RandomSearch``) over
the same batch sizes, optimizers (at autotune's default parameters) and log-uniform lr range, each trial training the
task's model for N (+2, like run_trial's warm-up) steps with ``model.fit(steps_per_epoch=N + 2, epochs=1)``; both
choices are re-scored with ``run_trial(..., steps=N)`` for ``--rescore-seeds`` seeds. About 1 min per tuning seed
on 2 loaded cores; ``--quick``: 4 trials of 30 steps, 2 re-score seeds. Its JSON goes to
``benchmarks/.cache/search_results_tensorflow.json`` by default.

    .venv/bin/python benchmarks/search.py --backend tensorflow [--repeats 3] [--keras-tuner random] [--quick]

Scratch (Optuna SQLite files, Keras Tuner's directory) goes to a temporary directory that is removed at the end; the raw results are
written as JSON to ``benchmarks/.cache/search_results.json`` (``--json``) for later analysis.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import optuna  # noqa: E402

import autotune  # noqa: E402
from autotune.backends import get_backend  # noqa: E402
from autotune.errors import TrialError  # noqa: E402
from autotune.optimizers import OPTIMIZERS  # noqa: E402
from autotune.space import load_space  # noqa: E402
from autotune.trial import run_trial  # noqa: E402

DEFAULT_TASK = "examples/torch_digits.py"
CACHE = ROOT / "benchmarks" / ".cache" / "search_results.json"
WORST = float("inf")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def load_average() -> str:
    try:
        one, five, fifteen = os.getloadavg()
        return f"{one:.2f} / {five:.2f} / {fifteen:.2f}"
    except OSError:
        return "?"


def config_key(config: dict[str, Any]) -> str:
    params = ",".join(f"{k}={_short(v)}" for k, v in sorted(config.get("optimizer_params", {}).items()))
    return f"b{config['batch_size']} {config['optimizer']} lr={config['lr']:.3g}" + (f" ({params})" if params else "")


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def clean_config(config: dict[str, Any]) -> dict[str, Any]:
    return {"batch_size": int(config["batch_size"]), "optimizer": config["optimizer"], "lr": float(config["lr"]),
            "optimizer_params": dict(config.get("optimizer_params", {}))}


# --------------------------------------------------------------------------------------------------------------
# The space, as the plain loops and the grid see it
# --------------------------------------------------------------------------------------------------------------

class PlainSpace:
    """autotune's search space (same batch sizes, optimizers, parameter ranges, lr range) without its extras."""

    def __init__(self, task: autotune.Task) -> None:
        backend = get_backend(task.backend)
        self.space = load_space(backend.name, backend.optimizer_names)
        n_train, _ = backend.data_size(task.load_data())
        self.n_train = n_train
        # autotune's ceiling on the CPU is the memory fit capped at the training-set size; for a small task the
        # training set is the limit (checked against autotune's fitted ceiling after its runs)
        self.batch_sizes = self.space.batch_sizes(n_train)
        self.optimizers = sorted(self.space.optimizers)

    def suggest(self, trial: optuna.Trial) -> dict[str, Any]:
        space = self.space
        batch_size = trial.suggest_categorical("batch_size", self.batch_sizes)
        name = trial.suggest_categorical("optimizer", self.optimizers)
        lr = trial.suggest_float(f"{name}.lr", space.lr_low, space.lr_high, log=space.lr_log)
        params = space.suggest_optimizer_params(trial, name)
        return {"batch_size": batch_size, "optimizer": name, "lr": lr, "optimizer_params": params}

    def default_params(self, name: str) -> dict[str, Any]:
        return {param: OPTIMIZERS[name][param] for param in self.space.optimizers[name]}

    def grid(self, level: str, n_lrs: int) -> tuple[list[dict[str, Any]], str]:
        lrs = [float(x) for x in np.geomspace(self.space.lr_low, self.space.lr_high, n_lrs)]
        batches, optimizers = list(self.batch_sizes), list(self.optimizers)
        if level in ("coarse", "coarser", "tiny"):
            batches = batches[::2] if len(batches) > 2 else batches
        if level in ("coarser", "tiny"):
            keep = [o for o in ("sgd", "momentum", "adam", "adamw", "rmsprop") if o in optimizers]
            optimizers = keep or optimizers
        if level == "tiny":
            batches, optimizers = batches[:2], optimizers[:3]
            lrs = [float(x) for x in np.geomspace(self.space.lr_low, self.space.lr_high, 3)][1:]
        configs = [{"batch_size": b, "optimizer": o, "lr": lr, "optimizer_params": self.default_params(o)}
                   for b in batches for o in optimizers for lr in lrs]
        about = (f"{level}: batch {batches} × {len(optimizers)} optimizers ({', '.join(optimizers)}) × "
                 f"{len(lrs)} lrs ({', '.join(f'{x:.2g}' for x in lrs)}) = {len(configs)} configurations")
        return configs, about


# --------------------------------------------------------------------------------------------------------------
# One training run, in this process
# --------------------------------------------------------------------------------------------------------------

def train(task: autotune.Task, config: dict[str, Any], budget: dict[str, Any], seed: int) -> dict[str, Any]:
    """run_trial in this process; a diverged (or otherwise failed) run is a loss of +inf with its reason."""
    tick = time.perf_counter()
    try:
        value = run_trial(task, clean_config(config), "cpu", seconds=budget["seconds"], steps=budget["steps"], seed=seed)
        value.pop("history", None)
        return {"val_loss": float(value["val_loss"]), "ok": True, "wall": time.perf_counter() - tick,
                "train_seconds": value.get("train_seconds"), "warmup_seconds": value.get("warmup_seconds"),
                "steps": value.get("steps")}
    except TrialError as exc:
        return {"val_loss": WORST, "ok": False, "reason": f"{exc.kind}: {exc.message}"[:200],
                "wall": time.perf_counter() - tick}


# --------------------------------------------------------------------------------------------------------------
# The methods
# --------------------------------------------------------------------------------------------------------------

def plain_loop(task: autotune.Task, space: PlainSpace, sampler: optuna.samplers.BaseSampler, n_trials: int,
               budget: dict[str, Any], seed: int, label: str) -> dict[str, Any]:
    trials: list[dict[str, Any]] = []

    def objective(trial: optuna.Trial) -> float:
        config = space.suggest(trial)
        outcome = train(task, config, budget, seed)
        trials.append({"number": trial.number, "config": config, **outcome})
        if not outcome["ok"]:
            raise optuna.TrialPruned(outcome["reason"])
        return outcome["val_loss"]

    started = time.perf_counter()
    study = optuna.create_study(direction="minimize", sampler=sampler)
    study.optimize(objective, n_trials=n_trials)
    wall = time.perf_counter() - started
    best = study.best_trial
    chosen = next(t["config"] for t in trials if t["number"] == best.number)
    diverged = sum(1 for t in trials if not t["ok"])
    log(f"{label}: {len(trials)} trials ({diverged} diverged) in {wall:.1f} s, best {best.value:.4f} "
        f"[{config_key(chosen)}]")
    return {"wall": wall, "trials": len(trials), "complete": len(trials) - diverged, "pruned": 0,
            "diverged": diverged, "failed": 0, "tuning_loss": best.value, "config": clean_config(chosen),
            "per_trial": trials}


def grid_search(task: autotune.Task, configs: list[dict[str, Any]], budget: dict[str, Any], seed: int) -> dict[str, Any]:
    started = time.perf_counter()
    runs = []
    for index, config in enumerate(configs):
        outcome = train(task, config, budget, seed)
        runs.append({"config": config, **outcome})
        if (index + 1) % 20 == 0 or index + 1 == len(configs):
            done = time.perf_counter() - started
            best = min(runs, key=lambda r: r["val_loss"])
            log(f"grid: {index + 1}/{len(configs)} in {done:.0f} s (eta {done / (index + 1) * (len(configs) - index - 1):.0f} s), "
                f"best {best['val_loss']:.4f} [{config_key(best['config'])}]")
    wall = time.perf_counter() - started
    best = min(runs, key=lambda r: r["val_loss"])
    diverged = sum(1 for r in runs if not r["ok"])
    return {"wall": wall, "trials": len(runs), "complete": len(runs) - diverged, "pruned": 0, "diverged": diverged,
            "failed": 0, "tuning_loss": best["val_loss"], "config": clean_config(best["config"]), "per_trial": runs}


def autotune_run(task_ref: str, n_trials: int, budget: dict[str, Any], seed: int, storage_dir: Path, label: str,
                 timeout: float | None) -> dict[str, Any]:
    events: list[tuple[float, dict[str, Any]]] = []
    started = time.perf_counter()

    def progress(event: dict[str, Any]) -> None:
        events.append((time.perf_counter() - started, dict(event)))

    storage = f"sqlite:///{storage_dir / (label + f'-{seed}.db')}"
    result = autotune.tune(task_ref, n_trials=n_trials, trial_time=budget["seconds"], trial_steps=budget["steps"],
                           timeout=timeout, storage=storage,
                           study_name=f"{label}-{seed}", seed=seed, progress=progress)
    wall = time.perf_counter() - started
    study = result.study
    analysis = analyse_study(study, events, wall)
    config = {"batch_size": result.batch_size, "optimizer": result.optimizer, "lr": result.lr,
              "optimizer_params": result.optimizer_params}
    counts = analysis["counts"]
    log(f"{label}: {counts['COMPLETE'] + counts['PRUNED']} trials ({counts['PRUNED']} pruned, {counts['FAIL']} failed) "
        f"in {wall:.1f} s, best {result.val_loss:.4f} [{config_key(config)}]; "
        + ", ".join(f"{k} {v:.1f} s" for k, v in analysis["phases"].items()))
    return {"wall": wall, "trials": counts["COMPLETE"] + counts["PRUNED"], "complete": counts["COMPLETE"],
            "pruned": counts["PRUNED"], "diverged": analysis["diverged"], "failed": counts["FAIL"],
            "tuning_loss": result.val_loss, "config": clean_config(config), "timeout": timeout,
            "lr_reference": result.lr_reference, "analysis": analysis}


def analyse_study(study: optuna.Study, events: list[tuple[float, dict[str, Any]]], wall: float) -> dict[str, Any]:
    """Where an autotune run's time went: set-up, ceiling fit, range test, trials (and per trial), pruning."""
    def first(kind: str) -> float | None:
        return next((t for t, e in events if e.get("event") == kind), None)

    trials = study.get_trials(deepcopy=False)
    counts = {state: sum(1 for t in trials if t.state.name == state) for state in ("COMPLETE", "PRUNED", "FAIL")}
    t_fit, t_ceiling, t_range = first("fit"), first("ceiling"), first("range_test")
    trial_events = [t for t, e in events if e.get("event") == "trial"]
    # first trial's start relative to the call: its end (event time) minus its own duration
    durations = [(t.datetime_complete - t.datetime_start).total_seconds() for t in trials
                 if t.datetime_start and t.datetime_complete]
    first_trial_start = (trial_events[0] - durations[0]) if trial_events and durations else wall
    last_trial_end = trial_events[-1] if trial_events else first_trial_start
    phases = {
        "setup": (t_fit if t_fit is not None else (t_ceiling or 0.0)),
        "ceiling_fit": (t_ceiling - t_fit) if (t_fit is not None and t_ceiling is not None) else 0.0,
        "range_test": (first_trial_start - t_range) if t_range is not None else 0.0,
        "trials": last_trial_end - first_trial_start,
        "after": wall - last_trial_end,
    }
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    pruned = [t for t in trials if t.state.name == "PRUNED"]
    per_trial = []
    for t in trials:
        measured = t.user_attrs.get("measured", {})
        per_trial.append({
            "number": t.number, "state": t.state.name, "config": t.user_attrs.get("config"),
            "value": t.value if t.state.name == "COMPLETE" else None,
            "wall": (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete else None,
            "reports": len(t.intermediate_values), "failure": t.user_attrs.get("failure"),
            "intermediate": {int(k): v for k, v in sorted(t.intermediate_values.items())},
            "train_seconds": measured.get("train_seconds"), "warmup_seconds": measured.get("warmup_seconds"),
            "steps": measured.get("steps"),
        })
    overhead = [p["wall"] - (p["train_seconds"] or 0)  # train_seconds includes the warm-up steps
                for p in per_trial if p["state"] == "COMPLETE" and p["wall"] is not None]
    fit_messages = [e.get("message", "") for _, e in events if e.get("event") == "fit"]
    info = study.user_attrs
    ceiling = next((v for k, v in info.items() if k.startswith("ceiling:")), {})
    space = info.get("search_space", {})
    return {
        "phases": phases, "counts": counts,
        "diverged": sum(1 for t in trials if str(t.user_attrs.get("failure", "")).startswith("diverged")),
        "hyperband_pruned": sum(1 for t in pruned if str(t.user_attrs.get("failure", "")).startswith("pruned")),
        "pruned_at_report": sorted(len(t.intermediate_values) for t in pruned),
        "complete_wall_mean": statistics.mean(p["wall"] for p in per_trial if p["state"] == "COMPLETE" and p["wall"])
        if complete else None,
        "pruned_wall_mean": statistics.mean(p["wall"] for p in per_trial if p["state"] == "PRUNED" and p["wall"])
        if pruned else None,
        "complete_overhead_mean": statistics.mean(overhead) if overhead else None,
        "ceiling": ceiling.get("batch_size"), "ceiling_limited_by": ceiling.get("limited_by"),
        "ceiling_probes": sum(1 for m in fit_messages if m.startswith("probe batch")),
        "lr_ranges": space.get("lr_ranges", {}), "range_tests": space.get("range_tests", {}),
        "per_trial": per_trial,
    }


# --------------------------------------------------------------------------------------------------------------
# Re-scoring and the report
# --------------------------------------------------------------------------------------------------------------

def rescore(task: autotune.Task, runs: list[dict[str, Any]], budget: dict[str, Any], seeds: list[int]) -> None:
    """Train every run's chosen configuration again, fresh, for each seed; interleaved across configurations."""
    unique: dict[str, dict[str, Any]] = {}
    for run in runs:
        unique.setdefault(config_key(run["config"]), run["config"])
    scores: dict[str, list[dict[str, Any]]] = {key: [] for key in unique}
    log(f"re-scoring {len(unique)} configurations × {len(seeds)} seeds {seeds} at {describe(budget)} each")
    for seed in seeds:
        for key, config in unique.items():
            scores[key].append({"seed": seed, **train(task, config, budget, seed)})
    for run in runs:
        found = scores[config_key(run["config"])]
        losses = [s["val_loss"] for s in found]
        run["rescore"] = found
        run["rescore_losses"] = losses
        run["rescore_median"] = statistics.median(losses)
        run["rescore_range"] = (max(losses) - min(losses)) if all(map(math.isfinite, losses)) else WORST


def describe(budget: dict[str, Any]) -> str:
    return f"{budget['steps']} steps" if budget["steps"] else f"{budget['seconds']:g} s"


def fmt(value: float | None, digits: int = 4) -> str:
    if value is None:
        return "—"
    if not math.isfinite(value):
        return "diverged"
    return f"{value:.{digits}f}"


def ratio(a: float, b: float | None) -> str:
    return f"{a / b:.2f}" if b else "—"


def median_of(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def report(runs: list[dict[str, Any]], grid: dict[str, Any] | None, meta: dict[str, Any]) -> str:
    lines: list[str] = []
    plain_by_seed = {r["seed"]: r for r in runs if r["method"] == "optuna-tpe"}
    plain_wall = median_of([r["wall"] for r in plain_by_seed.values()])
    grid_wall = grid["wall"] if grid else None
    grid_loss = grid["rescore_median"] if grid else None
    lines.append(f"### Runs (task {meta['task']}, {meta['budget_text']} per trial, {meta['trials']} trials, "
                 f"re-scored with seeds {meta['rescore_seeds']}, median [min–max])")
    lines.append("")
    lines.append("| method | seed | wall (s) | trials (pruned / diverged) | chosen config | tuning loss | "
                 "re-scored loss | time / optuna-tpe | time / grid | loss / optuna-tpe | loss / grid |")
    lines.append("|---|---|---:|---|---|---:|---:|---:|---:|---:|---:|")
    for run in runs + ([grid] if grid else []):
        plain = plain_by_seed.get(run["seed"])
        losses = run["rescore_losses"]
        spread = f"{fmt(run['rescore_median'])} [{fmt(min(losses))}–{fmt(max(losses))}]"
        trials = f"{run['trials']} ({run['pruned']} / {run['diverged']})" + (f", {run['failed']} failed" if run["failed"] else "")
        lines.append(
            f"| {run['method']} | {run['seed'] if run['method'] != 'grid' else '—'} | {run['wall']:.1f} | {trials} | "
            f"{config_key(run['config'])} | {fmt(run['tuning_loss'])} | {spread} | "
            f"{ratio(run['wall'], plain['wall']) if plain else '—'} | {ratio(run['wall'], grid_wall)} | "
            f"{ratio(run['rescore_median'], plain['rescore_median']) if plain else '—'} | "
            f"{ratio(run['rescore_median'], grid_loss)} |")
    methods = [m for m in ("autotune", "autotune-half", "optuna-tpe", "random") if any(r["method"] == m for r in runs)]
    if len(plain_by_seed) > 1:
        lines.append("")
        lines.append(f"### Summary: median over the {len(plain_by_seed)} tuning seeds")
        lines.append("")
        lines.append("| method | wall (s) | trials | re-scored loss | time / optuna-tpe | time / grid | loss / grid |")
        lines.append("|---|---:|---:|---:|---:|---:|---:|")
        for method in methods:
            mine = [r for r in runs if r["method"] == method]
            wall = median_of([r["wall"] for r in mine])
            loss = median_of([r["rescore_median"] for r in mine])
            lines.append(f"| {method} | {wall:.1f} | {median_of([r['trials'] for r in mine]):g} | {fmt(loss)} | "
                         f"{ratio(wall, plain_wall)} | {ratio(wall, grid_wall)} | {ratio(loss, grid_loss)} |")
        if grid:
            lines.append(f"| grid | {grid['wall']:.1f} | {grid['trials']} | {fmt(grid_loss)} | "
                         f"{ratio(grid['wall'], plain_wall)} | 1.00 | 1.00 |")

    lines.append("")
    lines.append("### Goals")
    lines.append("")
    for run in [r for r in runs if r["method"] == "autotune-half"]:
        plain = plain_by_seed.get(run["seed"])
        if not plain:
            continue
        tolerance = max(run["rescore_range"], plain["rescore_range"])
        quality = run["rescore_median"] <= plain["rescore_median"] + tolerance
        strict = run["rescore_median"] <= plain["rescore_median"]
        fast = run["wall"] <= 0.5 * plain["wall"]
        lines.append(
            f"- seed {run['seed']}: autotune-half vs optuna-tpe: time {run['wall']:.1f} s vs {plain['wall']:.1f} s "
            f"(ratio {run['wall'] / plain['wall']:.2f}, goal ≤ 0.50: {'met' if fast else 'NOT met'}); loss "
            f"{fmt(run['rescore_median'])} vs {fmt(plain['rescore_median'])} (noise ± {fmt(tolerance)}: "
            f"{'no worse' if strict else ('within noise' if quality else 'WORSE')}) → goal 1 "
            f"{'MET' if fast and quality else 'NOT MET'}")
    if grid:
        for run in [r for r in runs if r["method"].startswith("autotune")]:
            close = run["rescore_median"] <= 1.10 * grid_loss
            fast = run["wall"] < grid_wall / 3
            lines.append(
                f"- seed {run['seed']}: {run['method']} vs grid: time ratio {run['wall'] / grid_wall:.3f} (goal < 0.333: "
                f"{'met' if fast else 'NOT met'}); loss {fmt(run['rescore_median'])} vs grid {fmt(grid_loss)} "
                f"(ratio {run['rescore_median'] / grid_loss:.3f}, goal ≤ 1.10: {'met' if close else 'NOT met'}) → goal 2 "
                f"{'MET' if fast and close else 'NOT MET'}")

    lines.append("")
    lines.append("### Where autotune's time went")
    lines.append("")
    lines.append("| run | wall (s) | set-up | ceiling fit (probes) | range test | trials | complete / pruned (hyperband, "
                 "diverged) | mean s per complete trial (over train+warm-up) | mean s per pruned trial | pruned at report |")
    lines.append("|---|---:|---:|---:|---:|---:|---|---:|---:|---|")
    for run in [r for r in runs if r["method"].startswith("autotune")]:
        a, p = run["analysis"], run["analysis"]["phases"]
        lines.append(
            f"| {run['method']} s{run['seed']} | {run['wall']:.1f} | {p['setup']:.1f} | {p['ceiling_fit']:.1f} "
            f"({a['ceiling_probes']}) | {p['range_test']:.1f} | {p['trials']:.1f} | {a['counts']['COMPLETE']} / "
            f"{a['counts']['PRUNED']} ({a['hyperband_pruned']}, {a['diverged']}) | {fmt(a['complete_wall_mean'], 2)} "
            f"({fmt(a['complete_overhead_mean'], 2)}) | {fmt(a['pruned_wall_mean'], 2)} | {a['pruned_at_report']} |")
    plain_trials = [t for r in runs if r["method"] in ("optuna-tpe", "random") for t in r["per_trial"] if t["ok"]]
    if plain_trials:
        walls = [t["wall"] for t in plain_trials]
        over = [t["wall"] - (t["train_seconds"] or 0) for t in plain_trials]  # warm-up is inside train_seconds
        lines.append(f"| in-process loops (optuna-tpe, random) | | | | | | {len(plain_trials)} complete | "
                     f"{statistics.mean(walls):.2f} ({statistics.mean(over):.2f}) | | |")
    autotune_runs = [r for r in runs if r["method"].startswith("autotune")]
    if autotune_runs:
        a = autotune_runs[0]["analysis"]
        lines.append("")
        lines.append(f"autotune ceiling: {a['ceiling']} (limited by {a['ceiling_limited_by']}); the plain loops and the "
                     f"grid use batch sizes {meta['batch_sizes']} (dataset ceiling {meta['n_train']}).")
        lines.append("autotune's narrowed lr ranges at batch "
                     f"{meta['reference_batch']} (range test best / divergence): " + "; ".join(
                         f"{name} [{lo:.2g}, {hi:.2g}] ({_lr_pair(a['range_tests'].get(name))})"
                         for name, (lo, hi) in sorted(a["lr_ranges"].items())))
    lines.append("")
    lines.append(f"Grid: {meta['grid_about']}.")
    lines.append(f"Load average (1/5/15 min) at start: {meta['load_start']}; at end: {meta['load_end']}; "
                 f"{meta['cpus']} CPUs. Total benchmark time {meta['total_seconds']:.0f} s.")
    return "\n".join(lines)


def _lr_pair(test: dict[str, Any] | None) -> str:
    if not test:
        return "no result"
    best, edge = test.get("best_lr"), test.get("diverge_lr")
    return f"{best:.2g} / {edge:.2g}" if edge else f"{best:.2g} / none"


# --------------------------------------------------------------------------------------------------------------
# --backend tensorflow: autotune.tune vs Keras Tuner on examples/tensorflow_digits.py
# --------------------------------------------------------------------------------------------------------------

TF_TASK = "examples/tensorflow_digits.py"
WARMUP_STEPS = 2  # autotune.training.train_for_budget's warm-up steps: they train the model too


def keras_tuner_run(task: autotune.Task, space: PlainSpace, kind: str, n_trials: int, steps: int, seed: int,
                    scratch: Path) -> dict[str, Any]:
    """Keras Tuner over batch size × optimizer (Keras defaults, as autotune's neutral defaults) × log-uniform lr.

    Each trial builds the task's model, compiles it with the chosen optimizer and trains ``steps`` (+ the
    warm-up steps that ``run_trial`` also takes) optimizer steps with ``model.fit(steps_per_epoch=…, epochs=1)``
    on a shuffled, repeated ``tf.data`` pipeline; the objective is the validation loss after that epoch.
    """
    import keras_tuner
    import tensorflow as tf
    from autotune.backends.tensorflow import _OPTIMIZERS as TF_OPTIMIZERS, _named_loss, keras

    data = task.load_data()  # autotune's validated ArrayData
    x_train, y_train, x_val, y_val = data.x_train, data.y_train, data.x_val, data.y_val
    x_train, x_val = np.asarray(x_train, np.float32), np.asarray(x_val, np.float32)
    y_train, y_val = np.asarray(y_train, np.int64), np.asarray(y_val, np.int64)
    lr_low, lr_high = space.space.lr_low, space.space.lr_high
    optimizers = space.optimizers
    trials: list[dict[str, Any]] = []

    def config_of(hp: Any) -> dict[str, Any]:
        name = hp.get("optimizer")
        return {"batch_size": int(hp.get("batch_size")), "optimizer": name, "lr": float(hp.get("lr")),
                "optimizer_params": space.default_params(name)}

    class DigitsHyperModel(keras_tuner.HyperModel):
        def build(self, hp: Any) -> Any:
            hp.Choice("batch_size", space.batch_sizes)
            name = hp.Choice("optimizer", optimizers)
            hp.Float("lr", lr_low, lr_high, sampling="log")
            keras.utils.set_random_seed(seed)
            model = task.model()
            config = config_of(hp)
            spec = get_backend("tensorflow").validate_optimizer(
                {"name": name, "lr": config["lr"], **config["optimizer_params"]})  # fills autotune's defaults
            optimizer = TF_OPTIMIZERS[name](spec)
            model.compile(optimizer=optimizer, loss=_named_loss(task.loss))
            return model

        def fit(self, hp: Any, model: Any, *args: Any, callbacks: Any = None, **kwargs: Any) -> float:
            config = config_of(hp)
            tick = time.perf_counter()
            data = (tf.data.Dataset.from_tensor_slices((x_train, y_train))
                    .shuffle(len(x_train), seed=seed, reshuffle_each_iteration=True)
                    .batch(config["batch_size"]).repeat())
            history = model.fit(data, steps_per_epoch=steps + WARMUP_STEPS, epochs=1, verbose=0, shuffle=False,
                                validation_data=(x_val, y_val), callbacks=callbacks)
            value = float(history.history["val_loss"][-1])
            ok = math.isfinite(value)
            trials.append({"config": config, "val_loss": value if ok else WORST, "ok": ok,
                           "wall": time.perf_counter() - tick, "steps": int(model.optimizer.iterations.numpy())})
            # a diverged trial: a large finite loss (the Bayesian oracle's Gaussian process cannot take NaN / inf)
            return value if ok else 1e3

    base = {"bayesian": keras_tuner.BayesianOptimization, "random": keras_tuner.RandomSearch}[kind]

    class tuner_class(base):  # type: ignore[misc, valid-type]
        # Keras Tuner imports tensorboard (not installed here, and not needed: no TensorBoard callback is used)
        # on every trial under the TensorFlow backend just to patch TensorBoard callbacks; skip that step.
        def _configure_tensorboard_dir(self, callbacks: Any, trial: Any, execution: int = 0) -> None:
            return None

    started = time.perf_counter()
    tuner = tuner_class(DigitsHyperModel(), objective="val_loss", max_trials=n_trials, seed=seed,
                        directory=str(scratch), project_name=f"keras-tuner-{kind}-{seed}", overwrite=True)
    tuner.search(x_train, y_train, verbose=0)  # the arrays are ignored by fit above (it builds its own pipeline)
    wall = time.perf_counter() - started
    best_hp = tuner.get_best_hyperparameters(1)[0]
    chosen = config_of(best_hp)
    best_loss = min((t["val_loss"] for t in trials), default=WORST)
    diverged = sum(1 for t in trials if not t["ok"])
    log(f"keras-tuner ({kind}) s{seed}: {len(trials)} trials ({diverged} diverged) in {wall:.1f} s, best "
        f"{best_loss:.4f} [{config_key(chosen)}]; optimizer steps per trial {sorted({t['steps'] for t in trials})}")
    return {"wall": wall, "trials": len(trials), "complete": len(trials) - diverged, "pruned": 0,
            "diverged": diverged, "failed": 0, "tuning_loss": best_loss, "config": clean_config(chosen),
            "per_trial": trials}


def tensorflow_report(runs: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    peer_by_seed = {r["seed"]: r for r in runs if r["method"].startswith("keras-tuner")}
    lines = [f"### TensorFlow runs (task {meta['task']}, {meta['budget_text']} per trial (+{WARMUP_STEPS} warm-up "
             f"steps, both methods), {meta['trials']} trials, re-scored with run_trial at the same budget, seeds "
             f"{meta['rescore_seeds']}, median [min–max])", "",
             "| method | seed | wall (s) | trials (pruned / diverged) | chosen config | tuning loss | re-scored loss | "
             "time / keras-tuner | loss / keras-tuner |",
             "|---|---|---:|---|---|---:|---:|---:|---:|"]
    for run in runs:
        peer = peer_by_seed.get(run["seed"])
        losses = run["rescore_losses"]
        spread = f"{fmt(run['rescore_median'])} [{fmt(min(losses))}–{fmt(max(losses))}]"
        trials = f"{run['trials']} ({run['pruned']} / {run['diverged']})" + (f", {run['failed']} failed" if run["failed"] else "")
        lines.append(f"| {run['method']} | {run['seed']} | {run['wall']:.1f} | {trials} | {config_key(run['config'])} | "
                     f"{fmt(run['tuning_loss'])} | {spread} | {ratio(run['wall'], peer['wall']) if peer else '—'} | "
                     f"{ratio(run['rescore_median'], peer['rescore_median']) if peer else '—'} |")
    if len(peer_by_seed) > 1:
        peer_wall = median_of([r["wall"] for r in peer_by_seed.values()])
        peer_loss = median_of([r["rescore_median"] for r in peer_by_seed.values()])
        lines += ["", f"### Summary: median over the {len(peer_by_seed)} tuning seeds", "",
                  "| method | wall (s) | trials | re-scored loss | time / keras-tuner | loss / keras-tuner |",
                  "|---|---:|---:|---:|---:|---:|"]
        for method in dict.fromkeys(r["method"] for r in runs):
            mine = [r for r in runs if r["method"] == method]
            wall = median_of([r["wall"] for r in mine])
            loss = median_of([r["rescore_median"] for r in mine])
            lines.append(f"| {method} | {wall:.1f} | {median_of([r['trials'] for r in mine]):g} | {fmt(loss)} | "
                         f"{ratio(wall, peer_wall)} | {ratio(loss, peer_loss)} |")
    autotune_runs = [r for r in runs if r["method"] == "autotune"]
    if autotune_runs:
        lines += ["", "| autotune run | wall (s) | set-up | ceiling fit | range test | trials | complete / pruned "
                  "(hyperband, diverged) |", "|---|---:|---:|---:|---:|---:|---|"]
        for run in autotune_runs:
            a, p = run["analysis"], run["analysis"]["phases"]
            lines.append(f"| s{run['seed']} | {run['wall']:.1f} | {p['setup']:.1f} | {p['ceiling_fit']:.1f} | "
                         f"{p['range_test']:.1f} | {p['trials']:.1f} | {a['counts']['COMPLETE']} / "
                         f"{a['counts']['PRUNED']} ({a['hyperband_pruned']}, {a['diverged']}) |")
    lines += ["", f"Keras Tuner: {meta['peer']} over batch sizes {meta['batch_sizes']}, optimizers "
              f"{', '.join(meta['optimizers'])} (at autotune's default parameters), lr log-uniform over "
              f"[{meta['lr_range'][0]:g}, {meta['lr_range'][1]:g}]; autotune.tune also tunes the optimizers' own "
              f"parameters from search_spaces/tensorflow.yaml.",
              f"Load average (1/5/15 min) at start: {meta['load_start']}; at end: {meta['load_end']}; "
              f"{meta['cpus']} CPUs. Total benchmark time {meta['total_seconds']:.0f} s."]
    return "\n".join(lines)


def main_tensorflow(args: argparse.Namespace) -> int:
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    os.chdir(ROOT)
    total_start = time.perf_counter()
    load_start = load_average()
    budget = {"seconds": None, "steps": args.trial_steps}
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    log(f"load average {load_start}; {os.cpu_count()} CPUs; tensorflow: {describe(budget)} per trial, {args.trials} "
        f"trials, {args.repeats} repeat(s), methods {methods}, Keras Tuner {args.keras_tuner}")
    task = autotune.load_task(args.task)
    space = PlainSpace(task)
    seeds = list(range(args.seed, args.seed + args.repeats))
    rescore_seeds = [1000 + args.seed + i for i in range(args.rescore_seeds)]
    scratch = Path(tempfile.mkdtemp(prefix="autotune-search-tf-"))
    runs: list[dict[str, Any]] = []
    try:
        # warm-up in this process (TensorFlow import, first trace), so Keras Tuner does not pay for it alone
        train(task, {"batch_size": 32, "optimizer": "adam", "lr": 1e-3, "optimizer_params": space.default_params("adam")},
              {"seconds": None, "steps": 5}, args.seed)
        for seed in seeds:
            for method in methods:
                log(f"--- {method}, seed {seed} (load {load_average()})")
                if method == "autotune":
                    run = autotune_run(args.task, args.trials, budget, seed, scratch, "autotune", None)
                elif method == "keras-tuner":
                    run = keras_tuner_run(task, space, args.keras_tuner, args.trials, args.trial_steps, seed, scratch)
                else:
                    raise SystemExit(f"unknown method {method!r} for --backend tensorflow (autotune, keras-tuner)")
                runs.append({"method": method if method != "keras-tuner" else f"keras-tuner ({args.keras_tuner})",
                             "seed": seed, **run})
        log(f"--- re-scoring (load {load_average()})")
        rescore(task, runs, budget, rescore_seeds)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    meta = {"task": args.task, "backend": "tensorflow", "budget": budget, "budget_text": describe(budget),
            "trials": args.trials, "rescore_seeds": rescore_seeds, "batch_sizes": space.batch_sizes,
            "optimizers": space.optimizers, "lr_range": [space.space.lr_low, space.space.lr_high],
            "peer": f"keras_tuner.{'BayesianOptimization' if args.keras_tuner == 'bayesian' else 'RandomSearch'}",
            "load_start": load_start, "load_end": load_average(), "cpus": os.cpu_count(),
            "total_seconds": time.perf_counter() - total_start, "argv": sys.argv[1:]}
    print(tensorflow_report(runs, meta), flush=True)
    if args.json:
        # not over the torch section's results: the default file gets a _tensorflow twin
        path = CACHE.with_name("search_results_tensorflow.json") if args.json == str(CACHE) else Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"meta": meta, "runs": runs}, indent=1, default=str))
        log(f"raw results in {path}")
    return 0


# --------------------------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=("torch", "tensorflow"), default="torch",
                        help="torch: the searches above on --task; tensorflow: autotune.tune vs Keras Tuner on "
                             f"{TF_TASK} at a step budget (default: %(default)s)")
    parser.add_argument("--task", default=None, help=f"task reference (default: {DEFAULT_TASK}; {TF_TASK} "
                        "with --backend tensorflow)")
    parser.add_argument("--trial-time", type=float, default=1.0, help="training seconds per trial (default: 1.0)")
    parser.add_argument("--trial-steps", type=int, default=None,
                        help="train each trial for this many steps instead of --trial-time seconds (a budget that "
                             "machine load does not change; wall times are still measured)")
    parser.add_argument("--trials", type=int, default=None,
                        help="trials per search (default: 30; 12 with --backend tensorflow)")
    parser.add_argument("--seed", type=int, default=0, help="first tuning seed (default: 0)")
    parser.add_argument("--repeats", type=int, default=2,
                        help="tuning seeds per search method, seed .. seed+repeats-1 (default: 2; the grid runs once)")
    parser.add_argument("--rescore-seeds", type=int, default=3, help="fresh seeds to re-score each choice (default: 3)")
    parser.add_argument("--grid", choices=("auto", "full", "coarse", "coarser", "tiny", "none"), default="auto",
                        help="grid size; auto: the finest that fits --grid-budget (default: auto)")
    parser.add_argument("--grid-lrs", type=int, default=5, help="log-spaced learning rates in the grid (default: 5)")
    parser.add_argument("--grid-budget", type=float, default=600.0,
                        help="seconds the auto grid may take, estimated from the plain loop (default: 600)")
    parser.add_argument("--total-budget", type=float, default=1500.0,
                        help="seconds the whole benchmark should take: the auto grid also fits in what is left "
                             "of it after the searches and before the re-scoring (default: 1500)")
    parser.add_argument("--methods", default=None,
                        help="comma-separated searches to run (optuna-tpe is needed for autotune-half; default: "
                             "optuna-tpe,random,autotune,autotune-half; with --backend tensorflow: autotune,keras-tuner)")
    parser.add_argument("--keras-tuner", choices=("bayesian", "random"), default="bayesian",
                        help="--backend tensorflow: keras_tuner.BayesianOptimization (the model-based peer of "
                             "autotune's TPE) or RandomSearch (default: %(default)s)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 0.3 s trials, 6 trials, 1 repeat, 2 re-score seeds, a tiny grid")
    parser.add_argument("--json", default=str(CACHE), help="raw results as JSON (default: %(default)s; '' for none)")
    args = parser.parse_args(argv)
    if args.backend == "tensorflow":
        # a step budget: on a loaded machine seconds of training vary tenfold, steps do not
        args.task = args.task or TF_TASK
        args.methods = args.methods or "autotune,keras-tuner"
        if args.quick:
            args.trials, args.repeats, args.rescore_seeds = args.trials or 4, 1, 2
            args.trial_steps = args.trial_steps or 30
        args.trials = args.trials or 12
        args.trial_steps = args.trial_steps or 60
        if args.repeats == parser.get_default("repeats"):
            args.repeats = 1
        return main_tensorflow(args)
    args.task = args.task or DEFAULT_TASK
    args.trials = args.trials or 30
    args.methods = args.methods or "optuna-tpe,random,autotune,autotune-half"
    if args.quick:
        args.trial_time, args.trials, args.repeats, args.rescore_seeds = 0.3, 6, 1, 2
        if args.grid == "auto":
            args.grid = "tiny"
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if "autotune-half" in methods and "optuna-tpe" not in methods:
        parser.error("autotune-half needs optuna-tpe (its timeout is half of that loop's time)")

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    os.chdir(ROOT)
    total_start = time.perf_counter()
    load_start = load_average()
    budget = {"seconds": None if args.trial_steps else args.trial_time, "steps": args.trial_steps}
    log(f"load average {load_start}; {os.cpu_count()} CPUs; {describe(budget)} per trial, {args.trials} trials, "
        f"{args.repeats} repeat(s), methods {methods}, grid {args.grid}")
    task = autotune.load_task(args.task)
    space = PlainSpace(task)
    seeds = list(range(args.seed, args.seed + args.repeats))
    scratch = Path(tempfile.mkdtemp(prefix="autotune-search-"))
    runs: list[dict[str, Any]] = []
    grid: dict[str, Any] | None = None
    grid_about = "not run"
    try:
        # a warm-up trial, so the first timed method does not pay for lazy imports
        train(task, {"batch_size": 32, "optimizer": "adam", "lr": 1e-3, "optimizer_params": {}}, {"seconds": 0.2, "steps": None}, args.seed)
        for seed in seeds:
            plain = None
            for method in methods:
                log(f"--- {method}, seed {seed} (load {load_average()})")
                if method == "optuna-tpe":
                    plain = run = plain_loop(task, space, optuna.samplers.TPESampler(seed=seed), args.trials,
                                             budget, seed, f"optuna-tpe s{seed}")
                elif method == "random":
                    run = plain_loop(task, space, optuna.samplers.RandomSampler(seed=seed), args.trials,
                                     budget, seed, f"random s{seed}")
                elif method == "autotune":
                    run = autotune_run(args.task, args.trials, budget, seed, scratch, "autotune", None)
                elif method == "autotune-half":
                    run = autotune_run(args.task, args.trials, budget, seed, scratch, "autotune-half",
                                       plain["wall"] / 2)
                else:
                    parser.error(f"unknown method {method!r}")
                runs.append({"method": method, "seed": seed, **run})
        if args.grid != "none":
            per_trial = [t["wall"] for r in runs if r["method"] in ("optuna-tpe", "random") for t in r["per_trial"]]
            estimate_each = statistics.mean(per_trial) if per_trial else args.trial_time * 1.2
            level = args.grid
            n_rescore = (len({config_key(r["config"]) for r in runs}) + 1) * args.rescore_seeds
            left = args.total_budget - (time.perf_counter() - total_start) - n_rescore * estimate_each
            grid_budget = min(args.grid_budget, left)
            if level == "auto":
                for level in ("full", "coarse", "coarser", "tiny"):
                    configs, _ = space.grid(level, args.grid_lrs)
                    if len(configs) * estimate_each <= grid_budget:
                        break
            configs, grid_about = space.grid(level, args.grid_lrs)
            full_count = len(space.grid("full", args.grid_lrs)[0])
            grid_about += f"; estimated {len(configs) * estimate_each:.0f} s at {estimate_each:.2f} s per trial"
            if level != "full":
                why = (f"to fit {grid_budget:.0f} s (--grid-budget {args.grid_budget:g} s, and what --total-budget "
                       f"{args.total_budget:g} s leaves)" if args.grid == "auto"
                       else f"as asked (--grid {args.grid}{', --quick' if args.quick else ''})")
                grid_about += (f"; COARSER than the full {full_count}-configuration grid "
                               f"(estimated {full_count * estimate_each:.0f} s) {why}")
            log(f"--- grid {grid_about} (load {load_average()})")
            grid = {"method": "grid", "seed": args.seed, **grid_search(task, configs, budget, args.seed)}
        log(f"--- re-scoring (load {load_average()})")
        rescore(task, runs + ([grid] if grid else []), budget,
                [1000 + args.seed + i for i in range(args.rescore_seeds)])
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    meta = {"task": args.task, "budget": budget, "budget_text": describe(budget), "trials": args.trials,
            "rescore_seeds": [1000 + args.seed + i for i in range(args.rescore_seeds)],
            "batch_sizes": space.batch_sizes, "n_train": space.n_train, "reference_batch": space.space.reference_batch,
            "grid_about": grid_about, "load_start": load_start, "load_end": load_average(), "cpus": os.cpu_count(),
            "total_seconds": time.perf_counter() - total_start, "argv": sys.argv[1:]}
    text = report(runs, grid, meta)
    print(text, flush=True)
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"meta": meta, "runs": runs, "grid": grid}, indent=1, default=str))
        log(f"raw results in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
