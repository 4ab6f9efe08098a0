"""Opening a study, new or resumed, the same way for both doors: its directions, sampler and pruner, the
attributes that say where its numbers come from, and the checks that keep a resumed study consistent."""

from __future__ import annotations

import platform
from importlib import metadata
from typing import Any, Mapping

import optuna

from autotune.errors import AutotuneError, StorageError
from autotune.guard import note_new_study
from autotune.resume import check_resumable, check_same_lr
from autotune.sampler import TrialSeededTPESampler
from autotune.space import SearchSpace
from autotune.storage import fail_orphaned_trials

OBJECTIVES = ("convergence", "throughput", "pareto")
OWN_LOOP = "own training loop"
"""The ``task`` attribute of a study that the in-loop door (`autotune.Tuner`) created."""
REPORTS = 8
"""Validation reports per CLI trial; Hyperband's largest resource."""


def check_objective(objective: str) -> None:
    if objective not in OBJECTIVES:
        raise AutotuneError(f"unknown objective {objective!r}: use one of {', '.join(OBJECTIVES)}")


def directions(objective: str) -> list[Any]:
    return {"convergence": ["minimize"], "throughput": ["maximize"], "pareto": ["minimize", "maximize"]}[objective]


def sampler(seed: int, n_trials: int) -> optuna.samplers.BaseSampler:
    """Grouped multivariate TPE; the constant liar keeps parallel workers off each other's running trials."""
    startup = max(4, min(10, n_trials // 3))
    return TrialSeededTPESampler(seed=seed, multivariate=True, group=True, n_startup_trials=startup,
                                 constant_liar=True)


def pruner(objective: str, *, pruning: bool = True) -> optuna.pruners.BasePruner:
    """Hyperband over the reports for convergence; throughput and Pareto studies prune nothing."""
    if objective == "convergence" and pruning:
        return optuna.pruners.HyperbandPruner(min_resource=2, max_resource=REPORTS, reduction_factor=3)
    return optuna.pruners.NopPruner()


def open_study(name: str, *, store: Any, objective: str, seed: int = 0, n_trials: int = 20,
               pruning: bool = True) -> tuple[optuna.Study, int]:
    """The study ``name`` in ``store`` (created if new), and how many of its orphaned trials were failed.

    A resumed study must keep its objective; RUNNING trials whose process is gone are failed first.
    """
    check_objective(objective)
    try:
        study = optuna.create_study(study_name=name, storage=store, directions=directions(objective),
                                    sampler=sampler(seed, n_trials), pruner=pruner(objective, pruning=pruning),
                                    load_if_exists=True)
    except ValueError as exc:
        raise StorageError(f"study {name!r} cannot be resumed: {exc}") from None
    stored = study.user_attrs.get("objective")
    if stored is not None and stored != objective:
        raise StorageError(f"study {name!r} was created with --objective {stored}: resume it with that, "
                           "or pick a new study name")
    return study, fail_orphaned_trials(study, storage=store)


def describe_new_study(study: optuna.Study, attrs: Mapping[str, Any], *, store: Any) -> bool:
    """Store ``attrs`` on a new study and return True; leave a resumed one as it is and return False.

    A new study created by a call that then fails before any trial or ceiling is removed again
    (`autotune.guard`), so an early error never leaves an empty study behind.
    """
    if study.user_attrs:
        return False
    note_new_study(study, storage=store)
    for key, value in attrs.items():
        study.set_user_attr(key, value)
    return True


def resume_space(study: optuna.Study, space: SearchSpace) -> None:
    """Carry a resumed study's narrowed learning rates into ``space`` and check the space still fits it."""
    stored = study.user_attrs.get("search_space", {})
    space.lr_ranges = {k: tuple(v) for k, v in stored.get("lr_ranges", {}).items()}
    check_resumable(study, space)
    check_same_lr(study, space)


def ceiling_key(backend: str, device: Any, precision: str = "fp32", *, share: int = 1) -> str:
    """The study attribute holding the batch-size ceiling fitted for one backend on one device in one training
    precision (fp32's key has no suffix, as before precisions had ceilings of their own); with ``share`` workers
    on one device's memory (``--devices cpu*N``), the ceiling of one worker's share (suffix ``:1/N``)."""
    key = f"ceiling:{backend}:{device.id}:{device.name}"
    key = key if share == 1 else f"{key}:1/{share}"
    return key if precision == "fp32" else f"{key}|{precision}"


def study_versions(backend: str) -> dict[str, str]:
    """The versions a study records (autotune, Optuna, NumPy, the framework, Python): a figure is read
    against the software that measured it, whichever door made the study."""
    from autotune.backends import framework_module

    names = {"autotune": "autotune", "optuna": "optuna", "numpy": "numpy",
             backend: framework_module(backend)}
    found = {}
    for label, dist in names.items():
        for candidate in (dist, f"{dist}-cpu"):
            try:
                found[label] = metadata.version(candidate)
                break
            except metadata.PackageNotFoundError:
                continue
    found["python"] = platform.python_version()
    found.setdefault(backend, framework_module(backend))
    return found


def study_hardware(device: Any) -> dict[str, Any]:
    """The host, CPU, NVIDIA GPUs and the device a study ran on, as its report shows them."""
    from autotune.devices import cpu_info, nvidia_gpus

    gpus, note = nvidia_gpus()
    return {"host": platform.node(), "cpu": cpu_info(), "nvidia": gpus or note, "device": device.to_dict()}
