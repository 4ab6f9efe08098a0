"""The torch CUDA paths run for real on an NVIDIA GPU, in one go within a time budget (default 290 s):
probe (NVML), fit-batch in every precision the GPU has, bench (every precision, torch.compile off and on, MFU,
NVML energy), tune searching precision and compile with one ceiling per precision, tune --device auto choosing
device, precision and compile mode from the bench table, and tune at a global batch over the ceiling.

Not a test (CI has no GPU): a script to run on a machine with one, which prints what it saw and exits 1 if a
check fails, 2 at once (one line) when there is no CUDA device. Each check is independent; a failing one does
not stop the others, and a step that the budget no longer covers is reported as not run.

    python benchmarks/gpu_check.py --out results/      # the output and JSON of every step land in results/

The script itself calls only documented APIs: ``torch.cuda.is_available``, ``torch.cuda.device_count``,
``torch.cuda.get_device_name``, ``torch.cuda.is_bf16_supported`` and ``torch.version.cuda``; NVML is read by
``autotune probe`` (``pynvml``'s ``nvmlInit``, ``nvmlDeviceGet*``); the rest goes through autotune's CLI.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
WIDE = str(ROOT / "examples" / "torch_wide_images.py")
DIGITS = str(ROOT / "examples" / "torch_digits.py")
FAILURES: list[str] = []
CLOCK: dict[str, float] = {"end": 0.0}
DEVICE = {"id": "cuda:0"}
"""The device the steps run on: cuda:0, or cpu for a dry run of the script's own logic (--dry-run-on-cpu)."""
MIN_STEP_SECONDS = 20.0
"""A step starts only with this much of the budget left (its commands are cut at the budget's end)."""


def check(name: str, ok: bool, detail: str) -> None:
    print(f"[{'ok' if ok else 'FAIL'}] {name}: {detail}", flush=True)
    if not ok:
        FAILURES.append(name)


def left() -> float:
    return CLOCK["end"] - time.monotonic()


def cli(*args: str, out: Path, name: str) -> subprocess.CompletedProcess:
    """``autotune ARGS`` in a fresh process, cut at the budget's end; its output is kept in ``out/name.out``."""
    tick = time.perf_counter()
    try:
        done = subprocess.run([sys.executable, "-m", "autotune", *args], cwd=ROOT, capture_output=True, text=True,
                              timeout=max(1.0, left()))
    except subprocess.TimeoutExpired as exc:
        done = subprocess.CompletedProcess(exc.cmd, 124, _text(exc.stdout), _text(exc.stderr) + "\n(out of time)")
    (out / f"{name}.out").write_text(done.stdout + "\n--- stderr ---\n" + done.stderr)
    print(f"$ autotune {' '.join(args)}  -> exit {done.returncode} in {time.perf_counter() - tick:.1f} s", flush=True)
    return done


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else (value or "")


def last_line(done: subprocess.CompletedProcess) -> str:
    lines = done.stderr.strip().splitlines()
    return lines[-1] if lines else f"exit {done.returncode}"


def cuda_or_exit() -> list[str]:
    """The precisions torch trains in on cuda:0, or one line and exit 2 when torch sees no CUDA device."""
    try:
        import torch
    except ImportError:
        print("gpu_check: error: torch is not installed (pip install 'autotune[torch]')", file=sys.stderr)
        sys.exit(2)
    if not torch.cuda.is_available() or torch.cuda.device_count() < 1:
        print(f"gpu_check: error: no CUDA device (torch {torch.__version__}, CUDA build {torch.version.cuda}, "
              f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}): run this on a machine "
              "with an NVIDIA GPU and its driver", file=sys.stderr)
        sys.exit(2)
    print(f"cuda:0 is {torch.cuda.get_device_name(0)} (torch {torch.__version__}, CUDA {torch.version.cuda})")
    return ["fp32", "bf16", "fp16"] if torch.cuda.is_bf16_supported() else ["fp32", "fp16"]


def probe(out: Path) -> None:
    data = json.loads(cli("probe", "--json", out=out, name="probe").stdout)
    gpus = data.get("nvidia", {}).get("gpus") or []
    check("probe: NVML GPU", bool(gpus), json.dumps(gpus)[:600])
    check("probe: torch sees cuda:0", '"cuda:0"' in json.dumps(data.get("backends", {}).get("torch")),
          json.dumps(data.get("backends", {}).get("torch"))[:600])


def fit_per_precision(out: Path, precisions: list[str], cap: str) -> None:
    found = {}
    for precision in precisions:
        done = cli("fit-batch", WIDE, "--device", DEVICE["id"], "--memory-limit", cap, "--precision", precision,
                   "--json", out=out, name=f"fit_{precision}")
        data = json.loads(done.stdout) if done.returncode == 0 else {}
        found[precision] = data.get("batch_size")
        check(f"fit-batch cuda {precision}", done.returncode == 0 and data.get("precision") == precision,
              f"batch {data.get('batch_size')}, {data.get('ooms')} OOM, {data.get('seconds', 0):.1f} s"
              if data else last_line(done))
    if found.get("fp32"):
        lower = {p: b for p, b in found.items() if p != "fp32" and b}
        check("fit-batch: mixed precision fits at least fp32's batch", all(b >= found["fp32"] for b in lower.values()),
              json.dumps(found))


def bench(out: Path, precisions: list[str]) -> None:
    from autotune.bench import BenchResult
    from autotune.cli_bench import render

    done = cli("bench", DIGITS, "--devices", DEVICE["id"], "--precision", ",".join(precisions), "--compile", "off,on",
               "--seconds", "1", "--json", out=out, name="bench")
    if done.returncode:
        check("bench on cuda", False, last_line(done))
        return
    data = json.loads(done.stdout)
    data.pop("winner")
    print(render(BenchResult(**data)))
    rows = data["rows"]
    check("bench: every mode ran", all(r["ok"] for r in rows), "; ".join(
        f"{r['mode']}: {r.get('failure') or round(r['throughput'])}" for r in rows))
    good = [r for r in rows if r["ok"]]
    check("bench: MFU in (0, 1]", all(0 < (r["mfu"] or 0) <= 1 for r in good),
          ", ".join(f"{r['mode']} {r['mfu']}" for r in good))
    check("bench: energy per sample from NVML", all(r["energy_per_sample_joules"] for r in good),
          ", ".join(f"{r['mode']} {r['energy_per_sample_joules']} ({r.get('energy_note')})" for r in good))
    check("bench: device peak memory", all(r["peak_memory_kind"] == "device allocator" for r in good),
          ", ".join(f"{r['mode']} {r['peak_memory_bytes']}" for r in good))


def _space(out: Path, name: str, precisions: list[str], compiles: str) -> str:
    path = out / f"{name}.yaml"
    path.write_text(f"precision:\n  choices: [{', '.join(precisions)}]\ncompile:\n  choices: [{compiles}]\n"
                    "optimizers:\n  adam: {}\n")
    return str(path)


def _study(name: str, storage: str) -> Any:
    from autotune.study import load_study

    return load_study(name, storage)


def tune_precision_compile(out: Path, precisions: list[str], cap: str) -> None:
    storage = f"sqlite:///{out / 'gpu_precision.db'}"
    done = cli("tune", WIDE, "--device", DEVICE["id"], "--trials", "4", "--trial-steps", "30", "--study", "gpu-prec",
               "--storage", storage, "--memory-limit", cap, "--search-space",
               _space(out, "precision_space", precisions, "false, true"), "--no-range-test", "--confirm", "0",
               "--no-report", out=out, name="tune_precision")
    check("tune with precision and compile on cuda", done.returncode == 0, last_line(done) if done.returncode else "ok")
    if done.returncode:
        return
    study = _study("gpu-prec", storage)
    ceilings = {record.get("precision", "fp32"): record["batch_size"] for key, record in study.user_attrs.items()
                if key.startswith("ceiling:")}
    check("tune: one ceiling per precision", sorted(ceilings) == sorted(precisions), json.dumps(ceilings))
    configs = [t.user_attrs.get("config", {}) for t in study.get_trials()]
    over = [c for c in configs if c and c["batch_size"] > ceilings.get(c.get("precision", "fp32"), 0)]
    check("tune: each trial's batch within its precision's ceiling", not over and bool(configs),
          json.dumps([(c.get("precision"), c.get("compile"), c.get("batch_size")) for c in configs]))


def tune_auto(out: Path, precisions: list[str]) -> None:
    storage = f"sqlite:///{out / 'gpu_auto.db'}"
    done = cli("tune", DIGITS, "--device", "auto", "--trials", "2", "--trial-steps", "30", "--study", "gpu-auto",
               "--storage", storage, "--search-space", _space(out, "auto_space", precisions[:2], "false"),
               "--no-range-test", "--confirm", "0", "--no-report", out=out, name="tune_auto")
    why = next((line for line in done.stderr.splitlines() if "trains fastest" in line), "")
    print(why)
    check("tune --device auto", done.returncode == 0, last_line(done) if done.returncode else "ok")
    if done.returncode:
        return
    study = _study("gpu-auto", storage)
    choice = study.user_attrs["device_choice"]
    ran = {(t.user_attrs["measured"]["device"], t.user_attrs["config"]["precision"], t.user_attrs["config"]["compile"])
           for t in study.get_trials() if "measured" in t.user_attrs}
    check("tune --device auto: the trials ran in the table's winner",
          ran == {(choice["device"], choice["precision"], choice["compile"])},
          f"winner {choice['table']['winner'] if choice['table'] else choice['why']}, trials {sorted(ran)}")


def tune_global_batch(out: Path) -> None:
    storage = f"sqlite:///{out / 'gpu_global.db'}"
    done = cli("tune", WIDE, "--device", DEVICE["id"], "--trials", "2", "--trial-steps", "10", "--study", "gpu-global",
               "--storage", storage, "--memory-limit", "1GiB", "--global-batch", "1024", "--no-range-test",
               "--confirm", "0", "--no-report", "--json", out=out, name="tune_global")
    data = json.loads(done.stdout) if done.returncode == 0 else {}
    check("tune --global-batch 1024 over a 1 GiB ceiling", done.returncode == 0 and data.get("batch_size") == 1024,
          f"{data.get('accumulation')} {last_line(done) if done.returncode else ''}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="gpu_check_results")
    parser.add_argument("--cap", default="2GiB", help="memory limit of the fits (default 2GiB)")
    parser.add_argument("--budget", type=float, default=290.0, help="seconds for the whole run (default 290)")
    parser.add_argument("--skip", action="append", default=[],
                        help="probe, fit, bench, precision, auto, global")
    parser.add_argument("--dry-run-on-cpu", action="store_true", help="run the steps on the CPU to check the "
                        "script itself (the NVML, energy and device-memory checks then fail)")
    args = parser.parse_args()
    CLOCK["end"] = time.monotonic() + args.budget
    if args.dry_run_on_cpu:
        from autotune.backends import get_backend

        torch_backend = get_backend("torch")
        DEVICE["id"] = "cpu"
        precisions = list(torch_backend.precisions(torch_backend.resolve_device("cpu")))
    else:
        precisions = cuda_or_exit()  # before any other work: no CUDA device is one line, exit 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    steps: tuple[tuple[str, Callable[[], None]], ...] = (
        ("probe", lambda: probe(out)), ("fit", lambda: fit_per_precision(out, precisions, args.cap)),
        ("bench", lambda: bench(out, precisions)),
        ("precision", lambda: tune_precision_compile(out, precisions, args.cap)),
        ("auto", lambda: tune_auto(out, precisions)), ("global", lambda: tune_global_batch(out)))
    started = time.monotonic()
    for name, body in steps:
        if name in args.skip:
            continue
        if left() < MIN_STEP_SECONDS:
            check(name, False, f"not run: {left():.0f} s of the {args.budget:g} s budget left")
            continue
        print(f"=== {name} ({left():.0f} s left) ===", flush=True)
        try:
            body()
        except Exception as exc:  # noqa: BLE001 - a broken step is a finding; the others still run
            check(name, False, f"{type(exc).__name__}: {exc}")
    print(f"=== {time.monotonic() - started:.0f} s; "
          + (f"{len(FAILURES)} failed: {FAILURES}" if FAILURES else "all checks passed"), flush=True)
    sys.exit(1 if FAILURES else 0)


if __name__ == "__main__":
    main()
