"""autotune on real models no one here wrote, side by side with its peers, in one run (issue 10, item 4).

Models (``--models``, comma-separated):

* ``gpt2``       a small GPT-2 from Hugging Face ``transformers`` (``examples/torch_gpt2.py``: random init, a
                 map-style Dataset of dict batches, the model computes its own loss);
* ``resnet``     a ResNet-shaped torch model with BatchNorm on 1,500 learnable 32×32 images
                 (``benchmarks/tasks/torch_resnet.py``);
* ``mobilenet``  Keras' own ``keras.applications.MobileNetV2(weights=None)`` at 32×32, softmax output
                 (``benchmarks/tasks/keras_mobilenet.py``);
* ``ms-resnet``  a ResNet-shaped ``mindspore.nn`` model (``benchmarks/tasks/mindspore_resnet.py``).

Two sections per model, each printed as a Markdown table:

**fit-batch** (``--skip-fit`` to leave out): ``autotune.fit_batch_size(task, memory_limit=CAP, margin=0)`` in
its own fresh process (`benchmarks.fit_batch.run_finder`), against Lightning's ``Tuner.scale_batch_size``
(``power`` and ``binsearch``, margin 0) and accelerate's ``find_executable_batch_size`` (torch models only),
each in a fresh process capped with ``RLIMIT_AS`` at CAP after its imports (the task's own modules
included, as autotune's workers preload them; `benchmarks.fit_batch.Recorder` and ``_cap_this_process``); the
peers here take any torch task (Dataset or arrays, ``compute_loss`` or a named loss). Columns: batch found, %
of the true largest, wall seconds, OOMs, wall / Lightning power. The true largest is a real run of
`benchmarks.fit_batch.TRUTH_STEPS` training steps and an evaluation batch in a fresh capped autotune worker
per size: ``--truth near`` (default) brackets it next to autotune's answer (that size, one more, the size of
which autotune's answer would be 95 %, then bisection, at most ``--truth-probes`` runs); ``--truth exhaustive``
doubles from 8 and bisects to one sample; ``--no-truth`` skips it. Every run is cached in
``benchmarks/.cache/real_models_truth.json`` (per task file, cap and framework version) and reused.

**tune** (``--skip-tune`` to leave out): ``autotune.tune(task, n_trials=--trials, trial_time=--trial-time,
memory_limit=CAP, confirm=--confirm)`` in a fresh Python process, as a user's script runs it (a fresh SQLite
study; its ceiling fit and range test included; the confirm re-runs, default 0, only where asked), against a
plain Optuna TPE loop (`benchmarks.search.PlainSpace` and `benchmarks.search.train`: the same training code, in this
process, over the same optimizers and parameter ranges and the batch sizes up to autotune's fitted ceiling,
no range test, no lr scaling, no pruning) given the same total wall time (Optuna's ``timeout``). Columns: wall,
the task's own load (`task_load_seconds`: its framework and model-library imports and their teardown at exit, in a
fresh process, which any way of training the model pays; the plain loop runs after it), trials, engine overhead =
(wall − task load − Σ trials' training seconds) / Σ training seconds (a complete trial's
``measured.train_seconds``; a pruned one's training up to its last report, from its stored history; the column
after it adds, for studies stored without that history, the last stored report / 8 × trial time), the phases
(``study.user_attrs["phases"][-1]``), and the pick re-scored from scratch (`benchmarks.search.rescore`:
``--seeds`` fresh seeds, median, at a step budget: the steps the pick trained in its own tuning trial, at
least 5, or ``--rescore-steps``), and loss / plain loop.

Goals (issue 10): engine overhead ≤ 50 % of the trials' training time at 6 × 4 s; fit-batch ≥ 95 % of the true
largest with ≤ 1 OOM in no more time than Lightning ``power``; the pick at least as good as the plain loop's.

    .venv/bin/python benchmarks/real_models.py                                  # all models, both sections
    .venv/bin/python benchmarks/real_models.py --models gpt2 --no-truth --seeds 3 --json /tmp/gpt2.json
    .venv/bin/python benchmarks/real_models.py --models resnet,mobilenet,ms-resnet --skip-tune --cap 2GiB

Figures on a shared or small machine are noisy: the date, time and load average (``os.getloadavg``) are printed
at the start and the end. This file is also the peers' worker: ``--peer NAME`` runs one finder (internal).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import fit_batch as fb  # noqa: E402 - Recorder, run_finder, _cap_this_process, _search, ...

GIB = 1024 ** 3
CACHE = ROOT / "benchmarks" / ".cache" / "real_models_truth.json"
PEERS = ("lightning-power", "lightning-binsearch", "accelerate")
GOAL_SHARE = 0.95
STUDY = "real-models"
RESCORE_MIN_STEPS = 5
"""A pick is re-scored at the steps its own tuning trial trained, but at least this many."""


@dataclasses.dataclass(frozen=True)
class Model:
    task: str
    backend: str
    about: str


MODELS = {
    "gpt2": Model("examples/torch_gpt2.py", "torch",
                  "GPT-2 (transformers, 2 layers × 128, byte-level, 1,267 sequences of 128; Dataset of dict batches)"),
    "resnet": Model("benchmarks/tasks/torch_resnet.py", "torch",
                    "ResNet-shaped torch model (3 residual stages, BatchNorm; 1,200 + 300 images 32×32)"),
    "mobilenet": Model("benchmarks/tasks/keras_mobilenet.py", "tensorflow",
                       "keras.applications.MobileNetV2 (weights=None, 32×32, softmax output; 1,200 + 300 images)"),
    "ms-resnet": Model("benchmarks/tasks/mindspore_resnet.py", "mindspore",
                       "ResNet-shaped mindspore.nn model (3 residual stages, BatchNorm; 1,200 + 300 images 32×32)"),
}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def machine_line(when: str) -> str:
    one, five, fifteen = os.getloadavg()
    return (f"{when}: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}, load average {one:.2f} / {five:.2f} / {fifteen:.2f} "
            f"(1/5/15 min) on {os.cpu_count()} CPUs, {platform.node()}")


# --------------------------------------------------------------------------------------------------------------
# Peers (worker side): Lightning and accelerate on any torch task, in this fresh, capped process.
# --------------------------------------------------------------------------------------------------------------

def torch_parts(ref: str) -> tuple[Any, Any, Any, Callable[[Any, Any], Any]]:
    """``(task, train dataset, validation dataset, loss(model, batch))`` for any torch task, as a user of the
    peers would write them: arrays become a ``TensorDataset``; ``compute_loss`` or the task's named loss."""
    import torch
    from torch.utils.data import TensorDataset

    from autotune.backends.torch import named_loss
    from autotune.task import ArrayData, load_task

    task = load_task(ref)
    data = task.load_data()
    if isinstance(data, ArrayData):
        train = TensorDataset(torch.from_numpy(data.x_train), torch.from_numpy(data.y_train))
        val = TensorDataset(torch.from_numpy(data.x_val), torch.from_numpy(data.y_val))
    else:
        train, val = data

    def loss(model: Any, batch: Any) -> Any:
        if task.compute_loss is not None:
            return task.compute_loss(model, batch)
        x, y = batch
        function = named_loss(task.loss, model, task.from_logits) if isinstance(task.loss, str) else task.loss
        return function(model(x), y)

    return task, train, val, loss


def _lightning_ooms(rec: fb.Recorder) -> None:
    """Count the OOMs the Lightning tuner reports in its log ("Batch size N failed, trying ...")."""
    import logging

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            text = record.getMessage()
            if "atch size" in text:
                rec.update(messages=[*rec.data.get("messages", []), text][-40:],
                           ooms=rec.data.get("ooms", 0) + (" failed, trying" in text))
                rec.close_trial()

    tuner_log = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    tuner_log.addHandler(Capture())
    tuner_log.setLevel(logging.INFO)
    logging.getLogger("lightning.pytorch").propagate = False


def peer_lightning(rec: fb.Recorder, ref: str, mode: str) -> None:
    import lightning.pytorch as L
    import torch
    from lightning.pytorch.tuner import Tuner
    from torch.utils.data import DataLoader

    _lightning_ooms(rec)
    started = time.perf_counter()
    task, train, val, loss = torch_parts(ref)

    class Wrapped(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.net = task.model()
            self.batch_size = 2

        def training_step(self, batch: Any, _index: int) -> Any:
            rec.step(self.batch_size, "train")
            return loss(self.net, batch)

        def validation_step(self, batch: Any, _index: int) -> Any:
            rec.step(self.batch_size, "eval")
            return loss(self.net, batch)

        def configure_optimizers(self) -> Any:
            return torch.optim.Adam(self.parameters(), lr=1e-3)

        def train_dataloader(self) -> Any:
            return DataLoader(train, batch_size=self.batch_size, shuffle=True)

        def val_dataloader(self) -> Any:
            return DataLoader(val, batch_size=self.batch_size)

    with tempfile.TemporaryDirectory() as root:
        trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=1, logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False, default_root_dir=root)
        extra = {"margin": 0.0} if mode == "binsearch" else {}  # as autotune's margin=0 here
        try:
            found = Tuner(trainer).scale_batch_size(Wrapped(), mode=mode, **extra)
        finally:
            rec.update(seconds=time.perf_counter() - started)
    rec.update(status="ok", batch=found, seconds=time.perf_counter() - started)


def peer_accelerate(rec: fb.Recorder, ref: str) -> None:
    import torch
    from accelerate.utils import find_executable_batch_size
    from torch.utils.data import DataLoader

    started = time.perf_counter()
    task, train, val, loss = torch_parts(ref)
    start = 2 ** (len(train).bit_length() - 1)  # the largest power of two the training set can fill
    rec.update(starting_batch_size=start)

    @find_executable_batch_size(starting_batch_size=start)
    def attempt(batch_size: int) -> int:
        rec.close_trial()
        rec.update(attempts=[*rec.data.get("attempts", []), batch_size])
        rec.update(ooms=len(rec.data["attempts"]) - 1)
        torch.manual_seed(0)
        net = task.model()
        optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
        batches = iter(DataLoader(train, batch_size=batch_size, shuffle=True))

        def train_step() -> None:
            rec.step(batch_size, "train")
            optimizer.zero_grad(set_to_none=True)
            loss(net, next(batches)).backward()
            optimizer.step()

        train_step()
        net.eval()
        with torch.no_grad():
            rec.step(batch_size, "eval")
            loss(net, next(iter(DataLoader(val, batch_size=batch_size))))
        net.train()
        train_step()
        return batch_size

    try:
        found = attempt()
    finally:
        rec.update(seconds=time.perf_counter() - started)
    rec.update(status="ok", batch=found)


def peer_main(args: argparse.Namespace) -> None:
    import warnings

    warnings.filterwarnings("ignore")
    rec = fb.Recorder(args.result)
    rec.update(finder=args.peer)
    try:
        import torch  # noqa: F401
        import torch._dynamo  # noqa: F401 - Adam imports it on first use; autotune's workers preload it too

        if args.peer.startswith("lightning"):
            import lightning.pytorch  # noqa: F401
        else:
            import accelerate.utils  # noqa: F401
        from autotune.task import load_task

        load_task(args.task)  # the task's modules (transformers) before the cap, as autotune's workers preload them
        fb._cap_this_process(rec, args.cap_bytes, None)
        if args.peer == "accelerate":
            peer_accelerate(rec, args.task)
        else:
            peer_lightning(rec, args.task, args.peer.split("-", 1)[1])
    except BaseException as exc:  # noqa: BLE001 - the error is the finding: record it
        rec.update(status="error", error=fb._short(exc))
        if isinstance(exc, KeyboardInterrupt):
            raise


# --------------------------------------------------------------------------------------------------------------
# fit-batch (parent side)
# --------------------------------------------------------------------------------------------------------------

def run_peer(name: str, ref: str, cap: int, timeout: float) -> dict[str, Any]:
    """One peer in a fresh process running this file with ``--peer``; its recorded result (or how it died)."""
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "result.json"
        command = [sys.executable, str(Path(__file__).resolve()), "--peer", name, "--task", fb._absolute_ref(ref),
                   "--cap-bytes", str(cap), "--result", str(result)]
        try:
            done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                                  env={**os.environ, "PYTHONWARNINGS": "ignore"})
            code = done.returncode
            how = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
            died = None if code == 0 else f"{how} ({' '.join(done.stderr.split())[-160:]})"
        except subprocess.TimeoutExpired:
            died = f"timed out after {timeout:g} s"
        data = json.loads(result.read_text()) if result.exists() else {"status": "no result"}
    if data.get("status") not in ("ok", "error"):
        data.update(status="crash", error=f"process {died or 'ended'} mid-search")
    return data


def fits_once(ref: str, batch: int, cap: int) -> tuple[bool, str]:
    """A fresh capped autotune worker runs `fb.TRUTH_STEPS` steps and an evaluation batch at ``batch``
    (`fb._probe_once`, for any backend)."""
    from autotune.backends import get_backend
    from autotune.memory import _probe_run
    from autotune.runner import run_in_worker
    from autotune.task import load_task

    task = load_task(fb._absolute_ref(ref))
    backend = get_backend(task.backend)
    kwargs = dict(task=task.reference, batch_size=batch, device="cpu",
                  optimizer=backend.validate_optimizer({"name": "adam"}), steps=fb.TRUTH_STEPS, seed=0,
                  device_memory_limit=None)
    outcome = run_in_worker(_probe_run, kwargs, memory_limit=cap, timeout=900, preload=backend.worker_preload(task))
    return outcome.ok, "" if outcome.ok else f"{outcome.kind}: {outcome.message[:120]}"


class Truth:
    """What fresh capped runs have shown for one task and cap: sizes that fit, sizes that failed (cached)."""

    def __init__(self, model: Model, cap: int, n_train: int) -> None:
        self.ref, self.cap, self.n_train = model.task, cap, n_train
        self.key = self._key(model, cap)
        cached = self._cache().get(self.key, {})
        self.runs: list[dict[str, Any]] = cached.get("runs", [])
        self.new = 0

    @staticmethod
    def _key(model: Model, cap: int) -> str:
        from autotune.backends import framework_module, get_backend

        digest = hashlib.sha1((ROOT / model.task).read_bytes()).hexdigest()[:12]
        version = get_backend(model.backend).version()
        return f"{model.task}|cap={cap}|file={digest}|{framework_module(model.backend)}={version}|adam+{fb.TRUTH_STEPS}"

    @staticmethod
    def _cache() -> dict[str, Any]:
        return json.loads(CACHE.read_text()) if CACHE.exists() else {}

    @property
    def low(self) -> int:
        return max((r["batch"] for r in self.runs if r["fits"]), default=0)

    @property
    def high(self) -> int:
        """The smallest size seen to fail (past the training set: it cannot be a batch)."""
        return min((r["batch"] for r in self.runs if not r["fits"]), default=self.n_train + 1)

    @property
    def exact(self) -> bool:
        return self.low > 0 and self.high == self.low + 1

    def fits(self, batch: int) -> bool:
        if batch > self.n_train:
            return False
        known = [r["fits"] for r in self.runs if r["batch"] == batch]
        if known:
            return known[-1]
        tick = time.perf_counter()
        ok, why = fits_once(self.ref, batch, self.cap)
        self.runs.append({"batch": batch, "fits": ok, "seconds": round(time.perf_counter() - tick, 1), "why": why})
        self.new += 1
        log(f"  truth: batch {batch} {'fits' if ok else 'fails (' + why + ')'} in {self.runs[-1]['seconds']} s")
        self.save()
        return ok

    def save(self) -> None:
        cache = self._cache()
        cache[self.key] = {"task": self.ref, "cap": self.cap, "runs": self.runs}
        CACHE.parent.mkdir(parents=True, exist_ok=True)
        CACHE.write_text(json.dumps(cache, indent=1))

    def near(self, answer: int, probes: int) -> None:
        """Bracket the true largest next to ``answer`` in at most ``probes`` new runs: the answer; if it fits, one
        more, then the size the answer would be 95 % of; if not, 95 % of it; then bisection."""
        budget = self.new + probes
        fitted = self.fits(answer)
        for size in ((answer + 1, math.ceil(answer / GOAL_SHARE)) if fitted else (math.floor(GOAL_SHARE * answer),)):
            if not self.exact and self.new < budget and self.low < size < self.high:
                self.fits(size)
        while not self.exact and self.low and self.new < budget:
            self.fits((self.low + self.high) // 2)

    def exhaustive(self) -> None:
        """Doubling from 8, then bisection to one sample (`fb._search`)."""
        batch = 8
        while batch < self.high and self.fits(batch):
            batch = min(2 * batch, self.n_train) if batch < self.n_train else self.high
        if self.low:
            fb._search(self.fits, self.low, self.high)

    def describe(self) -> str:
        if not self.runs:
            return "not searched"
        ordered = sorted(self.runs, key=lambda r: r["batch"])
        runs = ", ".join(f"{r['batch']} {'fits' if r['fits'] else 'fails'}" for r in ordered)
        where = (f"true largest {self.low}" if self.exact else
                 f"true largest in [{self.low}, {self.high - 1}]" if self.low else f"nothing fits below {self.high}")
        return f"{where} ({len(self.runs)} fresh capped runs, {self.new} this time: {runs})"

    def share(self, batch: int | None) -> str:
        if not batch or not self.low:
            return "–"
        if self.exact:
            return f"{100 * batch / self.low:.1f} %"
        top = self.high - 1 if self.high <= self.n_train else None
        best = 100 * batch / self.low
        return f"{100 * batch / top:.1f}–{best:.1f} %" if top else f"≤ {best:.1f} %"


def fit_rows(model: Model, cap: int, timeout: float) -> list[tuple[str, dict[str, Any]]]:
    rows = []
    for name in ("autotune", *(PEERS if model.backend == "torch" else ())):
        log(f"  {fb.FINDERS[name]} ...")
        data = (fb.run_finder(name, model.task, cap, timeout=timeout) if name == "autotune"
                else run_peer(name, model.task, cap, timeout))
        log(f"  -> {data.get('status')} batch {data.get('batch')} in {data.get('seconds') or 0:.1f} s"
            f"{'; ' + data['error'] if data.get('error') else ''}")
        rows.append((name, data))
    return rows


def fit_section(key: str, model: Model, cap: int, args: argparse.Namespace) -> dict[str, Any]:
    from autotune.task import load_task

    load_before = os.getloadavg()[0]
    rows = fit_rows(model, cap, args.fit_timeout)
    n_train = _n_train(load_task(fb._absolute_ref(model.task)))
    truth = Truth(model, cap, n_train)
    answer = rows[0][1].get("batch")
    if not args.no_truth:
        log(f"  true largest ({args.truth}) ...")
        if args.truth == "exhaustive":
            truth.exhaustive()
        elif answer:
            truth.near(int(answer), args.truth_probes)
    text = fit_table(key, model, cap, rows, truth, (load_before, os.getloadavg()[0]))
    return {"rows": [{"finder": n, **d} for n, d in rows], "truth": {"runs": truth.runs, "text": truth.describe()},
            "table": text}


def _n_train(task: Any) -> int:
    from autotune.backends import get_backend

    return get_backend(task.backend).data_size(task.load_data())[0]


def _ooms(name: str, data: dict[str, Any]) -> int:
    ooms = int(data.get("ooms") or 0)
    if data.get("status") != "ok" and fb._looks_like_oom(data.get("error", "")):
        ooms += 1  # the OOM that stopped it
    return ooms


def fit_table(key: str, model: Model, cap: int, rows: list[tuple[str, dict[str, Any]]], truth: Truth,
              load: tuple[float, float]) -> str:
    power = dict(rows).get("lightning-power", {})
    base = power.get("seconds") if power.get("status") == "ok" else None
    lines = [f"### fit-batch: {key} — {model.about}; cap {cap / GIB:g} GiB", "",
             "| finder | batch found | % of true largest | wall (s) | OOMs | wall / Lightning power | result |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for name, data in rows:
        batch = data.get("batch") if data.get("status") == "ok" else None
        result = "ok" if batch else fb._label_error(name, data)
        last = None if batch else fb._last_success(data, 3 if name.startswith("lightning") else 2)
        result += f" (largest size it had run: {last})" if last else ""
        seconds = data.get("seconds")
        lines.append(f"| {fb.FINDERS[name]} | {batch or '–'} | {truth.share(batch)} | "
                     f"{f'{seconds:.1f}' if seconds else '–'} | {_ooms(name, data)} | "
                     f"{f'{seconds / base:.2f}' if seconds and base else '–'} | {result} |")
    lines += ["", f"Truth: {truth.describe()}.", "", fit_goal(dict(rows).get("autotune", {}), truth, base),
              "", f"Load average (1 min): {load[0]:.1f} before the finders, {load[1]:.1f} after the truth runs."]
    mapped = [f"{fb.FINDERS[n].split(' ')[0]} {d['mapped_at_start'] / 2 ** 20:.0f} MiB" for n, d in rows
              if d.get("mapped_at_start")]
    if mapped:
        lines.append("Mapped by the peers' processes when capped (of the cap): " + ", ".join(dict.fromkeys(mapped))
                     + ".")
    auto = dict(rows).get("autotune", {})
    if auto.get("probes"):
        lines.append("autotune's probes: " + ", ".join(
            f"{p['batch']} {p['seconds']:.1f} s {'fits' if p['fits'] else ('OOM' if p['oom'] else 'over')}"
            for p in auto["probes"]) + f"; granularity {auto.get('granularity')}.")
    return "\n".join(lines)


def fit_goal(data: dict[str, Any], truth: Truth, base: float | None) -> str:
    """Goal: ≥ 95 % of the true largest (its bracket's top, to be safe), ≤ 1 OOM, no slower than Lightning power."""
    if data.get("status") != "ok":
        return f"autotune against its goal: NOT MET — {data.get('error', 'no result')}"
    batch, top = data["batch"], (truth.high - 1 if truth.low else None)
    checks = [(data.get("ooms", 0) <= 1, f"{data.get('ooms', 0)} OOM (goal ≤ 1)")]
    if top and top <= truth.n_train:
        checks.insert(0, (batch <= top and batch >= GOAL_SHARE * top,
                          f"{truth.share(batch)} of the true largest (goal ≥ 95 %, not over)"))
    else:
        checks.insert(0, (None, "% of the true largest unknown (no truth run)"))
    if base:
        checks.append((data["seconds"] <= base,
                       f"{data['seconds']:.1f} s vs Lightning power's {base:.1f} s (goal: no more)"))
    verdict = "NOT MET" if any(ok is False for ok, _ in checks) else "MET" if all(ok for ok, _ in checks) else "OPEN"
    marks = {True: "✓", False: "✗", None: "?"}
    return f"autotune against its goal: {verdict} — " + "; ".join(f"{text} {marks[ok]}" for ok, text in checks)


# --------------------------------------------------------------------------------------------------------------
# tune (parent side)
# --------------------------------------------------------------------------------------------------------------

TUNE_CHILD = """
import json, sys, time
args = json.loads(sys.argv[1])
import autotune
from autotune.errors import AutotuneError

def picked(result):
    return {"trial": result.trial, "batch_size": result.batch_size, "optimizer": result.optimizer, "lr": result.lr,
            "optimizer_params": result.optimizer_params, "val_loss": result.val_loss}

out = {}
try:
    out["result"] = picked(autotune.tune(args["task"], n_trials=args["trials"], trial_time=args["trial_time"],
                                         memory_limit=args["cap"], storage=args["storage"], study_name=args["study"],
                                         seed=args["seed"], confirm=args["confirm"]))
except AutotuneError as exc:  # ModelDoesNotLearn carries the best trial as its result
    out["error"] = str(exc).splitlines()[0][:300]
    if getattr(exc, "result", None) is not None:
        out["result"] = picked(exc.result)
print("RESULT " + json.dumps(out))
"""
"""`autotune.tune` as a user's script calls it, in a fresh Python process: its wall is what a user waits for."""

def _process_seconds(code: str, *args: str) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, capture_output=True, check=True)
    return time.perf_counter() - started


def task_load_seconds(model: Model, runs: int = 2) -> float:
    """What a fresh process spends on the task file beyond autotune's own import: its framework and
    model-library imports, the module body, and their teardown at exit. Any way of training the model pays it,
    so it is shown apart from autotune's overhead. The quickest of ``runs`` of each process, which is not
    slower than a first read of the libraries from disk."""
    with_task = min(_process_seconds("import sys, autotune; autotune.load_task(sys.argv[1])", model.task)
                    for _ in range(runs))
    bare = min(_process_seconds("import autotune") for _ in range(runs))
    return max(0.0, with_task - bare)


def tune_autotune(model: Model, cap: int, args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    """``autotune.tune`` in a fresh process (Python's start and every import in its wall), its study read here."""
    storage = f"sqlite:///{scratch / 'autotune.db'}"
    child = {"task": model.task, "trials": args.trials, "trial_time": args.trial_time, "cap": cap, "storage": storage,
             "study": STUDY, "seed": args.tune_seed, "confirm": args.confirm}
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", TUNE_CHILD, json.dumps(child)], cwd=ROOT, capture_output=True,
                          text=True)
    wall = time.perf_counter() - started
    line = next((line for line in done.stdout.splitlines() if line.startswith("RESULT ")), None)
    out = json.loads(line[len("RESULT "):]) if line else {
        "error": f"exit {done.returncode}: {(done.stderr.strip().splitlines() or ['no output'])[-1][:300]}"}
    return {**out, "wall": wall, "study": _stored_study(storage)}


def _stored_study(storage: str) -> Any:
    import optuna

    try:
        return optuna.load_study(study_name=STUDY, storage=storage)
    except Exception:  # noqa: BLE001 - nothing stored: no figures
        return None


def study_figures(study: Any, trial_time: float) -> dict[str, Any]:
    """Trials, Σ measured training seconds, pruned trials' estimated training, phases, the chosen trial's steps."""
    from autotune import records

    trials = study.get_trials(deepcopy=False)
    measured = [records.read(t).measured for t in trials]
    # a pruned trial keeps its reports' (index, loss, training seconds): training up to the last one is measured
    pruned = [t.user_attrs.get("history") or [] for t, m in zip(trials, measured) if not m]
    train = sum(m.get("train_seconds") or 0.0 for m in measured) \
        + sum(float(h[-1][2]) for h in pruned if h and len(h[-1]) > 2)
    # a study stored before that: its last stored report (1..8 at even fractions of the budget) says how far
    estimated = sum(max(t.intermediate_values, default=0) / 8 * trial_time for t, m in zip(trials, measured)
                    if not m and not t.user_attrs.get("history"))
    counts = {s: sum(t.state.name == s for t in trials) for s in ("COMPLETE", "PRUNED", "FAIL", "RUNNING")}
    return {"trials": len(trials), "counts": counts, "train_seconds": train, "pruned_train_estimate": estimated,
            "phases": dict((study.user_attrs.get("phases") or [{}])[-1]),
            "failures": [r.failure for r in map(records.read, trials) if r.failure]}


def plain_loop(task: Any, ceiling: int, budget: dict[str, Any], timeout: float, seed: int) -> dict[str, Any]:
    """Optuna TPE over `search.PlainSpace` (batch sizes up to ``ceiling``), `search.train` per trial, in this
    process, until ``timeout`` seconds have passed (Optuna's ``timeout``: no trial starts after it)."""
    import optuna

    from benchmarks import search

    space = search.PlainSpace(task)
    space.batch_sizes = space.space.batch_sizes(min(ceiling, space.n_train))
    trials: list[dict[str, Any]] = []

    def objective(trial: optuna.Trial) -> float:
        config = space.suggest(trial)
        outcome = search.train(task, config, budget, seed)
        trials.append({"number": trial.number, "config": config, **outcome})
        if not outcome["ok"]:
            raise optuna.TrialPruned(outcome["reason"])
        return outcome["val_loss"]

    started = time.perf_counter()
    study = optuna.create_study(direction="minimize", sampler=optuna.samplers.TPESampler(seed=seed))
    study.optimize(objective, timeout=timeout)
    wall = time.perf_counter() - started
    done = [t for t in trials if t["ok"]]
    best = min(done, key=lambda t: t["val_loss"]) if done else None
    return {"wall": wall, "trials": len(trials), "failed": len(trials) - len(done),
            "train_seconds": sum(t.get("train_seconds") or 0.0 for t in done),
            "config": search.clean_config(best["config"]) if best else None,
            "tuning_loss": best["val_loss"] if best else None, "pick_steps": best.get("steps") if best else None,
            "batch_sizes": space.batch_sizes, "per_trial": trials}


def rescore_picks(task: Any, runs: list[dict[str, Any]], seeds: int, steps: int | None) -> None:
    """`search.rescore` of each run's pick from scratch, at its own tuning trial's steps (or ``steps``)."""
    from benchmarks import search

    for run in runs:
        if not run.get("config"):
            continue
        budget = {"seconds": None, "steps": steps or max(RESCORE_MIN_STEPS, run.get("pick_steps") or 0)}
        run["rescore_steps"] = budget["steps"]
        search.rescore(task, [run], budget, [1000 + i for i in range(seeds)])


def tune_section(key: str, model: Model, cap: int, args: argparse.Namespace) -> dict[str, Any]:
    import autotune

    load_before = os.getloadavg()[0]
    scratch = Path(tempfile.mkdtemp(prefix="autotune-real-"))
    try:
        log("  autotune.tune ...")
        auto = tune_autotune(model, cap, args, scratch)
        run_auto: dict[str, Any] = {"method": "autotune", "wall": auto["wall"], "error": auto.get("error")}
        if auto.get("study") is not None:
            run_auto.update(study_figures(auto["study"], args.trial_time))
        result = auto.get("result")
        if result is not None and auto.get("study") is not None:
            best = auto["study"].trials[result["trial"]]
            run_auto.update(config={k: result[k] for k in ("batch_size", "optimizer", "lr", "optimizer_params")},
                            tuning_loss=result["val_loss"], pick_steps=best.user_attrs.get("measured", {}).get("steps"))
        run_auto["task_load"] = task_load_seconds(model)
        ceiling = _ceiling(auto.get("study"))
        log(f"  -> {run_auto['wall']:.1f} s, {run_auto.get('trials')} trials, ceiling {ceiling}, "
            f"pick {run_auto.get('config')}{'; ' + run_auto['error'] if run_auto.get('error') else ''}")
        task = autotune.load_task(model.task)
        log(f"  plain Optuna TPE loop for {run_auto['wall']:.0f} s ...")
        plain = {"method": "plain Optuna TPE", **plain_loop(task, ceiling or 10 ** 9, {"seconds": args.trial_time,
                                                                                        "steps": None},
                                                          run_auto["wall"], args.tune_seed)}
        log(f"  -> {plain['wall']:.1f} s, {plain['trials']} trials, pick {plain.get('config')}")
        log(f"  re-scoring ({args.seeds} seeds) ...")
        rescore_picks(task, [run_auto, plain], args.seeds, args.rescore_steps)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    for run in (run_auto, plain):
        run.pop("study", None)
    text = tune_table(key, model, cap, args, run_auto, plain, ceiling, (load_before, os.getloadavg()[0]))
    return {"autotune": run_auto, "plain": plain, "ceiling": ceiling, "table": text}


def _ceiling(study: Any) -> int | None:
    if study is None:
        return None
    found = next((v for k, v in study.user_attrs.items() if k.startswith("ceiling:")), None)
    return int(found["batch_size"]) if found else None


def overhead_share(run: dict[str, Any], extra: float = 0.0) -> float | None:
    """(wall − the task's own load − Σ training) / Σ training: what the engine adds to the trials' training."""
    train = (run.get("train_seconds") or 0.0) + extra
    return (run["wall"] - run.get("task_load", 0.0) - train) / train if train > 0 else None


def _overhead(run: dict[str, Any], extra: float = 0.0) -> str:
    share = overhead_share(run, extra)
    return f"{100 * share:.0f} %" if share is not None else "–"


def _loss(run: dict[str, Any]) -> str:
    from benchmarks.search import fmt

    losses = run.get("rescore_losses")
    if not losses:
        return "–"
    return f"{fmt(run['rescore_median'])} [{fmt(min(losses))}–{fmt(max(losses))}] @ {run['rescore_steps']} steps"


def _pick(run: dict[str, Any]) -> str:
    from benchmarks.search import config_key

    return config_key(run["config"]) if run.get("config") else "–"


def tune_table(key: str, model: Model, cap: int, args: argparse.Namespace, auto: dict[str, Any],
               plain: dict[str, Any], ceiling: int | None, load: tuple[float, float]) -> str:
    from benchmarks.search import fmt, ratio

    lines = [f"### tune: {key} — {model.about}; {args.trials} trials × {args.trial_time:g} s, cap {cap / GIB:g} GiB",
             "", "| method | wall (s) | task load (s) | trials | Σ training (s) | engine overhead | overhead, pruned "
             "trials' training estimated | pick | re-scored loss (median [min–max]) | loss / plain loop |",
             "|---|---:|---:|---:|---:|---:|---:|---|---|---:|"]
    base = plain.get("rescore_median")
    for run in (auto, plain):
        extra = run.get("pruned_train_estimate", 0.0)
        counts = run.get("counts")
        trials = (f"{run.get('trials', 0)} ({counts['PRUNED']} pruned, {counts['FAIL']} failed)" if counts
                  else f"{run.get('trials', 0)} ({run.get('failed', 0)} failed)")
        task_load = f"{run['task_load']:.1f}" if "task_load" in run else "–"
        lines.append(f"| {run['method']} | {run['wall']:.1f} | {task_load} | {trials} | "
                     f"{fmt(run.get('train_seconds'), 1)} | "
                     f"{_overhead(run)} | {_overhead(run, extra) if counts else '–'} | {_pick(run)} | {_loss(run)} | "
                     f"{ratio(run['rescore_median'], base) if run.get('rescore_median') and base else '–'} |")
    phases = ", ".join(f"{name.replace('_', ' ')} {seconds:.1f} s" for name, seconds in auto.get("phases", {}).items())
    lines += ["", f"autotune's phases: {phases or '–'} (wall {auto['wall']:.1f} s from a fresh process; the rest is "
                  f"Python's start, imports, set-up, storage and reports); ceiling {ceiling}; the plain loop's "
                  f"batch sizes {plain.get('batch_sizes')}."]
    if auto.get("error"):
        lines.append(f"autotune.tune raised: {auto['error']}")
    failures = sorted(set(auto.get("failures", [])))
    if failures:
        lines.append("autotune's pruned / failed trials: " + "; ".join(f[:140] for f in failures[:6]))
    lines += ["", tune_goal(auto, plain), "",
              f"Load average (1 min): {load[0]:.1f} before autotune.tune, {load[1]:.1f} after the re-scoring."]
    return "\n".join(lines)


def tune_goal(auto: dict[str, Any], plain: dict[str, Any]) -> str:
    share = overhead_share(auto)
    checks = []
    if share is not None:
        checks.append((share <= 0.5, f"engine overhead {100 * share:.0f} % of training (goal ≤ 50 %)"))
    else:
        checks.append((False, "no trial training measured"))
    mine, theirs = auto.get("rescore_median"), plain.get("rescore_median")
    if mine is not None and theirs is not None:
        spread = max(auto["rescore_range"], plain["rescore_range"])
        checks.append((mine <= theirs, f"pick {mine:.4f} vs plain loop {theirs:.4f} (goal: no worse; seeds' spread "
                                       f"{spread:.4f})"))
    else:
        checks.append((False, "no pick to compare"))
    met = all(ok for ok, _ in checks)
    return f"autotune against its goals: {'MET' if met else 'NOT MET'} — " + "; ".join(
        f"{text} {'✓' if ok else '✗'}" for ok, text in checks)


# --------------------------------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated subset of {', '.join(MODELS)}")
    parser.add_argument("--cap", default="3GiB", help="memory cap of fit-batch and tune (default: %(default)s)")
    parser.add_argument("--trials", type=int, default=6, help="autotune.tune trials (default: %(default)s)")
    parser.add_argument("--trial-time", type=float, default=4.0, help="seconds per trial (default: %(default)s)")
    parser.add_argument("--seeds", type=int, default=3, help="re-scoring seeds, median taken (default: %(default)s)")
    parser.add_argument("--rescore-steps", type=int, help="re-score every pick at this many steps (default: the "
                                                          "steps it trained in its own tuning trial, at least 5)")
    parser.add_argument("--tune-seed", type=int, default=0, help="tuning seed of both searches (default: 0)")
    parser.add_argument("--confirm", type=int, default=0, help="autotune's confirm re-runs after the search (the "
                        "pick in context, `autotune.confirm`; the CLI's default is 3): 0 compares the searches "
                        "alone, at the same wall time (default: %(default)s)")
    parser.add_argument("--truth", choices=("near", "exhaustive"), default="near",
                        help="true-largest search: bracket next to autotune's answer, or exhaustive (default: near)")
    parser.add_argument("--truth-probes", type=int, default=3, help="--truth near: at most this many new fresh "
                                                                    "capped runs (default: %(default)s)")
    parser.add_argument("--no-truth", action="store_true", help="no true-largest search (cached runs still count)")
    parser.add_argument("--fit-timeout", type=float, default=900, help="seconds per finder (default: %(default)s)")
    parser.add_argument("--skip-fit", action="store_true", help="no fit-batch section")
    parser.add_argument("--skip-tune", action="store_true", help="no tune section")
    parser.add_argument("--json", help="write the raw results to this file")
    parser.add_argument("--peer", help=argparse.SUPPRESS)
    parser.add_argument("--task", help=argparse.SUPPRESS)
    parser.add_argument("--cap-bytes", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.model_keys = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in args.model_keys if m not in MODELS]
    if unknown and not args.peer:
        parser.error(f"unknown model(s) {unknown}: use {', '.join(MODELS)}")
    return args


def run_model(key: str, args: argparse.Namespace, cap: int) -> dict[str, Any]:
    """Both sections for one model; an exception in one is recorded as its row and the run goes on."""
    model, out = MODELS[key], {}
    sections = (("fit", args.skip_fit, fit_section), ("tune", args.skip_tune, tune_section))
    for section, skipped, function in sections:
        if skipped:
            continue
        log(f"[{key}] {section} (load {os.getloadavg()[0]:.1f})")
        try:
            out[section] = function(key, model, cap, args)
        except Exception as exc:  # noqa: BLE001 - a model that errors is a finding: record it and go on
            log(traceback.format_exc())
            out[section] = {"error": fb._short(exc),
                            "table": f"### {section}: {key} — {model.about}\n\nERROR: {fb._short(exc)}"}
        print(out[section]["table"] + "\n", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.peer:
        peer_main(args)
        return 0
    import warnings

    import optuna

    import autotune

    warnings.filterwarnings("ignore")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    os.chdir(ROOT)
    cap = autotune.parse_size(args.cap)
    started = time.perf_counter()
    print(machine_line("Start") + f"; argv: {' '.join(sys.argv[1:]) or '(defaults)'}\n", flush=True)
    results = {key: run_model(key, args, cap) for key in args.model_keys}
    print(machine_line("End") + f"; {time.perf_counter() - started:.0f} s in all", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"argv": sys.argv[1:], "results": results}, indent=1, default=str))
        log(f"raw results in {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
