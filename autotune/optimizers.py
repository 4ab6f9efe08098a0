"""Backend-neutral optimizer specs: the same words on every backend.

A spec is a dict such as ``{"name": "adamw", "lr": 3e-3, "weight_decay": 0.01}``. `OPTIMIZERS` lists, for
each neutral name, the parameters it takes and their defaults; each backend maps the names it supports
to its framework's classes. `validate_spec` turns a user dict into a checked spec or a one-line error.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from autotune.errors import AutotuneError

_ADAM = {"beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.0}

OPTIMIZERS: dict[str, dict[str, Any]] = {
    "sgd": {"weight_decay": 0.0},
    "momentum": {"momentum": 0.9, "weight_decay": 0.0},
    "nesterov": {"momentum": 0.9, "weight_decay": 0.0},
    "adam": dict(_ADAM),
    "adamw": {**_ADAM, "weight_decay": 0.01},
    "adamax": dict(_ADAM),
    "nadam": dict(_ADAM),
    "radam": dict(_ADAM),
    "amsgrad": dict(_ADAM),
    "rmsprop": {"rho": 0.99, "momentum": 0.0, "eps": 1e-8, "weight_decay": 0.0, "centered": False},
    "adagrad": {"eps": 1e-10, "weight_decay": 0.0, "initial_accumulator_value": 0.0},
    "adadelta": {"rho": 0.9, "eps": 1e-6, "weight_decay": 0.0},
    "adafactor": {"beta2_decay": -0.8, "eps": 1e-3, "weight_decay": 0.0},
    "asgd": {"weight_decay": 0.0},
    "lion": {"beta1": 0.9, "beta2": 0.99, "weight_decay": 0.0},
    "ftrl": {"l1": 0.0, "l2": 0.0, "lr_power": -0.5, "initial_accumulator_value": 0.1},
    "lamb": {"beta1": 0.9, "beta2": 0.999, "eps": 1e-6, "weight_decay": 0.0},
    "lars": {"momentum": 0.9, "weight_decay": 0.0, "eta": 0.001},
}
"""Neutral name → its parameters (besides ``lr``) and their defaults."""

SGD_FAMILY = frozenset({"sgd", "momentum", "nesterov", "asgd", "lars"})
"""Optimizers whose learning rate scales linearly with batch size; the others scale by its square root."""

DEFAULT_LR = 1e-3


def validate_spec(spec: Mapping[str, Any], supported: Iterable[str], backend: str) -> dict[str, Any]:
    """A complete spec (defaults filled in) or `AutotuneError` naming the bad name or parameter."""
    if not isinstance(spec, Mapping) or "name" not in spec:
        raise AutotuneError(f"optimizer spec must be a mapping with a 'name', got {spec!r}")
    name = str(spec["name"]).lower()
    supported = sorted(supported)
    if name not in OPTIMIZERS or name not in supported:
        raise AutotuneError(f"optimizer {name!r} is not available on backend {backend}: "
                            f"use one of {', '.join(supported)}")
    known = OPTIMIZERS[name]
    full: dict[str, Any] = {"name": name, "lr": float(spec.get("lr", DEFAULT_LR)), **known}
    for key, value in spec.items():
        if key in ("name", "lr"):
            continue
        if key not in known:
            allowed = ", ".join(["lr", *known]) or "lr"
            raise AutotuneError(f"optimizer {name!r} has no parameter {key!r}: it takes {allowed}")
        full[key] = type(known[key])(value) if not isinstance(known[key], bool) else bool(value)
    if not full["lr"] > 0:
        raise AutotuneError(f"optimizer {name!r}: lr must be positive, got {full['lr']}")
    return full


def lr_scale(name: str, batch_size: int, reference_batch: int) -> float:
    """Factor by which a learning rate tuned at ``reference_batch`` should change at ``batch_size``:
    linear for the SGD family (Goyal et al. 2017), square root for adaptive methods (Malladi et al. 2022)."""
    ratio = batch_size / float(reference_batch)
    return ratio if name in SGD_FAMILY else ratio**0.5
