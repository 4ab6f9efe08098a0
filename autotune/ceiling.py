"""The batch-size ceiling of a study: fitted once per backend and device, stored, shared with every process
that joins the study (`autotune.shared`), read back by the report."""

from __future__ import annotations

import functools
import os
from typing import Any, Callable

import optuna

from autotune.budget import Phases
from autotune.ceiling_cache import fitted_by
from autotune.fitting.step_time import StepTimeLimit, capped_record
from autotune.memory import fit_batch_size
from autotune.storage import WORKER_ENV, owner
from autotune.study_open import ceiling_key

Say = Callable[[dict[str, Any]], None]


def ensure_ceiling(study: optuna.Study, task: Any, *, backend: Any, device: Any, memory_limit: int | None,
                   margin: float, isolation: str, max_batch: int | None, phases: Phases, say: Say,
                   cache: Callable[[], Any] | None = None, refit: bool = False, precision: str = "fp32",
                   share: int = 1, step_time_limit: StepTimeLimit | None = None) -> int:
    """The study's ceiling for ``device`` in ``precision``: stored in the study, else fitted by another process
    joining it (waited for rather than fitted twice), else from ``cache()`` (`autotune.ceiling_cache`: the same task
    structure fitted earlier on this device, unless ``refit``), else a fresh fit stored in both.

    ``share``: workers splitting the device's memory (``--devices cpu*N``); ``memory_limit`` is then one
    worker's share, and the ceiling is kept apart from the whole device's (`ceiling_key`), fitted by the first
    of them and reused by the others. A ``--devices`` worker also records which ceiling it took (``worker:LABEL``).
    ``step_time_limit``: the fit stops below the first size a trial is too short to use
    (`autotune.fitting.step_time`); a cached fit serves when its probes show where that size is."""
    from autotune.shared import wait_for_shared

    key = ceiling_key(backend.name, device, precision, share=share)
    record = wait_for_shared(study, key, lambda attrs: attrs.get(key), say=say)
    if record is None:  # this process holds the claim: a fit of the same task stored earlier, or a new fit
        cached = None if cache is None else cache()
        record = None if (refit or cached is None) else cached.lookup(say)
        record = None if record is None else capped_record(record, step_time_limit)
        if record is None:
            say({"event": "fit", "message": "fitting the batch-size ceiling to memory"
                 + ("" if precision == "fp32" else f" in {precision}")})
            with phases.timed("fit"):
                fit = fit_batch_size(task, device=device.id, memory_limit=memory_limit, margin=margin,
                                     isolation=isolation, max_batch=max_batch, precision=precision,
                                     step_time_limit=step_time_limit,
                                     progress=lambda message: say({"event": "fit", "message": message}))
            record = {**ceiling_record(fit), "fitted_by": fitted_by(fit.seconds)}
            if fit.limited_by == "step time" and step_time_limit is not None:
                record.update(step_time_limit=step_time_limit.seconds, notes=fit.notes[-1:])
            if share != 1:
                record["memory_share"] = share
            if cached is not None:
                cached.remember(study, record)
        study.set_user_attr(key, record)
    if os.environ.get(WORKER_ENV):  # one attribute per worker and precision: concurrent writers never collide
        study.set_user_attr(f"worker:{os.environ[WORKER_ENV]}" + ("" if precision == "fp32" else f"|{precision}"), {
            "ceiling": key, "batch_size": int(record["batch_size"]), "budget_bytes": record.get("budget_bytes"),
            "fitted_by": record.get("fitted_by"), "owner": owner()})
    event = {"event": "ceiling", "batch_size": int(record["batch_size"]), "limited_by": record.get("limited_by"),
             "precision": precision}
    if record.get("limited_by") == "step time" and record.get("notes"):
        event["note"] = record["notes"][-1]
    say(event)
    return int(record["batch_size"])


def ensure_ceilings(study: optuna.Study, task: Any, *, precisions: list[str], backend: Any, device: Any,
                    cache: Callable[[str], Any] | None = None, **options: Any) -> dict[str, int]:
    """`ensure_ceiling` for each training precision the space searches: mixed precision keeps smaller
    activations, so a bf16 trial may train at a batch that would not fit in fp32 (and must not exceed its own).
    ``cache(precision)`` gives each precision's cache entry. The caller has checked that the device runs each
    precision (`autotune.memory.check_precision`), before any study exists."""
    found = {}
    for precision in precisions:
        entry = None if cache is None else functools.partial(cache, precision)
        found[precision] = ensure_ceiling(study, task, backend=backend, device=device, precision=precision,
                                          cache=entry, **options)
    return found


def ceiling_record(fit: Any) -> dict[str, Any]:
    """What the study keeps of a fit: the answer, its budget, and each probe (for the report's memory plot)."""
    return {"batch_size": fit.batch_size, "precision": fit.precision, "peak_memory_bytes": fit.peak_memory_bytes,
            "budget_bytes": fit.budget_bytes, "limited_by": fit.limited_by,
            "throughput_by_batch": {str(p.batch_size): p.throughput for p in fit.probes if p.fits},
            "probes": [{"batch_size": p.batch_size, "fits": p.fits, "peak_memory_bytes": p.peak_memory_bytes,
                        "throughput": p.throughput, "oom": p.oom, "reason": p.reason,
                        "first_step_seconds": p.first_step_seconds, "busy": p.busy,
                        "other_cpu_cores": p.other_cpu_cores} for p in fit.probes],
            "model": None if fit.model is None else {"intercept_bytes": fit.model.intercept_bytes,
                                                     "bytes_per_sample": fit.model.bytes_per_sample},
            "granularity": fit.granularity, "memory_metric": fit.memory_metric}
