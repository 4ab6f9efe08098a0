"""The backend registry: a name maps to the class that adapts one framework, imported on first use.

`register_backend` is the one door: the three built-in backends come in through it below, and a third-party
backend calls it too, from its own code or from a function named in the ``autotune.backends`` entry-point group
(``name = "package.module:register"``, loaded when the registry is first read). A backend is its module plus
the conformance suite its tests run (`autotune.testing`). Nothing here imports a framework.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import importlib.resources
import importlib.util
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from autotune.errors import AutotuneError, BackendNotInstalled, UnknownBackend

if TYPE_CHECKING:
    from autotune.backends.base import Backend


@dataclasses.dataclass(frozen=True)
class BackendEntry:
    """Where a backend lives and what it needs (see `register_backend`)."""

    name: str
    class_path: str
    framework: str
    install_hint: str
    default_space: str
    aliases: tuple[str, ...] = ()


_REGISTRY: dict[str, BackendEntry] = {}
_ALIASES: dict[str, str] = {}
_INSTANCES: dict[str, "Backend"] = {}
_PLUGINS_LOADED = False
_DECLARED: set[str] = set()  # built in or from an entry point: every process, a fork server too, knows them
_DECLARING = True  # while the built-ins and the entry points register
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


def register_backend(name: str, *, class_path: str, framework: str, install_hint: str, default_space: str,
                     aliases: Sequence[str] = ()) -> None:
    """Make backend ``name`` known to autotune (`Task(backend=name)`, ``--backend name``, ``autotune probe``).

    ``class_path`` is ``"module:Class"`` of its `Backend` subclass, imported on first use; ``framework`` the
    import name of the framework it needs (checked without importing it); ``install_hint`` the line a user runs
    when it is missing; ``default_space`` its default search space, a package resource ``"package:file.yaml"``
    (shipped in the wheel) or a file path; ``aliases`` other names for it. Registering a name again replaces it.
    """
    key = name.strip().lower()
    if not _NAME.match(key):
        raise AutotuneError(f"backend name {name!r} must be a lower-case identifier such as 'torch'")
    module, _, cls = class_path.partition(":")
    if not module or not cls:
        raise AutotuneError(f"backend {key!r}: class_path must be 'module:Class', got {class_path!r}")
    entry = BackendEntry(key, class_path, framework, install_hint, default_space,
                         tuple(alias.strip().lower() for alias in aliases))
    _REGISTRY[key] = entry
    if _DECLARING:
        _DECLARED.add(key)
    _INSTANCES.pop(key, None)
    for alias in entry.aliases:
        _ALIASES[alias] = key


def _registry() -> dict[str, BackendEntry]:
    global _PLUGINS_LOADED, _DECLARING
    if not _PLUGINS_LOADED:
        _PLUGINS_LOADED = _DECLARING = True
        try:
            points = list(importlib.metadata.entry_points(group="autotune.backends"))
        except Exception:  # a broken third-party distribution must not break the built-in backends
            points = []
        for point in points:
            try:
                point.load()()
            except Exception:  # likewise: that plugin is missing, the others stay
                pass
        _DECLARING = False
    return _REGISTRY


def backend_names() -> list[str]:
    """Every backend autotune knows, installed or not."""
    return list(_registry())


def canonical_backend_name(name: str) -> str:
    """``'pytorch'`` → ``'torch'``; an unknown name raises `UnknownBackend` listing the known ones."""
    registry = _registry()
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in registry:
        raise UnknownBackend(f"unknown backend {name!r}: use one of {', '.join(backend_names())}")
    return key


def backend_entry(name: str) -> BackendEntry:
    """The registration of backend ``name`` (an alias included)."""
    return _registry()[canonical_backend_name(name)]


def is_installed(name: str) -> bool:
    """Whether the framework of backend ``name`` can be imported, without importing it."""
    return importlib.util.find_spec(backend_entry(name).framework) is not None


def install_hint(name: str) -> str:
    return backend_entry(name).install_hint


def framework_module(name: str) -> str:
    """The import name of the framework behind backend ``name`` (``'tensorflow'`` for ``'keras'``)."""
    return backend_entry(name).framework


def backend_for_modules(modules: Sequence[str]) -> str | None:
    """The one backend whose framework (by its import name or an alias, as ``keras``) or own module is among
    ``modules`` (what a task file imports); None where none is, or more than one. Only backends every process
    knows (built in, or from an entry point) count: a fork server does not see one registered in code."""
    tops = {module.split(".")[0] for module in modules}
    found = {name for name, entry in _registry().items() if name in _DECLARED and (
        entry.framework in tops or tops & set(entry.aliases) or entry.class_path.partition(":")[0] in modules)}
    return found.pop() if len(found) == 1 else None


def default_space_file(name: str) -> Any:
    """The default search space of backend ``name`` as a readable file (``read_text``, ``is_file``).

    A resource of ``autotune.search_spaces`` is read from the installed package, or, when autotune runs from a
    source checkout put on ``PYTHONPATH`` without installing, from its ``search_spaces/`` folder.
    """
    location = backend_entry(name).default_space
    package, colon, resource = location.partition(":")
    if not colon or "/" in package or "\\" in package:
        return Path(location)
    try:
        return importlib.resources.files(package).joinpath(resource)
    except ModuleNotFoundError:
        if package != "autotune.search_spaces":
            raise AutotuneError(f"backend {name!r}: its default space package {package!r} is not installed") from None
        return Path(__file__).resolve().parent.parent.parent / "search_spaces" / resource


def get_backend(name: str) -> "Backend":
    """The backend instance for ``name``, importing its framework now; clear error if it is not installed."""
    key = canonical_backend_name(name)
    if key in _INSTANCES:
        return _INSTANCES[key]
    entry = _registry()[key]
    if importlib.util.find_spec(entry.framework) is None:
        raise BackendNotInstalled(f"backend {key!r} is not installed: {entry.install_hint}")
    instance = _backend_class(key)()
    _INSTANCES[key] = instance
    return instance


def preload_modules_of(name: str) -> Sequence[str]:
    """`Backend.preload_modules` of backend ``name``, read without creating the backend: a process that creates
    it runs its set-up (the TensorFlow backend's under a worker's memory cap), which a fork server must leave to
    each worker."""
    cls = _backend_class(canonical_backend_name(name))
    return cls.preload_modules(object.__new__(cls))


def _backend_class(key: str) -> Any:
    entry = _registry()[key]
    module_name, _, class_name = entry.class_path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise BackendNotInstalled(
            f"backend {key!r} failed to import ({type(exc).__name__}: {exc}): reinstall with {entry.install_hint}"
        ) from None
    return getattr(module, class_name)


register_backend("torch", class_path="autotune.backends.torch:TorchBackend", framework="torch",
                 install_hint="pip install 'autotune[torch]'", default_space="autotune.search_spaces:torch.yaml",
                 aliases=("pytorch",))
register_backend("tensorflow", class_path="autotune.backends.tensorflow:TensorFlowBackend", framework="tensorflow",
                 install_hint="pip install 'autotune[tensorflow]'",
                 default_space="autotune.search_spaces:tensorflow.yaml", aliases=("tf", "keras"))
register_backend("mindspore", class_path="autotune.backends.mindspore:MindSporeBackend", framework="mindspore",
                 install_hint="pip install 'autotune[mindspore]'",
                 default_space="autotune.search_spaces:mindspore.yaml", aliases=("ms",))

_DECLARING = False  # from here on, only `_registry` declares (the entry points)
