"""A fourth backend from the test tree: multi-layer perceptrons in plain NumPy, to show that a backend is one
module plus the shipped conformance suite (`autotune.testing`).

Registered at import (`autotune.register_backend`), so that any process that loads one of its tasks (the
caller, a worker server) knows it. Models are `MLP` specs; the session does the forward and backward passes
itself. CPU only; an out-of-memory failure is NumPy's MemoryError.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np

import autotune
from autotune.backends.base import Backend, TrainingSession
from autotune.devices import Device, cpu_device
from autotune.errors import TaskError

autotune.register_backend(
    "numpy_mlp", class_path="numpy_backend:NumpyBackend", framework="numpy",
    install_hint="pip install numpy", default_space=str(Path(__file__).with_name("numpy_mlp.yaml")))


class MLP:
    """Layer widths and the number of ``tanh(h) * 1.01`` repeats after the first layer (each keeps one more
    activation for the backward pass: how the memory-hungry test task grows per sample)."""

    def __init__(self, widths: tuple[int, ...], repeats: int = 0) -> None:
        self.widths, self.repeats = widths, repeats


def _adam_like(decoupled: bool):
    def step(state: dict[str, Any], w: np.ndarray, g: np.ndarray, s: Mapping[str, Any]) -> None:
        if decoupled:
            w -= s["lr"] * s["weight_decay"] * w
        else:
            g = g + s["weight_decay"] * w
        state["t"] = state.get("t", 0) + 1
        m = state.setdefault("m", np.zeros_like(w))
        v = state.setdefault("v", np.zeros_like(w))
        m *= s["beta1"]
        m += (1 - s["beta1"]) * g
        v *= s["beta2"]
        v += (1 - s["beta2"]) * g * g
        m_hat = m / (1 - s["beta1"] ** state["t"])
        v_hat = v / (1 - s["beta2"] ** state["t"])
        w -= s["lr"] * m_hat / (np.sqrt(v_hat) + s["eps"])

    return step


def _sgd(state: dict[str, Any], w: np.ndarray, g: np.ndarray, s: Mapping[str, Any]) -> None:
    g = g + s["weight_decay"] * w
    if s.get("momentum"):
        buf = state.get("buf")
        state["buf"] = buf = g.copy() if buf is None else buf * s["momentum"] + g
        g = buf
    w -= s["lr"] * g


def _rmsprop(state: dict[str, Any], w: np.ndarray, g: np.ndarray, s: Mapping[str, Any]) -> None:
    g = g + s["weight_decay"] * w
    sq = state.setdefault("sq", np.zeros_like(w))
    sq *= s["rho"]
    sq += (1 - s["rho"]) * g * g
    w -= s["lr"] * g / (np.sqrt(sq) + s["eps"])


def _adagrad(state: dict[str, Any], w: np.ndarray, g: np.ndarray, s: Mapping[str, Any]) -> None:
    g = g + s["weight_decay"] * w
    acc = state.setdefault("acc", np.full_like(w, s["initial_accumulator_value"]))
    acc += g * g
    w -= s["lr"] * g / (np.sqrt(acc) + s["eps"])


_STEPS = {"sgd": _sgd, "momentum": _sgd, "adam": _adam_like(False), "adamw": _adam_like(True),
          "rmsprop": _rmsprop, "adagrad": _adagrad}


class NumpySession(TrainingSession):
    def __init__(self, task: Any, data: Any, batch_size: int, spec: Mapping[str, Any], seed: int) -> None:
        model = task.model()
        if not isinstance(model, MLP):
            raise TaskError(f"a numpy_mlp model is an MLP spec, got {type(model).__name__}")
        if task.loss not in ("cross_entropy", "mse"):
            raise TaskError(f"the numpy_mlp backend knows the losses cross_entropy and mse, not {task.loss!r}")
        rng = np.random.default_rng(seed)
        self.layers = [[(rng.standard_normal((a, b)) / np.sqrt(a)).astype(np.float32), np.zeros(b, np.float32)]
                       for a, b in zip(model.widths[:-1], model.widths[1:])]
        self.repeats, self.loss_name = model.repeats, task.loss
        self.data, self.batch_size, self.spec = data, batch_size, dict(spec)
        self.state: list[list[dict[str, Any]]] = [[{}, {}] for _ in self.layers]
        self._last = float("nan")

    def _forward(self, x: np.ndarray) -> tuple[np.ndarray, list[tuple[str, np.ndarray]]]:
        """The output, and each operation's input in order (what the backward pass needs)."""
        saved: list[tuple[str, np.ndarray]] = []
        h = x
        for index, (w, b) in enumerate(self.layers):
            saved.append(("linear", h))
            h = h @ w + b
            if index == 0:
                for _ in range(self.repeats):
                    saved.append(("tanh", h))
                    h = np.tanh(h) * 1.01
            if index < len(self.layers) - 1:
                saved.append(("relu", h))
                h = np.maximum(h, 0)
        return h, saved

    def _loss(self, out: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
        if self.loss_name == "mse":
            diff = out - y.reshape(out.shape)
            return float(np.mean(diff * diff)), 2 * diff / diff.size
        shifted = out - out.max(axis=1, keepdims=True)
        log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        labels = y.astype(np.int64).reshape(-1)
        grad = np.exp(log_p)
        grad[np.arange(len(labels)), labels] -= 1
        return float(-log_p[np.arange(len(labels)), labels].mean()), grad / len(labels)

    def train_step(self, indices: np.ndarray) -> None:
        x, y = self.data.x_train[indices], self.data.y_train[indices]
        out, saved = self._forward(x)
        self._last, grad = self._loss(out, y)
        index, grads = len(self.layers), []
        for kind, inputs in reversed(saved):
            if kind == "relu":
                grad = grad * (inputs > 0)
            elif kind == "tanh":
                grad = grad * 1.01 * (1 - np.tanh(inputs) ** 2)
            else:
                index -= 1
                grads.append((index, inputs.T @ grad, grad.sum(axis=0)))
                if index:
                    grad = grad @ self.layers[index][0].T
        step = _STEPS[self.spec["name"]]
        for index, grad_w, grad_b in grads:
            w, b = self.layers[index]
            step(self.state[index][0], w, grad_w.astype(np.float32), self.spec)
            step(self.state[index][1], b, grad_b.astype(np.float32), self.spec)

    def allocate_optimizer_state(self) -> None:
        for (w, b), states in zip(self.layers, self.state):
            for array, state in ((w, states[0]), (b, states[1])):
                for key in {"adam": ("m", "v"), "adamw": ("m", "v"), "rmsprop": ("sq",),
                            "momentum": ("buf",)}.get(self.spec["name"], ()):
                    state.setdefault(key, np.zeros_like(array))
                if self.spec["name"] == "adagrad":
                    state.setdefault("acc", np.full_like(array, self.spec["initial_accumulator_value"]))

    def set_learning_rate(self, lr: float) -> None:
        self.spec["lr"] = lr

    def last_loss(self) -> float:
        return self._last

    def evaluate(self, max_batches: int | None = None) -> float:
        total, count = 0.0, 0
        for batch, start in enumerate(range(0, self.data.n_val, self.batch_size)):
            if max_batches is not None and batch >= max_batches:
                break
            x = self.data.x_val[start:start + self.batch_size]
            loss, _ = self._loss(self._forward(x)[0], self.data.y_val[start:start + self.batch_size])
            total, count = total + loss * len(x), count + len(x)
        return total / count

    def close(self) -> None:
        self.layers, self.state = [], []


class NumpyBackend(Backend):
    name = "numpy_mlp"
    optimizer_names = tuple(sorted(_STEPS))

    def version(self) -> str:
        return np.__version__

    def devices(self) -> list[Device]:
        return [cpu_device(self.name)]

    def session(self, task: Any, data: Any, device: Device, *, batch_size: int, optimizer: Mapping[str, Any],
                seed: int = 0) -> NumpySession:
        return NumpySession(task, data, batch_size, self.validate_optimizer(optimizer), seed)

    def is_oom(self, exc: BaseException) -> bool:
        return isinstance(exc, MemoryError)

    def preload_modules(self) -> tuple[str, ...]:
        return ("numpy", "numpy_backend", "autotune.memory")
