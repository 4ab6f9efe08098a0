"""Energy counters: NVML on NVIDIA GPUs, the Linux powercap (RAPL) files on CPUs.

Each reader is a function returning joules since an arbitrary origin; a measurement takes the difference of
two reads. Where no counter can be read, `energy_reader` says why instead of returning a guess.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from autotune.devices import Device, nvml_energy_reader

POWERCAP_ROOT = "/sys/class/powercap"
"""Where Linux exposes RAPL: one ``intel-rapl:N`` zone per CPU package, ``intel-rapl:N:M`` its sub-zones."""


class PowercapCounter:
    """The summed energy of every CPU package zone under ``root`` (``intel-rapl:N/energy_uj``), in joules.

    Each zone's counter wraps to zero at its ``max_energy_range_uj``: a read lower than the previous one is
    taken as one wrap (the counters wrap after minutes at full power, so reads seconds apart see at most one).
    Sub-zones (core, uncore, dram: ``intel-rapl:N:M``) are inside their package's figure and are not added.
    """

    def __init__(self, zones: list[Path]) -> None:
        self._zones = zones
        self._ranges = [int((zone / "max_energy_range_uj").read_text()) for zone in zones]
        self._last = [self._raw(zone) for zone in zones]
        self._total_uj = 0

    @staticmethod
    def _raw(zone: Path) -> int:
        return int((zone / "energy_uj").read_text())

    def __call__(self) -> float:
        """Joules counted since this counter was created."""
        for index, zone in enumerate(self._zones):
            now = self._raw(zone)
            delta = now - self._last[index]
            if delta < 0:
                delta += self._ranges[index]
            self._total_uj += delta
            self._last[index] = now
        return self._total_uj / 1e6


def package_zones(root: str | os.PathLike[str] = POWERCAP_ROOT) -> list[Path]:
    """The package-level RAPL zones under ``root`` (``intel-rapl:0``, ``intel-rapl:1``, ...), sorted."""
    base = Path(root)
    if not base.is_dir():
        return []
    return sorted(p for p in base.glob("intel-rapl:*") if p.name.count(":") == 1 and (p / "energy_uj").exists())


def powercap_reader(root: str | os.PathLike[str] = POWERCAP_ROOT) -> tuple[Callable[[], float] | None, str | None]:
    """A `PowercapCounter` over the CPU packages, and None; or None and why none can be read."""
    zones = package_zones(root)
    if not zones:
        return None, f"no RAPL zones under {root} (no powercap driver, a VM or a non-Intel/AMD CPU)"
    try:
        return PowercapCounter(zones), None
    except PermissionError:
        return None, (f"{zones[0]}/energy_uj is readable by root only (Linux since 5.10): run as root or "
                      "grant read access to the energy_uj files")
    except (OSError, ValueError) as exc:
        return None, f"{zones[0]} cannot be read: {exc}"


def energy_reader(device: Device, *, powercap_root: str | os.PathLike[str] = POWERCAP_ROOT,
                  ) -> tuple[Callable[[], float] | None, str | None]:
    """The energy counter for ``device`` and None, or None and the reason there is none.

    NVIDIA GPUs: NVML's total energy. CPUs: the powercap package zones (the whole socket, not this process
    alone: other processes' work is counted too). TPUs and Ascend NPUs: their runtimes document no energy
    counter that autotune reads yet."""
    if device.kind == "cpu":
        return powercap_reader(powercap_root)
    if device.kind == "gpu":
        reader = nvml_energy_reader(device)
        if reader is None:
            return None, "NVML gives no energy counter for this GPU (no NVIDIA driver, or a GPU before Volta)"
        return reader, None
    return None, f"no energy counter is read on {device.kind} devices"
