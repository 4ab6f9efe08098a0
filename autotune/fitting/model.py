"""What a probe measured and the line drawn through the measurements (the memory model).

A probe is one short training run at one batch size; the model ``peak = intercept + bytes_per_sample * batch``
predicts the largest batch under a budget. A CPU pool that reserves memory in whole blocks (MindSpore) is
predicted from the pool's own use instead (`largest_in_blocks`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Mapping

import numpy as np

from autotune.units import format_memory_line


@dataclasses.dataclass
class Probe:
    """One measured run at ``batch_size``: its peak memory, or why it failed."""

    batch_size: int
    fits: bool
    oom: bool = False
    peak_memory_bytes: int | None = None
    resident_peak_bytes: int | None = None
    pool: dict[str, int] | None = None  # a block-granular CPU pool's blocks and touched bytes (procmem.pool_blocks)
    free_bytes: int | None = None  # the device's free memory when the probe started (None on the CPU)
    throughput: float | None = None
    train_steps: int = 0  # training steps the probe ran (an OOM'd probe: unknown, 0)
    first_step_seconds: float | None = None  # its session's first step, tracing or compiling included
    other_cpu_cores: float | None = None  # other processes' CPU use while it ran (`autotune.training.CpuContention`)
    busy: bool = False  # that use was enough to slow its steps: its throughput is not the task's own
    seconds: float = 0.0
    reason: str = ""


@dataclasses.dataclass
class MemoryModel:
    """``peak(batch) = intercept_bytes + bytes_per_sample * batch``, fitted by least squares."""

    intercept_bytes: float
    bytes_per_sample: float
    max_residual_bytes: float = 0.0

    @classmethod
    def fit(cls, points: list[tuple[int, int]]) -> "MemoryModel | None":
        if len({batch for batch, _ in points}) < 2:
            return None
        batches = np.array([batch for batch, _ in points], dtype=float)
        peaks = np.array([peak for _, peak in points], dtype=float)
        slope, intercept = np.polyfit(batches, peaks, 1)
        residual = float(np.max(np.abs(peaks - (intercept + slope * batches))))
        return cls(float(intercept), float(slope), residual)

    @classmethod
    def local(cls, probes: list["Probe"], resident_slope: bool = True) -> "MemoryModel | None":
        """A line through the largest measured point, with the slope of resident memory.

        Address space and allocator reservations grow in coarse chunks (a 64 MiB glibc arena, 2 MiB CUDA
        segments), so at small sizes they stay flat and a slope taken from them undershoots; the resident set
        grows smoothly from the first sample. The slope comes from the smallest and largest resident peaks (or
        the last stretch's, if steeper), the height from the largest measured peak of the budgeted metric.
        Device memory (``resident_slope`` False) takes its slope from the device peaks themselves.
        """
        measured = sorted((p for p in probes if p.peak_memory_bytes), key=lambda p: p.batch_size)
        if len(measured) < 2 or measured[0].batch_size == measured[-1].batch_size:
            return None
        small, large = measured[0], measured[-1]

        def peak(probe: Probe) -> int:  # measured probes all have one
            return int(probe.peak_memory_bytes or 0)

        def rising(probe: Probe) -> int:
            return (probe.resident_peak_bytes if resident_slope else None) or peak(probe)

        slope = (rising(large) - rising(small)) / (large.batch_size - small.batch_size)
        if slope <= 0:
            slope = (peak(large) - peak(small)) / (large.batch_size - small.batch_size)
        # Memory that grows faster than the batch (convex) is under-read by the slope from the smallest point: the
        # slope over the last stretch (from a point at most 3/4 of the largest, far enough apart that a page or
        # chunk does not swamp it) is the steeper one then.
        near = [p for p in measured if p.batch_size <= 0.75 * large.batch_size]
        if near and near[-1] is not small:
            slope = max(slope, (rising(large) - rising(near[-1])) / (large.batch_size - near[-1].batch_size))
        intercept = peak(large) - slope * large.batch_size
        residual = max(abs(peak(p) - (intercept + slope * p.batch_size)) for p in measured[-2:])
        return cls(float(intercept), float(slope), float(residual))

    def predict(self, batch_size: float) -> float:
        return self.intercept_bytes + self.bytes_per_sample * batch_size

    def largest_under(self, budget_bytes: float) -> float:
        if self.bytes_per_sample <= 0:
            return math.inf
        return (budget_bytes - self.intercept_bytes) / self.bytes_per_sample

    def describe(self) -> str:
        return format_memory_line(self.intercept_bytes, self.bytes_per_sample)


def pool_capacity(pool: Mapping[str, int], peak: int, budget: float, block: int, margin: float) -> float:
    """Bytes a block pool may use: the blocks it holds plus those the budget has room for, less the margin."""
    blocks = pool["blocks"] + max(0, int((budget - peak) // block))
    return blocks * block * (1 - margin)


def largest_in_blocks(probes: list[Probe], budget: float, block: int, margin: float = 0.0) -> float:
    """The largest batch when the CPU pool takes address space in ``block``-sized reservations.

    The pool's blocks are mappings of exactly that size; their touched pages are the high-water mark of its
    use (measured on MindSpore 2.10: 54, 429 and 813 MiB at batch 64, 512 and 1024, a straight line). The run
    can grow until that use fills the blocks it holds plus as many more as the budget still has room for, less
    the margin (kept inside the pool too: a run of more steps than the probe's needed more than a full block).
    """
    measured = sorted((p for p in probes if p.fits and p.pool and p.pool.get("blocks")), key=lambda p: p.batch_size)
    if len(measured) < 2 or measured[0].batch_size == measured[-1].batch_size:
        return math.inf
    small, large = measured[0], measured[-1]
    small_pool, large_pool = small.pool or {}, large.pool or {}  # measured probes all have one
    slope = (large_pool["touched"] - small_pool["touched"]) / (large.batch_size - small.batch_size)
    if slope <= 0:
        return math.inf
    capacity = pool_capacity(large_pool, int(large.peak_memory_bytes or 0), budget, block, margin)
    return large.batch_size + (capacity - large_pool["touched"]) / slope
