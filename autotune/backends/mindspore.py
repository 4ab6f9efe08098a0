"""MindSpore adapter: devices (CPU, GPU, Ascend NPU), optimizers, a PyNative or graph-mode step, memory, OOM.

The training step is ``mindspore.value_and_grad`` plus an optimizer, run eagerly (PyNative, the default) or
compiled with ``mindspore.jit`` when the task says ``Task(..., options={"mode": "graph"})``; its loss is the
task's ``compute_loss(model, batch)`` or ``loss(model(x), y)``. Task data is NumPy arrays or a pair of finite
``mindspore.dataset`` pipelines (every column read into arrays once).

CPU memory: MindSpore's CPU memory pool takes address space in 1 GiB blocks (the growth unit is fixed on the
CPU; ``set_memory``'s increase_size and max_size are ignored there, measured), so under an address-space cap
a worker's peak is flat inside a block and jumps by a GiB at its edge. The backend declares the block size
(``cpu_pool_block_bytes``); fit-batch then reads how much of the blocks a run touched (their resident pages,
`autotune.procmem.pool_blocks`) and fits that against the blocks the cap leaves room for.

NumPy 2 and MindSpore 2.10 (measured; see tests/test_mindspore_backend.py). MindSpore's operator-argument
parser (``py_parse.cc``) uses the NumPy 1.x C API, whose import fails under NumPy 2 once per process: that
prints NumPy's "compiled using NumPy 1.x" message and a ``Numpy init failed`` log line, leaves an ImportError
pending so that the first operator taking a Python number (``tensor * 1.01``) raises a spurious SystemError,
and from then on NumPy scalars are refused as operator arguments. The backend spends that failure when it is
created (`prime_numpy_bridge`; importing this module runs no operator) with an argument that fails parsing
before any kernel runs, and drops exactly those two messages; a model that passes NumPy scalars gets a
one-line TaskError. Separately, ``mindspore.dataset`` reads every row with ``np.array(item, copy=False)``, which
NumPy 2 refuses for scalars: a NumpySlicesDataset with 1-D labels or a GeneratorDataset yielding numbers fails,
with a TaskError saying what to change. Tensor <-> ndarray conversion (pybind11, NumPy-2 aware) is exact and
training matches PyTorch to float32 precision. All of this goes away with ``numpy<2`` (1.26.4 with ml_dtypes
0.5.x, which tensorflow-cpu 2.21 accepts).
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import io
import logging
import os
import re
import sys
import tempfile
import time
from typing import Any, Callable, Iterator, Mapping, Sequence

import mindspore as ms
import mindspore.dataset as msds
import mindspore.experimental.optim as ms_optim
import numpy as np
from mindspore import nn, ops

from autotune.backends.base import Backend, TrainingSession
from autotune.devices import Device, cpu_device, nvidia_gpus
from autotune.errors import AutotuneError, DeviceError, TaskError
from autotune.task import ArrayData, Task

_NUMPY_ABI_MESSAGE = "A module that was compiled using NumPy 1.x cannot be run in"
_NUMPY_INIT_LOG = "Numpy init failed"

# What MindSpore raises when its memory pool cannot get memory. CPU under an address-space cap (measured
# here): RuntimeError "Allocate memory failed" from MallocForOutputs after the pool's malloc fails; the
# others are the Ascend/GPU pools' and graph-mode messages of MindSpore 2.x.
_OOM_MESSAGES = (
    "Allocate memory failed",
    "Memory not enough",
    "memory isn't enough",
    "Memory isn't enough",
    "Out of Memory!!!",
    "out of memory",
    "Malloc device memory failed",
    "Device memory isn't enough",
    "std::bad_alloc",
)

_MODES = ("pynative", "graph")
_OPTIONS = {"mode": _MODES}
_MAX_DATASET_SAMPLES = 50_000_000


# --- NumPy 2: spend MindSpore's failing NumPy C-API import once, quietly ----------------------------------

@contextlib.contextmanager
def _without_numpy_abi_messages() -> Iterator[None]:
    """Hold back what the enclosed call writes to stderr and pass it on, less the NumPy ABI failure.

    The failure writes NumPy's message with a stack (Python), the same as an ImportError traceback
    (``PyErr_Print`` from C) and one ``Numpy init failed`` log line (native fd 2); Python-side text that
    mentions the message is dropped whole, native lines only where they are that log line.
    """
    saved_stderr = sys.stderr
    held = io.StringIO()
    try:
        saved_stderr.flush()
        saved_fd = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no usable fd 2: hold back the Python side only
        saved_fd = None
    capture = tempfile.TemporaryFile() if saved_fd is not None else None
    try:
        if capture is not None:
            os.dup2(capture.fileno(), 2)
        sys.stderr = held
        yield
    finally:
        sys.stderr = saved_stderr
        native = ""
        if capture is not None and saved_fd is not None:
            os.dup2(saved_fd, 2)
            os.close(saved_fd)
            capture.seek(0)
            native = capture.read().decode("utf-8", "replace")
            capture.close()
        python_text = held.getvalue()
        if python_text and _NUMPY_ABI_MESSAGE not in python_text:
            saved_stderr.write(python_text)
        kept = "".join(line for line in native.splitlines(keepends=True) if _NUMPY_INIT_LOG not in line)
        if kept:
            saved_stderr.write(kept)
        saved_stderr.flush()


_numpy_bridge_primed = False


def prime_numpy_bridge() -> None:
    """Run MindSpore's NumPy scalar check once per process (it fails under NumPy 2) with an argument that fails
    parsing before any kernel runs, so that no later operator pays for it with a spurious SystemError.

    Called when the backend is created, not at import: importing the module runs no operator.
    """
    global _numpy_bridge_primed
    if _numpy_bridge_primed:
        return
    _numpy_bridge_primed = True
    probe = ms.Tensor(np.zeros(1, dtype=np.float32))
    with _without_numpy_abi_messages():
        try:
            ops.add(probe, "autotune: numpy bridge probe")
        except (TypeError, SystemError, ImportError, ValueError, RuntimeError):
            pass


# --- logging ----------------------------------------------------------------------------------------------

_INTERNAL_NOTICES = (
    "is deprecated from version",  # fused kernels an optimizer class creates: one line per optimizer build
    "has been compiled again",  # graph mode: each session jits its own step, a second one in a process logs this
)


class _DropInternalNotices(logging.Filter):
    """Drops MindSpore's notices about its own internals, which say nothing the user can act on and would
    flood every probe's and trial's output."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(notice in message for notice in _INTERNAL_NOTICES)


def _mindspore_logger() -> logging.Logger | None:
    try:
        from mindspore import log as ms_log

        return ms_log._get_logger()  # MindSpore's own logging.Logger: the documented log module wraps it
    except Exception:  # a MindSpore without it: its notices just stay
        return None


@contextlib.contextmanager
def _quiet_notices() -> Iterator[None]:
    logger = _mindspore_logger()
    notice_filter = _DropInternalNotices()
    if logger is not None:
        logger.addFilter(notice_filter)
    try:
        yield
    finally:
        if logger is not None:
            logger.removeFilter(notice_filter)


@contextlib.contextmanager
def _quiet_log() -> Iterator[None]:
    """Silence MindSpore's Python logger (device availability checks warn when a plugin is absent)."""
    logger = _mindspore_logger()
    level = logger.level if logger is not None else None
    if logger is not None:
        logger.setLevel(logging.ERROR + 1)
    try:
        yield
    finally:
        if logger is not None and level is not None:
            logger.setLevel(level)


# --- optimizers ---------------------------------------------------------------------------------------------
# Neutral names (autotune.optimizers.OPTIMIZERS) → MindSpore classes that run on every device MindSpore
# supports (CPU included), verified against torch.optim on the same weights and batches. Mappings:
# - sgd, momentum, nesterov: nn.SGD (nn.Momentum is deprecated in 2.10; nn.SGD has torch's semantics).
# - adamw: mindspore.experimental.optim.AdamW (bias-corrected, decoupled decay, as in torch). nn.AdamWeightDecay
#   is deprecated and has no bias correction (its first steps are about 3x larger); mint.optim.AdamW has no
#   CPU kernel in 2.10.
# - rmsprop: experimental.optim.RMSprop. nn.RMSProp starts its mean square at ones (TF1 style), which makes
#   every early step tiny: with torch's zero start the same lr trains ~60x further in 20 steps.
# - adagrad: nn.Adagrad has no eps: it divides by sqrt(accumulator), so the neutral eps is added to the
#   initial accumulator (a zero gradient then gives 0, not 0/0); the neutral initial_accumulator_value is the rest.
# - nadam, radam: experimental.optim (nn has neither).
# - ftrl: nn.FTRL (deprecated since 2.9, still shipped and CPU-capable); initial_accumulator_value → initial_accum.
# - not offered: lamb and lars (nn.Lamb, nn.LARS have no CPU kernel: "Unsupported op [Lamb] on CPU"),
#   adafactor (nn.AdaFactor is documented Ascend-only), lion (none in MindSpore).

_OPTIMIZERS: dict[str, Callable[[Any, Mapping[str, Any]], Any]] = {
    "sgd": lambda p, s: nn.SGD(p, learning_rate=s["lr"], weight_decay=s["weight_decay"]),
    "momentum": lambda p, s: nn.SGD(p, learning_rate=s["lr"], momentum=s["momentum"], weight_decay=s["weight_decay"]),
    "nesterov": lambda p, s: nn.SGD(
        p, learning_rate=s["lr"], momentum=s["momentum"], nesterov=True, weight_decay=s["weight_decay"]),
    "adam": lambda p, s: nn.Adam(
        p, learning_rate=s["lr"], beta1=s["beta1"], beta2=s["beta2"], eps=s["eps"], weight_decay=s["weight_decay"]),
    "amsgrad": lambda p, s: nn.Adam(
        p, learning_rate=s["lr"], beta1=s["beta1"], beta2=s["beta2"], eps=s["eps"], weight_decay=s["weight_decay"],
        use_amsgrad=True),
    "adamw": lambda p, s: ms_optim.AdamW(
        p, lr=s["lr"], betas=(s["beta1"], s["beta2"]), eps=s["eps"], weight_decay=s["weight_decay"]),
    "adamax": lambda p, s: nn.AdaMax(
        p, learning_rate=s["lr"], beta1=s["beta1"], beta2=s["beta2"], eps=s["eps"], weight_decay=s["weight_decay"]),
    "nadam": lambda p, s: ms_optim.NAdam(
        p, lr=s["lr"], betas=(s["beta1"], s["beta2"]), eps=s["eps"], weight_decay=s["weight_decay"]),
    "radam": lambda p, s: ms_optim.RAdam(
        p, lr=s["lr"], betas=(s["beta1"], s["beta2"]), eps=s["eps"], weight_decay=s["weight_decay"]),
    "rmsprop": lambda p, s: ms_optim.RMSprop(
        p, lr=s["lr"], alpha=s["rho"], eps=s["eps"], weight_decay=s["weight_decay"], momentum=s["momentum"],
        centered=s["centered"]),
    "adagrad": lambda p, s: nn.Adagrad(
        p, accum=s["initial_accumulator_value"] + s["eps"], learning_rate=s["lr"], weight_decay=s["weight_decay"]),
    "adadelta": lambda p, s: nn.Adadelta(
        p, learning_rate=s["lr"], rho=s["rho"], epsilon=s["eps"], weight_decay=s["weight_decay"]),
    "asgd": lambda p, s: nn.ASGD(p, learning_rate=s["lr"], weight_decay=s["weight_decay"]),
    "ftrl": lambda p, s: nn.FTRL(
        p, initial_accum=s["initial_accumulator_value"], learning_rate=s["lr"], lr_power=s["lr_power"],
        l1=s["l1"], l2=s["l2"]),
}


# --- losses -------------------------------------------------------------------------------------------------

_PROBABILITY_FLOOR = 1e-7  # probabilities are clipped to [1e-7, 1 - 1e-7] before the log, as Keras does


class _CrossEntropyOfProbabilities(nn.Cell):
    """Sparse cross entropy of class probabilities (a model ending in a softmax): mean -log p[target]."""

    def construct(self, probabilities: Any, target: Any) -> Any:
        return ops.nll_loss(ops.log(ops.clamp(probabilities, _PROBABILITY_FLOOR, 1.0)), target)


class _BinaryCrossEntropyOfProbabilities(nn.Cell):
    """Binary cross entropy of probabilities (a model ending in a sigmoid), mean over the elements."""

    def __init__(self) -> None:
        super().__init__()
        self.bce = nn.BCELoss(reduction="mean")

    def construct(self, probabilities: Any, target: Any) -> Any:
        return self.bce(ops.clamp(probabilities, _PROBABILITY_FLOOR, 1.0 - _PROBABILITY_FLOOR), target)


def _named_loss(name: str, from_logits: bool = True) -> Callable[[Any, Any], Any]:
    """The loss cell for a neutral name, mean over the batch; ``from_logits`` picks the form of the two cross
    entropies (False: the outputs are probabilities)."""
    if name == "cross_entropy":  # sparse: class-index targets
        return nn.CrossEntropyLoss(reduction="mean") if from_logits else _CrossEntropyOfProbabilities()
    if name == "mse":
        return nn.MSELoss(reduction="mean")
    if name == "mae":
        return nn.L1Loss(reduction="mean")
    if name == "binary_cross_entropy":
        return nn.BCEWithLogitsLoss(reduction="mean") if from_logits else _BinaryCrossEntropyOfProbabilities()
    if name == "huber":
        return nn.HuberLoss(reduction="mean", delta=1.0)
    raise TaskError(f"unknown loss {name!r} for mindspore")


_CROSS_ENTROPIES = ("cross_entropy", "binary_cross_entropy")  # the named losses that have two forms


def _final_activation(model: Any) -> str:
    """'softmax' or 'sigmoid' where the model's last cell is one, else ''.

    The last cell is read through nested ``nn.SequentialCell``s (the only cells whose call order is their
    layout); an ``nn.Dense`` built with ``activation=`` counts as its activation. A custom ``nn.Cell`` is taken
    to return logits: say ``Task(from_logits=False)`` for one that returns probabilities.
    """
    cell = model
    while isinstance(cell, nn.SequentialCell) and len(cell):
        cell = cell[len(cell) - 1]
    if isinstance(cell, nn.Dense) and getattr(cell, "activation_flag", False):
        cell = cell.activation
    if isinstance(cell, nn.Softmax):
        return "softmax"
    if isinstance(cell, nn.Sigmoid):
        return "sigmoid"
    return ""


def _model_from_logits(task: Task, model: Any) -> bool:
    """Whether the named cross entropies take the outputs as logits: the task's ``from_logits`` when it says,
    else False for a model ending in a softmax or sigmoid."""
    if task.from_logits is not None:
        return task.from_logits
    return not _final_activation(model)


def _scalar_loss_error(value: Any) -> str | None:
    """Why ``value``, what compute_loss returned, is not a scalar loss tensor (None when it is one)."""
    if not isinstance(value, ms.Tensor):
        return (f"compute_loss must return a scalar loss tensor, got {type(value).__name__}: "
                "return the loss itself (reduced, e.g. loss.mean())")
    if value.ndim != 0:
        return (f"compute_loss must return a scalar loss tensor, got shape {tuple(value.shape)}: "
                "reduce it, e.g. loss.mean()")
    return None


# --- data ---------------------------------------------------------------------------------------------------

def _is_dataset(obj: Any) -> bool:
    return isinstance(obj, msds.Dataset)


def _dataset_arrays(dataset: Any, label: str) -> tuple[np.ndarray, ...]:
    """Every column of a finite ``mindspore.dataset`` pipeline, in column order, read once into arrays."""
    if dataset.get_repeat_count() == -1:
        raise TaskError(f"the {label} mindspore.dataset repeats forever: drop .repeat() so that it ends")
    batched = _has_batch_node(dataset)
    columns: list[list[np.ndarray]] = [[] for _ in dataset.get_col_names()]
    samples = 0
    try:
        for row in dataset.create_tuple_iterator(output_numpy=True, num_epochs=1):
            for column, value in zip(columns, row):
                column.append(np.asarray(value))
            samples += len(row[0]) if batched else 1
            if samples > _MAX_DATASET_SAMPLES:
                raise TaskError(f"the {label} mindspore.dataset yields more than {_MAX_DATASET_SAMPLES} samples: "
                                "give a finite pipeline (no endless generator)")
    except AutotuneError:
        raise
    except Exception as exc:
        text = str(exc)
        if "Unable to avoid copy" in text:
            raise TaskError(f"reading the {label} mindspore.dataset failed: under NumPy 2, MindSpore 2.10 cannot "
                            "read rows that hold a scalar (a 1-D label array in NumpySlicesDataset, a number "
                            "yielded by a GeneratorDataset): give labels shape (n, 1), yield arrays, or install "
                            "numpy<2") from None
        raise TaskError(f"reading the {label} mindspore.dataset failed: {type(exc).__name__}: "
                        f"{_first_line(text)}") from None
    if not columns or not columns[0]:
        raise TaskError(f"the {label} mindspore.dataset is empty: it must yield at least one sample")
    join = np.concatenate if batched else np.stack
    try:
        return tuple(join(column) for column in columns)
    except ValueError as exc:
        raise TaskError(f"the {label} mindspore.dataset yields rows of different shapes ({_first_line(str(exc))}): "
                        "pad every row of a column to one shape") from None


def _has_batch_node(dataset: Any) -> bool:
    """Whether rows come in batches: a batch, padded_batch or bucket_batch_by_length node in the pipeline."""
    pending = [dataset]
    while pending:
        node = pending.pop()
        if isinstance(node, msds.BatchDataset) or "Batch" in type(node).__name__:
            return True
        pending.extend(getattr(node, "children", []) or [])
    return False


def _part(part: Any, label: str) -> tuple[np.ndarray, ...]:
    """One split as a tuple of host arrays: a pipeline's columns, or the (x, y) pair given."""
    if _is_dataset(part):
        return _dataset_arrays(part, label)
    if isinstance(part, (tuple, list)) and len(part) == 2:
        return tuple(np.asarray(v.asnumpy() if isinstance(v, ms.Tensor) else v) for v in part)
    raise TaskError(f"mindspore task {label} data must be a mindspore.dataset pipeline or a pair (x, y); "
                    f"got {type(part).__name__}")


@dataclasses.dataclass
class HostData:
    """The training and validation splits as tuples of host arrays (columns), one row per sample: (x, y), or
    a pipeline's columns in order."""

    train: tuple[np.ndarray, ...]
    val: tuple[np.ndarray, ...]

    @property
    def n_train(self) -> int:
        return len(self.train[0])

    @property
    def n_val(self) -> int:
        return len(self.val[0])


def _checked_rows(columns: tuple[np.ndarray, ...], label: str) -> tuple[np.ndarray, ...]:
    lengths = [len(column) if column.ndim else 0 for column in columns]
    if 0 in lengths:
        raise TaskError(f"task {label} data is empty: data() must return at least one sample")
    if len(set(lengths)) > 1:
        if len(lengths) == 2:
            raise TaskError(f"task {label} data has {lengths[0]} inputs but {lengths[1]} targets: they must match")
        raise TaskError(f"task {label} data has columns of {lengths} rows: every column needs one row per sample")
    return columns


def _as_arrays(data: Any) -> HostData:
    """`HostData` from arrays, MindSpore tensors or a ``(train, val)`` pair of mindspore.dataset pipelines."""
    if isinstance(data, ArrayData):
        return HostData((np.asarray(data.x_train), np.asarray(data.y_train)),
                        (np.asarray(data.x_val), np.asarray(data.y_val)))
    if _is_dataset(data):
        raise TaskError("a single mindspore.dataset is not enough: data() must return "
                        "(train_dataset, val_dataset), each yielding (input, target)")
    if not isinstance(data, (tuple, list)) or len(data) != 2:
        raise TaskError(f"mindspore task data must be ((x_train, y_train), (x_val, y_val)) or "
                        f"(train_dataset, val_dataset); got {type(data).__name__}")
    return HostData(_checked_rows(_part(data[0], "training"), "training"),
                    _checked_rows(_part(data[1], "validation"), "validation"))


def _host_columns(columns: tuple[np.ndarray, ...], named_loss: str | None) -> tuple[np.ndarray, ...]:
    """A split ready for the step: floating columns as float32, every other dtype as the data has it (integer
    labels reach a user's loss or compute_loss unchanged); the targets of a named loss in the dtype its cell
    takes: int32 class indices for cross_entropy (a column of shape (n, 1) flattened: how a mindspore.dataset
    must carry them under NumPy 2), float32 for the others."""
    host = [np.asarray(column) for column in columns]
    host = [column.astype(np.float32, copy=False) if np.issubdtype(column.dtype, np.floating) else column
            for column in host]
    if named_loss is not None:
        y = host[1]
        if named_loss == "cross_entropy":
            host[1] = (y[:, 0] if y.ndim == 2 and y.shape[1] == 1 else y).astype(np.int32)
        else:
            host[1] = y.astype(np.float32)
    return tuple(np.ascontiguousarray(column) for column in host)


def _pair_error(split: tuple[np.ndarray, ...], label: str) -> str | None:
    """Why a split cannot feed ``loss(model(x), y)`` (None when it has two columns)."""
    if len(split) == 2:
        return None
    count = f"{len(split)} column" + ("" if len(split) == 1 else "s")
    return (f"the task's {label} data has {count}, not (input, target): give two, or set "
            "Task(compute_loss=...) to compute the loss from all of them")


def _first_line(text: str) -> str:
    for line in text.splitlines():
        if line.strip() and not set(line.strip()) <= {"-"}:
            return line.strip()[:300]
    return text.strip()[:300]


def _is_oom_text(exc: BaseException) -> bool:
    return isinstance(exc, RuntimeError) and any(message in str(exc) for message in _OOM_MESSAGES)


def _oom_line(text: str) -> str:
    lines = [line.strip(" -") for line in text.splitlines() if line.strip(" -")]
    for number, line in enumerate(lines):
        if any(message in line for message in _OOM_MESSAGES):
            if line.endswith(":") and number + 1 < len(lines):  # a heading: the detail is on the next line
                line = f"{line} {lines[number + 1]}"
            return line[:300]
    return _first_line(text)


@contextlib.contextmanager
def _clear_errors(device: Device) -> Iterator[None]:
    """MindSpore's OOM (a RuntimeError whose first line is often a rule of dashes) as a one-line MemoryError;
    a NumPy scalar handed to an operator (refused under NumPy 2) as a one-line TaskError; the rest unchanged."""
    try:
        yield
    except (MemoryError, AutotuneError):
        raise
    except Exception as exc:
        hint = _numpy_scalar_hint(exc)
        if hint is not None:
            raise hint from None
        if _is_oom_text(exc):
            raise MemoryError(f"MindSpore ran out of memory on {device.id}: {_oom_line(str(exc))}") from exc
        raise


_NUMPY_SCALAR_IN_ERROR = re.compile(r"<class 'numpy\.(?:float|int|uint|bool|complex)\w*'>")


def _numpy_scalar_hint(exc: BaseException) -> TaskError | None:
    """A one-line TaskError when a model handed NumPy scalars to an operator (refused under NumPy 2)."""
    text = str(exc)
    if isinstance(exc, TypeError) and _NUMPY_SCALAR_IN_ERROR.search(text):
        return TaskError("the model passes a NumPy scalar to a MindSpore operator, which MindSpore 2.10 refuses "
                         f"under NumPy 2 ({_first_line(text)}): use a Python number (float(x)) or numpy<2")
    return None


# --- options and devices ------------------------------------------------------------------------------------

def task_mode(task: Task) -> str:
    """The execution mode a task asks for: ``'pynative'`` (default) or ``'graph'`` (``mindspore.jit``)."""
    options = getattr(task, "options", None) or {}
    if not isinstance(options, Mapping):
        raise TaskError(f"Task options must be a mapping such as {{'mode': 'graph'}}, got {options!r}")
    for key in options:
        if key not in _OPTIONS:
            raise TaskError(f"unknown mindspore task option {key!r}: use one of {', '.join(_OPTIONS)}")
    mode = str(options.get("mode", "pynative")).lower()
    if mode not in _MODES:
        raise TaskError(f"mindspore task option mode={options.get('mode')!r}: use 'pynative' or 'graph'")
    return mode


_TARGETS = {"cpu": "CPU", "gpu": "GPU", "npu": "Ascend"}


def _use_device(device: Device) -> None:
    """Point MindSpore at ``device`` (``mindspore.set_device``, the 2.x API); one target per process."""
    target = _TARGETS[device.kind]
    current = ms.get_current_device()
    if (current.device_target, current.device_id) == (target, device.index):
        return
    try:
        ms.set_device(target, device.index)
    except (RuntimeError, ValueError) as exc:
        raise DeviceError(f"MindSpore cannot switch this process to {device.id} (it runs on "
                          f"{current.device_target}:{current.device_id}): {_first_line(str(exc))}") from None


def _accelerator_count(kind: str) -> int:
    module = getattr(ms.device_context, kind)
    with _quiet_log():
        try:
            return int(module.device_count()) if module.is_available() else 0
        except Exception:  # a plugin present but no device or driver
            return 0


def _nvml_info(nvml: list[dict[str, Any]], index: int) -> dict[str, Any]:
    """NVML's record of CUDA device ``index`` (mapped through CUDA_VISIBLE_DEVICES when it lists indices)."""
    parts = [part.strip() for part in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if part.strip()]
    if parts and all(part.isdigit() for part in parts) and index < len(parts):
        index = int(parts[index])
    return next((gpu for gpu in nvml if gpu.get("index") == index), {})


# --- the session ----------------------------------------------------------------------------------------------

class MindSporeSession(TrainingSession):
    """A ``mindspore.nn.Cell``, its optimizer and the data on one device; data stays on the host, moves per batch.

    The loss of a batch is ``task.compute_loss(model, batch)`` when the task gives one (``batch``: the tuple of
    the data's columns as tensors, (x, y) for arrays), else ``loss(model(x), y)``; either is the forward function
    handed to ``mindspore.value_and_grad``. A named cross entropy takes the outputs as logits unless the task
    says ``from_logits=False`` or the model's last cell is a softmax or sigmoid (``from_logits`` holds which).
    """

    first_step_compiles = True

    def __init__(self, task: Task, data: HostData, device: Device, batch_size: int,
                 optimizer: Mapping[str, Any], seed: int, mode: str) -> None:
        self.batch_size = batch_size
        self.mode = mode
        self.compile_seconds = 0.0
        self._device = device
        _use_device(device)
        ms.set_seed(seed)
        compute_loss = task.compute_loss
        loss_name = task.loss if isinstance(task.loss, str) and compute_loss is None else None
        if compute_loss is None:
            for label, split in (("training", data.train), ("validation", data.val)):
                if (error := _pair_error(split, label)) is not None:
                    raise TaskError(error)
        try:
            with _clear_errors(device):
                model = task.model()
        except (AutotuneError, MemoryError):
            raise
        except Exception as exc:
            raise TaskError(f"the task's model() raised {type(exc).__name__}: {_first_line(str(exc))}") from None
        if not isinstance(model, nn.Cell):
            raise TaskError(f"the task's model() returned {type(model).__name__}, not a mindspore.nn.Cell")
        self.model = model
        self.model.set_train(True)
        params = self.model.trainable_params()
        if not params:
            raise TaskError("the task's model has no trainable parameters")
        with _quiet_notices(), _clear_errors(device):
            self.optimizer = _OPTIMIZERS[optimizer["name"]](params, optimizer)
        self.train = _host_columns(data.train, loss_name)
        self.val = _host_columns(data.val, loss_name)
        self.from_logits = _model_from_logits(task, model) if loss_name in _CROSS_ENTROPIES else None
        self.loss_fn: Any = None if compute_loss is not None else (
            _named_loss(loss_name, self.from_logits is not False) if loss_name else task.loss)
        self._last: Any = None
        self._steps = 0
        self._first_step_seconds = 0.0

        if compute_loss is not None:
            self._check_compute_loss(compute_loss)
        forward = self._forward(compute_loss)
        grad_fn = ms.value_and_grad(forward, None, self.optimizer.parameters)
        self._grad_fn = grad_fn
        optimizer_ = self.optimizer
        scaler = self.loss_scaler = self._loss_scaler()

        if scaler is None:
            def train_step(*batch: Any) -> Any:
                loss, grads = grad_fn(*batch)
                return ops.depend(loss, optimizer_(grads))
        else:  # float16: the step of mindspore.amp.DynamicLossScaler's documentation
            def scaled(*batch: Any) -> Any:
                return scaler.scale(forward(*batch))

            scaled_grad_fn = ms.value_and_grad(scaled, None, self.optimizer.parameters)

            def train_step(*batch: Any) -> Any:
                loss, grads = scaled_grad_fn(*batch)
                loss = scaler.unscale(loss)
                is_finite = ms.amp.all_finite(grads)
                if is_finite:  # an overflowed step is skipped, and the scale lowered
                    loss = ops.depend(loss, optimizer_(scaler.unscale(grads)))
                scaler.adjust(is_finite)
                return loss

        self._train = ms.jit(train_step) if mode == "graph" else train_step
        self._eval = ms.jit(forward) if mode == "graph" else forward

    def _loss_scaler(self) -> Any:
        """The loss scaler of the step, None for none (a float16 session has one; see `MindSporeBenchSession`)."""
        return None

    def _forward(self, compute_loss: Callable[[Any, Any], Any] | None) -> Callable[..., Any]:
        """The loss of one batch, given as the data's columns: the function value_and_grad differentiates."""
        model_, loss_fn = self.model, self.loss_fn
        # one name in both branches: MindSpore's graph-mode parser reads this function's source to compile it
        if compute_loss is not None:
            def forward(*batch: Any) -> Any:
                return compute_loss(model_, batch)
        else:
            def forward(inputs: Any, targets: Any) -> Any:  # type: ignore[misc]
                return loss_fn(model_(inputs), targets)
        return forward

    def _check_compute_loss(self, compute_loss: Callable[[Any, Any], Any]) -> None:
        """Run compute_loss once, eagerly and in evaluation mode, on two training samples: a loss that is no
        scalar fails here with its fix (value_and_grad would differentiate the sum of a vector, and graph mode
        cannot say which Python value was wrong)."""
        sample = tuple(ms.Tensor(column[:2]) for column in self.train)
        self.model.set_train(False)
        try:
            with _clear_errors(self._device):
                value = compute_loss(self.model, sample)
        finally:
            self.model.set_train(True)
        error = _scalar_loss_error(value)
        if error is not None:
            raise TaskError(error)

    def _run(self, function: Callable[..., Any], *args: Any) -> Any:
        with _quiet_notices(), _clear_errors(self._device):
            return function(*args)

    def train_step(self, indices: np.ndarray) -> None:
        index = np.asarray(indices, dtype=np.int64)
        batch = tuple(ms.Tensor(column[index]) for column in self.train)
        if self._steps >= 2:
            self._last = self._run(self._train, *batch)
            return
        # The first step compiles (graph mode) or builds and caches kernels (PyNative); the second is steady.
        # Both are timed to completion: compile_seconds is what the first cost beyond a steady step.
        tick = time.perf_counter()
        self._last = self._run(self._train, *batch)
        self.synchronize()
        elapsed = time.perf_counter() - tick
        self._steps += 1
        if self._steps == 1:
            self._first_step_seconds = elapsed
        else:
            self.compile_seconds = max(0.0, self._first_step_seconds - elapsed)

    def last_loss(self) -> float:
        if self._last is None:
            return float("nan")
        with _clear_errors(self._device):
            return float(self._last.asnumpy())

    def evaluate(self, max_batches: int | None = None) -> float:
        self.model.set_train(False)
        total, count = 0.0, 0
        n_val = len(self.val[0])
        stop = n_val if max_batches is None else min(n_val, max_batches * self.batch_size)
        try:
            with _quiet_notices(), _clear_errors(self._device):
                for start in range(0, stop, self.batch_size):
                    end = min(start + self.batch_size, stop)
                    loss = self._eval(*(ms.Tensor(column[start:end]) for column in self.val))
                    total += float(loss.asnumpy()) * (end - start)
                    count += end - start
        finally:
            self.model.set_train(True)
        return total / max(count, 1)

    def synchronize(self) -> None:
        with _clear_errors(self._device):
            if self._device.kind != "cpu":
                ms.runtime.synchronize()  # Ascend and GPU only: on the CPU it logs an error and returns
            if self._last is not None:
                # The step returns ops.depend(loss, optimizer(grads)): once it is ready, so is the whole step.
                self._last.asnumpy()

    def reset_peak_memory(self) -> None:
        if self._device.kind != "cpu":
            ms.runtime.reset_peak_memory_stats()

    def peak_memory(self) -> int | None:
        # Tensors' peak in MindSpore's pool. The pool itself reserves in 1 GiB blocks (memory_stats'
        # block_unit_size), far too coarse to fit a batch size against; on the CPU MindSpore reports 0.
        if self._device.kind != "cpu":
            return int(ms.runtime.max_memory_allocated())
        return None

    def close(self) -> None:
        for name in ("model", "optimizer", "loss_fn", "train", "val", "_last", "_train", "_eval", "_grad_fn"):
            setattr(self, name, None)

    def train_micro_batches(self, indices: np.ndarray, micro_batch: int) -> None:
        """Each micro-batch's gradients (``value_and_grad``, PyNative), summed with their weights, then one
        optimizer call."""
        index = np.asarray(indices, dtype=np.int64)
        total = len(index)
        summed: tuple[Any, ...] | None = None
        mean = None
        with _quiet_notices(), _clear_errors(self._device):
            for start in range(0, total, micro_batch):
                part = index[start:start + micro_batch]
                weight = len(part) / total
                loss, gradients = self._grad_fn(*(ms.Tensor(column[part]) for column in self.train))
                weighted = tuple(g * weight for g in gradients)
                summed = weighted if summed is None else tuple(a + b for a, b in zip(summed, weighted))
                mean = loss * weight if mean is None else mean + loss * weight
            self.optimizer(summed)
        self._last = mean


# --- the backend -------------------------------------------------------------------------------------------------

class _TrialCallback(ms.train.Callback):
    """``Model.train`` reporting to an autotune trial: times each step, reports ``evaluate()`` (the validation
    loss) after each epoch and requests a clean stop when the pruner says so."""

    def __init__(self, trial: Any, evaluate: Callable[[], float]) -> None:
        super().__init__()
        self.trial, self.evaluate = trial, evaluate
        self._tick = 0.0

    def on_train_step_begin(self, run_context: Any) -> None:
        self._tick = time.perf_counter()

    def on_train_step_end(self, run_context: Any) -> None:
        self.trial.record_step(time.perf_counter() - self._tick, samples=self.trial.batch_size)

    def on_train_epoch_end(self, run_context: Any) -> None:
        epoch = run_context.original_args().cur_epoch_num
        self.trial.report(float(self.evaluate()), int(epoch))
        if self.trial.should_prune():
            run_context.request_stop()


class MindSporeBackend(Backend):
    """MindSpore 2.x: CPU, NVIDIA GPU and Ascend NPU; PyNative by default, graph mode as a task option."""

    name = "mindspore"
    optimizer_names = tuple(sorted(_OPTIMIZERS))
    cpu_pool_block_bytes = 1 << 30  # measured: 1 GiB, whatever set_memory says (ignored on the CPU)

    def __init__(self) -> None:
        self._materialised: tuple[Any, HostData] | None = None
        self._memory_limit: str | None = None
        prime_numpy_bridge()

    def version(self) -> str:
        return ms.__version__

    def devices(self) -> list[Device]:
        devices = [cpu_device("mindspore")]
        gpus = _accelerator_count("gpu")
        if gpus:
            nvml, _note = nvidia_gpus()
            for index in range(gpus):
                info = _nvml_info(nvml, index)
                devices.append(Device(
                    id=f"GPU:{index}", kind="gpu", index=index, name=info.get("name", "NVIDIA GPU"),
                    backend="mindspore", memory_total=info.get("memory_total"), memory_free=info.get("memory_free"),
                ))
        for index in range(_accelerator_count("ascend")):
            # MindSpore 2.10 has no query for an NPU's memory before its pool starts: pass --memory-limit.
            devices.append(Device(id=f"Ascend:{index}", kind="npu", index=index, name="Ascend NPU",
                                  backend="mindspore"))
        return devices

    def session(self, task: Task, data: Any, device: Device, *, batch_size: int,
                optimizer: Mapping[str, Any], seed: int = 0) -> MindSporeSession:
        spec = self.validate_optimizer(optimizer)
        mode = task_mode(task)
        return MindSporeSession(task, self._arrays(data), device, batch_size, spec, seed, mode)

    def make_optimizer(self, parameters: Any, spec: Mapping[str, Any]) -> Any:
        full = self.validate_optimizer(spec)
        with _quiet_notices():
            return _OPTIMIZERS[full["name"]](parameters, full)

    # each framework's loop takes its own options (the base accepts any): a narrower signature on purpose
    def loop_callback(self, trial: Any, *, evaluate: Callable[[], float] | None = None) -> Any:  # type: ignore[override]
        if evaluate is None:
            raise TaskError("trial.callback(evaluate=...) needs a function returning the validation loss: "
                            "Model.train reports none of its own")
        return _TrialCallback(trial, evaluate)

    def data_size(self, data: Any) -> tuple[int, int]:
        arrays = self._arrays(data)
        return arrays.n_train, arrays.n_val

    def _arrays(self, data: Any) -> HostData:
        """`HostData` for ``data``; a native pipeline is read once per data object (the last one is kept)."""
        if isinstance(data, HostData):
            return data
        if self._materialised is not None and self._materialised[0] is data:
            return self._materialised[1]
        arrays = _as_arrays(data)
        self._materialised = (data, arrays)
        return arrays

    type_error_words = ("dtype", "the type of '")  # "the type of 'target' should be Int32"

    def is_oom(self, exc: BaseException) -> bool:
        if isinstance(exc, MemoryError):
            return True
        return _is_oom_text(exc)

    def release_memory(self, device: Device) -> None:
        self._materialised = None
        gc.collect()
        if device.kind == "npu":
            ms.runtime.empty_cache()  # documented for Ascend only
        if device.kind != "cpu":
            ms.runtime.reset_peak_memory_stats()

    def limit_memory(self, device: Device, limit_bytes: int) -> None:
        # mindspore.runtime.set_memory(max_size=...) caps the device pool (Ascend, GPU); it can be set once per
        # process, before the pool starts: a worker does that first. The CPU pool ignores it (measured).
        if device.kind == "cpu":
            return
        size = f"{max(limit_bytes / 2**30, 0.01):.2f}GB"
        if self._memory_limit == size:
            return
        if self._memory_limit is not None:
            raise DeviceError(f"MindSpore's device memory limit is already {self._memory_limit} in this process; "
                              "it can be set once: run with isolation='process'")
        init = f"{min(2.0, float(size[:-2])):.2f}GB"
        try:
            ms.runtime.set_memory(init_size=init, increase_size=init, max_size=size)
        except (RuntimeError, ValueError) as exc:  # set already (by the task), or a size MindSpore refuses
            raise DeviceError(f"cannot cap MindSpore's memory on {device.id} at {size}: {_first_line(str(exc))}"
                              ) from None
        self._memory_limit = size

    def free_memory(self, device: Device) -> int | None:
        if device.kind == "gpu":
            nvml, _note = nvidia_gpus()
            return _nvml_info(nvml, device.index).get("memory_free")
        return device.memory_free

    def preload_modules(self) -> Sequence[str]:
        return ("mindspore", "mindspore.dataset", "autotune.backends.mindspore", "autotune.memory")

    compile_name = "graph mode"

    def precisions(self, device: Device) -> tuple[str, ...]:
        """fp32, and AMP level O2 in float16 (and bfloat16 on Ascend). On the CPU a precision counts only where a
        small matmul in it runs (MindSpore 2.10's CPU MatMul has float16 kernels, no bfloat16). GPU and Ascend
        follow the documentation: untested here."""
        if device.kind == "npu":
            return ("fp32", "bf16", "fp16")
        if device.kind == "gpu":
            return ("fp32", "fp16")
        known = self.__dict__.setdefault("_cpu_precisions", [])
        if known:  # probed once per process: the list must not change within a run (a repeat probe can fail)
            return tuple(known)
        found = ["fp32"]
        for precision in ("bf16", "fp16"):
            try:
                with _quiet_log():
                    one = ms.Tensor(np.ones((2, 2), np.float32)).astype(_MS_DTYPES[precision])
                    ops.matmul(one, one).asnumpy()
            except (RuntimeError, TypeError, ValueError):
                continue
            found.append(precision)
        known.extend(found)
        return tuple(found)

    def bench_session(self, task: Task, data: Any, device: Device, *, batch_size: int,
                      optimizer: Mapping[str, Any], precision: str = "fp32", compile: bool = False,
                      seed: int = 0) -> "MindSporeBenchSession":
        spec = self.validate_optimizer(optimizer)
        return MindSporeBenchSession(task, self._arrays(data), device, batch_size, spec, seed, precision, compile)

    def matmul_seconds(self, device: Device, precision: str, size: int, seconds: float) -> float:
        from autotune.peak import time_matmuls

        _use_device(device)
        a = ms.Tensor(np.random.default_rng(0).standard_normal((size, size), dtype=np.float32))
        a = a.astype(_MS_DTYPES[precision])
        b = a.copy()

        def once() -> None:
            ops.matmul(a, b)[0, 0].asnumpy()  # one element back: the product is done, little is copied

        with _quiet_log():
            return time_matmuls(once, seconds)


# ------------------------------------------------------------------------------------------- bench sessions
_MS_DTYPES = {"fp32": ms.float32, "bf16": ms.bfloat16, "fp16": ms.float16}


def _in_amp(build: Callable[[], Any], precision: str) -> Callable[[], Any]:
    """``build``'s network under AMP level O2 in ``precision`` (batch norms and the loss stay float32)."""
    if precision == "fp32":
        return build

    def built() -> Any:
        network = build()
        if not isinstance(network, nn.Cell):
            return network  # the session says what is wrong with it
        return ms.amp.auto_mixed_precision(network, amp_level="O2", dtype=_MS_DTYPES[precision])

    return built


class MindSporeBenchSession(MindSporeSession):
    """A `MindSporeSession` in AMP level O2 (float16 with a ``DynamicLossScaler``, or bfloat16 compute) and in
    graph mode (``mindspore.jit``,
    compiled on the first step) or PyNative, whatever the task's own mode option says; also runs forward
    passes alone."""

    def _loss_scaler(self) -> Any:
        # float16 gradients underflow without loss scaling; `train_micro_batches` (accumulation) runs unscaled
        if self.precision != "fp16":
            return None
        return ms.amp.DynamicLossScaler(scale_value=2.0**16, scale_factor=2, scale_window=1000)

    def __init__(self, task: Task, data: HostData, device: Device, batch_size: int, optimizer: Mapping[str, Any],
                 seed: int, precision: str, compile: bool) -> None:
        self.precision = precision
        built = dataclasses.replace(task, model=_in_amp(task.model, precision))
        mode = "graph" if compile else "pynative"
        super().__init__(built, data, device, batch_size, optimizer, seed, mode)
        model, compute = self.model, task.compute_loss
        self._compute = compute
        if compute is not None:  # the model's own inputs are known only to compute_loss: its loss stands in
            def infer(*batch: Any) -> Any:
                return compute(model, batch)
        else:
            def infer(*batch: Any) -> Any:  # a def, not a lambda: graph mode parses the function's source
                return model(*batch)
        self._eager_infer = infer
        self._infer = ms.jit(infer) if compile else infer

    def forward(self, indices: np.ndarray) -> None:
        self._forward_with(self._infer, indices)

    def _forward_with(self, infer: Callable[..., Any], indices: np.ndarray) -> None:
        index = np.asarray(indices, dtype=np.int64)
        columns = self.train if self._compute is not None else self.train[:1]
        self.model.set_train(False)
        try:
            out = self._run(infer, *(ms.Tensor(column[index]) for column in columns))
            with _clear_errors(self._device):
                for tensor in (out if isinstance(out, (tuple, list)) else (out,)):
                    tensor.asnumpy()
        finally:
            self.model.set_train(True)

    def training_flops(self, indices: np.ndarray) -> tuple[float | None, str]:
        """Analytic: 3 × the forward count (the backward pass costs about twice the forward), where the forward
        is 2 × weight size per ``nn.Dense`` and 2 × weight size × output positions per ``nn.Conv1d/2d/3d``
        (output shapes read by forward hooks on one sample); other cells are not counted."""
        method = "analytic: 3 × forward, 2 × weight size (× output positions for convolutions) per Dense/Conv cell"
        positions: dict[int, float] = {}
        hooks = []
        counted = []
        for _name, cell in self.model.cells_and_names():
            if isinstance(cell, nn.Dense):
                counted.append(cell)
            elif isinstance(cell, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
                counted.append(cell)
                hooks.append(cell.register_forward_hook(
                    lambda c, _inputs, output: positions.__setitem__(id(c), float(np.prod(output.shape[2:])))))
        if not counted:
            return None, method
        try:
            if hooks:
                self._forward_with(self._eager_infer, np.asarray(indices[:1]))  # hooks run in PyNative only
        finally:
            for hook in hooks:
                hook.remove()
        forward = 0.0
        for cell in counted:
            forward += 2.0 * float(np.prod(cell.weight.shape)) * positions.get(id(cell), 1.0)
        return 3.0 * forward * len(indices), method
