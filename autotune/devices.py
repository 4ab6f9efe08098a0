"""Device records and the hardware probe: the host (psutil), NVIDIA GPUs (NVML), and each backend's view.

NVML is read through ``pynvml`` (package ``nvidia-ml-py``) so that probing never initialises CUDA. A machine
without an NVIDIA driver gets a plain "no NVIDIA GPU" line, not an error. Backends that are not installed are
listed as such and never imported.
"""

from __future__ import annotations

import dataclasses
import os
import platform
from typing import Any, Sequence

import psutil


@dataclasses.dataclass
class Device:
    """One device a backend can train on: ``id`` is what ``--device`` takes (``cpu``, ``cuda:0``, ``GPU:0``)."""

    id: str
    kind: str  # cpu | gpu | tpu | npu
    index: int
    name: str
    backend: str | None = None
    memory_total: int | None = None
    memory_free: int | None = dataclasses.field(default=None, compare=False)  # a moment's reading: not identity
    details: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def cpu_model_name() -> str:
    """The CPU's marketing name, from /proc/cpuinfo where it exists."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_info() -> dict[str, Any]:
    """Model, physical and logical cores, RAM total and available (psutil)."""
    memory = psutil.virtual_memory()
    frequency = None
    try:
        freq = psutil.cpu_freq()
        frequency = round(freq.max or freq.current) if freq else None
    except Exception:  # not every platform reports it
        pass
    return {
        "model": cpu_model_name(),
        "physical_cores": psutil.cpu_count(logical=False),
        "logical_cores": psutil.cpu_count(logical=True),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else psutil.cpu_count(),
        "max_mhz": frequency,
        "ram_total": memory.total,
        "ram_available": memory.available,
    }


def cpu_device(backend: str | None = None) -> Device:
    info = cpu_info()
    return Device(
        id="cpu", kind="cpu", index=0, name=info["model"], backend=backend,
        memory_total=info["ram_total"], memory_free=info["ram_available"],
        details={"physical_cores": info["physical_cores"], "logical_cores": info["logical_cores"]},
    )


def nvidia_gpus() -> tuple[list[dict[str, Any]], str | None]:
    """Every NVIDIA GPU NVML sees, and None; or an empty list and the reason there is none."""
    try:
        import pynvml
    except ImportError:
        return [], "no NVIDIA GPU probe: nvidia-ml-py is not installed (pip install nvidia-ml-py)"
    try:
        pynvml.nvmlInit()
    except Exception as exc:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...
        return [], f"no NVIDIA GPU (NVML: {_nvml_reason(exc)})"
    try:
        driver = _text(_try(pynvml.nvmlSystemGetDriverVersion))
        cuda = _try(pynvml.nvmlSystemGetCudaDriverVersion)
        cuda_version = f"{cuda // 1000}.{(cuda % 1000) // 10}" if isinstance(cuda, int) else None
        gpus = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            memory = _try(pynvml.nvmlDeviceGetMemoryInfo, handle)
            utilization = _try(pynvml.nvmlDeviceGetUtilizationRates, handle)
            power = _try(pynvml.nvmlDeviceGetPowerUsage, handle)
            limit = _try(pynvml.nvmlDeviceGetEnforcedPowerLimit, handle)
            gpus.append({
                "index": index,
                "name": _text(_try(pynvml.nvmlDeviceGetName, handle)),
                "uuid": _text(_try(pynvml.nvmlDeviceGetUUID, handle)),
                "memory_total": getattr(memory, "total", None),
                "memory_free": getattr(memory, "free", None),
                "memory_used": getattr(memory, "used", None),
                "utilization_percent": getattr(utilization, "gpu", None),
                "power_draw_watts": power / 1000 if isinstance(power, (int, float)) else None,
                "power_limit_watts": limit / 1000 if isinstance(limit, (int, float)) else None,
                "energy_counter": _try(pynvml.nvmlDeviceGetTotalEnergyConsumption, handle) is not None,
                "driver_version": driver,
                "cuda_version": cuda_version,
            })
        return gpus, (None if gpus else "no NVIDIA GPU (NVML found no device)")
    finally:
        _try(pynvml.nvmlShutdown)


def _nvml_reason(exc: Exception) -> str:
    text = str(exc) or type(exc).__name__
    return "driver not found" if "not found" in text.lower() or "LibraryNotFound" in type(exc).__name__ else text


def _try(function: Any, *args: Any) -> Any:
    try:
        return function(*args)
    except Exception:
        return None


def _text(value: Any) -> Any:
    return value.decode() if isinstance(value, bytes) else value


def probe(backends: Sequence[str] | None = None) -> dict[str, Any]:
    """The whole hardware picture: host CPU and RAM, NVIDIA GPUs, and the devices each backend sees.

    ``backends`` limits the per-framework part (default: every known backend); one that is not installed is
    reported as ``{"installed": False, "hint": ...}`` and never imported.
    """
    from autotune.backends import backend_names, canonical_backend_name, get_backend, install_hint, is_installed
    from autotune.errors import AutotuneError

    gpus, no_gpu = nvidia_gpus()
    result: dict[str, Any] = {
        "host": {"hostname": platform.node(), "os": platform.platform(), "python": platform.python_version()},
        "cpu": cpu_info(),
        "nvidia": {"gpus": gpus, "note": no_gpu},
        "backends": {},
    }
    names = [canonical_backend_name(name) for name in backends] if backends else backend_names()
    for name in names:
        if not is_installed(name):
            result["backends"][name] = {"installed": False, "hint": install_hint(name)}
            continue
        try:
            backend = get_backend(name)
            result["backends"][name] = {
                "installed": True,
                "version": backend.version(),
                "devices": [device.to_dict() for device in backend.devices()],
            }
        except AutotuneError as exc:
            result["backends"][name] = {"installed": True, "error": str(exc)}
        except Exception as exc:  # a framework that imports but cannot list devices
            result["backends"][name] = {"installed": True, "error": f"{type(exc).__name__}: {exc}"}
    return result


def nvml_energy_reader(device: Device) -> Any:
    """A function returning the GPU's energy counter in joules (NVML), or None where it cannot be read.

    The NVML index is the device's CUDA index mapped through CUDA_VISIBLE_DEVICES when that lists indices.
    """
    if device.kind != "gpu":
        return None
    try:
        import pynvml

        pynvml.nvmlInit()
        index = device.index
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
        parts = [part.strip() for part in visible.split(",") if part.strip()]
        if parts and all(part.isdigit() for part in parts) and index < len(parts):
            index = int(parts[index])
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)
    except Exception:
        return None
    return lambda: pynvml.nvmlDeviceGetTotalEnergyConsumption(handle) / 1000.0
