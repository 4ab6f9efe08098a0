"""The torch CUDA paths run for real on an NVIDIA GPU: probe, fit-batch (verified), tune with energy figures,
bench (every precision, torch.compile off and on, MFU, NVML energy), tune searching precision and compile, and
tune at a global batch over the ceiling (gradient accumulation). About 5 minutes on an H100-class GPU.

Not a test (CI has no GPU): a script to run on a machine with one, which prints what it saw and exits non-zero
if a check fails. Each check is independent; a failing one does not stop the others.

    python benchmarks/gpu_check.py --out results/      # JSON of every step lands in results/
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
WIDE = str(ROOT / "examples" / "torch_wide_images.py")
DIGITS = str(ROOT / "examples" / "torch_digits.py")
FAILURES: list[str] = []


def check(name: str, ok: bool, detail: str) -> None:
    print(f"[{'ok' if ok else 'FAIL'}] {name}: {detail}", flush=True)
    if not ok:
        FAILURES.append(name)


def cli(*args: str, out: Path, name: str, timeout: float = 300) -> subprocess.CompletedProcess:
    tick = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "autotune", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)
    (out / f"{name}.out").write_text(done.stdout + "\n--- stderr ---\n" + done.stderr)
    print(f"$ autotune {' '.join(args)}  -> exit {done.returncode} in {time.perf_counter() - tick:.1f} s", flush=True)
    return done


def step(name: str, body: Callable[[], None]) -> None:
    try:
        body()
    except Exception as exc:  # noqa: BLE001 - a broken step is a finding; the others still run
        check(name, False, f"{type(exc).__name__}: {exc}")


def probe(out: Path) -> None:
    table = cli("probe", out=out, name="probe")
    print(table.stdout)
    data = json.loads(cli("probe", "--json", out=out, name="probe_json").stdout)
    gpus = data.get("nvidia", {}).get("gpus") or data.get("nvidia_gpus") or []
    check("probe: NVML GPU", bool(gpus), json.dumps(gpus)[:600])
    check("probe: torch sees CUDA", '"cuda:0"' in json.dumps(data.get("backends", {})),
          json.dumps(data.get("backends", {}).get("torch"))[:600])


def fit_verified(out: Path, cap: str, device: str) -> None:
    import autotune
    from benchmarks.fit_batch import _probe_once

    limit = autotune.parse_size(cap)
    fit = autotune.fit_batch_size(WIDE, device=device, memory_limit=limit, margin=0.0, progress=print)
    (out / "fit_cuda.json").write_text(json.dumps(fit.to_dict(), indent=1, default=str))
    print(f"fit: batch {fit.batch_size}, peak {autotune.format_size(fit.peak_memory_bytes)} of "
          f"{autotune.format_size(fit.budget_bytes)}, {len(fit.probes)} probes, {fit.ooms} OOM, "
          f"{fit.seconds:.1f} s, model {fit.model.describe() if fit.model else None}, granularity {fit.granularity}")
    fits, why = _probe_once("examples/torch_wide_images.py", fit.batch_size, limit, device)
    check("fit-batch cuda: the answer fits", fits, f"batch {fit.batch_size} {why or 'ran'}")
    above = fit.batch_size + fit.granularity
    fails, why = _probe_once("examples/torch_wide_images.py", above, limit, device)
    check("fit-batch cuda: one granule up fails with CUDA OOM", not fails and "oom" in why,
          f"batch {above}: {why or 'ran (room was left)'}")


def fit_free_memory(out: Path) -> None:
    done = cli("fit-batch", WIDE, "--device", "cuda:0", "--json", out=out, name="fit_free")
    data = json.loads(done.stdout)
    check("fit-batch cuda on free memory", done.returncode == 0 and data["batch_size"] > 0,
          f"batch {data['batch_size']} limited by {data['limited_by']}, budget {data['budget_bytes']} B")


def tune(out: Path) -> None:
    storage = f"sqlite:///{out / 'gpu_study.db'}"
    done = cli("tune", DIGITS, "--device", "cuda:0", "--trials", "8", "--trial-steps", "100", "--study",
               "gpu-digits", "--storage", storage, "--memory-limit", "4GiB", out=out, name="tune", timeout=400)
    print(done.stdout[-3000:])
    check("tune on cuda", done.returncode == 0, done.stderr.strip().splitlines()[-1] if done.returncode else "ok")
    best = cli("best", "gpu-digits", "--storage", storage, "--json", out=out, name="best")
    data = json.loads(best.stdout)
    print(json.dumps(data, indent=1)[:2500])
    energy = data.get("energy_per_sample_joules")
    check("tune: energy per sample read from NVML", energy is not None, f"{energy} J/sample")


def bench(out: Path) -> None:
    runs = (("bench", ["--precision", "fp32,bf16", "--compile", "off,on"]),
            ("bench_fp16", ["--precision", "fp16", "--compile", "off"]))
    for name, options in runs:
        done = cli("bench", DIGITS, "--devices", "cuda:0", "--seconds", "1", *options, out=out, name=name,
                   timeout=400)
        print(done.stdout[-3000:])
        shown = cli("bench", DIGITS, "--devices", "cuda:0", "--seconds", "1", "--json", *options, out=out,
                    name=f"{name}_json", timeout=400)
        data = json.loads(shown.stdout)
        rows = data["rows"]
        check(f"{name}: every mode ran", all(r["ok"] for r in rows), "; ".join(
            f"{r['mode']}: {r.get('failure') or round(r['throughput'])}" for r in rows))
        good = [r for r in rows if r["ok"]]
        check(f"{name}: MFU in (0, 1]", all(0 < (r["mfu"] or 0) <= 1 for r in good),
              ", ".join(f"{r['mode']} {r['mfu']}" for r in good))
        check(f"{name}: energy per sample from NVML", all(r["energy_per_sample_joules"] for r in good),
              ", ".join(f"{r['mode']} {r['energy_per_sample_joules']} ({r.get('energy_note')})" for r in good))
        check(f"{name}: device peak memory", all(r["peak_memory_kind"] == "device allocator" for r in good),
              ", ".join(f"{r['mode']} {r['peak_memory_bytes']}" for r in good))


def tune_precision_compile(out: Path) -> None:
    space = out / "precision_space.yaml"
    space.write_text("precision:\n  choices: [fp32, bf16, fp16]\ncompile:\n  choices: [false, true]\n"
                     "optimizers:\n  adam: {}\n")
    storage = f"sqlite:///{out / 'gpu_precision.db'}"
    done = cli("tune", DIGITS, "--device", "cuda:0", "--trials", "6", "--trial-steps", "60", "--study", "gpu-prec",
               "--storage", storage, "--search-space", str(space), "--no-range-test", out=out,
               name="tune_precision", timeout=400)
    print(done.stdout[-2000:])
    check("tune with precision and compile on cuda", done.returncode == 0,
          done.stderr.strip().splitlines()[-1] if done.returncode else "ok")


def tune_global_batch(out: Path) -> None:
    storage = f"sqlite:///{out / 'gpu_global.db'}"
    done = cli("tune", WIDE, "--device", "cuda:0", "--trials", "3", "--trial-steps", "20", "--study", "gpu-global",
               "--storage", storage, "--memory-limit", "1GiB", "--global-batch", "1024", "--no-range-test",
               "--json", out=out, name="tune_global", timeout=400)
    data = json.loads(done.stdout) if done.returncode == 0 else {}
    check("tune --global-batch 1024 over a 1 GiB ceiling", done.returncode == 0 and data.get("batch_size") == 1024,
          f"{data.get('accumulation')} {done.stderr.strip().splitlines()[-1] if done.returncode else ''}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="gpu_check_results")
    parser.add_argument("--cap", default="2GiB", help="caching-allocator cap for the verified fit")
    parser.add_argument("--device", default="cuda:0", help="cpu for a dry run of the fit check")
    parser.add_argument("--skip", action="append", default=[],
                        help="probe, fit, free, tune, bench, precision, global")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    for name, body in (("probe", lambda: probe(out)), ("fit", lambda: fit_verified(out, args.cap, args.device)),
                       ("free", lambda: fit_free_memory(out)), ("tune", lambda: tune(out)),
                       ("bench", lambda: bench(out)), ("precision", lambda: tune_precision_compile(out)),
                       ("global", lambda: tune_global_batch(out))):
        if name not in args.skip:
            print(f"=== {name} ===", flush=True)
            step(name, body)
    print(f"=== {len(FAILURES)} failed: {FAILURES}" if FAILURES else "=== all checks passed", flush=True)
    sys.exit(1 if FAILURES else 0)


if __name__ == "__main__":
    main()
