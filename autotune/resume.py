"""Can a stored study be resumed under this run's search space? Decided before any work, in one line.

Optuna refuses, inside a trial, a parameter whose kind or log scale changed, or a categorical whose choices
changed (``CategoricalDistribution does not support dynamic value space``): that trial fails as junk and the
run stops with a traceback. The batch size cannot hit this (it is sampled as a float exponent, see
`autotune.space.BATCH_PARAM`); an optimizer list or a parameter's choices can, so they are compared here with
what the study's trials were sampled from, and a change is refused before the ceiling fit starts.
"""

from __future__ import annotations

from typing import Any

import optuna

from autotune.errors import SearchSpaceError
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
