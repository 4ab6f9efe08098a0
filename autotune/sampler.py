"""TPE whose random draws for a trial depend on the study seed and the trial's number, not on the process.

Two processes started the same way on one study drew the same first trials (one seed, the same empty
history). A trial's number is handed out by the storage, once: seeding each trial's draws from the study
seed and that number gives every process its own draws, and a single process's run stays reproducible.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import optuna

from autotune.scoped import quiet_optuna


def trial_seed(seed: int, number: int) -> int:
    """A 32-bit seed for trial ``number`` of a study seeded with ``seed`` (well mixed, so neighbours differ)."""
    return int(np.random.SeedSequence([seed & 0xFFFFFFFF, number]).generate_state(1)[0])


class TrialSeededTPESampler(optuna.samplers.TPESampler):
    """`optuna.samplers.TPESampler` reseeded before each trial with `trial_seed` (same options otherwise)."""

    def __init__(self, *, seed: int = 0, **options: Any) -> None:
        with quiet_optuna():  # multivariate and grouped TPE are experimental options
            super().__init__(seed=seed, **options)
        self._study_seed = seed

    def before_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        seed = trial_seed(self._study_seed, trial.number)
        # TPE and its start-up random sampler each draw from their own state; both are reseeded
        for state in (getattr(self, "_rng", None), getattr(getattr(self, "_random_sampler", None), "_rng", None)):
            if state is not None:
                state.rng.seed(seed)
        super().before_trial(study, trial)
