"""Fitted ceilings kept in the storage by task fingerprint, so that a repeat `tune` of a task skips the fit.

A fit costs seconds to minutes (every probe a real training step in a fresh worker) and gives the same answer
for the same model and data shapes on the same device under the same budget and versions. Those make the key
(`ceiling_key`); the answers live in one dedicated Optuna study of the same storage (`CACHE_STUDY`), one
study attribute per key, so that every process and machine on that storage shares them and they survive the
studies that measured them. ``--refit`` skips the lookup and replaces the entry.
"""

from __future__ import annotations

import datetime
from typing import Any, Callable, Mapping

import optuna

from autotune.fingerprint import digest, fingerprint_in_worker
from autotune.storage import owner

CACHE_STUDY = "autotune.ceilings"
"""The study holding the cache; it has no trials and is not a tuning study."""


def ceiling_key(structure: Mapping[str, Any], *, device: Any, versions: Mapping[str, str],
                memory_limit: int | None, margin: float, max_batch: int | None) -> str:
    """The cache key of a fit: the task's structure, the device (not its free memory, a moment's reading), the
    versions the fit ran with and the options that bound it."""
    return digest({"task": dict(structure), "device": [device.id, device.kind, device.name, device.memory_total],
                   "versions": dict(versions), "memory_limit": memory_limit, "margin": margin,
                   "max_batch": max_batch})


def fitted_by(seconds: float | None) -> dict[str, Any]:
    """Who fitted a ceiling, when and how long it took: this host and process, now."""
    return {**owner(), "at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "seconds": None if seconds is None else round(seconds, 2)}


class CeilingCache:
    """The cache entry of one fit in ``storage``: `lookup` before fitting, `remember` after."""

    def __init__(self, storage: Any, key: str) -> None:
        self.storage = storage
        self.key = key

    @classmethod
    def for_task(cls, storage: Any, handle: Any, *, device: Any, versions: Mapping[str, str],
                 memory_limit: int | None, margin: float, max_batch: int | None,
                 preload: tuple[str, ...] = (), isolation: str = "process") -> "CeilingCache":
        """The entry for ``handle``'s task, its structure read in a worker (the model is built there)."""
        structure = fingerprint_in_worker(handle, preload=preload, isolation=isolation)
        return cls(storage, ceiling_key(structure, device=device, versions=versions, memory_limit=memory_limit,
                                        margin=margin, max_batch=max_batch))

    def lookup(self, say: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any] | None:
        """The stored fit (the ceiling record a study keeps), or None; says so through ``say`` when found."""
        try:
            study = optuna.load_study(study_name=CACHE_STUDY, storage=self.storage)
        except KeyError:
            return None
        found = study.user_attrs.get(f"ceiling:{self.key}")
        if not isinstance(found, dict) or "batch_size" not in found:
            return None
        if say is not None:
            who = found.get("fitted_by") or {}
            say({"event": "fit", "message": f"reusing the ceiling {found['batch_size']} fitted for this task "
                 f"(fingerprint {self.key}) by process {who.get('pid')} on {who.get('host')} at "
                 f"{who.get('at')}: the fit is skipped (--refit fits again)"})
        return {**found, "cached": self.key}

    def remember(self, ceiling: Mapping[str, Any]) -> None:
        """Store ``ceiling`` under this entry's key (replacing an older one: a --refit's answer wins)."""
        study = optuna.create_study(study_name=CACHE_STUDY, storage=self.storage, load_if_exists=True)
        study.set_user_attr(f"ceiling:{self.key}", {**ceiling, "fingerprint": self.key})
