"""Fitted ceilings kept in the storage by task fingerprint, so that a repeat `tune` of a task skips the fit.

A fit costs seconds to minutes (every probe a real training step in a fresh worker) and gives the same answer
for the same model and data shapes on the same device under the same budget and versions. Those make the key
(`ceiling_key`). Each fit is kept in the system attributes of the study that made it (``ceiling_cache:KEY``),
and a lookup reads every study's in one query and takes the newest: every process and machine on the storage
shares the entries, no extra study shows in ``autotune studies``, and a study deleted takes its fits along.
``--refit`` skips the lookup; its fit, newer, is the one found from then on.
"""

from __future__ import annotations

import datetime
from typing import Any, Callable, Mapping

import optuna

from autotune.fingerprint import digest, fingerprint_in_worker
from autotune.storage import owner

PREFIX = "ceiling_cache:"
"""Study system attribute names of cached fits: the prefix, then the key."""


def ceiling_key(structure: Mapping[str, Any], *, device: Any, versions: Mapping[str, str],
                memory_limit: int | None, margin: float, max_batch: int | None, precision: str = "fp32",
                share: int = 1) -> str:
    """The cache key of a fit: the task's structure, the device (not its free memory, a moment's reading), the
    training precision (each has its own ceiling), the versions the fit ran with and the options that bound it
    (``share``: workers splitting the budget)."""
    bounds: dict[str, Any] = {"memory_limit": memory_limit, "margin": margin, "max_batch": max_batch,
                              "precision": precision}
    if share != 1:  # only then: the keys of unshared fits stay those stored before shares existed
        bounds["share"] = share
    return digest({"task": dict(structure), "device": [device.id, device.kind, device.name, device.memory_total],
                   "versions": dict(versions), **bounds})


def fitted_by(seconds: float | None) -> dict[str, Any]:
    """Who fitted a ceiling, when and how long it took: this host and process, now."""
    return {**owner(), "at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds"),
            "seconds": None if seconds is None else round(seconds, 2)}


class CeilingCache:
    """The cache entry of one fit in ``storage``: `lookup` before fitting, `remember` after."""

    def __init__(self, storage: Any, key: str | None) -> None:
        self.storage = storage
        self.key = key

    @classmethod
    def for_task(cls, storage: Any, handle: Any, *, device: Any, versions: Mapping[str, str],
                 memory_limit: int | None, margin: float, max_batch: int | None, share: int = 1,
                 preload: tuple[str, ...] = (), isolation: str = "process", precision: str = "fp32",
                 ) -> "CeilingCache":
        """The entry for ``handle``'s task, its structure read in a worker (the model is built there); a task
        whose structure cannot be read gets an entry that finds and keeps nothing."""
        structure = fingerprint_in_worker(handle, preload=preload, isolation=isolation)
        if structure is None:
            return cls(storage, None)
        return cls(storage, ceiling_key(structure, device=device, versions=versions, memory_limit=memory_limit,
                                        margin=margin, max_batch=max_batch, precision=precision, share=share))

    def lookup(self, say: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any] | None:
        """The newest stored fit (the ceiling record a study keeps), or None; says so through ``say`` if found."""
        if self.key is None:
            return None
        entries = [study.system_attrs.get(PREFIX + self.key) for study in self.storage.get_all_studies()]
        entries = [e for e in entries if isinstance(e, dict) and "batch_size" in e]
        if not entries:
            return None
        found = max(entries, key=lambda e: str((e.get("fitted_by") or {}).get("at", "")))
        if say is not None:
            who = found.get("fitted_by") or {}
            say({"event": "fit", "message": f"reusing the ceiling {found['batch_size']} fitted for this task "
                 f"(fingerprint {self.key}) by process {who.get('pid')} on {who.get('host')} at "
                 f"{who.get('at')}: the fit is skipped (--refit fits again)"})
        return {**found, "cached": self.key}

    def remember(self, study: optuna.Study, ceiling: Mapping[str, Any]) -> None:
        """Keep ``ceiling``, fitted for ``study``, under this entry's key in that study."""
        if self.key is None:
            return
        study_id = self.storage.get_study_id_from_name(study.study_name)  # the public path to its storage row
        self.storage.set_study_system_attr(study_id, PREFIX + self.key, {**ceiling, "fingerprint": self.key})
