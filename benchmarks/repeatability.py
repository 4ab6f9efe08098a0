"""Throughput a user can trust (issue 10, item 3): the same configuration measured in several trials, as a
study measures it, and how far apart the figures are.

Each model's configuration (batch size, optimizer, learning rate) runs ``--trials`` times through autotune's
own trial path (`autotune.trial.run_trial` in one kept `autotune.runner.Worker`, as `tune` runs trial after
trial; ``--fresh`` gives each trial a new worker instead). Per model: each trial's steady-state throughput,
the spread (largest / smallest − 1, goal ≤ 10 % on a quiet machine), the step-time p50/p95 and whether
autotune flagged the trial as measured on a busy machine (other processes' CPU use). The load average is
printed before and after each model: quote the figures only from a quiet machine.

Beside it, for the torch models, the peer: a plain PyTorch loop as a user writes it (a fresh model and Adam per
run, random batches, each step timed, the first three left out), run as many times for as long in this process.
Its spread is the machine's own: autotune's cannot be expected below it.

    .venv/bin/python benchmarks/repeatability.py                       # digits (torch), GPT-2, ResNet-shaped torch
    .venv/bin/python benchmarks/repeatability.py --models digits,tf-digits,ms-digits --trials 5 --trial-time 3
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from autotune.runner import Worker, run_in_worker  # noqa: E402
from autotune.trial import run_trial  # noqa: E402

GOAL = 0.10


@dataclasses.dataclass(frozen=True)
class Model:
    task: str
    batch_size: int
    optimizer: str
    lr: float


MODELS = {
    "digits": Model("examples/torch_digits.py", 64, "adam", 1e-3),
    "tf-digits": Model("examples/tensorflow_digits.py", 64, "adam", 1e-3),
    "ms-digits": Model("examples/mindspore_digits.py", 64, "adam", 1e-3),
    "gpt2": Model("examples/torch_gpt2.py", 32, "adam", 1e-3),
    "resnet": Model("benchmarks/tasks/torch_resnet.py", 64, "adam", 1e-3),
    "mobilenet": Model("benchmarks/tasks/keras_mobilenet.py", 64, "adam", 1e-3),
}

TORCH_MODELS = ("digits", "gpt2", "resnet")


def spread(values: list[float]) -> float | None:
    """Largest over smallest, less one: how far apart the figures of one configuration are."""
    values = [v for v in values if v]
    return max(values) / min(values) - 1 if len(values) >= 2 else None


def pairs_within(values: list[float], share: float = GOAL) -> tuple[int, int]:
    """How many of the pairs of figures agree within ``share`` (larger / smaller − 1), of how many pairs."""
    values = [v for v in values if v]
    pairs = [(a, b) for i, a in enumerate(values) for b in values[i + 1:]]
    return sum(1 for a, b in pairs if max(a, b) / min(a, b) - 1 <= share), len(pairs)


def measure(model: Model, *, trials: int, trial_time: float, fresh: bool) -> list[dict[str, Any]]:
    """``trials`` runs of the model's configuration, each as a tuning trial measures it."""
    kwargs = {"task": str(ROOT / model.task), "device": None, "seconds": trial_time, "reports": 8, "seed": 0,
              "config": {"batch_size": model.batch_size, "optimizer": model.optimizer, "lr": model.lr}}
    rows = []
    with Worker() as worker:
        for _ in range(trials):
            # a trial's worker keeps the allocator as the user's training has it (not pinned as a fit's probe's)
            outcome = run_in_worker(run_trial, kwargs, exact_memory=False) if fresh else worker.run(run_trial, kwargs)
            if not outcome.ok:
                raise SystemExit(f"{model.task}: trial failed ({outcome.kind}: {outcome.message})")
            rows.append(outcome.value)
    return rows


PLAIN_WARMUP_STEPS = 3
"""A plain run's first steps carry first-call set-up: left out of its throughput, as autotune leaves them out."""


def plain_torch_runs(model: Model, *, runs: int, seconds: float) -> list[float]:
    """Samples/s of ``runs`` plain PyTorch training runs of the model's configuration, ``seconds`` each."""
    import numpy as np
    import torch

    import autotune

    task = autotune.load_task(str(ROOT / model.task))
    train, _ = task.data() if callable(task.data) else task.data
    loader = None
    if isinstance(train, torch.utils.data.Dataset):
        loader = torch.utils.data.DataLoader(train, batch_size=model.batch_size, shuffle=True, drop_last=True)
    else:
        x, y = (torch.as_tensor(np.asarray(part)) for part in train)
    rates = []
    for _ in range(runs):
        torch.manual_seed(0)
        net = task.model()
        net.train()
        optimizer = torch.optim.Adam(net.parameters(), lr=model.lr)
        batches = iter(loader) if loader is not None else None
        times: list[float] = []
        started = time.perf_counter()
        while time.perf_counter() - started < seconds:
            if batches is not None:
                batch = next(batches, None)
                if batch is None:
                    batches = iter(loader)
                    batch = next(batches)
            else:
                index = torch.randint(0, len(x), (model.batch_size,))
                batch = (x[index], y[index])
            tick = time.perf_counter()
            optimizer.zero_grad()
            if task.compute_loss is not None:
                loss = task.compute_loss(net, batch)
            else:
                loss = torch.nn.functional.cross_entropy(net(batch[0]), batch[1])
            loss.backward()
            optimizer.step()
            times.append(time.perf_counter() - tick)
        timed = times[PLAIN_WARMUP_STEPS:] or times
        rates.append(model.batch_size * len(timed) / sum(timed))
    return rates


def report(name: str, model: Model, rows: list[dict[str, Any]], load: tuple[float, float]) -> dict[str, Any]:
    throughputs = [row["throughput"] for row in rows]
    share = spread(throughputs)
    print(f"\n{name}: {model.task}, batch {model.batch_size} {model.optimizer} lr {model.lr:g} "
          f"(load {load[0]:.2f} before, {load[1]:.2f} after)")
    print("| trial | samples/s | step ms p50 / p95 | steps timed | busy (other cores) |")
    print("|---:|---:|---|---:|---|")
    for index, row in enumerate(rows):
        print(f"| {index} | {row['throughput']:.4g} | {1000 * row['step_seconds_p50']:.3g} / "
              f"{1000 * row['step_seconds_p95']:.3g} | {row['steps_timed']} | "
              f"{'yes' if row['busy'] else 'no'} ({row['other_cpu_cores']}) |")
    quiet = [row["throughput"] for row in rows if not row["busy"]]
    quiet_share = spread(quiet)
    verdict = "–" if share is None else ("met" if share <= GOAL else "missed")
    agree, pairs = pairs_within(throughputs)
    print(f"spread {100 * share:.1f} % over {len(rows)} trials ({verdict}, goal ≤ {100 * GOAL:.0f} %); "
          f"{agree} of {pairs} pairs of trials agree within {100 * GOAL:.0f} %"
          + ("" if quiet_share is None or len(quiet) == len(rows)
             else f"; {100 * quiet_share:.1f} % over the {len(quiet)} not flagged busy"))
    return {"model": name, "task": model.task, "throughputs": throughputs, "spread": share, "pairs": (agree, pairs),
            "busy": [row["busy"] for row in rows], "load": load}


def report_plain(result: dict[str, Any], rates: list[float]) -> None:
    share = spread(rates)
    agree, pairs = pairs_within(rates)
    result.update(plain_throughputs=rates, plain_spread=share, plain_pairs=(agree, pairs))
    print(f"plain PyTorch loop, same configuration, {len(rates)} runs: "
          + ", ".join(f"{rate:.4g}" for rate in rates) + f" samples/s; spread {100 * (share or 0):.1f} %, "
          f"{agree} of {pairs} pairs within {100 * GOAL:.0f} %")


def summary(results: list[dict[str, Any]]) -> None:
    print("\n| model | autotune spread | pairs within 10 % | plain loop spread | pairs within 10 % |")
    print("|---|---:|---:|---:|---:|")
    for result in results:
        plain = result.get("plain_spread")
        plain_pairs = result.get("plain_pairs")
        print(f"| {result['model']} | {100 * (result['spread'] or 0):.1f} % | {result['pairs'][0]} of "
              f"{result['pairs'][1]} | " + ("– | – |" if plain is None else
                                           f"{100 * plain:.1f} % | {plain_pairs[0]} of {plain_pairs[1]} |"))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="digits,gpt2,resnet", help=f"comma-separated, of {', '.join(MODELS)}")
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--trial-time", type=float, default=3.0)
    parser.add_argument("--fresh", action="store_true", help="each trial in a new worker (default: one kept)")
    parser.add_argument("--no-plain", action="store_true", help="skip the plain PyTorch loop beside each torch model")
    parser.add_argument("--json", help="write the figures to this file")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        parser.error(f"unknown model {unknown[0]!r}: choose from {', '.join(MODELS)}")
    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} CPUs, {args.trials} trials of "
          f"{args.trial_time:g} s each, {'a fresh worker each' if args.fresh else 'one kept worker'}")
    results = []
    for name in names:
        before = os.getloadavg()[0]
        rows = measure(MODELS[name], trials=args.trials, trial_time=args.trial_time, fresh=args.fresh)
        results.append(report(name, MODELS[name], rows, (before, os.getloadavg()[0])))
        if not args.no_plain and name in TORCH_MODELS:
            report_plain(results[-1], plain_torch_runs(MODELS[name], runs=args.trials, seconds=args.trial_time))
    summary(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
