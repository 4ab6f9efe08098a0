"""Can a stored study be resumed under this run's search space? Decided before any work, in one line.

Optuna refuses, inside a trial, a parameter whose kind or log scale changed, or a categorical whose choices
changed (``CategoricalDistribution does not support dynamic value space``): that trial fails as junk and the
run stops with a traceback. The batch size cannot hit this (it is sampled as a float exponent, see
`autotune.space.BATCH_PARAM`); an optimizer list or a parameter's choices can, so they are compared here with
what the study's trials were sampled from, and a change is refused before the ceiling fit starts.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import optuna

from autotune.errors import AutotuneError, SearchSpaceError
from autotune.space import SearchSpace


def check_resumable(study: optuna.Study, space: SearchSpace) -> None:
    """Raise `SearchSpaceError` naming the first parameter ``space`` would sample incompatibly with ``study``."""
    wanted = space.distributions()
    seen: set[tuple[str, str]] = set()
    for trial in study.get_trials(deepcopy=False):
        for name, stored in trial.distributions.items():
            new = wanted.get(name)
            if new is None or (name, repr(stored)) in seen:
                continue
            seen.add((name, repr(stored)))
            try:
                optuna.distributions.check_distribution_compatibility(stored, new)
            except ValueError:
                raise SearchSpaceError(
                    f"study {study.study_name!r} sampled {name} from {_describe(stored)}, this search space "
                    f"({space.source}) gives {_describe(new)}: keep that, or start a new study with --study NEW_NAME"
                ) from None


def _describe(distribution: Any) -> str:
    if isinstance(distribution, optuna.distributions.CategoricalDistribution):
        return "choices [" + ", ".join(str(c) for c in distribution.choices) + "]"
    scale = "log " if getattr(distribution, "log", False) else ""
    return f"a {scale}range {distribution.low:g}..{distribution.high:g}"


FIX = "resume it with that, or start a new study with --study NEW_NAME"


def check_same_setup(study: optuna.Study, *, task: str | None, trial_budget: Mapping[str, Any]) -> None:
    """Raise `AutotuneError` if this run would add trials that the study's own cannot be ranked against: another
    task (by file and name: a moved file resumes) or another budget per trial (`tune`'s door)."""
    attrs = study.user_attrs
    stored_task = attrs.get("task")
    if stored_task and task and _task_name(stored_task) != _task_name(task):
        raise AutotuneError(f"study {study.study_name!r} tunes the task {_task_name(stored_task)}, not "
                            f"{_task_name(task)}: resume it with that task, or start a new study with --study NEW_NAME")
    stored_budget = attrs.get("trial_budget") or {}
    if stored_budget and _budget(stored_budget) != _budget(trial_budget):
        raise AutotuneError(f"study {study.study_name!r} gives each trial {_describe_budget(stored_budget)}, this run "
                            f"{_describe_budget(trial_budget)}: its trials would not compare; {FIX}")


def check_same_lr(study: optuna.Study, space: SearchSpace) -> None:
    """Raise `SearchSpaceError` if ``space`` gives another learning-rate range than the study searched: its
    stored ranges (narrowed by its range test) would be sampled and then clipped to the new one."""
    stored_lr = (study.user_attrs.get("search_space") or {}).get("lr") or {}
    if stored_lr and (stored_lr.get("low"), stored_lr.get("high")) != (space.lr_low, space.lr_high):
        raise SearchSpaceError(
            f"study {study.study_name!r} searched lr {stored_lr.get('low'):g}..{stored_lr.get('high'):g} (its range "
            f"test narrowed it per optimizer), this search space ({space.source}) gives "
            f"{space.lr_low:g}..{space.lr_high:g}; {FIX}")


def _task_name(reference: str) -> str:
    """``path/to/file.py:attr`` as ``file.py:attr``; a module reference as it is."""
    target, _, attr = reference.rpartition(":")
    if not target:
        return reference
    return f"{os.path.basename(target)}:{attr}" if target.endswith(".py") else reference


def _budget(budget: Mapping[str, Any]) -> tuple[float | None, int | None]:
    seconds, steps = budget.get("seconds"), budget.get("steps")
    return (None if seconds is None else float(seconds)), (None if steps is None else int(steps))


def _describe_budget(budget: Mapping[str, Any]) -> str:
    seconds, steps = _budget(budget)
    return f"--trial-steps {steps}" if steps else f"--trial-time {seconds:g}"
