"""TPE whose random draws for a trial depend on the study seed and the trial's number, not on the process.

Two processes started the same way on one study drew the same first trials (one seed, the same empty
history). A trial's number is handed out by the storage, once: seeding each trial's draws from the study
seed and that number gives every process its own draws, and a single process's run stays reproducible.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial, TrialState

from autotune.scoped import quiet_optuna


def trial_seed(seed: int, number: int) -> int:
    """A 32-bit seed for trial ``number`` of a study seeded with ``seed`` (well mixed, so neighbours differ)."""
    return int(np.random.SeedSequence([seed & 0xFFFFFFFF, number]).generate_state(1)[0])


class TrialSeededTPESampler(optuna.samplers.BaseSampler):
    """`optuna.samplers.TPESampler` (same ``options``) seeded per trial with `trial_seed`.

    Each trial gets its own TPE sampler, built with that seed when the trial starts: TPE keeps no state between
    trials but its random generator (it reads the history from the study), so this is TPE seeded per trial
    through its public constructor.
    """

    def __init__(self, *, seed: int = 0, **options: Any) -> None:
        self._study_seed = seed
        self._options = options
        self._per_trial: dict[int, optuna.samplers.TPESampler] = {}

    def _for(self, trial: FrozenTrial) -> optuna.samplers.TPESampler:
        sampler = self._per_trial.get(trial.number)
        if sampler is None:
            with quiet_optuna():  # multivariate and grouped TPE are experimental options
                sampler = optuna.samplers.TPESampler(seed=trial_seed(self._study_seed, trial.number),
                                                     **self._options)
            self._per_trial[trial.number] = sampler
        return sampler

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self._for(trial).before_trial(study, trial)

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return self._for(trial).infer_relative_search_space(study, trial)

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        return self._for(trial).sample_relative(study, trial, search_space)

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        return self._for(trial).sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState,
                    values: Sequence[float] | None) -> None:
        sampler = self._per_trial.pop(trial.number, None)
        if sampler is not None:
            sampler.after_trial(study, trial, state, values)
