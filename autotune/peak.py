"""A device's peak FLOP/s per dtype, measured once with a matmul benchmark and cached in a file.

The cache is ``$AUTOTUNE_CACHE_DIR/peak_flops.json``, else ``$XDG_CACHE_HOME/autotune/peak_flops.json``, else
``~/.cache/autotune/peak_flops.json``: one entry per backend, device (id and name), dtype and CPU thread count,
because each of these changes what a matmul reaches. Delete the file to measure again.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from autotune.devices import Device

MATMUL_SIZE = {"cpu": 1024, "gpu": 8192, "tpu": 8192, "npu": 8192}
"""Square matmul side per device kind: large enough to keep the device's units busy, small enough to take
well under a second on it."""

MATMUL_SECONDS = 1.0
"""Seconds of repeated matmuls after the warm-up; the fastest one gives the peak."""


def cache_path(directory: str | os.PathLike[str] | None = None) -> Path:
    """The peak cache file in ``directory``, else where the module's docstring says."""
    explicit = directory or os.environ.get("AUTOTUNE_CACHE_DIR")
    if explicit:
        return Path(explicit) / "peak_flops.json"
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "autotune" / "peak_flops.json"


def cache_key(backend: str, device: Device, precision: str) -> str:
    threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{backend}|{device.id}|{device.name}|{precision}|threads={threads}"


def _read(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _write(path: Path, entries: dict[str, Any]) -> None:
    """Replace the file atomically, so that two bench workers writing at once leave one whole file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".peak_flops.")
    with os.fdopen(handle, "w", encoding="utf-8") as stream:
        json.dump(entries, stream, indent=2, sort_keys=True)
    os.replace(temporary, path)


def peak_flops(backend: Any, device: Device, precision: str, *,
               cache_dir: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """``{"flops": FLOP/s, "matmul_size": n, "cached": bool, "cache": path}`` for ``device`` at ``precision``.

    ``backend.matmul_seconds(device, precision, n, seconds)`` times square matmuls of side ``n`` (2 n³ FLOPs
    each) and returns the fastest; it is run once per key, later calls read the cache. A CPU peak measured
    while other processes took over half a core is returned with ``busy`` and not cached."""
    path = cache_path(cache_dir)
    key = cache_key(backend.name, device, precision)
    entries = _read(path)
    if key in entries:
        return {**entries[key], "cached": True, "cache": str(path)}
    from autotune.training import CpuContention

    size = MATMUL_SIZE.get(device.kind, 1024)
    contention = CpuContention()
    fastest = backend.matmul_seconds(device, precision, size, MATMUL_SECONDS)
    busy = device.kind == "cpu" and contention.finish()["busy"]
    entry = {"flops": 2.0 * size ** 3 / fastest, "matmul_size": size,
             "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if busy:  # other processes shared the cores: a low peak would be kept for good, so it is not cached
        return {**entry, "cached": False, "busy": True, "cache": str(path)}
    entries = _read(path)  # another worker may have written meanwhile
    entries[key] = entry
    _write(path, entries)
    return {**entry, "cached": False, "cache": str(path)}


def time_matmuls(run_once: Any, seconds: float) -> float:
    """The fastest of repeated ``run_once()`` calls (each ends when the device is done) within ``seconds``,
    after two warm-up calls; at least three timed calls."""
    for _ in range(2):
        run_once()
    fastest = float("inf")
    started = time.perf_counter()
    timed = 0
    while timed < 3 or time.perf_counter() - started < seconds:
        tick = time.perf_counter()
        run_once()
        fastest = min(fastest, time.perf_counter() - tick)
        timed += 1
    return fastest
