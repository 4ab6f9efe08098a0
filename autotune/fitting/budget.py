"""What must fit, under which cap: the memory figure a probe is judged by and the budget it must stay under.

On the CPU under a memory limit, workers run with their address space capped at the budget less the margin
(`cpu_cap`), so a size over the budget fails at once as an allocation failure instead of running a whole
step only to be measured over it; a block pool (MindSpore) keeps the whole limit, its margin is kept inside
the blocks. On a device, probes run under the framework's per-process cap at the budget less the margin
(`device_cap`); with no limit given the budget is the free device memory, read by the first probe.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

from autotune.fitting.model import Probe, pool_capacity

METRICS = ("address_space", "resident", "device_peak")


@dataclasses.dataclass(frozen=True)
class Budget:
    """The figure that must fit (``metric``), the bytes it must fit in before the margin, and the enforced caps."""

    metric: str
    limit_bytes: int  # 0 on a device with no limit given, until a probe has read the free memory
    margin: float
    cpu_cap: int | None = None  # the CPU worker's address-space limit
    block: int | None = None  # a CPU pool that reserves address space in blocks of this many bytes
    cap_device: bool = True  # probes on a device run under the budget less margin (a cap set here would outlive
    # an in-process fit, so there only a limit the caller gave is applied)

    @classmethod
    def for_device(cls, *, on_cpu: bool, memory_limit: int | None, margin: float, in_worker: bool,
                   host_free: int | None = None, block_bytes: int | None = None) -> "Budget":
        """The budget of a fit on a CPU (``on_cpu``) or a device, probed in workers or in this process."""
        if on_cpu and memory_limit and in_worker:
            block = block_bytes or None
            cap = memory_limit if block else int(memory_limit * (1 - margin))
            return cls("address_space", memory_limit, margin, cpu_cap=cap, block=block)
        if on_cpu:
            return cls("resident", memory_limit or host_free or 0, margin)
        return cls("device_peak", memory_limit or 0, margin, cap_device=in_worker or bool(memory_limit))

    def resolve(self, probes: Sequence[Probe]) -> "Budget":
        """This budget, its bytes read from the first probe that saw the device's free memory if none was given."""
        if self.limit_bytes or self.metric != "device_peak":
            return self
        free = next((p.free_bytes for p in probes if p.free_bytes is not None), None)
        return dataclasses.replace(self, limit_bytes=int(free)) if free else self

    @property
    def effective_bytes(self) -> float:
        """The budget less the margin: what a probe's peak must stay under."""
        return self.limit_bytes * (1 - self.margin)

    @property
    def device_cap(self) -> int | None:
        """The per-process cap a device probe runs under (None on the CPU, or while the budget is unknown)."""
        if self.metric != "device_peak" or not self.limit_bytes or not self.cap_device:
            return None
        return int(self.effective_bytes)

    @property
    def oom_at(self) -> float:
        """Where a run fails for real: the enforced cap, if any, else the budget."""
        return self.cpu_cap or self.device_cap or self.limit_bytes

    def peak_of(self, figures: Mapping[str, Any]) -> int:
        """The budgeted figure out of a probe's measurements."""
        if self.metric == "address_space":
            return int(figures["address_space_peak"])
        if self.metric == "device_peak":
            return int(figures["device_peak"] or 0)
        return int(figures["resident_peak"])

    def fits(self, peak: int, pool: Mapping[str, int] | None = None) -> bool:
        """Whether a run that peaked at ``peak`` (and filled ``pool``, for a block pool) fits the budget less margin."""
        fits = peak <= self.effective_bytes
        if fits and self.block and pool and pool.get("blocks"):
            # The margin is kept inside the pool too (on top of the address space's): the pool's blocks fill to
            # the brim, so the address space's margin alone leaves a longer run no room in its last block.
            fits = pool["touched"] <= pool_capacity(pool, peak, self.effective_bytes, self.block, self.margin)
        return fits
