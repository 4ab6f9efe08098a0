"""The end of ``autotune tune``: write the study's report and say where it is and what to run next."""

from __future__ import annotations

import shlex
import time
from typing import Any

from autotune.console import status
from autotune.storage import DEFAULT_STORAGE, redact, storage_option

AFTER_TUNE = ("html", "json")
"""What ``tune`` writes: the page and the data. The Markdown's PNGs start a browser (seconds), so
``autotune report`` writes them when asked."""


def report_after_tune(study: Any, storage: str | None) -> None:
    """Write the report (`write_after_tune`) and say where it went and what to run next (`say_next_steps`)."""
    written = write_after_tune(study)
    if written is not None:
        say_next_steps(study, storage, written)


def write_after_tune(study: Any) -> dict[str, Any] | None:
    """Write ``studies/<study>/report.html`` and ``report.json`` (``autotune report`` adds the Markdown and its
    PNGs) and keep the seconds it took with the call's phases; the paths written and ``seconds``, or None where
    the report could not be written, which is a warning: the trials are stored."""
    from autotune.errors import AutotuneError
    from autotune.reporting import write_report

    tick = time.perf_counter()
    try:
        written = write_report(study, formats=AFTER_TUNE)
    except Exception as exc:  # noqa: BLE001 - whatever broke the report, the tuned result must still be printed
        why = str(exc) if isinstance(exc, (AutotuneError, OSError)) else f"{type(exc).__name__}: {exc}"
        status(f"autotune: warning: the report was not written ({why}); the trials are stored: run "
               f"autotune report {shlex.quote(study.study_name)} later")
        return None
    seconds = time.perf_counter() - tick
    _store_report_phase(study, seconds)
    return {**written, "seconds": seconds}


def say_next_steps(study: Any, storage: str | None, written: dict[str, Any]) -> None:
    """On stderr (stdout stays the result): where the report went and the commands that read the study again."""
    url = redact(storage or DEFAULT_STORAGE, storage)
    where = storage_option(storage)
    name = shlex.quote(study.study_name)
    status(f"report: {written['html']} (data: {written['json']}), written in {written['seconds']:.1f} s")
    status(f"next: autotune best {name}{where} --json  (the configuration for a training script)")
    status(f"      autotune report {name}{where}  (adds report.md with PNG plots, for a pull request)")
    status(f"      optuna-dashboard {shlex.quote(url)}  (Optuna's own browser view)")


def _store_report_phase(study: Any, seconds: float) -> None:
    """Add the report's seconds to the latest call's phases (``phases``, written by `tune` before the report),
    so that the study keeps every phase of the call; a storage that refuses the write loses only that figure,
    with a warning."""
    phases = list(study.user_attrs.get("phases") or [])
    if not phases:
        return
    phases[-1] = {**phases[-1], "report": round(seconds, 3)}
    try:
        study.set_user_attr("phases", phases)
    except Exception as exc:  # noqa: BLE001 - the report is written: a figure about it does not fail the run
        status(f"autotune: warning: the report's {seconds:.1f} s were not stored in the study ({exc})")
