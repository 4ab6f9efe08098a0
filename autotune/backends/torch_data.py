"""PyTorch data for a training session: NumPy arrays or map-style ``torch.utils.data.Dataset`` pairs, as batches.

A batch is what the data yields, collated: ``(x, y)`` for arrays, and for a Dataset whatever its items are (a
tuple or a dict of tensors), through ``torch.utils.data.default_collate`` or the task's ``collate_fn`` option.
Dtypes stay as the data has them (int64 labels reach the loss as int64); only float64 inputs become float32,
the dtype of every model's parameters.
"""

from __future__ import annotations

import numbers
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import default_collate

from autotune.errors import TaskError
from autotune.task import ArrayData, Task

Batch = Any
"""A tuple, list or dict of tensors (or one tensor), on the device."""

SIZE_SCAN_LIMIT = 100_000
"""Datasets longer than this are scanned for their largest samples on a random subset of this many items."""


class ArraySource:
    """Inputs and targets as host tensors; a batch is ``(x[indices], y[indices])``."""

    def __init__(self, x: Any, y: Any, pin: bool) -> None:
        self.x, self.y = _host_tensor(x), _host_tensor(y)
        if pin:
            self.x, self.y = self.x.pin_memory(), self.y.pin_memory()

    def __len__(self) -> int:
        return len(self.x)

    def batch(self, indices: Any) -> Batch:
        return self.x[indices], self.y[indices]

    def sample_sizes(self) -> np.ndarray | None:
        return None  # every row of an array has the same size


class DatasetSource:
    """A map-style Dataset; a batch collates ``dataset[i]`` for each index."""

    def __init__(self, dataset: Any, collate: Callable[[list[Any]], Any], label: str) -> None:
        self.dataset, self.collate, self.label = dataset, collate, label
        try:
            self._length = len(dataset)
        except TypeError:
            raise TaskError(f"the {label} dataset has no len(): give a map-style torch.utils.data.Dataset "
                            "(__getitem__ and __len__); an IterableDataset cannot be batched by index") from None
        if self._length == 0:
            raise TaskError(f"the {label} dataset is empty: it must hold at least one sample")
        check_item(dataset[0], label)

    def __len__(self) -> int:
        return self._length

    def batch(self, indices: Any) -> Batch:
        if isinstance(indices, slice):
            indices = range(*indices.indices(self._length))
        elif isinstance(indices, torch.Tensor):
            indices = indices.tolist()
        items = [self.dataset[int(i)] for i in indices]
        try:
            return self.collate(items)
        except (RuntimeError, TypeError, ValueError) as exc:
            raise TaskError(
                f"collating the {self.label} dataset's items failed ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0]}): items of different sizes need Task(options={{'collate_fn': pad}}) "
                "with a function that pads a list of items into one batch"
            ) from None

    def sample_sizes(self) -> np.ndarray | None:
        """Elements per sample (every tensor of the item), or None when all samples have the same size."""
        count = self._length
        indices = np.arange(count) if count <= SIZE_SCAN_LIMIT else \
            np.sort(np.random.default_rng(0).choice(count, SIZE_SCAN_LIMIT, replace=False))
        sizes = np.array([_elements(self.dataset[int(i)]) for i in indices], dtype=np.int64)
        if sizes.min() == sizes.max():
            return None
        if count > SIZE_SCAN_LIMIT:  # unscanned items count as the smallest: never chosen as the largest
            full = np.full(count, sizes.min(), dtype=np.int64)
            full[indices] = sizes
            return full
        return sizes


def check_item(item: Any, label: str) -> None:
    """A Dataset item must be tensors, arrays or numbers, alone or in a tuple, list or dict: else one line."""
    def valid(value: Any, depth: int) -> bool:
        if isinstance(value, (torch.Tensor, np.ndarray, numbers.Number)):
            return True
        if depth < 2 and isinstance(value, (tuple, list)) and value:
            return all(valid(v, depth + 1) for v in value)
        if depth < 2 and isinstance(value, Mapping) and value:
            return all(valid(v, depth + 1) for v in value.values())
        return False

    if not valid(item, 0):
        raise TaskError(
            f"the {label} dataset's items must be tensors, arrays or numbers, or a tuple or dict of them; "
            f"item 0 is {describe_batch(item)}: make __getitem__ return e.g. (x, y) or "
            "{'input_ids': ..., 'labels': ...}"
        )


def describe_batch(item: Any) -> str:
    if isinstance(item, (tuple, list)):
        return f"a {type(item).__name__} of ({', '.join(type(v).__name__ for v in item)})"
    if isinstance(item, Mapping):
        return "a dict of (" + ", ".join(f"{k}: {type(v).__name__}" for k, v in item.items()) + ")"
    return f"a {type(item).__name__}"


def _elements(item: Any) -> int:
    if isinstance(item, (torch.Tensor, np.ndarray)):
        return int(np.prod(item.shape)) if item.shape else 1
    if isinstance(item, (tuple, list)):
        return sum(_elements(v) for v in item)
    if isinstance(item, Mapping):
        return sum(_elements(v) for v in item.values())
    return 1


def _host_tensor(values: Any) -> torch.Tensor:
    tensor = torch.as_tensor(np.asarray(values)) if not isinstance(values, torch.Tensor) else values
    return tensor.float() if tensor.dtype == torch.float64 else tensor


def is_torch_dataset(obj: Any) -> bool:
    return isinstance(obj, torch.utils.data.Dataset) or (
        hasattr(obj, "__getitem__") and hasattr(obj, "__len__") and not isinstance(obj, (np.ndarray, tuple, list)))


def sources(task: Task, data: Any, pin: bool) -> tuple[ArraySource | DatasetSource, ArraySource | DatasetSource]:
    """Training and validation sources from arrays (`ArrayData`) or a pair of Datasets."""
    if isinstance(data, ArrayData):
        return ArraySource(data.x_train, data.y_train, pin), ArraySource(data.x_val, data.y_val, pin)
    collate = task.options.get("collate_fn", default_collate)
    if not callable(collate):
        raise TaskError(f"Task option collate_fn must be a function (list of items) -> batch, got {collate!r}")
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(is_torch_dataset(part) for part in data):
        return DatasetSource(data[0], collate, "training"), DatasetSource(data[1], collate, "validation")
    raise TaskError(
        "torch task data must be ((x_train, y_train), (x_val, y_val)) NumPy arrays or (train_dataset, val_dataset) "
        f"map-style torch Datasets; got {type(data).__name__}"
    )


def to_device(batch: Batch, device: torch.device) -> Batch:
    """Every tensor of the batch on ``device`` (nested tuples, lists and dicts kept as they are)."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return {key: to_device(value, device) for key, value in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(to_device(value, device) for value in batch)
    return batch


def batch_length(batch: Batch) -> int:
    """Samples in a batch: the first dimension of its first tensor."""
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.dim() else 1
    values: Sequence[Any] = list(batch.values()) if isinstance(batch, Mapping) else batch
    return batch_length(values[0])
