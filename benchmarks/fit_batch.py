"""Batch-size finders side by side under the same real memory cap: autotune, Lightning, accelerate.

Every finder runs in its own fresh process. The peers (Lightning's ``Tuner.scale_batch_size`` in ``power`` and
``binsearch`` mode, accelerate's ``find_executable_batch_size``) search in-process, so their process is capped
with ``RLIMIT_AS`` at its start (after the frameworks are imported, as autotune's workers do): an
out-of-memory is a real allocation failure, and they keep running in that process after it. autotune is called
from a normal, uncapped process; its probes run in capped workers of their own. Every capped process pins
glibc's mmap threshold and a single malloc arena first (`autotune.procmem`), as autotune's capped workers do.

The true largest batch is found once per model and cap by exhaustive search (doubling, then bisection over
every integer) with a fresh capped autotune worker per size, each running three or four training steps and an
evaluation batch (`TRUTH_STEPS`: longer than autotune's one-step probe), and cached in ``benchmarks/.cache/``.

    .venv/bin/python benchmarks/fit_batch.py            # both models, Markdown tables on stdout
    .venv/bin/python benchmarks/fit_batch.py --quick    # the cheap model only
    .venv/bin/python benchmarks/fit_batch.py --model wide --cap 2.5GiB --recompute

Counted training steps: peers count the train steps they start (a counter in ``training_step`` / the decorated
function; an OOM'd step counts) and the evaluation batches; autotune runs, per probe, one evaluation batch and
one train step after allocating the optimizer's state, plus a second, timed step where the first was too short to
time (`autotune.training.measure_probe`); an OOM'd probe counts one train step.

On an NVIDIA GPU (``--device cuda:0``) the cap is the caching allocator's limit
(``torch.cuda.set_per_process_memory_fraction``) in every process, the finders' and the truth search's alike: an
out-of-memory is CUDA's own. Data stays on the host and moves per batch in every finder.

    python benchmarks/fit_batch.py --device cuda:0 --model wide --cap 2GiB --recompute

This file is also a worker: ``--peer NAME`` runs one finder and writes its result as JSON (used internally).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "benchmarks" / ".cache" / "fit_batch_truth.json"
GIB = 1024 ** 3
MIB = 1024 ** 2

MODELS = {
    "hungry": {"task": "tests/tasks/torch_tasks.py:hungry", "cap": "1GiB",
               "about": "tests/tasks/torch_tasks.py:hungry (Linear 16→8192, 6× tanh; cheap, memory-hungry)", "cheap": True},
    "wide": {"task": "examples/torch_wide_images.py", "cap": "2.5GiB",
             "about": "examples/torch_wide_images.py (3 convs on 32×32 images, oneDNN convolutions)"},
}
TRUTH_STEPS = 3
"""Timed training steps of the truth search's run at each size (`autotune.training.measure_probe` with
``steps=3``: a step, an evaluation batch, then two or three more steps): a longer run than autotune's probe,
so that a probe that under-measured would show as an answer over the truth."""
ACCELERATE = "accelerate find_executable_batch_size"
FINDERS = {
    "autotune": "autotune fit_batch_size",
    "lightning-power": "Lightning scale_batch_size power",
    "lightning-binsearch": "Lightning scale_batch_size binsearch",
    "accelerate": ACCELERATE,
}
# The peers' own OOM recognisers, copied from their sources only to label results (nothing in them is patched):
# lightning.pytorch.utilities.memory.is_oom_error, accelerate.utils.memory.should_reduce_batch_size.
LIGHTNING_OOM = ("DefaultCPUAllocator: can't allocate memory", "CUDA out of memory.")
ACCELERATE_OOM = (" out of memory.", "DefaultCPUAllocator: can't allocate memory")


# --------------------------------------------------------------------------------------------------------------
# Worker side: one finder in this (fresh) process.
# --------------------------------------------------------------------------------------------------------------

class Recorder:
    """The worker's result, rewritten (atomically) at every change, so a crash still leaves what happened."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.data: dict[str, Any] = {"status": "started", "trials": [], "train_steps": 0, "eval_batches": 0}

    def update(self, **values: Any) -> None:
        self.data.update(values)
        self.flush()

    def step(self, batch_size: int, kind: str) -> None:
        trials = self.data["trials"]
        if not trials or trials[-1]["batch"] != batch_size or trials[-1].get("closed"):
            trials.append({"batch": batch_size, "train": 0, "eval": 0})
        trials[-1][kind] += 1
        self.data["train_steps" if kind == "train" else "eval_batches"] += 1
        self.flush()

    def close_trial(self) -> None:
        if self.data["trials"]:
            self.data["trials"][-1]["closed"] = True

    def flush(self) -> None:
        try:
            tmp = f"{self.path}.tmp"
            with open(tmp, "w", encoding="utf-8") as handle:
                json.dump(self.data, handle)
            os.replace(tmp, self.path)
        except (OSError, MemoryError):
            pass


def _short(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:160]


def _cap_this_process(rec: Recorder, cap: int, equal_headroom_base: int | None) -> None:
    """Pin glibc's mmap threshold (as autotune's workers do), then cap the address space."""
    import resource

    from autotune.procmem import process_memory, return_freed_memory_at_once, single_malloc_arena

    pinned = return_freed_memory_at_once()
    single_malloc_arena()  # as autotune's capped workers do: one malloc arena, reproducible peaks
    mapped = process_memory()["address_space"]
    extra = max(0, mapped - equal_headroom_base) if equal_headroom_base else 0
    rec.update(mapped_at_start=mapped, cap=cap + extra, cap_extra=extra, mmap_threshold_pinned=pinned)
    resource.setrlimit(resource.RLIMIT_AS, (cap + extra, cap + extra))


def _cap_gpu(rec: Recorder, cap: int, device: str) -> None:
    """Cap torch's caching allocator on ``device`` at ``cap`` bytes, as autotune's GPU probes do."""
    import torch

    index = torch.device(device).index or 0
    total = torch.cuda.get_device_properties(index).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, cap / total), index)
    rec.update(cap=cap, device_total=total)


def _peer_autotune(rec: Recorder, task_ref: str, cap: int, device: str) -> None:
    import torch  # noqa: F401 - a user calling autotune from a training script has torch imported

    import autotune

    started = time.perf_counter()
    fit = autotune.fit_batch_size(task_ref, device=device, memory_limit=cap, margin=0.0)
    seconds = time.perf_counter() - started
    probes = [{"batch": p.batch_size, "fits": p.fits, "oom": p.oom, "seconds": round(p.seconds, 2),
               "peak_mib": None if p.peak_memory_bytes is None else round(p.peak_memory_bytes / MIB, 1),
               "reason": p.reason[:120]} for p in fit.probes]
    for index, probe in enumerate(probes):  # what the memory model predicted after each probe
        model = autotune.MemoryModel.local(fit.probes[:index + 1])
        probe["predicted_after"] = None if model is None else round(model.largest_under(cap))
    rec.update(status="ok", batch=fit.batch_size, seconds=seconds, ooms=fit.ooms, probes=probes,
               train_steps=sum(max(1, p.train_steps) for p in fit.probes), eval_batches=len(probes),
               granularity=fit.granularity,
               model=None if fit.model is None else fit.model.describe())


def _task_and_data(task_ref: str) -> tuple[Any, Any]:
    import torch

    import autotune

    task = autotune.load_task(task_ref)
    if task.backend != "torch" or task.loss != "cross_entropy":
        raise SystemExit(f"{task_ref}: the peers here are written for torch tasks with a cross-entropy loss")
    data = task.load_data()
    tensors = tuple(torch.from_numpy(a) for a in (data.x_train, data.y_train, data.x_val, data.y_val))
    return task, tensors


def _peer_lightning(rec: Recorder, task_ref: str, mode: str, device: str) -> None:
    import logging
    import tempfile

    import lightning.pytorch as L
    import torch
    import torch.nn.functional as F
    from lightning.pytorch.tuner import Tuner
    from torch.utils.data import DataLoader, TensorDataset

    messages: list[str] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            text = record.getMessage()
            if "Batch size" in text or "batch size" in text:
                messages.append(text)
                if " failed, trying" in text:
                    rec.update(ooms=rec.data.get("ooms", 0) + 1)
                rec.close_trial()

    tuner_log = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    tuner_log.addHandler(Capture())
    tuner_log.setLevel(logging.INFO)
    logging.getLogger("lightning.pytorch").propagate = False
    for handler in logging.getLogger("lightning.pytorch").handlers:
        handler.setLevel(logging.WARNING)

    started = time.perf_counter()
    task, (x_train, y_train, x_val, y_val) = _task_and_data(task_ref)

    class Wrapped(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.net = task.model()
            self.batch_size = 2

        def training_step(self, batch: Any, _index: int) -> Any:
            rec.step(self.batch_size, "train")
            x, y = batch
            return F.cross_entropy(self.net(x), y)

        def validation_step(self, batch: Any, _index: int) -> Any:
            rec.step(self.batch_size, "eval")
            x, y = batch
            return F.cross_entropy(self.net(x), y)

        def configure_optimizers(self) -> Any:
            return torch.optim.Adam(self.parameters(), lr=1e-3)

        def train_dataloader(self) -> Any:
            return DataLoader(TensorDataset(x_train, y_train), batch_size=self.batch_size, shuffle=True)

        def val_dataloader(self) -> Any:
            return DataLoader(TensorDataset(x_val, y_val), batch_size=self.batch_size)

    model = Wrapped()
    with tempfile.TemporaryDirectory() as root:
        on_gpu = device.startswith("cuda")
        trainer = L.Trainer(accelerator="gpu" if on_gpu else "cpu",
                            devices=[torch.device(device).index or 0] if on_gpu else 1, max_epochs=1, logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False, default_root_dir=root)
        # margin=0.0: the same as autotune's margin=0.0 here (binsearch's default 0.05 would cut its answer 5 %)
        extra = {"margin": 0.0} if mode == "binsearch" else {}
        try:
            found = Tuner(trainer).scale_batch_size(model, mode=mode, **extra)
        finally:
            rec.update(messages=messages[-40:], seconds=time.perf_counter() - started)
    rec.update(status="ok", batch=found, seconds=time.perf_counter() - started)


def _peer_accelerate(rec: Recorder, task_ref: str, start: int | None, device: str) -> None:
    import torch
    import torch.nn.functional as F
    from accelerate.utils import find_executable_batch_size
    from torch.utils.data import DataLoader, TensorDataset

    started = time.perf_counter()
    task, (x_train, y_train, x_val, y_val) = _task_and_data(task_ref)
    if start is None:  # the largest power of two the training set can fill: larger sizes only repeat the same batch
        start = 2 ** (len(x_train).bit_length() - 1)
    rec.update(starting_batch_size=start)
    attempts = []

    @find_executable_batch_size(starting_batch_size=start)
    def attempt(batch_size: int) -> int:
        attempts.append(batch_size)
        rec.close_trial()
        rec.update(ooms=len(attempts) - 1)
        torch.manual_seed(0)
        net = task.model().to(device)
        optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
        batches = iter(DataLoader(TensorDataset(x_train, y_train), batch_size=batch_size, shuffle=True))

        def train_step() -> None:
            rec.step(batch_size, "train")
            x, y = (t.to(device) for t in next(batches))
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(net(x), y).backward()
            optimizer.step()

        train_step()
        net.eval()
        with torch.no_grad():
            rec.step(batch_size, "eval")
            F.cross_entropy(net(x_val[:batch_size].to(device)), y_val[:batch_size].to(device))
        net.train()
        train_step()
        return batch_size

    try:
        found = attempt()
    finally:
        rec.update(seconds=time.perf_counter() - started, attempts=attempts)
    rec.update(status="ok", batch=found)


def peer_main(args: argparse.Namespace) -> None:
    import warnings

    warnings.filterwarnings("ignore")
    rec = Recorder(args.result)
    rec.update(finder=args.peer)
    try:
        if args.peer == "autotune":
            _peer_autotune(rec, args.task, args.cap_bytes, args.device)
            return
        import torch  # noqa: F401
        import torch._dynamo  # noqa: F401 - Adam imports it on first use; autotune's workers preload it too

        if args.peer.startswith("lightning"):
            import lightning.pytorch  # noqa: F401
        else:
            import accelerate.utils  # noqa: F401
        import autotune.procmem  # noqa: F401
        import autotune.task  # noqa: F401

        if args.device.startswith("cuda"):
            _cap_gpu(rec, args.cap_bytes, args.device)
        else:
            _cap_this_process(rec, args.cap_bytes, args.headroom_base)
        if args.peer == "lightning-power":
            _peer_lightning(rec, args.task, "power", args.device)
        elif args.peer == "lightning-binsearch":
            _peer_lightning(rec, args.task, "binsearch", args.device)
        elif args.peer == "accelerate":
            _peer_accelerate(rec, args.task, args.accelerate_start, args.device)
        else:
            raise SystemExit(f"unknown peer {args.peer}")
    except BaseException as exc:  # noqa: BLE001 - the error is the finding: record it
        rec.update(status="error", error=_short(exc))
        if isinstance(exc, KeyboardInterrupt):
            raise


# --------------------------------------------------------------------------------------------------------------
# Parent side: truth, runs, table.
# --------------------------------------------------------------------------------------------------------------

def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _absolute_ref(ref: str) -> str:
    path, _, attr = ref.partition(":")
    full = str((ROOT / path).resolve())
    return f"{full}:{attr}" if attr else full


def _cache_key(ref: str, cap: int, device: str) -> str:
    import torch

    path = ROOT / ref.partition(":")[0]
    digest = hashlib.sha1(path.read_bytes()).hexdigest()[:12]
    where = "" if device == "cpu" else f"|device={device}:{torch.cuda.get_device_name(torch.device(device))}"
    return f"{ref}|cap={cap}|file={digest}|torch={torch.__version__}|adam,eval+{TRUTH_STEPS}steps,seed=0{where}"


def _probe_once(ref: str, batch: int, cap: int, device: str = "cpu") -> tuple[bool, str]:
    from autotune.backends import get_backend
    from autotune.memory import _probe_run
    from autotune.runner import run_in_worker

    backend = get_backend("torch")
    on_gpu = device != "cpu"
    kwargs = dict(task=_absolute_ref(ref), batch_size=batch, device=device,
                  optimizer=backend.validate_optimizer({"name": "adam"}), steps=TRUTH_STEPS, seed=0,
                  device_memory_limit=cap if on_gpu else None)
    from autotune.task import load_task

    preload = backend.worker_preload(load_task(_absolute_ref(ref)))  # workers started as autotune starts its own
    outcome = run_in_worker(_probe_run, kwargs, memory_limit=None if on_gpu else cap, timeout=600, preload=preload)
    return outcome.ok, "" if outcome.ok else f"{outcome.kind}: {outcome.message[:120]}"


def _worker_baseline() -> int:
    """Address space an autotune worker maps when the cap is applied (framework loaded, nothing run)."""
    from autotune.backends import get_backend
    from autotune.procmem import process_memory
    from autotune.runner import run_in_worker

    outcome = run_in_worker(process_memory, {}, preload=get_backend("torch").preload_modules())
    return int(outcome.value["address_space"])


def _search(fits: Any, low: int, high: int) -> int:
    """Bisection between a size seen to fit (``low``) and one seen to fail (``high``), to one sample."""
    while high - low > 1:
        middle = (low + high) // 2
        if fits(middle):
            low = middle
        else:
            high = middle
    return low


def true_largest(ref: str, cap: int, recompute: bool, verify: bool, device: str = "cpu") -> dict[str, Any]:
    """Largest batch that runs under ``cap``: doubling from 8, then bisection to one sample, then a re-check.

    Cached per model, cap, task file and torch version. A cached answer is re-verified (it fits, one more does
    not: two capped runs) unless ``verify`` is off, and searched again near the old answer if either run
    disagrees: under an address-space cap the boundary moves between sessions (see the report).
    """
    cache = json.loads(CACHE.read_text()) if CACHE.exists() else {}
    key = _cache_key(ref, cap, device)
    from autotune.task import load_task

    n_train = load_task(_absolute_ref(ref)).load_data().n_train
    started = time.perf_counter()
    probes: list[dict[str, Any]] = []

    def fits(batch: int) -> bool:
        if batch > n_train:
            return False
        tick = time.perf_counter()
        ok, why = _probe_once(ref, batch, cap, device)
        probes.append({"batch": batch, "fits": ok, "seconds": round(time.perf_counter() - tick, 2), "why": why})
        _say(f"  truth {ref} @ {cap / GIB:g} GiB: batch {batch} {'fits' if ok else 'fails (' + why + ')'}")
        return ok

    cached = cache.get(key)
    if cached and not recompute:
        if not verify:
            return {**cached, "verified": "not re-verified (--no-verify)"}
        old = cached["true_largest"]
        if fits(old):
            if not fits(old + 1):
                result = {**cached, "verified": f"re-verified this run: {old} fits, {old + 1} fails"}
                return result
            step = 8
            while fits(old + step):
                step *= 2
            low = _search(fits, old + step // 2 if step > 8 else old + 1, old + step)
        else:
            step = 8
            while old - step > 0 and not fits(old - step):
                step *= 2
            if old - step <= 0:
                raise SystemExit(f"{ref}: nothing near the cached true largest {old} fits now; run with --recompute")
            low = _search(fits, old - step, old - step // 2 if step > 8 else old)
        result = {**cached, "true_largest": low, "verified": f"moved this run: cached {old}, now {low}",
                  "history": cached.get("history", []) + [old], "probes": cached["probes"] + probes}
    else:
        low, high = 0, n_train + 1
        batch = 8
        while batch < high:
            if fits(batch):
                low = batch
                batch = min(batch * 2, n_train) if batch < n_train else high
            else:
                high = batch
                break
        if low == 0:
            raise SystemExit(f"{ref}: batch 8 does not fit under {cap / GIB:g} GiB; raise --cap")
        low = _search(fits, low, high)
        recheck = fits(low) and not fits(low + 1)
        result = {"task": ref, "cap": cap, "true_largest": low, "n_train": n_train, "rechecked": recheck,
                  "seconds": round(time.perf_counter() - started, 1), "probes": probes,
                  "worker_mapped_at_start": _worker_baseline() if device == "cpu" else None,
                  "device": device, "verified": "searched this run"}
    CACHE.parent.mkdir(parents=True, exist_ok=True)
    cache = json.loads(CACHE.read_text()) if CACHE.exists() else {}
    cache[key] = {k: v for k, v in result.items() if k != "verified"}
    CACHE.write_text(json.dumps(cache, indent=1))
    return result


def run_finder(name: str, ref: str, cap: int, *, equal_headroom: int | None = None,
               accelerate_start: int | None = None, device: str = "cpu", timeout: float = 900) -> dict[str, Any]:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        result_path = os.path.join(tmp, "result.json")
        command = [sys.executable, str(Path(__file__).resolve()), "--peer", name, "--task", _absolute_ref(ref),
                   "--cap-bytes", str(cap), "--result", result_path, "--device", device]
        if equal_headroom:
            command += ["--headroom-base", str(equal_headroom)]
        if accelerate_start:
            command += ["--accelerate-start", str(accelerate_start)]
        tick = time.perf_counter()
        try:
            done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                                  env={**os.environ, "PYTHONWARNINGS": "ignore"})
            returncode, tail = done.returncode, (done.stderr or "")[-600:]
        except subprocess.TimeoutExpired:
            returncode, tail = None, f"timed out after {timeout:g} s"
        process_seconds = time.perf_counter() - tick
        data = json.loads(Path(result_path).read_text()) if Path(result_path).exists() else {"status": "no result"}
    data["process_seconds"] = process_seconds
    data["returncode"] = returncode
    if data.get("status") not in ("ok", "error"):
        how = "timed out" if returncode is None else (
            f"killed by signal {-returncode}" if returncode < 0 else f"exit code {returncode}")
        data["status"] = "crash"
        data["error"] = f"process {how} mid-search; " + " ".join(tail.split())[-200:]
    return data


def _last_success(data: dict[str, Any], steps: int) -> int | None:
    """The largest batch whose trial ran all its train steps (for a peer that stopped with an error)."""
    sizes = [t["batch"] for t in data.get("trials", []) if t["train"] >= steps]
    return max(sizes) if sizes else None


def _looks_like_oom(error: str) -> bool:
    return any(text in error for text in ("could not create a primitive", "can't allocate", "MemoryError",
                                          "out of memory", "killed by signal"))


def _label_error(name: str, data: dict[str, Any]) -> str:
    error = data.get("error", "")
    known = LIGHTNING_OOM if name.startswith("lightning") else ACCELERATE_OOM if name == "accelerate" else ()
    if any(text in error for text in known):
        return f"stopped: {error}"
    if _looks_like_oom(error):
        return f"stopped on a CPU OOM it does not recognise: {error}"
    return f"stopped: {error}"


def table(model: str, cap: int, truth: dict[str, Any], rows: list[tuple[str, str, dict[str, Any]]],
          device: str = "cpu") -> str:
    true = truth["true_largest"]
    base = next((d for n, _, d in rows if n == "lightning-power" and not d.get("cap_extra")), None)
    base_seconds = base.get("seconds") if base and base.get("status") == "ok" else None
    lines = [
        f"### {MODELS.get(model, {}).get('about', model)} — {_where(device)}cap {cap / GIB:g} GiB, "
        f"true largest {true}",
        "",
        "| finder | batch found | % of true largest | wall time (s) | train steps (+ eval batches) | OOMs hit "
        "| wall / Lightning power | result |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    notes = []
    for name, label, data in rows:
        steps_needed = 3 if name.startswith("lightning") else 2
        batch = data.get("batch") if data.get("status") == "ok" else None
        if data.get("status") == "ok":
            result = "ok"
            if batch is not None and batch > true and not data.get("cap_extra"):
                result = "ok (above the true largest?)"
        else:
            result = _label_error(name, data)
            last = _last_success(data, steps_needed)
            if last:
                result += f" (largest size it had run: {last})"
        seconds = data.get("seconds")
        ratio = f"{seconds / base_seconds:.2f}" if seconds and base_seconds else "–"
        percent = f"{100 * batch / true:.1f} %" if batch else "–"
        steps = f"{data.get('train_steps', 0)} (+ {data.get('eval_batches', 0)})"
        ooms = data.get("ooms", 0)
        if data.get("status") != "ok" and _looks_like_oom(data.get("error", "")):
            ooms += 1  # the OOM that stopped it
        shown_batch = batch if batch is not None else "–"
        time_text = f"{seconds:.1f}" if seconds is not None else "–"
        if data.get("cap_extra"):
            label = f"{label}, cap +{data['cap_extra'] / MIB:.0f} MiB (equal headroom)"
        lines.append(f"| {label} | {shown_batch} | {percent} | {time_text} | {steps} | {ooms} | {ratio} | {result} |")
        notes.append(_details(name, label, data))
    worker_base = truth.get("worker_mapped_at_start")
    lines += ["", f"True largest: {true} (exhaustive search by doubling and bisection, one fresh capped autotune "
                  f"worker per size, {len(truth['probes'])} runs; {truth.get('verified')})."
                  + (f" An autotune worker maps {worker_base / MIB:.0f} MiB before its first step." if worker_base
                     else "")
                  + " Wall time: the finder's call in its own fresh process, frameworks already imported "
                  "(autotune's includes starting its worker server)."]
    goal = _goal(rows, true, base_seconds)
    fair = next((d for n, _, d in rows if n == "lightning-power" and d.get("cap_extra")), None)
    if goal and fair and fair.get("status") == "ok" and base_seconds:
        autotune_seconds = next(d["seconds"] for n, _, d in rows if n == "autotune")
        goal += (f". Against Lightning power with equal headroom ({fair['seconds']:.1f} s, batch {fair['batch']}): "
                 f"{autotune_seconds / fair['seconds']:.2f}× its wall time")
    if goal:
        lines += ["", goal]
    lines += [""] + [f"- {note}" for note in notes]
    return "\n".join(lines)


def _where(device: str) -> str:
    if device == "cpu":
        return ""
    import torch

    return f"{torch.cuda.get_device_name(torch.device(device))} ({device}), "


def _goal(rows: list[tuple[str, str, dict[str, Any]]], true: int, base_seconds: float | None) -> str:
    data = next((d for n, _, d in rows if n == "autotune"), None)
    if data is None or data.get("status") != "ok":
        return ""
    checks = [(100 * data["batch"] / true >= 95, f"{100 * data['batch'] / true:.1f} % of the true largest (goal ≥ 95 %)"),
              (data.get("ooms", 0) <= 1, f"{data.get('ooms')} OOM (goal ≤ 1)")]
    if base_seconds:
        checks.append((data["seconds"] <= base_seconds,
                       f"{data['seconds']:.1f} s vs Lightning power's {base_seconds:.1f} s (goal: no more)"))
    met = all(ok for ok, _ in checks)
    return (f"autotune against its goal: {'MET' if met else 'MISSED'} — "
            + "; ".join(f"{text} {'✓' if ok else '✗'}" for ok, text in checks))


def _details(name: str, label: str, data: dict[str, Any]) -> str:
    parts = [f"**{label}**: process {data.get('process_seconds', 0):.1f} s in all (imports included)"]
    if data.get("mapped_at_start"):
        parts.append(f"mapped {data['mapped_at_start'] / MIB:.0f} MiB when capped at {data['cap'] / MIB:.0f} MiB")
    if name == "autotune" and data.get("probes"):
        probes = ", ".join(
            f"{p['batch']}: {p['seconds']:.1f} s {'fits' if p['fits'] else ('OOM' if p['oom'] else 'over')}"
            + (f" → predicts {p['predicted_after']}" if p.get("predicted_after") else "")
            for p in data["probes"])
        parts.append(f"probes [batch: seconds, outcome → largest batch the local memory model predicts after it: "
                     f"{probes}]; final model {data.get('model')}; granularity {data.get('granularity')}")
    elif data.get("trials"):
        trials = ", ".join(f"{t['batch']}×{t['train']}" + (f"+{t['eval']}e" if t["eval"] else "")
                           for t in data["trials"])
        parts.append(f"trials (batch×train steps+eval) [{trials}]")
    if data.get("starting_batch_size"):
        parts.append(f"starting_batch_size {data['starting_batch_size']}")
    if data.get("error"):
        parts.append(f"error: {data['error']}")
    return "; ".join(parts)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu (capped address space) or cuda:N (capped caching "
                                                       "allocator)")
    parser.add_argument("--quick", action="store_true", help="the cheap model only (hungry)")
    parser.add_argument("--model", action="append", choices=sorted(MODELS), help="model(s) to run (default: all)")
    parser.add_argument("--cap", help="memory cap, e.g. 1GiB (default: per model)")
    parser.add_argument("--recompute", action="store_true", help="search the true largest again, ignoring the cache")
    parser.add_argument("--finders", default="autotune,lightning-power,lightning-binsearch,accelerate",
                        help="comma-separated subset of " + ",".join(FINDERS))
    headroom = parser.add_mutually_exclusive_group()
    headroom.add_argument("--equal-headroom", dest="headroom", action="store_const", const="on",
                          help="add Lightning rows whose cap is raised by Lightning's larger import footprint, for "
                               "every model (default: only for the cheap model)")
    headroom.add_argument("--no-equal-headroom", dest="headroom", action="store_const", const="off",
                          help="no equal-headroom Lightning rows")
    parser.add_argument("--no-verify", action="store_true", help="trust the cached true largest without re-checking it")
    parser.add_argument("--accelerate-start", type=int, help="accelerate's starting_batch_size "
                                                             "(default: largest power of two <= training samples)")
    # worker mode
    parser.add_argument("--peer", help=argparse.SUPPRESS)
    parser.add_argument("--task", help=argparse.SUPPRESS)
    parser.add_argument("--cap-bytes", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--headroom-base", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.peer:
        peer_main(args)
        return

    import autotune

    models = args.model or (["hungry"] if args.quick else list(MODELS))
    finders = [name.strip() for name in args.finders.split(",") if name.strip()]
    unknown = [name for name in finders if name not in FINDERS]
    if unknown:
        parser.error(f"unknown finder(s) {unknown}: use {', '.join(FINDERS)}")
    started = time.perf_counter()
    outputs = []
    for model in models:
        ref = MODELS[model]["task"]
        cap = autotune.parse_size(args.cap or MODELS[model]["cap"])
        _say(f"[{model}] true largest under {cap / GIB:g} GiB ...")
        truth = true_largest(ref, cap, args.recompute, not args.no_verify, args.device)
        _say(f"[{model}] true largest: {truth['true_largest']}")
        rows = []
        load_before = os.getloadavg()[0]
        plan = [(name, None) for name in finders]
        cheap_on_cpu = MODELS[model].get("cheap") and args.device == "cpu"
        if args.device == "cpu" and (args.headroom == "on" or (args.headroom is None and cheap_on_cpu)):
            plan += [(name, truth["worker_mapped_at_start"]) for name in finders if name.startswith("lightning")]
        for name, headroom in plan:
            _say(f"[{model}] {FINDERS[name]}{' (equal headroom)' if headroom else ''} ...")
            data = run_finder(name, ref, cap, equal_headroom=headroom, accelerate_start=args.accelerate_start,
                              device=args.device)
            _say(f"[{model}]   -> {data.get('status')} batch {data.get('batch')} in {data.get('seconds') or 0:.1f} s"
                 f"{'; ' + data['error'] if data.get('error') else ''}")
            rows.append((name, FINDERS[name], data))
        load_after = os.getloadavg()[0]
        outputs.append(table(model, cap, truth, rows, args.device) + f"\n\nLoad average (1 min) on this {os.cpu_count()}-CPU "
                       f"machine: {load_before:.1f} before the finders, {load_after:.1f} after.")
        print(outputs[-1] + "\n", flush=True)
    _say(f"benchmark done in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
