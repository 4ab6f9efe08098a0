"""Input checks that run before any work: time options, and the task's data read once in this process.

A NaN in the data made every trial "diverge" and the study end with none finished; a validation set whose
inputs have another shape than the training set's failed only inside the first probe. Both are found here in
well under a second with NumPy, before a worker starts or a study is created. What only the model can tell
(inputs of the wrong width for its first layer, labels beyond its outputs) is checked next by `check_contract`:
the model and the loss on two samples, in a worker, still before a study or a fit.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from autotune.errors import AutotuneError, TaskError
from autotune.task import ArrayData, Task


def seconds(option: str, value: float | None) -> float | None:
    """``value`` if it is None or a finite number of seconds above 0, else `AutotuneError` naming ``option``."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise AutotuneError(f"{option} must be a finite number of seconds above 0, got {value!r}")
    return float(value)


def check_task_data(task: Task) -> None:
    """Load ``task``'s data and raise `TaskError` for non-finite values or train/validation shapes that differ.

    Backend-native datasets (tf.data, a torch Dataset, ...) are the backend's to check, in the first probe.
    """
    data = task.load_data()
    if not isinstance(data, ArrayData):
        return
    for label, array in (("training inputs", data.x_train), ("training targets", data.y_train),
                         ("validation inputs", data.x_val), ("validation targets", data.y_val)):
        _finite(label, array)
    for label, train, val in (("inputs", data.x_train, data.x_val), ("targets", data.y_train, data.y_val)):
        if hasattr(train, "shape") and hasattr(val, "shape") and tuple(train.shape[1:]) != tuple(val.shape[1:]):
            raise TaskError(f"task data: training {label} have shape {_shape(train)} per sample, validation "
                            f"{label} {_shape(val)}: they must match")


def _finite(label: str, array: Any) -> None:
    values = np.asarray(array) if isinstance(array, np.ndarray) else None
    if values is None or values.dtype.kind not in "fc":
        return  # integers and booleans cannot hold NaN; framework tensors are the backend's
    bad = ~np.isfinite(values)
    if bad.any():
        nan = int(np.isnan(values).sum())
        first = int(np.argwhere(bad.reshape(len(values), -1).any(axis=1))[0][0]) if values.ndim else 0
        raise TaskError(f"task {label} hold {nan} NaN and {int(bad.sum()) - nan} infinite value(s), the first in "
                        f"sample {first}: clean or drop those samples (training on them gives no finite loss)")


def _shape(array: Any) -> str:
    return "(" + ", ".join(str(d) for d in array.shape[1:]) + ")"


def check_labels(low: int, high: int, classes: int, loss: str) -> None:
    """`TaskError` unless class labels from ``low`` to ``high`` index a model output of ``classes`` classes."""
    if low < 0 or high >= classes:
        raise TaskError(f"the targets hold class labels from {low} to {high}, but the model gives {classes} outputs "
                        f"for loss {loss} (labels 0 to {classes - 1}): give the model's last layer {max(high + 1, 1)} "
                        f"outputs, or map the labels to 0..{classes - 1}")


def labels_against(data: Any, classes: int | None, loss: Any) -> None:
    """Check every integer target of array ``data`` against the model's ``classes`` (None: not a class loss)."""
    if classes is None or not isinstance(data, ArrayData):
        return
    targets = [np.asarray(y) for y in (data.y_train, data.y_val) if isinstance(y, np.ndarray) and y.size]
    if targets and all(y.dtype.kind in "iu" for y in targets):
        check_labels(min(int(y.min()) for y in targets), max(int(y.max()) for y in targets), classes, str(loss))
