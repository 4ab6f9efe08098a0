"""TensorFlow/Keras adapter: devices (CPU, GPU, TPU), optimizers from ``keras.optimizers``, a compiled
``tf.function`` training step, TensorFlow's allocator statistics, OOM recognition, ``tf.data`` and
``keras.utils.PyDataset`` input (read into host arrays once), a task's own ``compute_loss``.

Memory: TensorFlow never hands memory back to the system inside a process (its allocators keep what they
took, and a GPU's memory is reserved when the runtime starts), which is why probes and trials run in worker
processes. A GPU memory cap (`TensorFlowBackend.limit_memory`) must be set before TensorFlow initialises the
GPU, i.e. before the first operation in the process; the worker runner calls it first thing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import inspect
import os
import random
import re
import time
import warnings
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np

from autotune.backends import tensorflow_kept as keeping
from autotune.backends.base import PRECISIONS, Backend, TrainingSession
from autotune.backends.native_noise import (
    TENSORFLOW_CPU_HALF_NOISE as _CPU_HALF_NOISE,
    TENSORFLOW_LOG_LEVEL,
    TENSORFLOW_NO_ACCELERATOR_NOISE as _NO_ACCELERATOR_NOISE,
    TENSORFLOW_PRE_INIT_NOISE as _PRE_INIT_NOISE,
    quiet_native_noise as _quiet_native_noise,
)
from autotune.backends.tensorflow_kept import SHELF_SHARE, InitialValues, worth_keeping
from autotune.checks import check_labels
from autotune.devices import Device, cpu_device, nvidia_gpus
from autotune.errors import DeviceError, TaskError
from autotune.scoped import environment_defaults
from autotune.task import ArrayData, Task


def _quiet_import_noise() -> contextlib.AbstractContextManager[None]:
    """Drop the INFO lines TensorFlow's C++ side writes while it loads, before TF_CPP_MIN_LOG_LEVEL applies.

    The oneDNN notice is logged by a static initialiser before absl logging is set up, so the environment
    variable cannot silence it.
    """
    return _quiet_native_noise(_PRE_INIT_NOISE)


# TensorFlow reads its C++ log level once, while it loads: INFO and WARNING lines off, errors still shown; the
# variables are set for the import only, so the caller's environment (and its children's) stays as it was.
with _quiet_import_noise(), environment_defaults(**TENSORFLOW_LOG_LEVEL, KERAS_BACKEND="tensorflow"):
    import keras
    import tensorflow as tf

_CPU_OOM_MESSAGES = ("OOM when allocating tensor", "could not allocate memory", "std::bad_alloc")
_GPU_OOM_MESSAGES = ("Dst tensor is not initialized", "CUDA_ERROR_OUT_OF_MEMORY", "failed to allocate memory")

_MAX_MATERIALISED_FRACTION = 0.5
"""A tf.data.Dataset of unknown length is read into memory until it would take this share of free RAM."""


# ------------------------------------------------------------------------------------------ optimizers
# Keras's ``weight_decay`` is decoupled (the variable shrinks by lr × wd each step, as in AdamW). The neutral
# ``weight_decay`` of every optimizer below except adamw, adafactor, lion and lamb means what it means in
# torch.optim: an L2 term added to the gradient. For those the session adds ``wd × w`` to each gradient
# (`_COUPLED_DECAY`) and Keras gets no weight decay, so a tuned value means the same on both backends.
_COUPLED_DECAY = frozenset({"sgd", "momentum", "nesterov", "adam", "amsgrad", "adamax", "nadam", "rmsprop",
                            "adagrad", "adadelta"})


def _adam_like(cls: type, **fixed: Any) -> Callable[[Mapping[str, Any]], keras.optimizers.Optimizer]:
    def build(s: Mapping[str, Any]) -> keras.optimizers.Optimizer:
        return cls(learning_rate=s["lr"], beta_1=s["beta1"], beta_2=s["beta2"], epsilon=s["eps"], **fixed)

    return build


_BETAS = {"beta1": "beta_1", "beta2": "beta_2"}
_HELD_IN_VARIABLES: dict[str, dict[str, str]] = {
    "adam": _BETAS, "amsgrad": _BETAS, "adamax": _BETAS, "nadam": _BETAS, "lion": _BETAS,
    "adamw": {**_BETAS, "weight_decay": "weight_decay"}, "rmsprop": {"rho": "rho"},
}
"""Per optimizer, the neutral parameters whose Keras attribute its update reads only in arithmetic, never in a
Python ``if`` (Keras 3.15's update steps): a variable holds each, so that a kept session's next trial of the same
optimizer assigns the values TPE drew instead of tracing a new update (MobileNetV2: about 7 s each). SGD's
momentum is not among them: ``if self.momentum != 0`` needs a number."""


def _variable_bytes(variables: Any) -> int:
    """What ``variables`` hold, from their shapes and dtypes (nothing is copied to the host)."""
    return sum(int(np.prod(v.shape)) * tf.as_dtype(v.dtype).size for v in variables)


def _root_eps(s: Mapping[str, Any]) -> float:
    # Keras's RMSprop and Adagrad add epsilon under the square root (lr·g/√(v+ε)); torch adds it after
    # (lr·g/(√v+ε)). ε² under the root gives the same floor on the denominator, so the neutral eps keeps its
    # meaning; away from v≈0 either form is negligible.
    return float(s["eps"]) ** 2


_OPTIMIZERS: dict[str, Callable[[Mapping[str, Any]], keras.optimizers.Optimizer]] = {
    "sgd": lambda s: keras.optimizers.SGD(learning_rate=s["lr"]),
    "momentum": lambda s: keras.optimizers.SGD(learning_rate=s["lr"], momentum=s["momentum"]),
    "nesterov": lambda s: keras.optimizers.SGD(learning_rate=s["lr"], momentum=s["momentum"], nesterov=True),
    "adam": _adam_like(keras.optimizers.Adam),
    "amsgrad": _adam_like(keras.optimizers.Adam, amsgrad=True),
    "adamax": _adam_like(keras.optimizers.Adamax),
    "nadam": _adam_like(keras.optimizers.Nadam),
    "adamw": lambda s: keras.optimizers.AdamW(
        learning_rate=s["lr"], beta_1=s["beta1"], beta_2=s["beta2"], epsilon=s["eps"], weight_decay=s["weight_decay"]
    ),
    "rmsprop": lambda s: keras.optimizers.RMSprop(
        learning_rate=s["lr"], rho=s["rho"], momentum=s["momentum"], epsilon=_root_eps(s), centered=s["centered"]
    ),
    "adagrad": lambda s: keras.optimizers.Adagrad(
        learning_rate=s["lr"], epsilon=_root_eps(s), initial_accumulator_value=s["initial_accumulator_value"]
    ),
    # Adadelta puts epsilon under both square roots in Keras and in torch alike: passed as is.
    "adadelta": lambda s: keras.optimizers.Adadelta(learning_rate=s["lr"], rho=s["rho"], epsilon=s["eps"]),
}
if hasattr(keras.optimizers, "Lion"):
    _OPTIMIZERS["lion"] = lambda s: keras.optimizers.Lion(
        learning_rate=s["lr"], beta_1=s["beta1"], beta_2=s["beta2"], weight_decay=s["weight_decay"] or None
    )
if hasattr(keras.optimizers, "Adafactor"):
    # The neutral eps is torch's eps[1], the floor of the parameter scale: Keras's epsilon_2. Keras keeps its
    # update clipping (clip_threshold=1, as in the paper) and, like torch, uses min(lr, 1/√t) as the step size.
    _OPTIMIZERS["adafactor"] = lambda s: keras.optimizers.Adafactor(
        learning_rate=s["lr"], beta_2_decay=s["beta2_decay"], epsilon_2=s["eps"], weight_decay=s["weight_decay"] or None
    )
if hasattr(keras.optimizers, "Ftrl"):
    _OPTIMIZERS["ftrl"] = lambda s: keras.optimizers.Ftrl(
        learning_rate=s["lr"], learning_rate_power=s["lr_power"],
        initial_accumulator_value=s["initial_accumulator_value"],
        l1_regularization_strength=s["l1"], l2_regularization_strength=s["l2"],
    )
if hasattr(keras.optimizers, "Lamb"):
    _OPTIMIZERS["lamb"] = lambda s: keras.optimizers.Lamb(
        learning_rate=s["lr"], beta_1=s["beta1"], beta_2=s["beta2"], epsilon=s["eps"],
        weight_decay=s["weight_decay"] or None
    )


# ---------------------------------------------------------------------------------------------- losses
_PROBABILITY_ACTIVATIONS = ((keras.activations.softmax, "softmax"), (keras.activations.sigmoid, "sigmoid"),
                            (keras.ops.softmax, "softmax"), (keras.ops.sigmoid, "sigmoid"),
                            (tf.nn.softmax, "softmax"), (tf.math.sigmoid, "sigmoid"))
_PROBABILITY_OPS = ("Softmax", "Sigmoid")
_CROSS_ENTROPIES = ("cross_entropy", "binary_cross_entropy")  # the named losses that have two forms


def _named_loss(name: str, from_logits: bool = True) -> keras.losses.Loss:
    """The Keras loss for a neutral name (targets: class indices for cross_entropy, floats otherwise);
    ``from_logits`` picks the form of the two cross entropies (False: the outputs are probabilities)."""
    if name == "cross_entropy":
        return keras.losses.SparseCategoricalCrossentropy(from_logits=from_logits)
    if name == "mse":
        return keras.losses.MeanSquaredError()
    if name == "mae":
        return keras.losses.MeanAbsoluteError()
    if name == "binary_cross_entropy":
        return keras.losses.BinaryCrossentropy(from_logits=from_logits)
    if name == "huber":
        return keras.losses.Huber(delta=1.0)
    raise TaskError(f"unknown loss {name!r}")


def _final_activation(model: Any) -> str | None:
    """'softmax' or 'sigmoid' where the model's last layer applies one, '' where it applies something else, None
    where the layer order says nothing about the output (a subclassed model, several outputs).

    The last layer counts when it is a `Softmax` layer, or has an ``activation`` attribute (Dense, Conv,
    `Activation`) set to softmax or sigmoid; a nested Sequential or functional model as the last layer is read
    the same way. Only Sequential and single-output functional models list their layers in call order.
    """
    if not isinstance(model, keras.Sequential) and len(getattr(model, "outputs", None) or ()) != 1:
        return None
    layers = getattr(model, "layers", None)
    if not layers:
        return None
    last = layers[-1]
    if isinstance(last, keras.Model):
        return _final_activation(last)
    if isinstance(last, keras.layers.Softmax):
        return "softmax"
    activation = getattr(last, "activation", None)
    return next((name for function, name in _PROBABILITY_ACTIVATIONS if activation is function), "")


def _is_probability(output: Any) -> bool:
    """Whether a traced output tensor comes out of a softmax or sigmoid, the test Keras's own losses apply."""
    return hasattr(output, "_keras_logits") or getattr(getattr(output, "op", None), "type", None) in _PROBABILITY_OPS


def _model_from_logits(task: Task, model: Any) -> bool | None:
    """Whether the named cross entropies take the model's outputs as logits: the task's ``from_logits`` when it
    says, else False for a model ending in a softmax or sigmoid; None when only the traced output can tell."""
    if task.from_logits is not None:
        return task.from_logits
    activation = _final_activation(model)
    return None if activation is None else not activation


def _scalar_loss_error(value: Any) -> str | None:
    """Why ``value``, what compute_loss returned, is not a scalar loss tensor (None when it is one)."""
    if not tf.is_tensor(value):
        return (f"compute_loss must return a scalar loss tensor, got {type(value).__name__}: "
                "return the loss itself (reduced, e.g. keras.ops.mean(loss))")
    rank = value.shape.rank
    if rank is not None and rank != 0:
        return (f"compute_loss must return a scalar loss tensor, got shape {tuple(value.shape.as_list())}: "
                "reduce it, e.g. keras.ops.mean(loss)")
    return None


def _loss_caller(compute_loss: Callable[..., Any]) -> Callable[[Any, Any, bool], Any]:
    """``compute_loss(model, batch)``, given ``training=`` too when it declares that argument: Keras layers such
    as Dropout and BatchNormalization behave by it, and the same function serves the training and the
    evaluation step."""
    try:
        takes_training = "training" in inspect.signature(compute_loss).parameters
    except (TypeError, ValueError):  # a callable without a readable signature
        takes_training = False
    if takes_training:
        return lambda model, batch, training: compute_loss(model, batch, training=training)
    return lambda model, batch, training: compute_loss(model, batch)


# ------------------------------------------------------------------------------------------------ data
# Each split is held as host arrays: a nest (a tuple, usually (x, y), or a dict; x may itself be a dict or a
# tuple for a model with several inputs) of NumPy arrays with one row per sample. Steps index the arrays, so
# the engine's sampler, fit-batch and every trial see the same samples at any batch size.

@dataclasses.dataclass
class HostData:
    """The training and validation splits as nests of host arrays, one row per sample (checked on creation)."""

    train: Any
    val: Any

    def __post_init__(self) -> None:
        self.n_train = _rows(self.train, "training")
        self.n_val = _rows(self.val, "validation")


def _rows(split: Any, label: str) -> int:
    """The number of samples in a split: every array's first dimension, which must agree and be non-zero."""
    lengths = {len(a) for a in tf.nest.flatten(split)}
    if len(lengths) != 1 or 0 in lengths:
        sizes = ", ".join(str(n) for n in sorted(lengths))
        raise TaskError(f"task {label} data must be non-empty arrays with one row per sample: got row counts {sizes}")
    return lengths.pop()


def _arrays(value: Any, where: str) -> Any:
    """``value`` as a nest of NumPy arrays: dicts and tuples keep their structure, everything else becomes one
    array (a list included, as NumPy reads it); scalars, strings and None are refused, naming ``where``."""
    if isinstance(value, dict):
        return {key: _arrays(item, where) for key, item in value.items()}
    if isinstance(value, tuple):
        return tuple(_arrays(item, where) for item in value)
    if value is None or isinstance(value, (str, bytes)) or (not hasattr(value, "__len__") and not tf.is_tensor(value)):
        raise TaskError(f"{where} holds a value that is not an array or tensor (got {type(value).__name__})")
    array = np.asarray(value)
    if array.ndim == 0 or array.dtype == object:
        raise TaskError(f"{where} holds a value that is not an array with one row per sample "
                        f"(got {type(value).__name__} of shape {array.shape} and dtype {array.dtype})")
    return array


def _pair_of_arrays(part: Any, label: str) -> Any:
    """An (x, y) pair given as arrays (or tensors, or dicts of them) → a checked nest of arrays."""
    x, y = (_arrays(v, f"task {label} data") for v in part)
    n_x, n_y = (_rows(v, label) for v in (x, y))
    if n_x != n_y:
        raise TaskError(f"task {label} data has {n_x} inputs but {n_y} targets: they must match")
    return (x, y)


def _is_batched(spec: Any) -> bool:
    # Dataset.batch() leaves the leading dimension unknown (None); single samples have known shapes.
    shapes = [s.shape for s in tf.nest.flatten(spec)]
    return all(shape.rank is not None and shape.rank >= 1 and shape[0] is None for shape in shapes)


def _joined(items: list[Any], batched: bool, where: str) -> Any:
    """Items of one structure (batches, or single samples) as one nest of arrays."""
    join = np.concatenate if batched else np.stack
    try:
        for item in items[1:]:
            tf.nest.assert_same_structure(items[0], item)
        return tf.nest.map_structure(lambda *parts: join(parts), *items)
    except (ValueError, TypeError) as exc:
        detail = str(exc).splitlines()[0][:200]
        raise TaskError(f"{where} yields items that do not join into one array per part ({detail}): give every "
                        "item the same structure and the same shape past the batch dimension (pad sequences)") from None


class _MemoryBudget:
    """Bytes read from a dataset so far, against half the free memory (a dataset that never ends stops here)."""

    def __init__(self, where: str) -> None:
        import psutil

        self.where = where
        self.left = _MAX_MATERIALISED_FRACTION * psutil.virtual_memory().available

    def spend(self, item: Any) -> None:
        self.left -= sum(np.asarray(a).nbytes for a in tf.nest.flatten(item))
        if self.left < 0:
            raise TaskError(f"{self.where} does not fit in half the free memory (or never ends): "
                            "give a finite one, e.g. dataset.take(N)")


def _materialise(dataset: Any, label: str) -> Any:
    """Read a finite tf.data.Dataset of (x, y) pairs (or dicts) of dense tensors, single samples or batches
    from ``.batch()``, into one nest of arrays."""
    where = f"the {label} tf.data.Dataset"
    spec = dataset.element_spec
    if not isinstance(spec, (tuple, dict)) or not all(isinstance(s, tf.TensorSpec) for s in tf.nest.flatten(spec)):
        raise TaskError(f"{where} must yield (x, y) pairs of tensors (or dicts of them), got elements {spec}")
    if int(dataset.cardinality()) == int(tf.data.INFINITE_CARDINALITY):
        raise TaskError(f"{where} is infinite (repeat()?): give a finite one, e.g. dataset.take(N)")
    budget = _MemoryBudget(where)
    items = []
    for item in dataset.as_numpy_iterator():
        budget.spend(item)
        items.append(item)
    if not items:
        raise TaskError(f"{where} is empty: it must yield at least one (x, y) element")
    return _joined(items, _is_batched(spec), where)


def _pydataset_item(dataset: Any, index: int, where: str) -> Any:
    """Batch ``index`` of a PyDataset as a nest of arrays: an (x, y) pair (or a dict, for compute_loss)."""
    item = dataset[index]
    fix = "make __getitem__ return (x, y) batches of NumPy arrays or tensors"
    if isinstance(item, list):
        item = tuple(item)
    if not isinstance(item, (tuple, dict)) or not item:
        raise TaskError(f"{where} item {index} is not an (x, y) pair (got {type(item).__name__}): {fix}")
    try:
        arrays = _arrays(item, f"{where} item {index}")
    except TaskError as exc:
        raise TaskError(f"{exc}: {fix}") from None
    lengths = {len(a) for a in tf.nest.flatten(arrays)}
    if len(lengths) != 1:
        raise TaskError(f"{where} item {index} has parts of {sorted(lengths)} rows: {fix}, one row per sample in each")
    return arrays


def _read_pydataset(dataset: Any, label: str) -> Any:
    """Read every batch of a finite keras.utils.PyDataset (``dataset[i]`` for i < num_batches) into arrays."""
    where = f"the {label} PyDataset"
    try:
        count = dataset.num_batches
    except NotImplementedError:
        count = None
    if count is None:
        raise TaskError(f"{where} has no length (an infinite dataset): define __len__ or num_batches")
    if count <= 0:
        raise TaskError(f"{where} is empty: it must yield at least one (x, y) batch")
    budget = _MemoryBudget(where)
    items = []
    for index in range(int(count)):
        item = _pydataset_item(dataset, index, where)
        budget.spend(item)
        items.append(item)
    return _joined(items, True, where)


def _split(part: Any, label: str) -> Any:
    """One split of the task's data as a nest of host arrays."""
    if isinstance(part, tf.data.Dataset):
        return _materialise(part, label)
    if isinstance(part, keras.utils.PyDataset):
        return _read_pydataset(part, label)
    if isinstance(part, (tuple, list)) and len(part) == 2:
        return _pair_of_arrays(part, label)
    raise TaskError(f"task {label} data must be a pair (x, y) of arrays, a tf.data.Dataset or a "
                    f"keras.utils.PyDataset, got {type(part).__name__}")


_LAST_DATA: list[Any] = []  # [the task's data object, its HostData]: a dataset is read once per process


def _host_data(data: Any) -> HostData:
    """`HostData` for the task's data: arrays as they are, datasets (tf.data, PyDataset) read into arrays once."""
    if isinstance(data, HostData):
        return data
    if _LAST_DATA and _LAST_DATA[0] is data:  # the same object each time: a kept session knows its data by it
        return _LAST_DATA[1]
    if isinstance(data, ArrayData):
        host = HostData(_pair_of_arrays((data.x_train, data.y_train), "training"),
                        _pair_of_arrays((data.x_val, data.y_val), "validation"))
        _LAST_DATA[:] = [data, host]
        return host
    if isinstance(data, (tf.data.Dataset, keras.utils.PyDataset)):
        raise TaskError(f"task data is one {type(data).__name__}: return a pair (train_dataset, validation_dataset)")
    if not isinstance(data, (tuple, list)) or len(data) != 2:
        raise TaskError("task data must be ((x_train, y_train), (x_val, y_val)) or (train_dataset, val_dataset); "
                        f"got {type(data).__name__}")
    host = HostData(_split(data[0], "training"), _split(data[1], "validation"))
    _LAST_DATA[:] = [data, host]
    return host


def _physical_devices(kind: str) -> list[Any]:
    """TensorFlow's physical devices of ``kind``, without the no-GPU lines a listing logs where it is the first
    to start CUDA in the process (each worker is a fresh process)."""
    with _quiet_native_noise(_NO_ACCELERATOR_NOISE):
        return tf.config.list_physical_devices(kind)


def _grow_gpu_memory_on_demand() -> None:
    """Let GPUs take memory as needed rather than nearly all of it when TensorFlow's runtime starts.

    The tuning process starts the runtime as soon as the task's data() builds a tf.data.Dataset (it counts the
    samples); reserving every GPU there would starve the workers. A GPU given a memory cap (a logical device)
    keeps it. No effect once the runtime has started.
    """
    for gpu in _physical_devices("GPU"):
        try:
            if tf.config.get_logical_device_configuration(gpu) is None:
                tf.config.experimental.set_memory_growth(gpu, True)
        except (RuntimeError, ValueError):  # already started, or configured otherwise
            pass


def _float32(array: np.ndarray) -> np.ndarray:
    if np.issubdtype(array.dtype, np.floating) and array.dtype != np.float32:
        array = array.astype(np.float32)
    return np.ascontiguousarray(array)


def _prepared(split: Any, named_loss: str | None) -> Any:
    """A split ready for the step: floating arrays as float32, every other dtype as the data has it (integer
    labels reach a user's loss or compute_loss unchanged); the targets of a named loss in the dtype it takes
    (int64 class indices for cross_entropy, float32 for the others)."""
    split = tf.nest.map_structure(_float32, split)
    if named_loss is None:
        return split
    x, y = split
    if not isinstance(y, np.ndarray):
        raise TaskError(f"the loss {named_loss!r} needs one target array, got a {type(y).__name__} of targets: "
                        "pass a Keras loss callable or a compute_loss for several outputs")
    return x, np.ascontiguousarray(y.astype(np.int64 if named_loss == "cross_entropy" else np.float32))


def _pair_error(split: Any, label: str) -> str | None:
    """Why a split cannot feed ``loss(model(x), y)`` (None when it is an (x, y) pair)."""
    if isinstance(split, tuple) and len(split) == 2:
        return None
    shape = f"a dict with keys {sorted(split)}" if isinstance(split, dict) else f"{len(split)}-part tuples"
    return (f"the task's {label} data yields {shape}, not (x, y) pairs: yield (x, y), or set "
            "Task(compute_loss=...) to compute the loss from the whole batch")


def _take(split: Any, index: Any) -> Any:
    return tf.nest.map_structure(lambda array: array[index], split)


def _signature(array: np.ndarray, batch: int | None) -> tf.TensorSpec:
    return tf.TensorSpec((batch, *array.shape[1:]), tf.as_dtype(array.dtype))


def _linear_memory_under_a_cap() -> bool:
    """In a process under an address-space cap (a capped worker), make TensorFlow's CPU memory show as it is used.

    Two things would otherwise make the peak address space a poor, non-linear picture of the memory a step needs:

    * oneDNN builds of TensorFlow serve every CPU tensor above 256 KiB from a BFC allocator that grows by regions
      of doubling size and never returns them: the address space climbs in steps while the live tensors grow
      smoothly. TF_ONEDNN_USE_SYSTEM_ALLOCATOR=1 sends
      them to malloc, which (with the worker's pinned mmap threshold) maps and unmaps each tensor exactly.
      TensorFlow reads the variable at its first CPU allocation, so this must run before the first operation.
    * glibc reserves a 64 MiB malloc arena for each allocating thread of TensorFlow's pools, hardly any of it
      used; under RLIMIT_AS an arena that cannot be reserved is silently skipped, so
      near the cap the peak stops growing while the real memory still does. One arena keeps the address space
      the framework plus live memory.

    With both, the capped address space grows linearly with the batch up to the cap; the cost is page faults on
    fresh tensors each step, so memory-bound steps run slower in capped workers (figures: benchmarks/RESULTS.md,
    2026-12-02). Uncapped processes are not touched. Called when the backend is created (a worker does that
    before it calls the task's data(), which may start the runtime) and again for each session.
    """
    import resource

    soft, _hard = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY:
        return False
    os.environ.setdefault("TF_ONEDNN_USE_SYSTEM_ALLOCATOR", "1")
    try:
        import ctypes
        import ctypes.util

        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        m_arena_max = -8
        libc.mallopt(m_arena_max, 1)
    except (OSError, AttributeError):  # not glibc
        pass
    return True


def _logical_name(device: Device) -> str:
    """TensorFlow's name (``GPU:0``) for the physical accelerator ``device``; a fresh process is shown only it.

    TensorFlow reserves memory on every GPU it can see when its runtime starts, so a worker training on GPU:1
    would also take GPU:0 from a neighbour. Before the runtime starts, a GPU session therefore hides the other
    GPUs (in this process only), and the chosen one becomes logical GPU:0.
    """
    kind = device.kind.upper()
    physical = _physical_devices(kind)
    if device.index >= len(physical):
        raise DeviceError(f"{device.id} is not available to tensorflow: it sees {len(physical)} {kind} device(s)")
    if kind == "GPU":
        try:
            tf.config.set_visible_devices([physical[device.index]], "GPU")
        except RuntimeError:  # the runtime already started in this process: devices stay as they are
            pass
    visible = tf.config.get_visible_devices(kind)
    if physical[device.index] not in visible:
        raise DeviceError(f"{device.id} is hidden from TensorFlow in this process (an earlier session claimed "
                          "another device before TensorFlow started): use worker processes (isolation='process')")
    return f"{kind}:{visible.index(physical[device.index])}"


# ------------------------------------------------------------------------------------------------- TPU
_TPU: dict[str, Any] = {}  # the resolver and topology, once per process
_TPU_STRATEGIES: dict[int, Any] = {}


def _tpu_strategy(index: int) -> Any:
    """A TPUStrategy on the one TPU core ``index`` of this host (documented API; the TPU system is set up once
    per process, as `tf.tpu.experimental.initialize_tpu_system` requires). Untested here: no TPU."""
    if index not in _TPU_STRATEGIES:
        if not _TPU:
            resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu="local")  # cores attached to this VM
            tf.config.experimental_connect_to_cluster(resolver)
            _TPU["topology"] = tf.tpu.experimental.initialize_tpu_system(resolver)
            _TPU["resolver"] = resolver
        # One replica on core `index` of task 0: core_assignment is [replicas, cores per replica, mesh rank].
        core = _TPU["topology"].device_coordinates[0:1, index:index + 1, :]
        assignment = tf.tpu.experimental.DeviceAssignment(_TPU["topology"], core)
        _TPU_STRATEGIES[index] = tf.distribute.TPUStrategy(_TPU["resolver"], experimental_device_assignment=assignment)
    return _TPU_STRATEGIES[index]


# --------------------------------------------------------------------------------------------- session
class TensorFlowSession(TrainingSession):
    """Keras model, optimizer and data on one TensorFlow device; the step is a compiled ``tf.function``. In a
    worker, a closed session is kept for the next trial of the same task, which `renew` starts from the first
    values of every variable; a kept session's step is two functions, the gradients and the optimizer's update,
    so that another optimizer traces only its update.

    Data stays on the host as NumPy arrays and moves per batch, as in the torch adapter. ``compile_seconds`` is
    the wall time of the first call of each compiled function (tracing, graph optimisation or XLA compilation,
    and that first execution), which the engine's warm-up keeps out of the throughput.

    The loss of a batch is ``task.compute_loss(model, batch)`` when the task gives one (``batch`` is the data's
    (x, y) pair or dict, as tensors; ``training=`` is passed too when the function takes it), else
    ``loss(y, model(x))``. A named cross entropy takes the outputs as
    logits unless the task says ``from_logits=False`` or the model ends in a softmax or sigmoid: read from the
    last layer of a Sequential or functional model, else from the traced output tensor, as Keras's own losses
    read it. ``from_logits`` is what was decided (None until the first trace when only the output can tell).
    """

    first_step_compiles = True

    def __init__(self, task: Task, data: HostData, device: Device, batch_size: int,
                 optimizer: Mapping[str, Any], seed: int) -> None:
        if keras.backend.backend() != "tensorflow":
            raise TaskError(f"Keras runs on {keras.backend.backend()!r}: set KERAS_BACKEND=tensorflow for this backend")
        self.batch_size = batch_size
        self.device = device
        self._memory_device = None if device.kind == "cpu" else _logical_name(device)
        self._strategy = _tpu_strategy(device.index) if device.kind == "tpu" else None
        self.compile_seconds = 0.0
        self._contract_error: TaskError | None = None
        keras.utils.set_random_seed(seed)

        self._compute_loss = None if task.compute_loss is None else _loss_caller(task.compute_loss)
        self._loss_name = task.loss if isinstance(task.loss, str) and self._compute_loss is None else None
        if self._compute_loss is None:
            for label, split in (("training", data.train), ("validation", data.val)):
                if (error := _pair_error(split, label)) is not None:
                    raise TaskError(error)
        self.train = _prepared(data.train, self._loss_name)
        self.val = _prepared(data.val, self._loss_name)

        with self._scope():
            self.model = self._built_model(task)
        self.from_logits = _model_from_logits(task, self.model) if self._loss_name in _CROSS_ENTROPIES else None
        self.loss_fn: Any = None if self._compute_loss is not None else (
            _named_loss(self._loss_name, self.from_logits is not False) if self._loss_name else task.loss)
        # what a kept session must match to serve another trial (see `renew`), and the weights it starts from
        self._source = (task, data, seed)
        self._initial_weights = self._weights_to_keep()

        # TPUs compile for static shapes: no relaxed batch dimension there.
        self._train_sig = None if self._strategy else [tf.nest.map_structure(lambda a: _signature(a, None),
                                                                             self.train)]
        val_sig = None if self._strategy else [tf.nest.map_structure(lambda a: _signature(a, None), self.val)]
        self._jit = self._jit_compile()
        # a session that may be kept steps with two functions, the gradients and the optimizer's update, so that
        # another optimizer traces only its update; any other runs one fused step (see `_use_optimizer`)
        self._gradients_fn = None if self._initial_weights is None else tf.function(
            self._gradient_step, input_signature=self._train_sig)
        self._eval_fn = tf.function(self._replicated(self._eval_step), input_signature=val_sig, jit_compile=self._jit)
        self._traced: set[str] = set()
        self._last: Any = None
        self.optimizer: Any = None
        self._apply_fn: Any = None
        self._train_fn: Any = None
        self._accumulation: Any = None
        self._initial_slots: Any = None
        self._optimizer_key: Any = None
        self._held: dict[str, Any] = {}
        self._shelf: dict[Any, tuple[Any, Any, dict[str, Any], Any]] = {}  # `_shelve_optimizer`, oldest first
        self._use_optimizer(optimizer)

    def _wrapped_optimizer(self, optimizer: Any) -> Any:
        """The optimizer the step applies gradients with (a subclass may wrap it; see `TensorFlowBenchSession`)."""
        return optimizer

    def _built_model(self, task: Task) -> Any:
        """The task's fresh model, its variables created (a wrong input shape fails here)."""
        try:
            model = task.model()
        except Exception as exc:
            raise TaskError(f"the task's model() raised {type(exc).__name__}: {exc}") from None
        if not isinstance(model, keras.Model):
            raise TaskError(f"the task's model() returned {type(model).__name__}, not a keras.Model")
        if not model.built:  # a subclassed model creates its variables on its first call
            sample = _take(self.train, slice(0, 1))
            if self._compute_loss is None:
                model(sample[0], training=False)
            else:
                self._compute_loss(model, sample, False)
        return model

    def _scope(self) -> Any:
        if self._strategy is not None:
            return self._strategy.scope()
        return tf.device("/CPU:0" if self._memory_device is None else f"/{self._memory_device}")

    def _loss(self, y: Any, prediction: Any) -> Any:
        if self._loss_name in _CROSS_ENTROPIES and self.from_logits is None:  # decided once, at the first trace
            self.from_logits = not _is_probability(prediction)
            self.loss_fn = _named_loss(self._loss_name, self.from_logits)
        return tf.reduce_mean(tf.cast(self.loss_fn(y, prediction), tf.float32))

    def _batch_loss(self, batch: Any, training: bool) -> Any:
        """The mean loss of one batch: the task's compute_loss, checked to be a scalar, or loss(y, model(x))."""
        if self._compute_loss is None:
            x, y = batch
            return self._loss(y, self.model(x, training=training))
        value = self._compute_loss(self.model, batch, training)
        error = _scalar_loss_error(value)
        if error is not None:  # kept: tracing re-raises exceptions with the traced code's lines added
            self._contract_error = TaskError(error)
            raise self._contract_error
        return tf.cast(value, tf.float32)

    def _jit_compile(self) -> bool | None:
        """Whether the steps are XLA-compiled (a subclass may ask; see `TensorFlowBenchSession`)."""
        return None

    def _weights_to_keep(self) -> Any:
        """The model's first values, where this session may be kept for the worker's next trial, else None."""
        if type(self) is not TensorFlowSession or self._strategy is not None:
            return None  # precision and compile variants, and TPU replicas, are built fresh each time
        from autotune.runner import in_worker

        if not in_worker():
            return None  # a caller's own process keeps nothing after the call
        # bounded from the shapes first: a model too large to keep is not copied to the host at all
        if not worth_keeping(_variable_bytes(self.model.variables)):
            return None
        return InitialValues(self.model.variables)

    def _use_optimizer(self, spec: Mapping[str, Any]) -> None:
        """Train with the optimizer ``spec`` asks for: the one this session has, its state back to its first
        values, when only the learning rate and the parameters held in variables (`_HELD_IN_VARIABLES`)
        differ; else a new one with its own traced update."""
        held = self._held_parameters(spec["name"])
        key = tuple(sorted((name, value) for name, value in spec.items() if name != "lr" and name not in held))
        if key != self._optimizer_key:
            wanted = self._shelf.pop(key, None)  # taken first: the set-aside ones may have to make room
            if self.optimizer is not None:
                self._shelve_optimizer()
            if wanted is not None:
                self._optimizer_key = key
                self.optimizer, self._apply_fn, self._held, self._initial_slots = wanted
                self._traced.add("apply")
        if key == self._optimizer_key:
            self._initial_slots.restore()
            self.set_learning_rate(float(spec["lr"]))
            for name, variable in self._held.items():
                variable.assign(float(spec[name]))
        else:
            with self._scope():
                inner = _OPTIMIZERS[spec["name"]](spec)
                self._held = {}
                for name, attribute in held.items():  # before the first trace, so that the update reads them
                    self._held[name] = tf.Variable(float(spec[name]), trainable=False, dtype=tf.float32)
                    setattr(inner, attribute, self._held[name])
                self.optimizer = self._wrapped_optimizer(inner)
                self.optimizer.build(self.model.trainable_variables)
            self._optimizer_key = key
            if self._initial_weights is not None:  # read only when a kept session renews
                self._initial_slots = InitialValues(self.optimizer.variables)
            apply = self._make_apply(float(spec.get("weight_decay", 0.0)) if spec["name"] in _COUPLED_DECAY else 0.0)
            # a kept session's update, and micro-batches' summed gradients; Keras's optimizers hold no Python
            # control flow on tensors, so autograph's conversion would only slow each new optimizer's trace
            self._apply_fn = tf.function(apply, autograph=False)
            if self._gradients_fn is None:
                # a session that is never kept runs one fused step: one XLA cluster where compiled, one
                # replicated step under a TPU strategy
                self._train_fn = tf.function(self._replicated(lambda batch: apply(self._gradient_step(batch))[0]),
                                             input_signature=self._train_sig, jit_compile=self._jit)

    def _shelve_optimizer(self) -> None:
        """Set the current optimizer aside: kept with its traced update where the session may be kept and every
        set-aside optimizer's state together stays within `SHELF_SHARE` of memory (oldest dropped first), since
        TPE comes back to an optimizer (Adam's update: about 8 s to trace on MobileNetV2); else freed."""
        if self._gradients_fn is not None and "apply" in self._traced:
            self._shelf[self._optimizer_key] = (self.optimizer, self._apply_fn, self._held, self._initial_slots)
        while self._shelf and not worth_keeping(sum(_variable_bytes(entry[0].variables)
                                                    for entry in self._shelf.values()), share=SHELF_SHARE):
            self._shelf.pop(next(iter(self._shelf)))
        self.optimizer = self._apply_fn = self._train_fn = self._accumulation = None
        self._optimizer_key, self._held, self._initial_slots = None, {}, None
        self._traced -= {"apply", "train"}
        gc.collect()  # a freed optimizer's state goes before the next one's is built

    def _held_parameters(self, name: str) -> dict[str, str]:
        """`_HELD_IN_VARIABLES` for optimizer ``name`` where the weights are all float32 (a float32 variable in
        a float16 weight's update would change its dtype), else none. Every such session holds them, kept or
        not, so that both round ``1 - beta`` alike (float32 from a variable, not from a Python float)."""
        if any(v.dtype != "float32" for v in self.model.trainable_variables):
            return {}
        return _HELD_IN_VARIABLES.get(name, {})

    def _gradient_step(self, batch: Any) -> Any:
        """The batch's loss and the gradients of its total (regularisation included, scaled for float16)."""
        model, optimizer = self.model, self.optimizer
        # float16 training: the loss is scaled before the gradients and `LossScaleOptimizer.apply_gradients`
        # unscales them and skips a step whose gradients overflowed (the Keras mixed-precision guide)
        with tf.GradientTape() as tape:
            loss = self._batch_loss(batch, training=True)
            total = loss + tf.add_n(model.losses) if model.losses else loss
            if self._strategy is not None:
                total = total / self._strategy.num_replicas_in_sync  # Keras sums gradients over replicas
            if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
                total = optimizer.scale_loss(total)
        return loss, tape.gradient(total, model.trainable_variables)

    def _make_apply(self, decay: float) -> Callable[[Any], Any]:
        """The optimizer's update from a step's gradients, with the coupled L2 decay added to them."""
        model, optimizer = self.model, self.optimizer
        scaled = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)

        def apply(step: Any) -> Any:
            loss, gradients = step
            variables = model.trainable_variables
            if decay:
                # the decay term joins gradients still scaled by the loss scale: it is scaled alike
                factor = optimizer.scale_loss(tf.constant(decay, tf.float32)) if scaled else decay
                gradients = [g if g is None else g + tf.cast(factor, g.dtype) * tf.cast(v, g.dtype)
                             for g, v in zip(gradients, variables)]
            optimizer.apply_gradients(zip(gradients, variables))
            return loss, optimizer.iterations

        return apply

    def _eval_step(self, batch: Any) -> Any:
        return self._batch_loss(batch, training=False)

    def _replicated(self, step: Callable[[Any], Any]) -> Callable[[Any], Any]:
        strategy = self._strategy
        if strategy is None:
            return step

        def run(batch: Any) -> Any:
            per_replica = strategy.run(step, args=(batch,))
            return strategy.reduce(tf.distribute.ReduceOp.MEAN, per_replica, axis=None)

        return run

    def _call(self, name: str, function: Any, batch: Any) -> Any:
        with self._scope() if self._strategy is None else contextlib.nullcontext():
            if name in self._traced:
                return function(batch)
            tick = time.perf_counter()
            result = self._first_call(function, batch)
            self.compile_seconds += time.perf_counter() - tick
            self._traced.add(name)
            return result

    def _first_call_noise(self) -> contextlib.AbstractContextManager[Any]:
        """What to keep off stderr while the step first runs: nothing in fp32 (stderr is never captured where a
        crash there would lose TensorFlow's last lines)."""
        return contextlib.nullcontext()

    def _first_call(self, function: Any, batch: Any) -> Any:
        """The tracing call, run to completion; a broken compute_loss contract comes out as its one-line error."""
        try:
            with warnings.catch_warnings(), self._first_call_noise():
                # Keras warns when from_logits=True meets a softmax output; only an explicit Task(from_logits=True)
                # gets there, and the user has said what the outputs are.
                warnings.filterwarnings("ignore", message=r".*received `from_logits=True`")
                result = function(batch)
            tf.nest.flatten(result)[0].numpy()  # the first call is done, compiled and run, before the clock is read
        except Exception:
            if self._contract_error is not None:
                raise self._contract_error from None
            raise
        return result

    def check_contract(self, indices: np.ndarray) -> int | None:
        """Forward and loss run eagerly (no tracing to pay); sparse cross entropy counts classes on the last axis."""
        if self._compute_loss is not None:
            return super().check_contract(indices)
        x, y = _take(self.train, np.asarray(indices, dtype=np.int64))
        with self._scope():
            prediction = self.model(x, training=False)
            classes = None
            # every label is on the host: check them all (Keras's own error, if any, names no fix)
            labels = [np.asarray(split[1]) for split in (self.train, self.val) if isinstance(split, tuple)]
            if self._loss_name == "cross_entropy" and labels and all(a.dtype.kind in "iu" for a in labels) \
                    and len(prediction.shape) >= 2:
                classes = int(prediction.shape[-1])
                check_labels(min(int(a.min()) for a in labels if a.size), max(int(a.max()) for a in labels if a.size),
                             classes, "cross_entropy")
            float(self._loss(y, prediction).numpy())
        return classes

    def train_step(self, indices: np.ndarray) -> None:
        """One compiled optimizer step on the training samples at ``indices`` (the first call also compiles)."""
        batch = _take(self.train, np.asarray(indices, dtype=np.int64))
        if self._gradients_fn is None:
            self._last = self._call("train", self._train_fn, batch)
            return
        step = self._call("gradients", self._gradients_fn, batch)
        self._last, _count = self._call("apply", self._apply_fn, step)

    def resize(self, batch_size: int) -> bool:
        """The steps' signatures leave the batch dimension free: another batch size runs the same traced step
        (not under a TPU strategy, whose replicas split a fixed batch)."""
        if self._strategy is not None:
            return False
        self.batch_size = batch_size
        return True

    def set_learning_rate(self, lr: float) -> None:
        """Assign the optimizer's learning-rate variable (read by the compiled step, no retrace)."""
        self.optimizer.learning_rate.assign(float(lr))

    def last_loss(self) -> float:
        """The last step's training loss (without regularisation terms), as a float."""
        return float("nan") if self._last is None else float(self._last.numpy())

    def evaluate(self, max_batches: int | None = None) -> float:
        """Mean validation loss, sample-weighted over batches of ``batch_size`` (the first ``max_batches``)."""
        total, count = 0.0, 0
        n_val = len(tf.nest.flatten(self.val)[0])
        stop = n_val if max_batches is None else min(n_val, max_batches * self.batch_size)
        for start in range(0, stop, self.batch_size):
            end = min(start + self.batch_size, stop)
            loss = self._call("eval", self._eval_fn, _take(self.val, slice(start, end)))
            total += float(loss.numpy()) * (end - start)
            count += end - start
        return total / max(count, 1)

    def synchronize(self) -> None:
        """Wait for queued device work: every accelerator, or the last step's loss on the CPU."""
        if self._memory_device is not None and hasattr(tf.test.experimental, "sync_devices"):
            tf.test.experimental.sync_devices()
        elif self._last is not None:
            self._last.numpy()

    def reset_peak_memory(self) -> None:
        """Reset the accelerator allocator's peak (the CPU's is read from the process by the engine)."""
        if self._memory_device is not None:
            try:
                tf.config.experimental.reset_memory_stats(self._memory_device)
            except (ValueError, tf.errors.OpError):  # a device whose allocator keeps no statistics
                pass

    def peak_memory(self) -> int | None:
        """Peak bytes in use by TensorFlow's allocator on the accelerator since the reset; None on the CPU."""
        if self._memory_device is None:
            return None
        try:
            return int(tf.config.experimental.get_memory_info(self._memory_device)["peak"])
        except (ValueError, tf.errors.OpError):
            return None

    def close(self) -> None:
        """Hold this session for the worker's next trial where it may be kept (see `renew`), else drop it."""
        self._last = None
        if self._initial_weights is not None and self.model is not None:
            keeping.keep(self)
        else:
            self.release()

    def release(self) -> None:
        """Drop the model, optimizer, compiled functions and data."""
        for name in ("model", "optimizer", "_gradients_fn", "_apply_fn", "_train_fn", "_eval_fn", "_accumulation",
                     "train", "val", "_last", "_initial_weights", "_initial_slots"):
            setattr(self, name, None)
        self._held, self._shelf = {}, {}

    def renew(self, task: Task, data: HostData, device: Device, *, batch_size: int, optimizer: Mapping[str, Any],
              seed: int) -> bool:
        """Make this kept session what a fresh one for the same task, data and device would be: the model's
        variables back to their first values (another seed's, from a new build), the optimizer's state to its
        first values, the learning rate and batch size the caller's; the traced steps stay (another optimizer
        traces only its update). False where the session cannot serve the call (the caller then drops it)."""
        source_task, source_data, source_seed = self._source
        if self.model is None or self._initial_weights is None or not (
                source_task is task and source_data is data and device.id == self.device.id):
            return False
        # Python's and NumPy's generators as `keras.utils.set_random_seed` seeds them (Keras's initializers and
        # seed generators draw from Python's), not TensorFlow's: its set_seed clears the kernel caches, and every
        # traced step would be optimised again (MobileNetV2: 3.5 s each).
        random.seed(seed)
        np.random.seed(seed)
        with self._scope():
            if seed != source_seed:
                if not self._take_first_values_of_a_new_build(task):
                    return False
                self._source = (task, data, seed)
            self._initial_weights.restore()
            self._use_optimizer(optimizer)
        self.batch_size = batch_size
        self.compile_seconds = 0.0
        self._contract_error = None
        return True

    def _take_first_values_of_a_new_build(self, task: Task) -> bool:
        """Keep a new build's variable values (another seed's) as the first values of this session's model."""
        fresh = self._built_model(task)
        if [tuple(v.shape) for v in fresh.variables] != [tuple(v.shape) for v in self.model.variables]:
            return False
        initial = InitialValues(fresh.variables, into=self.model.variables)
        del fresh
        gc.collect()  # the new build is not held beside the kept model through the trial
        if not worth_keeping(initial.nbytes):
            return False
        self._initial_weights = initial
        return True

    def train_micro_batches(self, indices: np.ndarray, micro_batch: int) -> None:
        """Each micro-batch's gradients from one compiled function, summed here with their weights, applied by
        another: one optimizer step (not on TPUs, whose replicated step is not split this way)."""
        if self._strategy is not None:
            raise TaskError("gradient accumulation is not built for TPUs: give --global-batch at most the ceiling")
        if self._accumulation is None:
            self._accumulation = self._accumulation_function()
        gradients_of = self._accumulation
        index = np.asarray(indices, dtype=np.int64)
        total = len(index)
        summed: list[Any] | None = None
        mean = 0.0
        with self._scope():
            for start in range(0, total, micro_batch):
                part = index[start:start + micro_batch]
                weight = tf.constant(len(part) / total, tf.float32)
                loss, gradients = gradients_of(_take(self.train, part), weight)
                summed = list(gradients) if summed is None else [a + b for a, b in zip(summed, gradients)]
                mean += loss * weight
        self._last, _count = self._call("apply", self._apply_fn, (mean, summed))

    def _accumulation_function(self) -> Any:
        """A micro-batch's loss and gradients, weighted by its share of the batch."""
        model, optimizer = self.model, self.optimizer
        # float16: each micro-batch's loss is scaled as in `_gradient_step`, since the optimizer unscales the sum
        scaled = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)

        def gradients_of(batch: Any, weight: Any) -> Any:
            with tf.GradientTape() as tape:
                loss = self._batch_loss(batch, training=True)
                total = (loss + tf.add_n(model.losses) if model.losses else loss) * weight
                if scaled:
                    total = optimizer.scale_loss(total)
            return loss, tape.gradient(total, model.trainable_variables)

        signature = [tf.nest.map_structure(lambda a: _signature(a, None), self.train),
                     tf.TensorSpec((), tf.float32)]
        return tf.function(gradients_of, input_signature=signature)


# --------------------------------------------------------------------------------------------- backend
def _nvml_matches(count: int) -> list[dict[str, Any] | None]:
    """NVML's record for each of TensorFlow's ``count`` GPUs (CUDA order through CUDA_VISIBLE_DEVICES), or None."""
    found, _reason = nvidia_gpus()
    if not found:
        return [None] * count
    gpus: list[dict[str, Any] | None] = list(found)
    visible = [part.strip() for part in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if part.strip()]
    if visible:
        by_key = {str(g["index"]): g for g in found} | {str(g["uuid"]): g for g in found if g.get("uuid")}
        gpus = [by_key.get(key) for key in visible]
    # Without CUDA_DEVICE_ORDER=PCI_BUS_ID, CUDA may order unlike NVML: trust the order only on identical GPUs.
    if os.environ.get("CUDA_DEVICE_ORDER") != "PCI_BUS_ID" and len({g["name"] for g in gpus if g}) > 1:
        return [None] * count
    return (gpus + [None] * count)[:count]


class _TrialCallback(keras.callbacks.Callback):
    """Keras ``fit`` reporting to an autotune trial: times each training batch, reports ``monitor`` after each
    epoch and stops training cleanly when the pruner says so."""

    def __init__(self, trial: Any, monitor: str = "val_loss") -> None:
        super().__init__()
        self.trial, self.monitor = trial, monitor
        self._tick = 0.0

    def on_train_batch_begin(self, batch: int, logs: Any = None) -> None:
        self._tick = time.perf_counter()

    def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
        self.trial.record_step(time.perf_counter() - self._tick, samples=self.trial.batch_size)

    def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
        logs = logs or {}
        if self.monitor not in logs:
            raise TaskError(f"the trial callback reports {self.monitor!r}, which fit did not log (it logged "
                            f"{', '.join(logs) or 'nothing'}): pass validation_data to fit, or monitor= another")
        self.trial.report(float(logs[self.monitor]), epoch + 1)
        if self.trial.should_prune():
            self.model.stop_training = True


class TensorFlowBackend(Backend):
    """TensorFlow 2 with Keras 3: CPU, GPUs (allocator peak memory, memory cap) and TPU cores (TPUStrategy).

    Creating the backend (before TensorFlow's runtime starts) turns on memory growth for the GPUs of this
    process, so that a tuning process which reads a tf.data.Dataset does not reserve every GPU; GPU sessions
    show TensorFlow only their own GPU when they start the runtime.
    """

    name = "tensorflow"
    optimizer_names = tuple(sorted(_OPTIMIZERS))

    def __init__(self) -> None:
        # Both before the task's data() can start the runtime (a tf.data.Dataset does): a worker gets its
        # backend first thing.
        _linear_memory_under_a_cap()
        _grow_gpu_memory_on_demand()

    def version(self) -> str:
        """TensorFlow's version string."""
        return tf.__version__

    def devices(self) -> list[Device]:
        """The CPU, every GPU (``GPU:0``...) and every TPU core (``TPU:0``...) TensorFlow sees."""
        devices = [cpu_device("tensorflow")]
        gpus = _physical_devices("GPU")
        for index, (gpu, nvml) in enumerate(zip(gpus, _nvml_matches(len(gpus)) if gpus else [])):
            details = _device_details(gpu)
            capability = details.get("compute_capability")
            devices.append(Device(
                id=f"GPU:{index}", kind="gpu", index=index,
                name=str(details.get("device_name") or (nvml or {}).get("name") or gpu.name), backend="tensorflow",
                memory_total=(nvml or {}).get("memory_total"), memory_free=(nvml or {}).get("memory_free"),
                details={"capability": ".".join(map(str, capability)) if capability else None},
            ))
        for index, tpu in enumerate(_physical_devices("TPU")):
            details = _device_details(tpu)
            devices.append(Device(id=f"TPU:{index}", kind="tpu", index=index,
                                  name=str(details.get("device_name") or tpu.name), backend="tensorflow"))
        return devices

    def session(self, task: Task, data: Any, device: Device, *, batch_size: int,
                optimizer: Mapping[str, Any], seed: int = 0) -> TensorFlowSession:
        """A fresh Keras model and optimizer on ``device``, seeded, with the data as host arrays."""
        spec = self.validate_optimizer(optimizer)
        _linear_memory_under_a_cap()
        host = _host_data(data)
        held = keeping.take()  # the worker's last session: renewed in a second where its traced steps serve
        if held is not None:
            if held.renew(task, host, device, batch_size=batch_size, optimizer=spec, seed=seed):
                return held
            held.release()
            gc.collect()  # its memory is free before the next model is built
        return TensorFlowSession(task, host, device, batch_size, spec, seed)

    def make_optimizer(self, parameters: Any, spec: Mapping[str, Any]) -> keras.optimizers.Optimizer:
        """The Keras optimizer for ``spec`` (``parameters`` unused: Keras binds variables when it builds). The
        L2 ``weight_decay`` of the SGD and Adam families (see `_COUPLED_DECAY`) is the loop's to add to its loss."""
        full = self.validate_optimizer(spec)
        return _OPTIMIZERS[full["name"]](full)

    # each framework's loop takes its own options (the base accepts any): a narrower signature on purpose
    def loop_callback(self, trial: Any, *,  # type: ignore[override]
                      monitor: str = "val_loss") -> keras.callbacks.Callback:
        return _TrialCallback(trial, monitor)

    def data_size(self, data: Any) -> tuple[int, int]:
        """Training and validation sample counts, for arrays or datasets (tf.data, PyDataset: read once)."""
        host = _host_data(data)
        return host.n_train, host.n_val

    def is_oom(self, exc: BaseException) -> bool:
        """TensorFlow's ResourceExhaustedError, MemoryError, and allocation failures reported as other errors."""
        if isinstance(exc, (tf.errors.ResourceExhaustedError, MemoryError)):
            return True
        if isinstance(exc, (tf.errors.InternalError, tf.errors.UnknownError)):
            text = str(exc)
            return any(message in text for message in _CPU_OOM_MESSAGES + _GPU_OOM_MESSAGES)
        return False

    def release_memory(self, device: Device) -> None:
        """Drop Keras's global state (not while a session is kept: TensorFlow would optimise its steps again) and
        collect; TensorFlow keeps its allocator's memory in the process."""
        if not keeping.holding():
            keras.backend.clear_session()
        gc.collect()
        if device.kind != "cpu":
            try:
                tf.config.experimental.reset_memory_stats(_logical_name(device))
            except (ValueError, DeviceError, tf.errors.OpError):
                pass

    def limit_memory(self, device: Device, limit_bytes: int) -> None:
        """Cap a GPU at ``limit_bytes`` (a logical device); only possible before TensorFlow initialises the GPU."""
        if device.kind != "gpu":
            return
        gpu = _physical_devices("GPU")[device.index]
        config = tf.config.LogicalDeviceConfiguration(memory_limit=max(1, int(limit_bytes) // 2**20))  # MiB
        try:
            tf.config.experimental.set_memory_growth(gpu, False)  # a logical device and growth exclude each other
            tf.config.set_logical_device_configuration(gpu, [config])
        except RuntimeError:
            raise DeviceError(
                f"cannot cap {device.id} at {limit_bytes} bytes: TensorFlow already initialised it in this process "
                "(set the limit before the first TensorFlow operation, or run in a worker process)"
            ) from None

    def free_memory(self, device: Device) -> int | None:
        """Free bytes on a GPU as NVML reports them (read before TensorFlow reserves its share), else None."""
        if device.kind == "gpu":
            matches = _nvml_matches(len(_physical_devices("GPU")))
            match = matches[device.index] if device.index < len(matches) else None
            return match.get("memory_free") if match else None
        return device.memory_free

    def preload_modules(self) -> Sequence[str]:
        """TensorFlow and Keras, imported once by the worker fork server (importing starts no runtime)."""
        return ("autotune.backends.tensorflow", "tensorflow", "keras", "autotune.memory")

    compile_name = "jit_compile"

    def precisions(self, device: Device) -> tuple[str, ...]:
        """fp32 everywhere; bf16 (Keras ``mixed_bfloat16``) on TPUs, on GPUs of compute capability 8.0 up and on
        CPUs whose build runs a bf16 matmul; fp16 (``mixed_float16``, with a ``LossScaleOptimizer``) on GPUs and
        on CPUs whose build runs a float16 matmul. `precision_notes` says why one is missing."""
        return tuple(p for p in PRECISIONS if p not in self.precision_notes(device))

    # "was expected to be a float tensor but is a int32 tensor", "has DataType int32 not in list of allowed values"
    type_error_words = ("dtype", "datatype", "expected to be a")

    def error_gist(self, exc: BaseException) -> str:
        """The part Keras prints in bold, if any; else the first line, unless it only introduces a traceback
        (TensorFlow's "in user code:"), then the last ``...Error:`` line."""
        text = str(exc).strip()
        bold = re.search(r"\x1b\[1m(.+?)\x1b\[0m", text, re.S)
        if bold:
            return bold.group(1).strip()[:300]
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        if len(lines) < 2 or not lines[0].endswith(":"):
            return super().error_gist(exc)
        errors = [line for line in lines if re.match(r"\w+(Error|Exception): ", line)]
        return (errors[-1] if errors else lines[-1])[:300]

    def precision_notes(self, device: Device) -> dict[str, str]:
        """Why each precision missing on ``device`` is missing: the Keras mixed-precision guide's hardware
        rules for TPUs and GPUs, and on the CPU a small matmul in the dtype that failed (probed once per
        process, so the list cannot change within a run)."""
        if device.kind == "tpu":
            return {"fp16": "TPUs compute in bfloat16, not float16 (Keras: use mixed_bfloat16 on TPUs)"}
        if device.kind == "gpu":
            capability = (device.details or {}).get("capability") or "0.0"
            return {} if float(capability) >= 8.0 else {
                "bf16": f"bfloat16 needs compute capability 8.0 or higher (this GPU has {capability})"}
        known: dict[str, str] | None = self.__dict__.get("_cpu_notes")
        if known is None:
            known = self.__dict__["_cpu_notes"] = {}
            for precision, dtype in (("bf16", tf.bfloat16), ("fp16", tf.float16)):
                try:
                    with tf.device("/CPU:0"), _quiet_native_noise(_CPU_HALF_NOISE):
                        tf.matmul(tf.ones((2, 2), dtype), tf.ones((2, 2), dtype)).numpy()
                except (tf.errors.OpError, TypeError) as exc:
                    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
                    known[precision] = f"a {dtype.name} matmul fails in this CPU's TensorFlow build ({first})"
        return dict(known)

    def bench_session(self, task: Task, data: Any, device: Device, *, batch_size: int,
                      optimizer: Mapping[str, Any], precision: str = "fp32", compile: bool = False,
                      seed: int = 0) -> "TensorFlowBenchSession":
        spec = self.validate_optimizer(optimizer)
        _linear_memory_under_a_cap()
        held = keeping.take()  # a kept fp32 session is not held beside another precision's or mode's model
        if held is not None:
            held.release()
            gc.collect()
        return TensorFlowBenchSession(task, _host_data(data), device, batch_size, spec, seed, precision, compile)

    def matmul_seconds(self, device: Device, precision: str, size: int, seconds: float) -> float:
        from autotune.peak import time_matmuls

        dtype = {"fp32": tf.float32, "bf16": tf.bfloat16, "fp16": tf.float16}[precision]
        name = "/CPU:0" if device.kind == "cpu" else f"/{_logical_name(device)}"
        with tf.device(name), _quiet_native_noise(_CPU_HALF_NOISE):
            a = tf.cast(tf.random.normal((size, size)), dtype)
            b = tf.cast(tf.random.normal((size, size)), dtype)

            def once() -> None:
                tf.matmul(a, b)[0, 0].numpy()  # one element back: the product is done, little is copied

            return time_matmuls(once, seconds)


def _device_details(device: Any) -> dict[str, Any]:
    try:
        return dict(tf.config.experimental.get_device_details(device))
    except Exception:  # not every device type reports details
        return {}


# ------------------------------------------------------------------------------------------- bench sessions
_KERAS_POLICIES = {"fp32": "float32", "bf16": "mixed_bfloat16", "fp16": "mixed_float16"}


def _in_policy(build: Callable[[], Any], policy: str) -> Callable[[], Any]:
    """``build`` run under the Keras dtype policy ``policy``; the previous global policy is restored after, so
    only the layers built here compute in it (each layer keeps the policy it was created with)."""
    def built() -> Any:
        previous = keras.config.dtype_policy()
        keras.config.set_dtype_policy(policy)
        try:
            return build()
        finally:
            keras.config.set_dtype_policy(previous)

    return built


def _leaf_layers(layer: Any) -> Iterator[Any]:
    children = getattr(layer, "layers", None)
    if not children:
        yield layer
        return
    for child in children:
        yield from _leaf_layers(child)


def forward_flops_per_sample(model: Any) -> float | None:
    """The analytic forward FLOPs of one sample: 2 × kernel size per Dense layer, 2 × kernel size × output
    positions per convolution (channels last); layers without a kernel (activations, pooling, normalisation)
    are not counted. None when a convolution's output shape is not known (a subclassed model)."""
    total = 0.0
    for layer in _leaf_layers(model):
        kernel = getattr(layer, "kernel", None)
        if kernel is None:
            continue
        size = float(np.prod(kernel.shape))
        positions = 1.0
        if len(kernel.shape) > 2:
            try:
                positions = float(np.prod(layer.output.shape[1:-1]))
            except (AttributeError, ValueError, TypeError):
                return None
        total += 2.0 * size * positions
    return total or None


class TensorFlowBenchSession(TensorFlowSession):
    """A `TensorFlowSession` whose model is built under a mixed-precision policy (``mixed_bfloat16``, or
    ``mixed_float16`` with its optimizer wrapped in a dynamic ``keras.optimizers.LossScaleOptimizer``) and whose
    steps are XLA-compiled (``tf.function(jit_compile=True)``) when asked; it also runs forward passes alone."""

    def _jit_compile(self) -> bool | None:
        return True if self.compile else None

    def _first_call_noise(self) -> contextlib.AbstractContextManager[Any]:
        # the first run of a half-precision kernel on a CPU without its instructions logs a fallback line
        if self.precision != "fp32" and self.device.kind == "cpu":
            return _quiet_native_noise(_CPU_HALF_NOISE)
        return contextlib.nullcontext()

    def _wrapped_optimizer(self, optimizer: Any) -> Any:
        if self.precision == "fp16":  # float16 gradients underflow without loss scaling (Keras guide)
            return keras.optimizers.LossScaleOptimizer(optimizer)
        return optimizer

    def __init__(self, task: Task, data: HostData, device: Device, batch_size: int, optimizer: Mapping[str, Any],
                 seed: int, precision: str, compile: bool) -> None:
        self.precision, self.compile = precision, compile
        built = dataclasses.replace(task, model=_in_policy(task.model, _KERAS_POLICIES[precision]))
        super().__init__(built, data, device, batch_size, optimizer, seed)
        model = self.model
        self._forward_fn = tf.function(lambda x: model(x, training=False), jit_compile=compile or None)

    def forward(self, indices: np.ndarray) -> None:
        batch = _take(self.train, np.asarray(indices, dtype=np.int64))
        with self._scope():
            # the model's own inputs are known only to compute_loss: its loss in evaluation mode stands in
            out = self._eval_fn(batch) if self._compute_loss is not None else self._forward_fn(batch[0])
            tf.nest.map_structure(lambda t: t.numpy(), out)

    def training_flops(self, indices: np.ndarray) -> tuple[float | None, str]:
        """Analytic: 3 × `forward_flops_per_sample` × batch (the backward pass costs about twice the forward)."""
        per_sample = forward_flops_per_sample(self.model)
        method = "analytic: 3 × forward, 2 × kernel size (× output positions for convolutions) per layer"
        return (None, method) if per_sample is None else (3.0 * per_sample * len(indices), method)
