"""Batch-size fitting in three parts: the budget (what must fit, under which cap), the planner (a pure policy:
the probes so far → the next size or the answer) and the probe executor (worker or in-process)."""

from autotune.fitting.budget import Budget
from autotune.fitting.model import MemoryModel, Probe
from autotune.fitting.planner import Answer, Planner, ProbeAt

__all__ = ["Answer", "Budget", "MemoryModel", "Planner", "Probe", "ProbeAt"]
