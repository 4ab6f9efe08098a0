"""How the engine's own work is held to the user's budget: the range test's share, and the phases' clock.

The user pays for trials; everything else (ceiling fit, range test, reports) is overhead that must stay a
small part of the call, and each phase's seconds are recorded so that it can be checked.
"""

from __future__ import annotations

import contextlib
import time
from typing import Iterator

RANGE_TEST_SHARE = 0.15
"""The most the learning-rate range test may take of the study: of ``timeout``, or of trials × trial time."""

RANGE_TEST_GRACE = 1.0
"""Seconds a range test may run past its share (a worker's result on its way back) before it is stopped: a model
whose build or traced first step alone outlasts the share (Keras' MobileNetV2: 18 s against 3.6 s) costs the
share, not the build."""

RANGE_TEST_STEPS = 60
"""Sweep steps of one optimizer's range test when the budget allows them all."""


def range_test_budget(*, n_trials: int, trial_time: float | None, trial_steps: int | None,
                      timeout: float | None, optimizers: int) -> tuple[float | None, int]:
    """``(seconds for all range tests or None, sweep steps per optimizer)``.

    A time budget gives `RANGE_TEST_SHARE` of the smaller of ``timeout`` and ``n_trials × trial_time``; a step
    budget (``trial_steps``) gives that share of the trials' steps, split between the optimizers.
    """
    spans = [s for s in (timeout, n_trials * trial_time if trial_time else None) if s]
    seconds = RANGE_TEST_SHARE * min(spans) if spans else None
    steps = RANGE_TEST_STEPS
    if trial_steps and not trial_time:
        steps = min(RANGE_TEST_STEPS, int(RANGE_TEST_SHARE * n_trials * trial_steps / max(optimizers, 1)))
    return seconds, steps


class Phases:
    """Seconds spent in each phase of one call (``fit``, ``range_test``, ``trials``, ``report``), in order."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def timed(self, name: str) -> Iterator[None]:
        tick = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - tick

    def to_dict(self) -> dict[str, float]:
        return {name: round(value, 3) for name, value in self.seconds.items()}

    def describe(self) -> str:
        total = sum(self.seconds.values())
        parts = ", ".join(f"{name.replace('_', ' ')} {value:.1f} s" for name, value in self.seconds.items())
        return f"{parts} ({total:.1f} s in all)" if parts else "nothing ran"
