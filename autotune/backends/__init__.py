"""The backend registry: a name maps to the class that adapts one framework, imported on first use.

Third-party backends register through the ``autotune.backends`` entry-point group
(``name = "package.module:Class"``). Nothing here imports a framework.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import importlib.util
from typing import TYPE_CHECKING

from autotune.errors import BackendNotInstalled, UnknownBackend

if TYPE_CHECKING:
    from autotune.backends.base import Backend


@dataclasses.dataclass(frozen=True)
class BackendEntry:
    """Where a backend lives and what it needs: ``target`` is ``module:Class``, ``framework`` the import name."""

    name: str
    target: str
    framework: str
    extra: str


_BUILTIN = {
    "torch": BackendEntry("torch", "autotune.backends.torch:TorchBackend", "torch", "torch"),
    "tensorflow": BackendEntry("tensorflow", "autotune.backends.tensorflow:TensorFlowBackend", "tensorflow", "tensorflow"),
    "mindspore": BackendEntry("mindspore", "autotune.backends.mindspore:MindSporeBackend", "mindspore", "mindspore"),
}
_ALIASES = {"pytorch": "torch", "tf": "tensorflow", "keras": "tensorflow", "ms": "mindspore"}
_INSTANCES: dict[str, "Backend"] = {}


def _registry() -> dict[str, BackendEntry]:
    entries = dict(_BUILTIN)
    try:
        for point in importlib.metadata.entry_points(group="autotune.backends"):
            entries.setdefault(point.name, BackendEntry(point.name, point.value, point.value.split(".")[0], point.name))
    except Exception:  # a broken third-party distribution must not break the built-in backends
        pass
    return entries


def backend_names() -> list[str]:
    """Every backend autotune knows, installed or not."""
    return list(_registry())


def canonical_backend_name(name: str) -> str:
    """``'pytorch'`` → ``'torch'``; an unknown name raises `UnknownBackend` listing the known ones."""
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in _registry():
        raise UnknownBackend(f"unknown backend {name!r}: use one of {', '.join(backend_names())}")
    return key


def is_installed(name: str) -> bool:
    """Whether the framework of backend ``name`` can be imported, without importing it."""
    entry = _registry()[canonical_backend_name(name)]
    return importlib.util.find_spec(entry.framework) is not None


def install_hint(name: str) -> str:
    entry = _registry()[canonical_backend_name(name)]
    return f"pip install 'autotune[{entry.extra}]'"


def framework_module(name: str) -> str:
    """The import name of the framework behind backend ``name`` (``'tensorflow'`` for ``'keras'``)."""
    return _registry()[canonical_backend_name(name)].framework


def get_backend(name: str) -> "Backend":
    """The backend instance for ``name``, importing its framework now; clear error if it is not installed."""
    key = canonical_backend_name(name)
    if key in _INSTANCES:
        return _INSTANCES[key]
    entry = _registry()[key]
    if importlib.util.find_spec(entry.framework) is None:
        raise BackendNotInstalled(f"backend {key!r} is not installed: {install_hint(key)}")
    module_name, _, class_name = entry.target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise BackendNotInstalled(
            f"backend {key!r} failed to import ({type(exc).__name__}: {exc}): reinstall with {install_hint(key)}"
        ) from None
    instance = getattr(module, class_name)()
    _INSTANCES[key] = instance
    return instance
