"""The Backend interface every framework adapter implements, and the training session it hands out.

Lifecycle, as the engine drives it (in a worker process by default):

1. ``backend = get_backend("torch")`` — imports the framework.
2. ``device = backend.resolve_device("cuda:0")`` — a `Device`, or `DeviceError`.
3. ``backend.limit_memory(device, limit)`` — optional: enforce a device-memory cap in this process.
4. ``session = backend.session(task, data, device, batch_size=..., optimizer=spec, seed=...)`` — a fresh
   model and optimizer on the device.
5. ``session.train_step(indices)`` repeatedly, ``session.evaluate()``, ``session.peak_memory()``; a memory
   probe calls ``session.allocate_optimizer_state()`` first, so that one step shows a steady step's peak.
6. ``session.close()`` and, after an exception for which ``backend.is_oom(exc)`` holds,
   ``backend.release_memory(device)`` so that the next session starts clean.

Everything outside ``autotune/backends/`` speaks only this interface.
"""

from __future__ import annotations

import abc
from typing import Any, ClassVar, Mapping, Sequence

import numpy as np

from autotune.devices import Device
from autotune.errors import DeviceError
from autotune.optimizers import validate_spec
from autotune.task import Task

PRECISIONS = ("fp32", "bf16", "fp16")
"""Training precisions by name: fp32, and mixed precision with bfloat16 or float16 compute."""


class TrainingSession(abc.ABC):
    """A model, its optimizer and the data on one device, ready to train at one batch size."""

    batch_size: int
    compile_seconds: float = 0.0
    """Time spent tracing or compiling the step (graph mode, ``tf.function``), reported on its own."""
    first_step_compiles: ClassVar[bool] = False
    """Whether the first ``train_step`` traces or compiles (its time is then not a step's time)."""

    @abc.abstractmethod
    def train_step(self, indices: np.ndarray) -> None:
        """One optimizer step on the training samples at ``indices``; may run asynchronously."""

    @abc.abstractmethod
    def last_loss(self) -> float:
        """The training loss of the last step, as a Python float (synchronises the device)."""

    @abc.abstractmethod
    def evaluate(self, max_batches: int | None = None) -> float:
        """Mean validation loss over the validation set (or its first ``max_batches``), in batches of
        ``batch_size``."""

    def allocate_optimizer_state(self) -> None:
        """Create the optimizer's state now, as its first step would, so that the first training step already
        holds all a steady step holds (a memory probe then needs one step, not two). The default does nothing:
        for frameworks whose optimizers build their state on construction (Keras after ``optimizer.build``,
        MindSpore). Only for sessions that measure: the state may not be what a first step would leave."""

    def resize(self, batch_size: int) -> bool:
        """Train and evaluate at ``batch_size`` from now on, keeping the model and its traced step, where the
        step serves any batch size; False (the default) where a new session must be built. A fit's growth probes
        use it: a traced step is not traced again for each size."""
        return False

    def set_learning_rate(self, lr: float) -> None:
        """Change the optimizer's learning rate in place (the learning-rate range test sweeps it)."""
        raise NotImplementedError(f"{type(self).__name__} cannot change its learning rate")

    def synchronize(self) -> None:
        """Wait until queued device work is done, so that a clock read after it is honest."""

    def reset_peak_memory(self) -> None:
        """Start a new peak-memory window on the device (host memory is read by the engine)."""

    def peak_memory(self) -> int | None:
        """Peak device memory in bytes since the last reset; None on the CPU (the engine reads the process)."""
        return None

    def close(self) -> None:
        """Drop the model, optimizer and data so that their memory can be reused."""

    def check_contract(self, indices: np.ndarray) -> int | None:
        """Run the model and the loss once on the training samples at ``indices`` (a tiny batch), so that a
        model that does not fit its data fails here, before any fit; return the number of classes the model's
        output gives where the loss takes class indices (the labels are checked against it), else None.

        The default takes one training step, which any session can (and which runs the loss)."""
        self.train_step(indices)
        self.last_loss()
        return None

    def forward(self, indices: np.ndarray) -> None:
        """The model's forward pass alone (no gradients, evaluation mode) on the training samples at
        ``indices``, finished on the device when it returns: what inference latency times."""
        raise NotImplementedError(f"{type(self).__name__} cannot run a forward pass alone")

    def training_flops(self, indices: np.ndarray) -> tuple[float | None, str]:
        """FLOPs of one training step (forward and backward) on the samples at ``indices``, and how they were
        counted (the framework's counter, or the analytic count the backend documents); None where unknown."""
        return None, "no FLOP count for this backend"

    def train_micro_batches(self, indices: np.ndarray, micro_batch: int) -> None:
        """One optimizer step on the samples at ``indices``, computed in micro-batches of ``micro_batch`` whose
        gradients are accumulated, each weighted by its share of the samples, so that the optimizer sees the
        mean-loss gradient of the whole batch; `last_loss` is then the whole batch's mean loss."""
        raise NotImplementedError(f"{type(self).__name__} cannot accumulate gradients")

    def int8_forward(self) -> Any:
        """A function ``f(indices)`` running the forward pass of a dynamically int8-quantized copy of the model,
        or None where the backend has no post-training quantization (only torch has one here)."""
        return None


class Backend(abc.ABC):
    """One framework behind autotune's neutral vocabulary (devices, optimizers, losses, steps, memory)."""

    name: ClassVar[str]
    optimizer_names: ClassVar[tuple[str, ...]]
    """Neutral optimizer names (see `autotune.optimizers.OPTIMIZERS`) this backend can build."""
    cpu_pool_block_bytes: ClassVar[int | None] = None
    """Where the framework's CPU memory pool takes address space in fixed blocks (MindSpore: 1 GiB), their size:
    a capped worker's address space is then flat inside a block, and fit-batch reckons with whole blocks."""

    @abc.abstractmethod
    def version(self) -> str:
        """The framework's version string."""

    @abc.abstractmethod
    def devices(self) -> list[Device]:
        """Every device the framework can train on, the CPU included."""

    def resolve_device(self, spec: str | None) -> Device:
        """The device named ``spec`` (``None``: the first accelerator, else the CPU), or `DeviceError`."""
        devices = self.devices()
        if spec is None or spec == "auto":
            accelerators = [d for d in devices if d.kind != "cpu"]
            return accelerators[0] if accelerators else devices[0]
        wanted = spec.strip().lower()
        for device in devices:
            if device.id.lower() == wanted or (wanted == device.kind and device.index == 0):
                return device
        names = ", ".join(d.id for d in devices)
        raise DeviceError(f"device {spec!r} is not available to {self.name}: use one of {names}")

    def validate_optimizer(self, spec: Mapping[str, Any]) -> dict[str, Any]:
        """A complete neutral optimizer spec, or a one-line error naming what this backend lacks."""
        return validate_spec(spec, self.optimizer_names, self.name)

    @abc.abstractmethod
    def session(
        self,
        task: Task,
        data: Any,
        device: Device,
        *,
        batch_size: int,
        optimizer: Mapping[str, Any],
        seed: int = 0,
    ) -> TrainingSession:
        """A fresh model (``task.model()``) and optimizer on ``device``, seeded, with ``data`` ready."""

    def make_optimizer(self, parameters: Any, spec: Mapping[str, Any]) -> Any:
        """The framework's optimizer over ``parameters`` from a neutral spec (the in-loop door's
        ``trial.optimizer``)."""
        from autotune.errors import AutotuneError

        raise AutotuneError(f"the {self.name} backend cannot build optimizers for your own loop yet: build it from "
                            "trial.optimizer_name, trial.lr and trial.params")

    def loop_callback(self, trial: Any, **options: Any) -> Any:
        """A training callback of the framework's own loop that reports to ``trial`` (`autotune.TunerTrial`)."""
        from autotune.errors import AutotuneError

        raise AutotuneError(f"the {self.name} backend has no training-loop callback: time steps with "
                            "trial.step() and report with trial.report()")

    def synchronize(self, device: Device) -> None:
        """Wait for ``device``'s queued work (a timed step of the user's own loop ends only when it has run)."""

    def peak_memory(self, device: Device) -> int | None:
        """Peak memory the framework allocated on ``device`` in this process; None on the CPU."""
        return None

    def data_size(self, data: Any) -> tuple[int, int]:
        """Number of training and validation samples in ``data`` (arrays; backends extend for native datasets)."""
        return data.n_train, data.n_val

    def sample_sizes(self, task: Task, data: Any) -> np.ndarray | None:
        """Size of each training sample (elements), or None when all are the same size (arrays).

        Where samples differ (padded or bucketed sequences), fit-batch probes with the largest ones, so that the
        ceiling holds for every batch of the data."""
        return None

    @abc.abstractmethod
    def is_oom(self, exc: BaseException) -> bool:
        """Whether ``exc`` is this framework's out-of-memory failure (narrowly: everything else re-raises)."""

    def release_memory(self, device: Device) -> None:
        """Hand cached memory back after a session or an OOM."""
        import gc

        gc.collect()

    def limit_memory(self, device: Device, limit_bytes: int) -> None:
        """Enforce a cap on device memory in this process (accelerators; the CPU cap is the worker's)."""

    def free_memory(self, device: Device) -> int | None:
        """Bytes free on ``device`` now (None: unknown; the CPU's budget comes from the host)."""
        return device.memory_free

    def preload_modules(self) -> Sequence[str]:
        """Modules a worker-process server imports once, so that each worker starts warm."""
        return ()

    def worker_preload(self, task: Any) -> tuple[str, ...]:
        """What a worker for ``task`` imports before its memory cap, in its fork server (a worker that imports
        after the cap maps more, and its largest batch sits a few samples lower): the framework's modules and the
        task's own. A task file's imports are read from the file (`autotune.task.preload_entry`), so that the
        server can start on them before this process has loaded the task."""
        from autotune.backends import backend_for_modules
        from autotune.task import file_imports, preload_entry, task_file

        path = task_file(task.reference) if task.reference else None
        if path is not None and backend_for_modules([module for module, _ in file_imports(path)]) == self.name:
            return (str(preload_entry(path)),)  # the server finds this backend from the file, as this process does
        return (*self.preload_modules(), *task.imports)

    compile_name: ClassVar[str] = "compilation"
    """What ``compile=True`` means on this backend (``torch.compile``, ``jit_compile``, graph mode)."""

    def precisions(self, device: Device) -> tuple[str, ...]:
        """The precisions (of `PRECISIONS`) this backend trains in on ``device``, fp32 first."""
        return ("fp32",)

    def precision_notes(self, device: Device) -> dict[str, str]:
        """Why a precision missing from `precisions` is missing on ``device``, where the backend knows (by
        precision name); bench and fit-batch print it beside the mode they skip or refuse."""
        return {}

    def error_gist(self, exc: BaseException) -> str:
        """The line of a framework error that says what is wrong, for a one-line message (the model check's);
        a backend whose framework wraps its errors in more text overrides it."""
        return f"{type(exc).__name__}: {exc}".strip().splitlines()[0][:300]

    type_error_words: tuple[str, ...] = ("dtype",)
    """What this framework's messages about a tensor of the wrong element type say (lower case)."""

    def is_type_error(self, gist: str) -> bool:
        """Whether an error's gist (`error_gist`) says a tensor has the wrong element type: its fix is a cast of
        the data or another loss, not another layer (the model check's message)."""
        return any(word in gist.lower() for word in self.type_error_words)

    def bench_session(self, task: Task, data: Any, device: Device, *, batch_size: int,
                      optimizer: Mapping[str, Any], precision: str = "fp32", compile: bool = False,
                      seed: int = 0) -> TrainingSession:
        """A `session` that trains in ``precision`` (mixed precision: weights stay fp32) and, with ``compile``,
        through the backend's compiler (`compile_name`); it also runs `TrainingSession.forward`."""
        if precision != "fp32" or compile:
            from autotune.errors import AutotuneError

            raise AutotuneError(f"the {self.name} backend has no {precision} or compiled sessions")
        return self.session(task, data, device, batch_size=batch_size, optimizer=optimizer, seed=seed)

    def matmul_seconds(self, device: Device, precision: str, size: int, seconds: float) -> float:
        """The fastest of repeated ``size``×``size`` matmuls in ``precision`` on ``device`` within ``seconds``
        (see `autotune.peak`): the device's peak FLOP/s for that dtype is 2 size³ over it."""
        raise NotImplementedError(f"the {self.name} backend has no matmul benchmark")
