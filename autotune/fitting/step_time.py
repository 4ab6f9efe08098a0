"""A ceiling bounded by step time as well as memory, for a fit that serves a time-budgeted study.

A trial cannot measure a batch whose one step takes a large share of its budget (it trains a step or two and
is pruned as too slow), so `tune` stops the fit's growth at the first probe that steps slower than
``1/STEPS_PER_TRIAL`` of a trial's seconds instead of probing on to the memory edge: the probes near the edge
are the fit's most expensive, and the sizes they would prove are outside what the trials can use. The answer
lies between two sizes that ran, so it fits memory without a probe of its own.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Sequence

from autotune.fitting.model import Probe
from autotune.fitting.planner import Answer

STEPS_PER_TRIAL = 4
"""The ceiling leaves a trial at least this many steps of its budget (a trial prunes itself as too slow at 2)."""
AIM_PAST = 1.25
"""Once two probes time the step, the next probe aims at the size predicted to step this many times the limit:
past it, to bracket the limit with one slow probe, but not at the memory edge, whose one step costs several
limits (GPT-2: the memory planner's 252 stepped in 2.6 s against a 1 s limit, the aim's 123 in about 1.3 s)."""


def step_seconds(probe: Probe) -> float | None:
    """One training step's seconds at the probe's batch, from its measured throughput."""
    if not probe.fits or not probe.throughput:
        return None
    return probe.batch_size / probe.throughput


@dataclasses.dataclass(frozen=True)
class StepTimeLimit:
    """The longest step a trial of ``trial_seconds`` can use: a share of its budget.

    ``floor``: the search space's smallest batch. Step time never lowers the ceiling below it, since a ceiling
    under every choice leaves the study nothing to try; its trials run fewer steps instead. Only memory may."""

    trial_seconds: float
    floor: int = 1

    @classmethod
    def for_trials(cls, trial_seconds: float | None, *, floor: int = 1) -> "StepTimeLimit | None":
        """The limit for trials of ``trial_seconds`` (None: trials counted in steps have no time to protect)."""
        return cls(float(trial_seconds), max(1, int(floor))) if trial_seconds else None

    @property
    def seconds(self) -> float:
        return self.trial_seconds / STEPS_PER_TRIAL

    def answer(self, probes: Sequence[Probe]) -> Answer | None:
        """The ceiling once a probe that fits steps slower than the limit, else None (the fit goes on).

        The size whose step is predicted to take the limit, on the line through the step times of the slow probe
        and the largest quicker one (or in proportion to the slow one's, when every probe was slow), raised to
        ``floor``, which fits memory since the slow probe at or above it did. Slow probes below ``floor`` wait
        for one at or above it (`aim` asks for it)."""
        timed = [(p, t) for p in probes if (t := step_seconds(p)) is not None]
        slow = [(p, t) for p, t in timed if t > self.seconds and p.batch_size >= self.floor]
        if not slow:
            return None
        high, high_time = min(slow, key=lambda pair: pair[0].batch_size)
        quick = [(p, t) for p, t in timed if t <= self.seconds and p.batch_size < high.batch_size]
        if quick:
            low, low_time = max(quick, key=lambda pair: pair[0].batch_size)
            share = (self.seconds - low_time) / (high_time - low_time) if high_time > low_time else 0.0
            size = low.batch_size + (high.batch_size - low.batch_size) * share
            lowest = low.batch_size
        else:
            size, lowest = high.batch_size * self.seconds / high_time, 1
        granule = _granule(size)
        batch = max(lowest, min(high.batch_size - 1, int(size) // granule * granule), 1)
        if batch < self.floor:
            return Answer(self.floor, 1, (self.floor_note(high, high_time),), limited_by="step time")
        return Answer(batch, granule, (self.note(batch, high, high_time),), limited_by="step time")

    def aim(self, probes: Sequence[Probe]) -> int | None:
        """While no probe is slow: the size predicted to step `AIM_PAST` times the limit, on the line through the
        two largest timed probes (step time grows about linearly with the batch); None with fewer than two, or
        when the step time did not grow between them."""
        timed = sorted((p.batch_size, t) for p in probes if (t := step_seconds(p)) is not None)
        if any(t > self.seconds for _, t in timed):
            # slow only below the space's smallest batch: that batch is the one size left to learn (does it fit?)
            ran = {p.batch_size for p in probes}
            return self.floor if self.floor not in ran and max(ran) < self.floor else None
        if len(timed) < 2:
            return None
        (small, small_time), (large, large_time) = timed[-2], timed[-1]
        if large_time <= small_time or large <= small:
            return None
        size = large + (AIM_PAST * self.seconds - large_time) * (large - small) / (large_time - small_time)
        return int(size) if size >= large + 1 else None

    def note(self, batch: int, slow: Probe, slow_seconds: float) -> str:
        return (f"batch {slow.batch_size} fits in memory but one step takes {slow_seconds:.2f} s{_busy(slow)}: the "
                f"ceiling stops at {batch}, whose step is predicted at {self.seconds:.2g} s (1/{STEPS_PER_TRIAL} of "
                f"the {self.trial_seconds:g} s trial budget)")

    def floor_note(self, slow: Probe, slow_seconds: float) -> str:
        return (f"batch {slow.batch_size} fits in memory but one step takes {slow_seconds:.2f} s{_busy(slow)}, over "
                f"1/{STEPS_PER_TRIAL} of the {self.trial_seconds:g} s trial budget: the ceiling stays at {self.floor}, "
                "the search space's smallest batch, and its trials run fewer steps (raise --trial-time to measure "
                "them better)")


def _busy(probe: Probe) -> str:
    """What a step timed on a busy machine is worth: a ceiling it sets is lower than the task's own, and a later
    run reuses it (the fit is cached), so the user hears which run to redo."""
    if not probe.busy:
        return ""
    return (f" (timed while other processes used {probe.other_cpu_cores or 0:.1f} CPU cores, so the ceiling may be "
            "low: --refit on a quiet machine)")


def capped_record(record: Mapping[str, Any], limit: StepTimeLimit | None) -> dict[str, Any] | None:
    """A stored ceiling record (`autotune.ceiling.ceiling_record`) under ``limit``: as it is when no probe of it
    steps slower, moved to the step-time answer when one does; None when it cannot serve (it was cut short by
    another step-time limit and its probes do not reach this one, or no limit is asked for)."""
    probes = [Probe(int(p["batch_size"]), fits=bool(p.get("fits")), throughput=p.get("throughput"),
                    busy=bool(p.get("busy")), other_cpu_cores=p.get("other_cpu_cores"))
              for p in record.get("probes") or []]
    answer = None if limit is None else limit.answer(probes)
    by_time = record.get("limited_by") == "step time"
    if answer is not None and limit is not None and (by_time or answer.batch_size < int(record["batch_size"])):
        return {**record, "batch_size": answer.batch_size, "limited_by": "step time",
                "step_time_limit": limit.seconds, "notes": list(answer.notes)}
    return None if by_time else dict(record)


def _granule(size: float) -> int:
    """A power of two near 1/64 of ``size``: the resolution a step-time estimate deserves."""
    return 2 ** max(0, int(math.log2(max(size, 1) / 64)))
