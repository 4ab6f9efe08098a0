"""A task's fingerprint: what decides its memory per sample (model structure, data shapes), as a short digest.

A fitted ceiling holds for another run only if the model's parameters and the samples are the same shapes and
dtypes; the weights' values and the data's values do not change how much memory a step takes. The model is
built in a worker process (`fingerprint_in_worker`): building a TensorFlow or MindSpore model in the calling
process would start the framework's runtime there, and on a GPU take device memory the trials need.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any


def describe_task(*, task: Any) -> dict[str, Any]:
    """The structure of ``task`` (a `Task` or its reference): parameter names, shapes and dtypes, and the
    data's shapes and dtypes. Runs wherever the task's framework may start (a worker)."""
    from autotune.task import load_task

    task = load_task(task)
    model = task.model()
    return {"backend": task.backend, "model": type(model).__qualname__, "parameters": _parameters(model),
            "data": _data(task.load_data()), "loss": task.loss if isinstance(task.loss, str) else _name(task.loss),
            "compute_loss": _name(task.compute_loss), "options": {k: repr(v) for k, v in sorted(task.options.items())}}


def digest(parts: dict[str, Any]) -> str:
    """A 16-hex-digit digest of ``parts`` (JSON with sorted keys, so equal structures give equal digests)."""
    text = json.dumps(parts, sort_keys=True, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def fingerprint_in_worker(handle: Any, *, preload: tuple[str, ...] = (),
                          isolation: str = "process") -> dict[str, Any] | None:
    """`describe_task` run in a fresh worker (or here, with ``isolation='none'``); None if it fails there: a model
    that cannot be built is the fit's to report, with its own message, and nothing is cached for it."""
    from autotune.runner import run_in_worker

    if isolation == "none":
        try:
            return describe_task(task=handle)
        except Exception:
            return None
    outcome = run_in_worker(describe_task, {"task": handle}, timeout=600.0, preload=preload)
    return outcome.value if outcome.ok else None


def _parameters(model: Any) -> list[list[Any]]:
    """(name, shape, dtype) of each parameter and buffer, read the way each framework exposes them."""
    if callable(getattr(model, "state_dict", None)):  # torch: parameters and buffers (batch-norm statistics)
        return [[name, list(value.shape), str(value.dtype)] for name, value in model.state_dict().items()]
    if callable(getattr(model, "parameters_and_names", None)):  # MindSpore Cell
        return [[name, list(value.shape), str(value.dtype)] for name, value in model.parameters_and_names()]
    weights = getattr(model, "weights", None)  # Keras: empty until the model is built (then the data decides)
    if weights is not None:
        return [[getattr(w, "path", getattr(w, "name", "")), list(w.shape), str(w.dtype)] for w in weights]
    return []


def _data(data: Any) -> dict[str, Any]:
    from autotune.task import ArrayData

    if isinstance(data, ArrayData):
        return {name: _array(getattr(data, name)) for name in ("x_train", "y_train", "x_val", "y_val")}
    described = {}
    for label, part in zip(("train", "val"), data if isinstance(data, (tuple, list)) else (data,)):
        entry: dict[str, Any] = {"type": type(part).__qualname__}
        if hasattr(part, "__len__"):
            entry["length"] = len(part)
        if hasattr(part, "__getitem__") and hasattr(part, "__len__") and len(part):
            try:
                entry["first"] = _item(part[0])
            except Exception:  # a dataset indexed by other keys: its type and length are what is known
                pass
        described[label] = entry
    return described


def _item(item: Any) -> Any:
    if isinstance(item, dict):
        return {key: _item(value) for key, value in sorted(item.items())}
    if isinstance(item, (tuple, list)):
        return [_item(value) for value in item]
    return _array(item)


def _array(value: Any) -> Any:
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        return [list(value.shape), str(value.dtype)]
    return type(value).__name__


def _name(function: Any) -> str | None:
    if function is None:
        return None
    return f"{getattr(function, '__module__', '')}.{getattr(function, '__qualname__', type(function).__name__)}"

