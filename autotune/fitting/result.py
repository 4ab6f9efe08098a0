"""The answer of a fit (`BatchFit`) and the loop that drives a planner with an executor until it answers."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from autotune.fitting.budget import Budget
from autotune.fitting.executor import ProbeExecutor
from autotune.fitting.model import MemoryModel, Probe
from autotune.fitting.planner import Answer, Planner, ProbeAt
from autotune.fitting.step_time import StepTimeLimit


@dataclasses.dataclass
class BatchFit:
    """The answer of `fit_batch_size` and how it was reached."""

    batch_size: int
    peak_memory_bytes: int | None
    budget_bytes: int
    margin: float
    memory_metric: str
    limited_by: str
    granularity: int
    model: MemoryModel | None
    probes: list[Probe]
    device: str
    backend: str
    seconds: float
    notes: list[str] = dataclasses.field(default_factory=list)
    precision: str = "fp32"
    """The training precision the probes ran in (mixed precision keeps fewer bytes per activation)."""

    @property
    def ooms(self) -> int:
        return sum(1 for probe in self.probes if probe.oom)

    @property
    def throughput(self) -> float | None:
        for probe in self.probes:
            if probe.batch_size == self.batch_size and probe.fits:
                return probe.throughput
        return None

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["ooms"] = self.ooms
        data["probe_steps"] = len(self.probes)
        data["throughput"] = self.throughput
        data["model"] = None if self.model is None else {
            **dataclasses.asdict(self.model), "formula": self.model.describe()}
        return data


def run_plan(planner: Planner, executor: ProbeExecutor, probes: list[Probe],
             step_time_limit: StepTimeLimit | None = None) -> Answer:
    """Drive ``planner`` with ``executor`` until it answers, or until a probe steps slower than
    ``step_time_limit`` (`autotune.fitting.step_time`), whose predicted reach caps the planner's next size (its
    `StepTimeLimit.aim`); every probe run is appended to ``probes``."""

    def decide(probe: Probe) -> ProbeAt | Answer:
        probes.append(probe)
        decision = planner.next(probes)
        if step_time_limit is None or not probe.fits:
            return decision
        slow = step_time_limit.answer(probes)
        if slow is not None and slow.batch_size < decision.batch_size:
            return slow
        aim = step_time_limit.aim(probes) if isinstance(decision, ProbeAt) else None
        return planner.redirect(aim) if aim is not None and aim < decision.batch_size else decision

    decision = planner.next(probes)
    while isinstance(decision, ProbeAt):
        decision = executor.run(decision, decide)
    return decision


def result_of(answer: Answer, budget: Budget, probes: list[Probe], *, limit: int, device: str, backend: str,
              started: float, notes: list[str]) -> BatchFit:
    """The `BatchFit` of a finished plan; ``limit`` is the most the data (or the caller) allows."""
    model = MemoryModel.local(probes, resident_slope=budget.metric != "device_peak") \
        or MemoryModel.fit([(p.batch_size, p.peak_memory_bytes) for p in probes if p.peak_memory_bytes])
    best = next((p for p in probes if p.batch_size == answer.batch_size and p.fits), None)
    # a step-time answer lies between two sizes that ran: its peak is the memory model's reading
    peak = best.peak_memory_bytes if best is not None else \
        (int(model.predict(answer.batch_size)) if model is not None else None)
    return BatchFit(
        batch_size=answer.batch_size, peak_memory_bytes=peak,
        budget_bytes=int(budget.resolve(probes).limit_bytes), margin=budget.margin, memory_metric=budget.metric,
        limited_by=answer.limited_by if answer.batch_size < limit else "max_batch", granularity=answer.granularity,
        model=model, probes=probes, device=device, backend=backend, seconds=time.perf_counter() - started,
        notes=[*notes, *answer.notes],
    )
