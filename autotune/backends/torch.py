"""PyTorch adapter: devices (CPU, CUDA, MPS), optimizers from ``torch.optim``, a training step, CUDA memory, OOM."""

from __future__ import annotations

import gc
import time
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from autotune.backends import torch_data
from autotune.backends.base import Backend, TrainingSession
from autotune.checks import check_labels
from autotune.devices import Device, cpu_device
from autotune.errors import TaskError
from autotune.task import ArrayData, Task

_CPU_OOM_MESSAGES = ("DefaultCPUAllocator: can't allocate memory", "DefaultCPUAllocator: not enough memory")
_CUDA_OOM_MESSAGES = ("CUDA out of memory", "CUDA error: out of memory", "CUBLAS_STATUS_ALLOC_FAILED")


def _adam_like(cls: type) -> Any:
    def build(params: Any, s: Mapping[str, Any]) -> torch.optim.Optimizer:
        return cls(params, lr=s["lr"], betas=(s["beta1"], s["beta2"]), eps=s["eps"], weight_decay=s["weight_decay"])

    return build


_OPTIMIZERS = {
    "sgd": lambda p, s: torch.optim.SGD(p, lr=s["lr"], weight_decay=s["weight_decay"]),
    "momentum": lambda p, s: torch.optim.SGD(p, lr=s["lr"], momentum=s["momentum"], weight_decay=s["weight_decay"]),
    "nesterov": lambda p, s: torch.optim.SGD(
        p, lr=s["lr"], momentum=s["momentum"], nesterov=True, weight_decay=s["weight_decay"]
    ),
    "adam": _adam_like(torch.optim.Adam),
    "adamw": _adam_like(torch.optim.AdamW),
    "adamax": _adam_like(torch.optim.Adamax),
    "nadam": _adam_like(torch.optim.NAdam),
    "radam": _adam_like(torch.optim.RAdam),
    "amsgrad": lambda p, s: torch.optim.Adam(
        p, lr=s["lr"], betas=(s["beta1"], s["beta2"]), eps=s["eps"], weight_decay=s["weight_decay"], amsgrad=True
    ),
    "rmsprop": lambda p, s: torch.optim.RMSprop(
        p, lr=s["lr"], alpha=s["rho"], momentum=s["momentum"], eps=s["eps"],
        weight_decay=s["weight_decay"], centered=s["centered"],
    ),
    "adagrad": lambda p, s: torch.optim.Adagrad(
        p, lr=s["lr"], eps=s["eps"], weight_decay=s["weight_decay"],
        initial_accumulator_value=s["initial_accumulator_value"],
    ),
    "adadelta": lambda p, s: torch.optim.Adadelta(p, lr=s["lr"], rho=s["rho"], eps=s["eps"],
                                                  weight_decay=s["weight_decay"]),
    "asgd": lambda p, s: torch.optim.ASGD(p, lr=s["lr"], weight_decay=s["weight_decay"]),
}
if hasattr(torch.optim, "Adafactor"):
    _OPTIMIZERS["adafactor"] = lambda p, s: torch.optim.Adafactor(
        p, lr=s["lr"], beta2_decay=s["beta2_decay"], eps=(None, s["eps"]), weight_decay=s["weight_decay"]
    )

_LOGIT_LOSSES: dict[str, Callable[..., Any]] = {
    "cross_entropy": F.cross_entropy,
    "mse": F.mse_loss,
    "mae": F.l1_loss,
    "binary_cross_entropy": F.binary_cross_entropy_with_logits,
    "huber": F.huber_loss,
}
_PROBABILITY_EPS = 1e-7


def _cross_entropy_of_probabilities(probabilities: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.nll_loss(torch.log(probabilities.clamp_min(_PROBABILITY_EPS)), targets)


def _binary_cross_entropy_of_probabilities(probabilities: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy(probabilities.clamp(_PROBABILITY_EPS, 1 - _PROBABILITY_EPS), targets)


_PROBABILITY_LOSSES: dict[str, Callable[..., Any]] = {"cross_entropy": _cross_entropy_of_probabilities,
                       "binary_cross_entropy": _binary_cross_entropy_of_probabilities}


def final_activation(model: torch.nn.Module) -> str | None:
    """``'softmax'``, ``'log_softmax'`` or ``'sigmoid'`` when the model's last layer is one, else None.

    Only a ``Sequential``'s last child (recursively) is known to be the output: a custom ``forward`` may use its
    modules in any order, so such a model is taken to return logits unless the Task says ``from_logits=False``.
    """
    last: Any = model
    while isinstance(last, torch.nn.Sequential) and len(last):
        last = last[-1]
    if isinstance(last, torch.nn.Softmax):
        return "softmax"
    if isinstance(last, torch.nn.LogSoftmax):
        return "log_softmax"
    if isinstance(last, torch.nn.Sigmoid):
        return "sigmoid"
    return None


def named_loss(name: str, model: torch.nn.Module, from_logits: bool | None) -> Callable[[Any, Any], torch.Tensor]:
    """The loss for a neutral name, on logits or on probabilities as the model's output is (or as the Task says).

    Targets are cast to what the named loss requires (class indices as int64 for cross entropy, the outputs'
    dtype otherwise); a callable loss gets them unchanged.
    """
    activation = final_activation(model)
    if name == "cross_entropy" and activation == "log_softmax" and from_logits is not False:
        return lambda outputs, targets: F.nll_loss(outputs, targets.long())
    probabilities = (activation in ("softmax", "sigmoid")) if from_logits is None else not from_logits
    function: Callable[..., Any]
    if name in _PROBABILITY_LOSSES and probabilities:
        function = _PROBABILITY_LOSSES[name]
    else:
        function = _LOGIT_LOSSES[name]
    if name == "cross_entropy":
        return lambda outputs, targets: function(outputs, targets if targets.is_floating_point() else targets.long())
    return lambda outputs, targets: function(outputs, targets.to(outputs.dtype))


class TorchSession(TrainingSession):
    """Model, optimizer and data on one torch device; data stays on the host and moves per batch."""

    def __init__(self, task: Task, data: Any, device: Device, batch_size: int,
                 optimizer: Mapping[str, Any], seed: int) -> None:
        self.batch_size = batch_size
        self.device = torch.device(device.id)
        self._cuda = self.device.type == "cuda"
        torch.manual_seed(seed)
        try:
            model = task.model()
        except Exception as exc:
            raise TaskError(f"the task's model() raised {type(exc).__name__}: {exc}") from None
        if not isinstance(model, torch.nn.Module):
            raise TaskError(f"the task's model() returned {type(model).__name__}, not a torch.nn.Module")
        self.model = model.to(self.device).train()
        self.optimizer = _OPTIMIZERS[optimizer["name"]](self.model.parameters(), optimizer)
        self.compute_loss = task.compute_loss
        self.task_loss = task.loss if isinstance(task.loss, str) else None
        self.loss_fn = named_loss(task.loss, self.model, task.from_logits) if isinstance(task.loss, str) else task.loss
        self._arrays = isinstance(data, ArrayData)
        self.train_data, self.val_data = torch_data.sources(task, data, self._cuda)
        self._checked = False
        self._last: torch.Tensor | None = None

    def _loss(self, batch: Any) -> torch.Tensor:
        batch = torch_data.to_device(batch, self.device)
        if self.compute_loss is not None:
            loss = self.compute_loss(self.model, batch)
        else:
            if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
                raise TaskError(
                    f"the data's batches are {torch_data.describe_batch(batch)}, not (inputs, targets): give the Task "
                    "compute_loss=lambda model, batch: ... that returns the batch's loss"
                )
            loss = self.loss_fn(self.model(batch[0]), batch[1])
        if not self._checked:
            self._check_loss(loss)
        return loss

    def _check_loss(self, loss: Any) -> None:
        what = "compute_loss" if self.compute_loss is not None else "the loss"
        if not isinstance(loss, torch.Tensor):
            raise TaskError(f"{what} must return a scalar loss tensor, got {type(loss).__name__}: return e.g. "
                            "model(**batch).loss or loss_fn(model(x), y)")
        if loss.numel() != 1 or not loss.is_floating_point():
            raise TaskError(f"{what} must return a scalar floating-point loss, got a {loss.dtype} tensor of shape "
                            f"{tuple(loss.shape)}: reduce it, e.g. with .mean()")
        self._checked = True

    def check_contract(self, indices: np.ndarray) -> int | None:
        """Forward and loss without gradients; cross entropy on integer targets counts classes along dim 1."""
        batch = torch_data.to_device(self.train_data.batch(torch.from_numpy(np.asarray(indices, dtype=np.int64))),
                                     self.device)
        with torch.no_grad():
            if self.compute_loss is not None or not (isinstance(batch, (tuple, list)) and len(batch) == 2):
                self._loss(batch)  # its own checks and messages
                return None
            inputs, targets = batch
            outputs = self.model(inputs)
            classes = None
            if self.task_loss == "cross_entropy" and isinstance(targets, torch.Tensor) \
                    and not targets.is_floating_point() and isinstance(outputs, torch.Tensor) and outputs.dim() >= 2:
                classes = int(outputs.shape[1])
                if not torch.all((targets >= 0) & (targets < classes)):  # torch's own error names no fix
                    if not self._arrays:  # arrays: the caller names the whole data set's range
                        check_labels(int(targets.min()), int(targets.max()), classes, "cross_entropy")
                    return classes
            self._check_loss(self.loss_fn(outputs, targets))
        return classes

    def train_step(self, indices: np.ndarray) -> None:
        index = torch.from_numpy(np.asarray(indices, dtype=np.int64))
        self.optimizer.zero_grad(set_to_none=True)
        loss = self._loss(self.train_data.batch(index))
        loss.backward()
        self.optimizer.step()
        self._last = loss.detach()

    def allocate_optimizer_state(self) -> None:
        # torch.optim builds its state lazily in the first step() and has no public call to do it sooner: step once
        # with zero gradients at a learning rate of zero (parameters stay put), then drop the gradients. Only
        # parameters without state get a gradient (other gradients are dropped first), so a second call, or one
        # after training, leaves the existing state as it was.
        parameters = [p for group in self.optimizer.param_groups for p in group["params"] if p.requires_grad]
        missing = [p for p in parameters if p not in self.optimizer.state]
        if not missing:
            return
        saved = [group["lr"] for group in self.optimizer.param_groups]
        for group in self.optimizer.param_groups:
            group["lr"] = 0.0
        without_state = {id(p) for p in missing}
        for parameter in parameters:  # a gradient left by an earlier step would move that parameter's state
            parameter.grad = torch.zeros_like(parameter) if id(parameter) in without_state else None
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        for group, lr in zip(self.optimizer.param_groups, saved):
            group["lr"] = lr

    def set_learning_rate(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def last_loss(self) -> float:
        return float("nan") if self._last is None else float(self._last.item())

    def evaluate(self, max_batches: int | None = None) -> float:
        self.model.eval()
        total, count = 0.0, 0
        stop = len(self.val_data)
        if max_batches is not None:
            stop = min(stop, max_batches * self.batch_size)
        with torch.no_grad():
            for start in range(0, stop, self.batch_size):
                batch = self.val_data.batch(slice(start, min(start + self.batch_size, stop)))
                size = torch_data.batch_length(batch)
                total += float(self._loss(batch).item()) * size
                count += size
        self.model.train()
        return total / max(count, 1)

    def synchronize(self) -> None:
        if self._cuda:
            torch.cuda.synchronize(self.device)

    def reset_peak_memory(self) -> None:
        if self._cuda:
            torch.cuda.reset_peak_memory_stats(self.device)

    def peak_memory(self) -> int | None:
        # Allocated, not reserved: under a cap (set_per_process_memory_fraction) the caching allocator frees its
        # cache and retries before it fails, so what must fit is the tensors' peak (the reserved peak overstates it).
        if self._cuda:
            return int(torch.cuda.max_memory_allocated(self.device))
        return None

    def close(self) -> None:
        for name in ("model", "optimizer", "train_data", "val_data", "_last"):
            setattr(self, name, None)

    def train_micro_batches(self, indices: np.ndarray, micro_batch: int) -> None:
        index = torch.from_numpy(np.asarray(indices, dtype=np.int64))
        total = len(index)
        self.optimizer.zero_grad(set_to_none=True)
        mean = torch.zeros((), device=self.device)
        for start in range(0, total, micro_batch):
            part = index[start:start + micro_batch]
            loss = self._loss(self.train_data.batch(part))
            (loss * (len(part) / total)).backward()  # gradients add up in .grad: the whole batch's mean
            mean += loss.detach() * (len(part) / total)
        self.optimizer.step()
        self._last = mean


class TorchBackend(Backend):
    """PyTorch: CPU, CUDA GPUs (caching-allocator peak memory) and Apple MPS."""

    name = "torch"
    optimizer_names = tuple(sorted(_OPTIMIZERS))

    def version(self) -> str:
        return torch.__version__

    def devices(self) -> list[Device]:
        devices = [cpu_device("torch")]
        if torch.cuda.is_available():
            for index in range(torch.cuda.device_count()):
                props = torch.cuda.get_device_properties(index)
                devices.append(Device(
                    id=f"cuda:{index}", kind="gpu", index=index, name=props.name, backend="torch",
                    memory_total=int(props.total_memory), memory_free=None,
                    details={"capability": f"{props.major}.{props.minor}",
                             "multiprocessors": props.multi_processor_count},
                ))
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            devices.append(Device(id="mps", kind="gpu", index=0, name="Apple MPS", backend="torch"))
        return devices

    def session(self, task: Task, data: Any, device: Device, *, batch_size: int,
                optimizer: Mapping[str, Any], seed: int = 0) -> TorchSession:
        spec = self.validate_optimizer(optimizer)
        return TorchSession(task, data, device, batch_size, spec, seed)

    def make_optimizer(self, parameters: Any, spec: Mapping[str, Any]) -> torch.optim.Optimizer:
        full = self.validate_optimizer(spec)
        return _OPTIMIZERS[full["name"]](parameters, full)

    def loop_callback(self, trial: Any, **options: Any) -> Any:
        """A PyTorch Lightning callback for ``Trainer(callbacks=[trial.callback()])`` (`torch_lightning`)."""
        from autotune.backends.torch_lightning import lightning_callback

        return lightning_callback(trial, **options)

    def synchronize(self, device: Device) -> None:
        if device.id.startswith("cuda"):
            torch.cuda.synchronize(torch.device(device.id))

    def peak_memory(self, device: Device) -> int | None:
        if device.id.startswith("cuda"):
            return int(torch.cuda.max_memory_allocated(torch.device(device.id)))
        return None

    def data_size(self, data: Any) -> tuple[int, int]:
        if isinstance(data, ArrayData):
            return data.n_train, data.n_val
        train, val = torch_data.sources(Task(backend="torch", model=torch.nn.Identity, data=data), data, pin=False)
        return len(train), len(val)

    def sample_sizes(self, task: Task, data: Any) -> np.ndarray | None:
        train, _ = torch_data.sources(task, data, pin=False)
        return train.sample_sizes()

    # "expected target dtype to be Long", "expected scalar type Long but found Int"
    type_error_words = ("dtype", "scalar type")

    def is_oom(self, exc: BaseException) -> bool:
        if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
            return True
        if isinstance(exc, RuntimeError):
            text = str(exc)
            return any(message in text for message in _CPU_OOM_MESSAGES + _CUDA_OOM_MESSAGES)
        return False

    def release_memory(self, device: Device) -> None:
        gc.collect()
        if device.kind == "gpu" and device.id.startswith("cuda") and torch.cuda.is_available():
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(torch.device(device.id))

    def limit_memory(self, device: Device, limit_bytes: int) -> None:
        if device.id.startswith("cuda"):
            total = torch.cuda.get_device_properties(device.index).total_memory
            torch.cuda.set_per_process_memory_fraction(min(1.0, limit_bytes / total), device.index)

    def free_memory(self, device: Device) -> int | None:
        if device.id.startswith("cuda"):
            free, _total = torch.cuda.mem_get_info(device.index)
            return int(free)
        return device.memory_free

    def preload_modules(self) -> Sequence[str]:
        # torch.optim imports torch._dynamo on first use (about a second): do it once in the server
        return ("torch", "torch._dynamo", "autotune.backends.torch", "autotune.memory")

    compile_name = "torch.compile"

    def precisions(self, device: Device) -> tuple[str, ...]:
        """CPU: fp32, and bf16 where oneDNN has bf16 kernels for this CPU. CUDA: fp32, bf16 where the GPU has it
        (compute capability 8.0 up), fp16. MPS: fp32 and fp16."""
        if device.id.startswith("cuda"):
            return ("fp32", "bf16", "fp16") if torch.cuda.is_bf16_supported() else ("fp32", "fp16")
        if device.id == "mps":
            return ("fp32", "fp16")
        return ("fp32", "bf16") if _cpu_bf16() else ("fp32",)

    def bench_session(self, task: Task, data: Any, device: Device, *, batch_size: int,
                      optimizer: Mapping[str, Any], precision: str = "fp32", compile: bool = False,
                      seed: int = 0) -> "TorchBenchSession":
        spec = self.validate_optimizer(optimizer)
        return TorchBenchSession(task, data, device, batch_size, spec, seed, precision, compile)

    def matmul_seconds(self, device: Device, precision: str, size: int, seconds: float) -> float:
        from autotune.peak import time_matmuls

        target = torch.device(device.id)
        a = torch.randn(size, size, device=target).to(_MATMUL_DTYPES[precision])
        b = torch.randn(size, size, device=target).to(_MATMUL_DTYPES[precision])

        def once() -> None:
            torch.matmul(a, b)
            self.synchronize(device)

        return time_matmuls(once, seconds)


# ------------------------------------------------------------------------------------------- bench sessions
_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
_MATMUL_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class TorchBenchSession(TorchSession):
    """A `TorchSession` in mixed precision (``torch.autocast``; weights stay fp32, fp16 on CUDA with a grad
    scaler) and optionally through ``torch.compile`` (compiled on the first step, which the bench times apart)."""

    def __init__(self, task: Task, data: Any, device: Device, batch_size: int, optimizer: Mapping[str, Any],
                 seed: int, precision: str, compile: bool) -> None:
        super().__init__(task, data, device, batch_size, optimizer, seed)
        self.precision = precision
        self._dtype = _AUTOCAST_DTYPES.get(precision)
        self._eager = self.model
        self.first_step_compiles = compile  # type: ignore[misc]  # per session here: compiled or not
        if compile:
            self.model = torch.compile(self.model)  # type: ignore[assignment]  # a Module's callable twin
        self._scaler = torch.amp.GradScaler("cuda") if precision == "fp16" and self._cuda else None

    def _autocast(self) -> Any:
        return torch.autocast(self.device.type, dtype=self._dtype or torch.float32, enabled=self._dtype is not None)

    def _loss(self, batch: Any) -> torch.Tensor:
        with self._autocast():
            return super()._loss(batch)

    def train_step(self, indices: np.ndarray) -> None:
        if self.first_step_compiles and not self.compile_seconds:  # torch.compile compiles in the first call
            tick = time.perf_counter()
            self._step(indices)
            self.synchronize()
            self.compile_seconds = time.perf_counter() - tick
            return
        self._step(indices)

    def _step(self, indices: np.ndarray) -> None:
        if self._scaler is None:
            super().train_step(indices)
            return
        index = torch.from_numpy(np.asarray(indices, dtype=np.int64))
        self.optimizer.zero_grad(set_to_none=True)
        loss = self._loss(self.train_data.batch(index))
        self._scaler.scale(loss).backward()
        self._scaler.step(self.optimizer)
        self._scaler.update()
        self._last = loss.detach()

    def _run_forward(self, model: Any, indices: np.ndarray, autocast: bool = True) -> None:
        batch = torch_data.to_device(self.train_data.batch(torch.from_numpy(np.asarray(indices, dtype=np.int64))),
                                     self.device)
        model.eval()
        try:
            with torch.no_grad(), (self._autocast() if autocast else torch.autocast(self.device.type, enabled=False)):
                if self.compute_loss is not None:  # the model's own inputs are known only to compute_loss
                    self.compute_loss(model, batch)
                else:
                    model(batch[0])
        finally:
            model.train()
        self.synchronize()

    def forward(self, indices: np.ndarray) -> None:
        self._run_forward(self.model, indices)

    def training_flops(self, indices: np.ndarray) -> tuple[float | None, str]:
        """Counted by ``torch.utils.flop_counter.FlopCounterMode`` on one eager step (matmuls and convolutions,
        forward and backward; the optimizer's element-wise update is not counted)."""
        from torch.utils.flop_counter import FlopCounterMode

        compiled, self.model = self.model, self._eager
        try:
            with FlopCounterMode(display=False) as counter:
                self.train_step(indices)
        finally:
            self.model = compiled
        return float(counter.get_total_flops()), "torch.utils.flop_counter.FlopCounterMode"

    def int8_forward(self) -> Any:
        """Dynamic int8 quantization of the Linear, LSTM and GRU layers (``torch.ao.quantization.quantize_dynamic``,
        CPU only: its kernels are FBGEMM/QNNPACK), run in fp32 otherwise."""
        if self.device.type != "cpu":
            return None
        import copy
        import warnings

        with warnings.catch_warnings():  # deprecated in favour of torchao, which is not a dependency
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.filterwarnings("ignore", message=r".*quantize_per_tensor", category=UserWarning)
            quantized = torch.ao.quantization.quantize_dynamic(
                copy.deepcopy(self._eager).eval(), {torch.nn.Linear, torch.nn.LSTM, torch.nn.GRU}, dtype=torch.qint8)
        return lambda indices: self._run_forward(quantized, indices, autocast=False)


def _cpu_bf16() -> bool:
    """Whether oneDNN has bf16 kernels for this CPU (AVX512-BF16, AMX, or its AVX512 emulation)."""
    mkldnn = getattr(torch.ops, "mkldnn", None)
    try:
        return bool(mkldnn._is_mkldnn_bf16_supported()) if mkldnn is not None else False
    except (AttributeError, RuntimeError):
        return False

