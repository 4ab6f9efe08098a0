"""Search spaces: load the backend's default YAML, merge a user file over it, validate, and sample trials.

Every validation error is one line that names the file and the key (``search space my.yaml: lr.low: ...``).
The defaults ship inside the package (``autotune.search_spaces``), so they exist in an installed wheel too.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import optuna
import yaml

from autotune.errors import SearchSpaceError
from autotune.optimizers import OPTIMIZERS, lr_scale
from autotune.training import accumulation_plan

_TOP_KEYS = {"batch_size", "lr", "optimizers"}
_EXECUTION_KEYS = {"precision": ("fp32", "bf16", "fp16"), "compile": (False, True)}
"""Optional top-level keys: ``{choices: [...]}`` of training precisions and of compilation off/on (see
`autotune.bench`); absent, trials train in fp32 without compiling."""
_BATCH_KEYS = {"low", "high", "choices"}
_LR_KEYS = {"low", "high", "log", "reference_batch"}
_PARAM_KEYS = {"low", "high", "log", "choices"}

BATCH_PARAM = "log2_batch_size"
"""The batch size is sampled as its base-2 exponent, a float whose range may change between runs (Optuna
refuses a categorical whose choices change), then snapped to the nearest allowed size: a narrowed space or
another machine's ceiling resumes the same study, and every earlier trial still informs the sampler."""


@dataclasses.dataclass
class ParamRange:
    """One optimizer parameter: a float range (optionally log) or a list of choices."""

    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: list[Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        if self.choices is not None:
            return {"choices": list(self.choices)}
        return {"low": self.low, "high": self.high, "log": self.log}


@dataclasses.dataclass
class SearchSpace:
    """Batch sizes, a learning-rate range at a reference batch, and optimizers with their parameter ranges."""

    batch_low: int
    batch_high: int | None
    batch_choices: list[int] | None
    lr_low: float
    lr_high: float
    lr_log: bool
    reference_batch: int
    optimizers: dict[str, dict[str, ParamRange]]
    source: str = "default"
    lr_ranges: dict[str, tuple[float, float]] = dataclasses.field(default_factory=dict)
    """Per-optimizer learning-rate ranges narrowed by the range test; absent ones use [lr_low, lr_high]."""
    precisions: list[str] = dataclasses.field(default_factory=lambda: ["fp32"])
    """Training precisions to search (``precision.choices``); one: not searched."""
    compile_modes: list[bool] = dataclasses.field(default_factory=lambda: [False])
    """Compilation off/on to search (``compile.choices``); one: not searched."""
    global_batch: int | None = None
    """The batch every trial trains at (``--global-batch``), in micro-batches where it exceeds the ceiling."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "batch_size": {"low": self.batch_low, "high": self.batch_high, "choices": self.batch_choices},
            "lr": {"low": self.lr_low, "high": self.lr_high, "log": self.lr_log,
                   "reference_batch": self.reference_batch},
            "optimizers": {name: {p: r.to_dict() for p, r in params.items()}
                           for name, params in self.optimizers.items()},
            "precision": {"choices": list(self.precisions)},
            "compile": {"choices": list(self.compile_modes)},
            "lr_ranges": {name: list(bounds) for name, bounds in self.lr_ranges.items()},
            "source": self.source,
        }

    @property
    def smallest_batch(self) -> int:
        """The smallest batch any trial may train at: the least choice, else ``batch_size.low``."""
        return min(self.batch_choices) if self.batch_choices else self.batch_low

    def batch_sizes(self, ceiling: int) -> list[int]:
        """Candidate batch sizes up to ``ceiling``: the listed choices, or powers of two from low, plus the ceiling."""
        high = min(self.batch_high or ceiling, ceiling)
        if self.batch_choices:
            sizes = sorted({b for b in self.batch_choices if b <= high})
        else:
            sizes, size = [], 1
            while size <= high:
                if size >= self.batch_low:
                    sizes.append(size)
                size *= 2
            if high >= self.batch_low and high not in sizes:
                sizes.append(high)
        if not sizes:
            raise SearchSpaceError(
                f"search space {self.source}: batch_size: no candidate at or below the ceiling of {ceiling} (the "
                "largest batch that fits memory and the data); lower batch_size.low"
            )
        return sizes

    def lr_range(self, optimizer: str) -> tuple[float, float]:
        return self.lr_ranges.get(optimizer, (self.lr_low, self.lr_high))

    def suggest_optimizer_params(self, trial: Any, name: str) -> dict[str, Any]:
        """Sample optimizer ``name``'s own parameters, named ``name.param`` so they are conditional on it."""
        params: dict[str, Any] = {}
        for param, spec in self.optimizers[name].items():
            key = f"{name}.{param}"
            if spec.choices is not None:
                params[param] = trial.suggest_categorical(key, spec.choices)
            else:
                params[param] = trial.suggest_float(key, spec.low, spec.high, log=spec.log)
        return params

    def suggest(self, trial: Any, ceiling: int | Mapping[str, int], global_batch: int | None = None,
                ) -> dict[str, Any]:
        """Sample one configuration: batch size, optimizer, its parameters and a batch-scaled learning rate.

        Parameters are conditional on the optimizer (``adam.beta1``), and the learning rate is sampled at the
        reference batch (``adam.lr``), then scaled to the sampled batch size, so that one landscape is learned.
        With ``global_batch`` (default: the space's own) the batch is not searched: it is that batch (the
        learning rate scaled to it), run as
        micro-batches under ``ceiling`` with gradient accumulation where it is larger (``micro_batch`` ×
        ``accumulation_steps`` in the configuration). ``ceiling`` may be one per training precision
        (`autotune.ceiling.ensure_ceilings`): the precision is sampled first and bounds the batch by its own.
        """
        precision = self._choose(trial, "precision", self.precisions)
        if isinstance(ceiling, Mapping):
            ceiling = ceiling[precision]
        accumulation: dict[str, int] = {}
        global_batch = global_batch if global_batch is not None else self.global_batch
        if global_batch is not None:
            batch_size = global_batch
            micro, steps = accumulation_plan(global_batch, ceiling)
            accumulation = {"micro_batch": micro, "accumulation_steps": steps}
        else:
            sizes = self.batch_sizes(ceiling)
            batch_size = snap_batch_size(sizes, trial.suggest_float(BATCH_PARAM, *batch_exponent_range(sizes)))
        name = trial.suggest_categorical("optimizer", sorted(self.optimizers))
        low, high = self.lr_range(name)
        base_lr = trial.suggest_float(f"{name}.lr", low, high, log=self.lr_log)
        params = self.suggest_optimizer_params(trial, name)
        scale = lr_scale(name, batch_size, self.reference_batch)
        # lr.high bounds the scaled rate too: linear scaling to a large batch must not leave the tested range
        return {
            "batch_size": batch_size, "optimizer": name, "lr": min(base_lr * scale, self.lr_high),
            "lr_reference": base_lr,
            "lr_scale": scale, "optimizer_params": params, **accumulation,
            "precision": precision,
            "compile": self._choose(trial, "compile", self.compile_modes),
        }

    @staticmethod
    def _choose(trial: Any, name: str, choices: list[Any]) -> Any:
        return trial.suggest_categorical(name, choices) if len(choices) > 1 else choices[0]


    def distributions(self) -> dict[str, optuna.distributions.BaseDistribution]:
        """The distribution of every parameter `suggest` may ask for, the batch exponent excepted (a float
        without a log scale: any range of it is compatible with any other)."""
        found: dict[str, optuna.distributions.BaseDistribution] = {
            "optimizer": optuna.distributions.CategoricalDistribution(sorted(self.optimizers))}
        for name, choices in (("precision", self.precisions), ("compile", self.compile_modes)):
            if len(choices) > 1:
                found[name] = optuna.distributions.CategoricalDistribution(choices)
        for name, params in self.optimizers.items():
            low, high = self.lr_range(name)
            found[f"{name}.lr"] = optuna.distributions.FloatDistribution(low, high, log=self.lr_log)
            for param, spec in params.items():
                found[f"{name}.{param}"] = (
                    optuna.distributions.CategoricalDistribution(spec.choices) if spec.choices is not None
                    else optuna.distributions.FloatDistribution(float(spec.low or 0), float(spec.high or 0),
                                                                 log=spec.log))
        return found


def batch_exponent_range(sizes: Sequence[int]) -> tuple[float, float]:
    """Range of the sampled exponent for candidate ``sizes`` (sorted): each size owns the stretch nearer to it
    than to its neighbours, the end ones as much beyond them as towards their neighbour, so a uniform draw
    picks every size about equally often (a range ending at the end sizes would halve their share)."""
    exponents = [math.log2(size) for size in sizes]
    if len(exponents) == 1:
        return exponents[0] - 0.5, exponents[0] + 0.5
    return (exponents[0] - (exponents[1] - exponents[0]) / 2,
            exponents[-1] + (exponents[-1] - exponents[-2]) / 2)


def snap_batch_size(sizes: Sequence[int], exponent: float) -> int:
    """The candidate size nearest to ``2 ** exponent`` on a log scale."""
    return min(sizes, key=lambda size: (abs(math.log2(size) - exponent), size))


def default_space_text(backend: str) -> str:
    """The YAML text of a backend's default space: the file it registered (`autotune.register_backend`)."""
    from autotune.backends import default_space_file

    resource = default_space_file(backend)
    if not resource.is_file():
        raise SearchSpaceError(f"no default search space for backend {backend!r}: pass --search-space FILE")
    return resource.read_text(encoding="utf-8")


def load_space(backend: str, supported_optimizers: Sequence[str], path: str | Path | None = None,
               overrides: Mapping[str, Any] | None = None) -> SearchSpace:
    """The backend's default space, with a user file (``path``) or dict (``overrides``) merged over it.

    Top-level keys of the user's space replace the default's; ``optimizers`` lists the optimizers to search
    (only those), each with its parameter ranges.
    """
    default = _parse(default_space_text(backend), f"default {backend}.yaml")
    source = "default"
    merged = dict(default)
    if path is not None:
        file = Path(path)
        if not file.is_file():
            raise SearchSpaceError(f"search space file {str(path)!r} not found: check the path")
        user = _parse(file.read_text(encoding="utf-8"), file.name)
        merged.update(user)
        source = file.name
    if overrides:
        merged.update(copy.deepcopy(dict(overrides)))
        source = "override" if source == "default" else source
    return validate_space(merged, source, supported_optimizers, backend)


def _parse(text: str, source: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", exc)
        raise SearchSpaceError(f"search space {source}:{where} is not valid YAML ({problem})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SearchSpaceError(f"search space {source}: must be a mapping with keys batch_size, lr, optimizers")
    return data


def _fail(source: str, key: str, message: str) -> SearchSpaceError:
    return SearchSpaceError(f"search space {source}: {key}: {message}")


def _number(source: str, key: str, value: Any, integer: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)):
        kind = "a whole number" if integer else "a number"
        raise _fail(source, key, f"must be {kind}, got {value!r}")
    if not math.isfinite(value):
        raise _fail(source, key, f"must be finite, got {value!r}")
    return value


def _check_keys(source: str, where: str, data: Any, allowed: set[str]) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise _fail(source, where, f"must be a mapping, got {type(data).__name__}")
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise _fail(source, f"{where}.{unknown[0]}" if where else unknown[0],
                    f"unknown key (allowed: {', '.join(sorted(allowed))})")
    return data


def _range(source: str, key: str, low: Any, high: Any, log: bool) -> tuple[float, float]:
    low = _number(source, f"{key}.low", low)
    high = _number(source, f"{key}.high", high)
    if low >= high:
        raise _fail(source, key, f"low ({low}) must be below high ({high})")
    if log and low <= 0:
        raise _fail(source, f"{key}.low", f"must be positive on a log scale, got {low}")
    return float(low), float(high)


def validate_space(data: Mapping[str, Any], source: str, supported_optimizers: Sequence[str],
                   backend: str) -> SearchSpace:
    """A `SearchSpace` from a plain mapping, or `SearchSpaceError` naming the source and the key."""
    data = _check_keys(source, "", dict(data), _TOP_KEYS | set(_EXECUTION_KEYS))
    for key in _TOP_KEYS:
        if key not in data:
            raise _fail(source, key, "missing")
    batch = _check_keys(source, "batch_size", data["batch_size"], _BATCH_KEYS)
    choices = batch.get("choices")
    if choices is not None:
        if not isinstance(choices, list) or not choices:
            raise _fail(source, "batch_size.choices", "must be a non-empty list of whole numbers")
        for value in choices:
            if _number(source, "batch_size.choices", value, integer=True) < 1:
                raise _fail(source, "batch_size.choices", f"must be at least 1, got {value}")
    batch_low = int(_number(source, "batch_size.low", batch.get("low", 1), integer=True))
    if batch_low < 1:
        raise _fail(source, "batch_size.low", f"must be at least 1, got {batch_low}")
    batch_high = batch.get("high")
    if batch_high is not None:
        batch_high = int(_number(source, "batch_size.high", batch_high, integer=True))
        if batch_high <= batch_low:
            raise _fail(source, "batch_size", f"low ({batch_low}) must be below high ({batch_high})")

    lr = _check_keys(source, "lr", data["lr"], _LR_KEYS)
    lr_log = lr.get("log", True)
    if not isinstance(lr_log, bool):
        raise _fail(source, "lr.log", f"must be true or false, got {lr_log!r}")
    lr_low, lr_high = _range(source, "lr", lr.get("low"), lr.get("high"), lr_log)
    if lr_low <= 0:
        raise _fail(source, "lr.low", f"must be positive, got {lr_low}")
    reference = int(_number(source, "lr.reference_batch", lr.get("reference_batch", 32), integer=True))
    if reference < 1:
        raise _fail(source, "lr.reference_batch", f"must be at least 1, got {reference}")

    optimizers = data["optimizers"]
    if not isinstance(optimizers, dict) or not optimizers:
        raise _fail(source, "optimizers", "must name at least one optimizer")
    parsed: dict[str, dict[str, ParamRange]] = {}
    for name, params in optimizers.items():
        where = f"optimizers.{name}"
        if name not in OPTIMIZERS or name not in supported_optimizers:
            raise _fail(source, where, f"optimizer not available on backend {backend} "
                                       f"(use one of {', '.join(sorted(supported_optimizers))})")
        params = _check_keys(source, where, params or {}, set(OPTIMIZERS[name]))
        parsed[name] = {}
        for param, spec in params.items():
            key = f"{where}.{param}"
            spec = _check_keys(source, key, spec, _PARAM_KEYS)
            if "choices" in spec:
                if set(spec) != {"choices"}:
                    raise _fail(source, key, "give either choices or low/high, not both")
                values = spec["choices"]
                if not isinstance(values, list) or not values:
                    raise _fail(source, f"{key}.choices", "must be a non-empty list")
                expected = type(OPTIMIZERS[name][param])
                for value in values:
                    if expected is bool and not isinstance(value, bool):
                        raise _fail(source, f"{key}.choices", f"must be true or false, got {value!r}")
                    if expected is not bool:
                        _number(source, f"{key}.choices", value)
                parsed[name][param] = ParamRange(choices=list(values))
            else:
                log = spec.get("log", False)
                if not isinstance(log, bool):
                    raise _fail(source, f"{key}.log", f"must be true or false, got {log!r}")
                low, high = _range(source, key, spec.get("low"), spec.get("high"), log)
                parsed[name][param] = ParamRange(low=low, high=high, log=log)
    execution = {key: _execution_choices(source, key, data.get(key)) for key in _EXECUTION_KEYS}
    return SearchSpace(batch_low, batch_high, [int(c) for c in choices] if choices else None,
                       lr_low, lr_high, lr_log, reference, parsed, source=source,
                       precisions=execution["precision"], compile_modes=execution["compile"])


def _execution_choices(source: str, key: str, value: Any) -> list[Any]:
    """The choices of ``precision`` or ``compile`` (absent: the first allowed one alone)."""
    allowed = _EXECUTION_KEYS[key]
    if value is None:
        return [allowed[0]]
    spec = _check_keys(source, key, value, {"choices"})
    choices = spec.get("choices")
    if not isinstance(choices, list) or not choices:
        raise _fail(source, f"{key}.choices", f"must be a non-empty list of {', '.join(map(str, allowed))}")
    for choice in choices:
        if choice not in allowed or isinstance(choice, bool) != isinstance(allowed[0], bool):
            raise _fail(source, f"{key}.choices", f"{choice!r} is not one of {', '.join(map(str, allowed))}")
    return list(dict.fromkeys(choices))
