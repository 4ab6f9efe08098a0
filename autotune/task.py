"""The task contract: what a user brings (model factory, data, loss, backend) and how it is loaded.

A task is referenced as ``path/file.py``, ``path/file.py:attr`` or ``package.module:attr``; the attribute
defaults to ``task``. Loading errors are `TaskError` with one line that names the problem and the fix.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import importlib.util
import os
import sys
import traceback
from pathlib import Path
from typing import Any, Callable, Union

import numpy as np

from autotune.backends.native_noise import quiet_if_loading
from autotune.errors import AutotuneError, TaskError

LOSS_NAMES = ("cross_entropy", "mse", "mae", "binary_cross_entropy", "huber")
"""Loss names every backend maps to its framework's loss."""

DataSource = Union[Callable[[], Any], tuple]


@dataclasses.dataclass
class ArrayData:
    """Training and validation arrays, validated: same length of inputs and targets, non-empty."""

    x_train: Any
    y_train: Any
    x_val: Any
    y_val: Any

    @property
    def n_train(self) -> int:
        return len(self.x_train)

    @property
    def n_val(self) -> int:
        return len(self.x_val)


@dataclasses.dataclass
class Task:
    """What to tune: ``model()`` builds a fresh model of ``backend``; ``data()`` returns
    ``(x_train, y_train), (x_val, y_val)``; ``loss`` is a name in `LOSS_NAMES` or a backend-native callable.

    ``reference`` is how worker processes find the task again (set by `load_task`; set it yourself for a
    Task built in code that must run in isolated workers).

    ``options`` are backend-specific settings that travel with the task, each backend checking its own
    (MindSpore: ``{"mode": "graph"}`` compiles the training step; the default is PyNative).

    ``compute_loss(model, batch) -> scalar loss`` replaces ``loss(model(x), y)`` for models that compute their
    own loss (a Hugging Face model called with ``labels=``); ``batch`` is what the data yields (a tuple or a
    dict of the backend's tensors, on the device), dtypes unchanged. On MindSpore the batch is the tuple of the
    dataset's columns; on Keras a ``compute_loss`` that takes a ``training`` argument gets it.

    ``from_logits`` says whether the model's outputs are logits (True) or already probabilities (False) for the
    named losses ``cross_entropy`` and ``binary_cross_entropy``; None (the default) follows the model: a model
    ending in a softmax or sigmoid gets the loss on probabilities.
    """

    backend: str
    model: Callable[[], Any]
    data: DataSource
    loss: Union[str, Callable[..., Any]] = "cross_entropy"
    name: str | None = None
    reference: str | None = None
    options: dict[str, Any] = dataclasses.field(default_factory=dict)
    compute_loss: Callable[[Any, Any], Any] | None = None
    from_logits: bool | None = None
    imports: tuple[str, ...] = dataclasses.field(default=(), repr=False, compare=False)
    """Modules the task's file uses (set by `load_task`): worker servers preload them, so that a worker does
    not spend a second importing, say, scikit-learn before every trial."""

    def __post_init__(self) -> None:
        from autotune.backends import canonical_backend_name

        if not isinstance(self.backend, str):
            raise TaskError(f"Task backend must be a name such as 'torch', got {type(self.backend).__name__}")
        try:
            self.backend = canonical_backend_name(self.backend)
        except AutotuneError as exc:
            raise TaskError(str(exc)) from None
        if self.model is None or not callable(self.model):
            raise TaskError(
                "Task has no model: pass model=a function that returns a fresh model, e.g. Task(model=build_model, ...)"
            )
        if self.data is None or not (callable(self.data) or isinstance(self.data, (tuple, list))):
            raise TaskError(
                "Task has no data: pass data=a function returning ((x_train, y_train), (x_val, y_val))"
            )
        if isinstance(self.loss, str):
            if self.loss not in LOSS_NAMES:
                raise TaskError(
                    f"unknown loss {self.loss!r}: use one of {', '.join(LOSS_NAMES)} or a {self.backend} loss callable"
                )
        elif not callable(self.loss):
            raise TaskError(f"Task loss must be a name ({', '.join(LOSS_NAMES)}) or a callable, got {self.loss!r}")
        if self.compute_loss is not None and not callable(self.compute_loss):
            raise TaskError(
                f"Task compute_loss must be a function (model, batch) -> loss, got {type(self.compute_loss).__name__}"
            )
        if self.from_logits is not None and not isinstance(self.from_logits, bool):
            raise TaskError("Task from_logits must be True, False or None (follow the model), "
                            f"got {self.from_logits!r}")
        if not isinstance(self.options, dict):
            raise TaskError(f"Task options must be a dict such as {{'mode': 'graph'}}, got {self.options!r}")
        if self.name is None:
            self.name = self.reference or getattr(self.model, "__name__", "task")

    def load_data(self) -> Any:
        """Call the data source and check its shape; returns `ArrayData` or a backend-native pair."""
        try:
            raw = self.data() if callable(self.data) else self.data
        except AutotuneError:
            raise
        except Exception as exc:
            raise TaskError(f"the task's data() raised {type(exc).__name__}: {exc}") from None
        return validate_data(raw)


def validate_data(raw: Any) -> Any:
    """``((x_train, y_train), (x_val, y_val))`` of NumPy arrays → `ArrayData`; other shapes → clear error.

    Backend-native datasets (a ``tf.data.Dataset``, a ``mindspore.dataset`` pipeline) pass through unchanged
    for the backend to adapt.
    """
    if not isinstance(raw, (tuple, list)) or len(raw) != 2:
        if hasattr(raw, "__iter__") and not isinstance(raw, (np.ndarray, dict, str)):
            return raw
        raise TaskError("task data must be ((x_train, y_train), (x_val, y_val)); got " + type(raw).__name__)
    train, val = raw
    pairs = []
    for label, part in (("train", train), ("validation", val)):
        if not isinstance(part, (tuple, list)) or len(part) != 2:
            if _is_dataset_like(part):
                # backend-native datasets (torch Dataset, tf.data, PyDataset, ...): the backend validates them
                return raw
            raise TaskError(f"task {label} data must be a pair (x, y); got {type(part).__name__}")
        x, y = part
        if not hasattr(x, "__len__") or not hasattr(y, "__len__") or not hasattr(x, "shape"):
            return raw  # framework tensors or datasets: the backend validates them
        if len(x) == 0:
            raise TaskError(f"task {label} data is empty: data() must return at least one sample")
        if len(x) != len(y):
            raise TaskError(f"task {label} data has {len(x)} inputs but {len(y)} targets: they must match")
        pairs.append((x, y))
    (x_train, y_train), (x_val, y_val) = pairs
    return ArrayData(x_train, y_train, x_val, y_val)


def _is_dataset_like(part: Any) -> bool:
    """An iterable or indexable collection that is not itself an array or a plain container of arrays."""
    if isinstance(part, (np.ndarray, dict, str, bytes)):
        return False
    return hasattr(part, "__iter__") or (hasattr(part, "__getitem__") and hasattr(part, "__len__"))


def load_task(reference: str | Task) -> Task:
    """The `Task` named by ``path/file.py[:attr]`` or ``package.module:attr`` (attr defaults to ``task``)."""
    if isinstance(reference, Task):
        return reference
    if not isinstance(reference, str) or not reference.strip():
        raise TaskError("no task given: name a file such as examples/torch_digits.py or module:attribute")
    target, attr = _split_reference(reference.strip())
    if target.endswith(".py") or os.sep in target or "/" in target:
        module = _import_file(target)
        where = target
    else:
        module = _import_module(target)
        where = target
    if not hasattr(module, attr):
        raise TaskError(
            f"{where} has no attribute {attr!r}: define `{attr} = autotune.Task(...)` there "
            f"or name another one as {where}:NAME"
        )
    task = getattr(module, attr)
    if callable(task) and not isinstance(task, Task):
        try:
            task = task()
        except AutotuneError:
            raise
        except Exception as exc:
            raise TaskError(f"{where}:{attr}() raised {type(exc).__name__}: {exc}") from None
    if not isinstance(task, Task):
        raise TaskError(
            f"{where}:{attr} is a {type(task).__name__}, not an autotune.Task: "
            f"set {attr} = autotune.Task(backend=..., model=..., data=...)"
        )
    if not task.imports:
        task.imports = _imported_by(module)
    if task.reference is None:
        task.reference = f"{_absolute(target)}:{attr}" if target.endswith(".py") else f"{target}:{attr}"
        if task.name in (None, getattr(task.model, "__name__", None)):
            task.name = reference
    return task


def task_file(reference: str) -> str | None:
    """The absolute path of the file a task reference names (None for a ``package.module:attr`` reference)."""
    target, _attr = _split_reference(reference.strip())
    return _absolute(target) if target.endswith(".py") else None


def preload_entry(reference: str) -> str | None:
    """The fork server's preload entry for the task file at ``reference`` (None for a module reference): known
    before the task is loaded, so that the server imports what the file imports while this process loads it."""
    from autotune.forkserver import FILE_PRELOAD

    path = task_file(reference)
    return None if path is None else FILE_PRELOAD + path


def preload_file(entry: str) -> None:
    """In a fork server: import what a task file imports at its top level (read, not run: running it could start
    a framework's runtime, whose threads a fork does not copy), its backend's modules first
    (`Backend.preload_modules`); names a ``from`` statement takes are looked up, for packages that load lazily."""
    from autotune.backends import backend_for_modules, preload_modules_of
    from autotune.forkserver import FILE_PRELOAD

    path = entry[len(FILE_PRELOAD):]
    imports = file_imports(path)
    folder = str(Path(path).parent)
    if folder not in sys.path:  # its sibling modules, as `load_task` finds them
        sys.path.insert(0, folder)
    try:
        backend = backend_for_modules([module for module, _name in imports])
        first = [] if backend is None else [(module, None) for module in preload_modules_of(backend)]
    except Exception:  # noqa: BLE001 - a backend that does not import: the worker's own get_backend says why
        first = []
    for module, name in [*first, *imports]:
        try:
            imported = importlib.import_module(module)
            if name is not None:
                getattr(imported, name, None)
        except Exception:  # noqa: BLE001 - a sibling module of the task, or a broken one: the worker says
            pass


def file_imports(path: str) -> list[tuple[str, str | None]]:
    """``(module, name)`` for each top-level import of the file at ``path`` (``name`` None for ``import m``),
    inside top-level ``try`` blocks too; relative imports left out. Empty where the file cannot be read."""
    import ast

    try:
        tree = ast.parse(Path(path).read_text(encoding="utf-8"))
    except (OSError, SyntaxError, ValueError):
        return []
    found: list[tuple[str, str | None]] = []
    statements = list(tree.body)
    while statements:
        node = statements.pop(0)
        if isinstance(node, ast.Try):
            statements[:0] = [*node.body, *[n for handler in node.handlers for n in handler.body]]
        elif isinstance(node, ast.Import):
            found.extend((alias.name, None) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.extend((node.module, alias.name) for alias in node.names if alias.name != "*")
    return found


def _imported_by(module: Any) -> tuple[str, ...]:
    """Importable modules a task module refers to (``import x``, ``from x import f``), itself excluded."""
    names = set()
    for key, value in vars(module).items():
        if key.startswith("__"):
            continue
        name = value.__name__ if isinstance(value, type(sys)) else getattr(value, "__module__", None)
        if isinstance(name, str) and name in sys.modules and name not in ("__main__", "builtins", module.__name__) \
                and not name.startswith(("autotune_task_", "_")):
            names.add(name)
    return tuple(sorted(names))


def _absolute(path: str) -> str:
    return str(Path(path).resolve())


def _split_reference(reference: str) -> tuple[str, str]:
    if ":" in reference:
        target, _, attr = reference.rpartition(":")
        if target and attr.isidentifier():
            return target, attr
    return reference, "task"


def _import_file(path: str) -> Any:
    file = Path(path)
    if not file.exists():
        raise TaskError(f"task file {path!r} not found: check the path (relative to {os.getcwd()})")
    if file.is_dir():
        raise TaskError(f"task path {path!r} is a folder: name the .py file that defines the task")
    resolved = file.resolve()
    digest = hashlib.sha1(str(resolved).encode()).hexdigest()[:10]
    module_name = f"autotune_task_{resolved.stem}_{digest}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, resolved)
    if spec is None or spec.loader is None:
        raise TaskError(f"cannot import {path!r}: a task file must be a Python source file ending in .py")
    module = importlib.util.module_from_spec(spec)
    folder = str(resolved.parent)
    added = folder not in sys.path
    if added:
        sys.path.insert(0, folder)
    sys.modules[module_name] = module
    try:
        # the file may import a framework itself (`import tensorflow as tf`): its start-up noise is dropped there,
        # as in the backend's own import, and what the file itself writes to standard error still comes through
        with quiet_if_loading(module for module, _name in file_imports(str(resolved))):
            spec.loader.exec_module(module)
    except SyntaxError as exc:
        del sys.modules[module_name]
        raise TaskError(f"syntax error in {path} line {exc.lineno}: {exc.msg}; fix the file and run again") from None
    except AutotuneError as exc:
        del sys.modules[module_name]
        raise TaskError(f"{path}: {exc}") from None
    except BaseException as exc:  # noqa: BLE001 - a user file may raise anything, SystemExit included
        del sys.modules[module_name]
        if isinstance(exc, KeyboardInterrupt):
            raise
        line = _user_line(exc, str(resolved))
        hint = "; install it" if isinstance(exc, ModuleNotFoundError) else ""
        raise TaskError(f"importing {path} failed{line}: {type(exc).__name__}: {exc}{hint}") from None
    finally:
        if added and folder in sys.path:
            sys.path.remove(folder)
    return module


def _module_imports(name: str) -> list[str]:
    """The top-level imports of module ``name``'s source file, read without running it (none where not found)."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return []
    origin = getattr(spec, "origin", None)
    return [module for module, _name in file_imports(origin)] if origin and origin.endswith(".py") else []


def _import_module(name: str) -> Any:
    try:
        with quiet_if_loading(_module_imports(name)):  # as for a task file (`_import_file`)
            return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name and name.startswith(exc.name):
            raise TaskError(
                f"task module {name!r} not found: give a file path (path/file.py) or an importable module:attr"
            ) from None
        raise TaskError(f"importing {name} failed: {type(exc).__name__}: {exc}; install it") from None
    except SyntaxError as exc:
        raise TaskError(f"syntax error in {exc.filename} line {exc.lineno}: {exc.msg}; fix the file") from None
    except Exception as exc:
        raise TaskError(f"importing {name} failed: {type(exc).__name__}: {exc}") from None


def _user_line(exc: BaseException, filename: str) -> str:
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        if frame.filename == filename:
            return f" at line {frame.lineno}"
    return ""


def task_handle(task: Task) -> Union[str, Task]:
    """What a worker process needs to rebuild ``task``: its reference, else the picklable Task itself."""
    if task.reference:
        return task.reference
    import pickle

    try:
        pickle.dumps(task)
    except Exception:
        raise TaskError(
            "this Task was built in code and cannot be sent to a worker process: set "
            "Task(reference='path/file.py:attr'), load it with autotune.load_task, or pass isolation='none'"
        ) from None
    return task


def resolve_task(handle: Union[str, Task]) -> Task:
    """The Task behind a `task_handle` (loading the file again in a worker)."""
    return load_task(handle)
