"""TensorFlow/Keras adapter: devices (CPU, GPU, TPU), optimizers from ``keras.optimizers``, a compiled
``tf.function`` training step, TensorFlow's allocator statistics, OOM recognition, ``tf.data`` input.

Memory: TensorFlow never hands memory back to the system inside a process (its allocators keep what they
took, and a GPU's memory is reserved when the runtime starts), which is why probes and trials run in worker
processes. A GPU memory cap (`TensorFlowBackend.limit_memory`) must be set before TensorFlow initialises the
GPU, i.e. before the first operation in the process; the worker runner calls it first thing.
"""

from __future__ import annotations

import contextlib
import gc
import os
import re
import sys
import tempfile
import time
from typing import Any, Callable, Iterator, Mapping, Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # C++ INFO and WARNING lines off; errors still shown
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np  # noqa: E402

from autotune.backends.base import Backend, TrainingSession  # noqa: E402
from autotune.devices import Device, cpu_device, nvidia_gpus  # noqa: E402
from autotune.errors import DeviceError, TaskError  # noqa: E402
from autotune.task import ArrayData, Task  # noqa: E402

_PRE_INIT_NOISE = re.compile(
    r"^(WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|I\d{4} [0-9:.]+ +\d+ [\w.]+:\d+\] .*)$"
)


@contextlib.contextmanager
def _quiet_import_noise() -> Iterator[None]:
    """Drop the INFO lines TensorFlow's C++ side writes while it loads, before TF_CPP_MIN_LOG_LEVEL applies.

    The oneDNN notice is logged by a static initialiser before absl logging is set up, so the environment
    variable cannot silence it. Standard error is captured while the libraries load and every line that is
    not such an INFO line (warnings and errors included) is written back unchanged.
    """
    try:
        sys.stderr.flush()
        saved = os.dup(2)
        capture = tempfile.TemporaryFile()
        os.dup2(capture.fileno(), 2)
    except (OSError, ValueError, AttributeError):  # no real file descriptor 2: nothing to filter
        yield
        return
    try:
        yield
    finally:
        try:
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
        os.dup2(saved, 2)
        os.close(saved)
        capture.seek(0)
        kept = [line for line in capture.read().decode(errors="replace").splitlines(keepends=True)
                if not _PRE_INIT_NOISE.match(line.rstrip("\n"))]
        capture.close()
        if kept:
            os.write(2, "".join(kept).encode())


with _quiet_import_noise():
    import keras  # noqa: E402
    import tensorflow as tf  # noqa: E402

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
        learning_rate=s["lr"], learning_rate_power=s["lr_power"], initial_accumulator_value=s["initial_accumulator_value"],
        l1_regularization_strength=s["l1"], l2_regularization_strength=s["l2"],
    )
if hasattr(keras.optimizers, "Lamb"):
    _OPTIMIZERS["lamb"] = lambda s: keras.optimizers.Lamb(
        learning_rate=s["lr"], beta_1=s["beta1"], beta_2=s["beta2"], epsilon=s["eps"], weight_decay=s["weight_decay"] or None
    )


# ---------------------------------------------------------------------------------------------- losses
def _named_loss(name: str) -> keras.losses.Loss:
    """The Keras loss for a neutral name (targets: class indices for cross_entropy, floats otherwise)."""
    if name == "cross_entropy":
        return keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    if name == "mse":
        return keras.losses.MeanSquaredError()
    if name == "mae":
        return keras.losses.MeanAbsoluteError()
    if name == "binary_cross_entropy":
        return keras.losses.BinaryCrossentropy(from_logits=True)
    if name == "huber":
        return keras.losses.Huber(delta=1.0)
    raise TaskError(f"unknown loss {name!r}")


# ------------------------------------------------------------------------------------------------ data
def _arrays_of(part: Any, label: str) -> tuple[np.ndarray, np.ndarray]:
    """One (x, y) pair of arrays, or a tf.data.Dataset of (x, y) elements read into arrays."""
    if isinstance(part, tf.data.Dataset):
        return _materialise(part, label)
    if isinstance(part, (tuple, list)) and len(part) == 2:
        x, y = (np.asarray(v) for v in part)
        if x.ndim == 0 or y.ndim == 0 or len(x) == 0:
            raise TaskError(f"task {label} data must be non-empty arrays with one row per sample")
        if len(x) != len(y):
            raise TaskError(f"task {label} data has {len(x)} inputs but {len(y)} targets: they must match")
        return x, y
    raise TaskError(f"task {label} data must be a pair (x, y) of arrays or a tf.data.Dataset, got {type(part).__name__}")


def _is_batched(spec: Any) -> bool:
    # Dataset.batch() leaves the leading dimension unknown (None); single samples have known shapes.
    shapes = [s.shape for s in tf.nest.flatten(spec)]
    return all(shape.rank is not None and shape.rank >= 1 and shape[0] is None for shape in shapes)


def _materialise(dataset: Any, label: str) -> tuple[np.ndarray, np.ndarray]:
    """Read a finite dataset of (x, y) elements (single samples, or batches from ``.batch()``) into arrays."""
    import psutil

    spec = dataset.element_spec
    if not (isinstance(spec, tuple) and len(spec) == 2 and all(isinstance(s, tf.TensorSpec) for s in spec)):
        raise TaskError(f"the {label} tf.data.Dataset must yield (x, y) pairs of tensors, got elements {spec}")
    if int(dataset.cardinality()) == int(tf.data.INFINITE_CARDINALITY):
        raise TaskError(f"the {label} tf.data.Dataset is infinite (repeat()?): give a finite one, e.g. dataset.take(N)")
    batched = _is_batched(spec)
    budget = _MAX_MATERIALISED_FRACTION * psutil.virtual_memory().available
    xs: list[np.ndarray] = []
    ys: list[np.ndarray] = []
    used = 0
    for x, y in dataset.as_numpy_iterator():
        xs.append(x)
        ys.append(y)
        used += x.nbytes + y.nbytes
        if used > budget:
            raise TaskError(f"the {label} tf.data.Dataset does not fit in half the free memory (or never ends): "
                            "give a finite one, e.g. dataset.take(N)")
    if not xs:
        raise TaskError(f"the {label} tf.data.Dataset is empty: it must yield at least one (x, y) element")
    if batched:
        x_all, y_all = np.concatenate(xs), np.concatenate(ys)
    else:
        x_all, y_all = np.stack(xs), np.stack(ys)
    if len(x_all) != len(y_all):
        raise TaskError(f"the {label} tf.data.Dataset has {len(x_all)} inputs but {len(y_all)} targets")
    return x_all, y_all


_LAST_DATA: list[Any] = []  # [the task's data object, its ArrayData]: a dataset is read once per process


def _as_arrays(data: Any) -> ArrayData:
    """`ArrayData` for the task's data: arrays as they are, tf.data.Datasets read into arrays once."""
    if isinstance(data, ArrayData):
        return data
    if _LAST_DATA and _LAST_DATA[0] is data:
        return _LAST_DATA[1]
    if isinstance(data, tf.data.Dataset):
        raise TaskError("task data is one tf.data.Dataset: return a pair (train_dataset, validation_dataset)")
    if not isinstance(data, (tuple, list)) or len(data) != 2:
        raise TaskError("task data must be ((x_train, y_train), (x_val, y_val)) or (train_dataset, val_dataset); "
                        f"got {type(data).__name__}")
    (x_train, y_train), (x_val, y_val) = _arrays_of(data[0], "train"), _arrays_of(data[1], "validation")
    arrays = ArrayData(x_train, y_train, x_val, y_val)
    _LAST_DATA[:] = [data, arrays]
    return arrays


def _grow_gpu_memory_on_demand() -> None:
    """Let GPUs take memory as needed rather than nearly all of it when TensorFlow's runtime starts.

    The tuning process starts the runtime as soon as the task's data() builds a tf.data.Dataset (it counts the
    samples); reserving every GPU there would starve the workers. A GPU given a memory cap (a logical device)
    keeps it. No effect once the runtime has started.
    """
    for gpu in tf.config.list_physical_devices("GPU"):
        try:
            if tf.config.get_logical_device_configuration(gpu) is None:
                tf.config.experimental.set_memory_growth(gpu, True)
        except (RuntimeError, ValueError):  # already started, or configured otherwise
            pass


def _prepared(x: Any, y: Any, integer_targets: bool, float_targets: bool) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x)
    if np.issubdtype(x.dtype, np.floating) and x.dtype != np.float32:
        x = x.astype(np.float32)
    y = np.asarray(y)
    if integer_targets:
        y = y.astype(np.int64)
    elif float_targets or (np.issubdtype(y.dtype, np.floating) and y.dtype != np.float32):
        y = y.astype(np.float32)
    return np.ascontiguousarray(x), np.ascontiguousarray(y)


def _signature(array: np.ndarray, batch: int | None) -> tf.TensorSpec:
    return tf.TensorSpec((batch, *array.shape[1:]), tf.as_dtype(array.dtype))


def _linear_memory_under_a_cap() -> bool:
    """In a process under an address-space cap (a capped worker), make TensorFlow's CPU memory show as it is used.

    Two things would otherwise make the peak address space a poor, non-linear picture of the memory a step needs:

    * oneDNN builds of TensorFlow serve every CPU tensor above 256 KiB from a BFC allocator that grows by regions
      of doubling size and never returns them: the address space climbs in steps (here +67 MiB between batch
      384 and 512, +132 MiB at 520) while the live tensors grow smoothly. TF_ONEDNN_USE_SYSTEM_ALLOCATOR=1 sends
      them to malloc, which (with the worker's pinned mmap threshold) maps and unmaps each tensor exactly.
      TensorFlow reads the variable at its first CPU allocation, so this must run before the first operation.
    * glibc reserves a 64 MiB malloc arena for each allocating thread of TensorFlow's pools (about 320 MiB
      here, hardly any of it used); under RLIMIT_AS an arena that cannot be reserved is silently skipped, so
      near the cap the peak stops growing while the real memory still does. One arena keeps the address space
      the framework plus live memory.

    Measured here on the hungry test task: 1.22 GiB + 0.25 MiB × batch, linear to the cap, and the first size
    that fails is the one predicted. The cost is page faults on fresh tensors each step: in capped workers that
    memory-bound task runs at 3.1k instead of 8.0k samples/s (batch 512); the digits MLP shows no difference
    beyond noise. Uncapped processes are not touched. Called when the backend is created (a worker does that
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
    physical = tf.config.list_physical_devices(kind)
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
    """Keras model, optimizer and data on one TensorFlow device; the step is one compiled ``tf.function``.

    Data stays on the host as NumPy arrays and moves per batch, as in the torch adapter. ``compile_seconds`` is
    the wall time of the first call of each compiled function (tracing, graph optimisation or XLA compilation,
    and that first execution), which the engine's warm-up keeps out of the throughput.
    """

    first_step_compiles = True

    def __init__(self, task: Task, data: ArrayData, device: Device, batch_size: int,
                 optimizer: Mapping[str, Any], seed: int) -> None:
        if keras.backend.backend() != "tensorflow":
            raise TaskError(f"Keras runs on {keras.backend.backend()!r}: set KERAS_BACKEND=tensorflow for this backend")
        self.batch_size = batch_size
        self.device = device
        self._memory_device = None if device.kind == "cpu" else _logical_name(device)
        self._strategy = _tpu_strategy(device.index) if device.kind == "tpu" else None
        self.compile_seconds = 0.0
        keras.utils.set_random_seed(seed)

        named = isinstance(task.loss, str)
        self.loss_fn = _named_loss(task.loss) if named else task.loss
        self.x_train, self.y_train = _prepared(data.x_train, data.y_train, task.loss == "cross_entropy", named)
        self.x_val, self.y_val = _prepared(data.x_val, data.y_val, task.loss == "cross_entropy", named)

        with self._scope():
            try:
                model = task.model()
            except Exception as exc:
                raise TaskError(f"the task's model() raised {type(exc).__name__}: {exc}") from None
            if not isinstance(model, keras.Model):
                raise TaskError(f"the task's model() returned {type(model).__name__}, not a keras.Model")
            if not model.built:
                model(self.x_train[:1], training=False)  # creates the variables; a wrong input shape fails here
            self.model = model
            self.optimizer = _OPTIMIZERS[optimizer["name"]](optimizer)
            self.optimizer.build(model.trainable_variables)
        decay = float(optimizer.get("weight_decay", 0.0)) if optimizer["name"] in _COUPLED_DECAY else 0.0

        # TPUs compile for static shapes: no relaxed batch dimension there.
        train_sig = None if self._strategy else (_signature(self.x_train, None), _signature(self.y_train, None))
        val_sig = None if self._strategy else (_signature(self.x_val, None), _signature(self.y_val, None))
        self._train_fn = tf.function(self._replicated(self._make_train_step(decay)), input_signature=train_sig)
        self._eval_fn = tf.function(self._replicated(self._eval_step), input_signature=val_sig)
        self._traced: set[str] = set()
        self._last: Any = None

    def _scope(self) -> Any:
        if self._strategy is not None:
            return self._strategy.scope()
        return tf.device("/CPU:0" if self._memory_device is None else f"/{self._memory_device}")

    def _loss(self, y: Any, prediction: Any) -> Any:
        return tf.reduce_mean(tf.cast(self.loss_fn(y, prediction), tf.float32))

    def _make_train_step(self, decay: float) -> Callable[[Any, Any], Any]:
        model, optimizer = self.model, self.optimizer

        def step(x: Any, y: Any) -> Any:
            with tf.GradientTape() as tape:
                loss = self._loss(y, model(x, training=True))
                total = loss + tf.add_n(model.losses) if model.losses else loss
                if self._strategy is not None:
                    total = total / self._strategy.num_replicas_in_sync  # Keras sums gradients over replicas
            variables = model.trainable_variables
            gradients = tape.gradient(total, variables)
            if decay:
                gradients = [g if g is None else g + decay * tf.cast(v, g.dtype) for g, v in zip(gradients, variables)]
            optimizer.apply_gradients(zip(gradients, variables))
            return loss

        return step

    def _eval_step(self, x: Any, y: Any) -> Any:
        return self._loss(y, self.model(x, training=False))

    def _replicated(self, step: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
        strategy = self._strategy
        if strategy is None:
            return step

        def run(x: Any, y: Any) -> Any:
            per_replica = strategy.run(step, args=(x, y))
            return strategy.reduce(tf.distribute.ReduceOp.MEAN, per_replica, axis=None)

        return run

    def _call(self, name: str, function: Any, x: np.ndarray, y: np.ndarray) -> Any:
        with self._scope() if self._strategy is None else contextlib.nullcontext():
            if name in self._traced:
                return function(x, y)
            tick = time.perf_counter()
            result = function(x, y)
            result.numpy()  # the first call is done, compiled and run, before the clock is read
            self.compile_seconds += time.perf_counter() - tick
            self._traced.add(name)
            return result

    def train_step(self, indices: np.ndarray) -> None:
        """One compiled optimizer step on the training samples at ``indices`` (the first call also compiles)."""
        index = np.asarray(indices, dtype=np.int64)
        self._last = self._call("train", self._train_fn, self.x_train[index], self.y_train[index])

    def set_learning_rate(self, lr: float) -> None:
        """Assign the optimizer's learning-rate variable (read by the compiled step, no retrace)."""
        self.optimizer.learning_rate.assign(float(lr))

    def last_loss(self) -> float:
        """The last step's training loss (without regularisation terms), as a float."""
        return float("nan") if self._last is None else float(self._last.numpy())

    def evaluate(self, max_batches: int | None = None) -> float:
        """Mean validation loss, sample-weighted over batches of ``batch_size`` (the first ``max_batches``)."""
        total, count = 0.0, 0
        stop = len(self.x_val) if max_batches is None else min(len(self.x_val), max_batches * self.batch_size)
        for start in range(0, stop, self.batch_size):
            end = min(start + self.batch_size, stop)
            loss = self._call("eval", self._eval_fn, self.x_val[start:end], self.y_val[start:end])
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
        """Drop the model, optimizer, compiled functions and data."""
        for name in ("model", "optimizer", "_train_fn", "_eval_fn", "x_train", "y_train", "x_val", "y_val", "_last"):
            setattr(self, name, None)


# --------------------------------------------------------------------------------------------- backend
def _nvml_matches(count: int) -> list[dict[str, Any] | None]:
    """NVML's record for each of TensorFlow's ``count`` GPUs (CUDA order through CUDA_VISIBLE_DEVICES), or None."""
    gpus, _reason = nvidia_gpus()
    if not gpus:
        return [None] * count
    visible = [part.strip() for part in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if part.strip()]
    if visible:
        by_key = {str(g["index"]): g for g in gpus} | {str(g["uuid"]): g for g in gpus if g.get("uuid")}
        gpus = [by_key.get(key) for key in visible]
    # Without CUDA_DEVICE_ORDER=PCI_BUS_ID, CUDA may order unlike NVML: trust the order only on identical GPUs.
    if os.environ.get("CUDA_DEVICE_ORDER") != "PCI_BUS_ID" and len({g["name"] for g in gpus if g}) > 1:
        return [None] * count
    return (gpus + [None] * count)[:count]


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
        gpus = tf.config.list_physical_devices("GPU")
        for index, (gpu, nvml) in enumerate(zip(gpus, _nvml_matches(len(gpus)) if gpus else [])):
            details = _device_details(gpu)
            capability = details.get("compute_capability")
            devices.append(Device(
                id=f"GPU:{index}", kind="gpu", index=index,
                name=str(details.get("device_name") or (nvml or {}).get("name") or gpu.name), backend="tensorflow",
                memory_total=(nvml or {}).get("memory_total"), memory_free=(nvml or {}).get("memory_free"),
                details={"capability": ".".join(map(str, capability)) if capability else None},
            ))
        for index, tpu in enumerate(tf.config.list_physical_devices("TPU")):
            details = _device_details(tpu)
            devices.append(Device(id=f"TPU:{index}", kind="tpu", index=index,
                                  name=str(details.get("device_name") or tpu.name), backend="tensorflow"))
        return devices

    def session(self, task: Task, data: Any, device: Device, *, batch_size: int,
                optimizer: Mapping[str, Any], seed: int = 0) -> TensorFlowSession:
        """A fresh Keras model and optimizer on ``device``, seeded, with the data as host arrays."""
        spec = self.validate_optimizer(optimizer)
        _linear_memory_under_a_cap()
        return TensorFlowSession(task, _as_arrays(data), device, batch_size, spec, seed)

    def data_size(self, data: Any) -> tuple[int, int]:
        """Training and validation sample counts, for arrays or tf.data.Datasets (read once)."""
        arrays = _as_arrays(data)
        return arrays.n_train, arrays.n_val

    def is_oom(self, exc: BaseException) -> bool:
        """TensorFlow's ResourceExhaustedError, MemoryError, and allocation failures reported as other errors."""
        if isinstance(exc, (tf.errors.ResourceExhaustedError, MemoryError)):
            return True
        if isinstance(exc, (tf.errors.InternalError, tf.errors.UnknownError)):
            text = str(exc)
            return any(message in text for message in _CPU_OOM_MESSAGES + _GPU_OOM_MESSAGES)
        return False

    def release_memory(self, device: Device) -> None:
        """Drop Keras's global state and collect; TensorFlow keeps its allocator's memory in the process."""
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
        gpu = tf.config.list_physical_devices("GPU")[device.index]
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
            matches = _nvml_matches(len(tf.config.list_physical_devices("GPU")))
            if device.index < len(matches) and matches[device.index]:
                return matches[device.index].get("memory_free")
            return None
        return device.memory_free

    def preload_modules(self) -> Sequence[str]:
        """TensorFlow and Keras, imported once by the worker fork server (importing starts no runtime)."""
        return ("autotune.backends.tensorflow", "tensorflow", "keras", "autotune.memory")


def _device_details(device: Any) -> dict[str, Any]:
    try:
        return dict(tf.config.experimental.get_device_details(device))
    except Exception:  # not every device type reports details
        return {}
