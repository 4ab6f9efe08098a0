"""The end of ``autotune tune``: write the study's report and say where it is and what to run next."""

from __future__ import annotations

import shlex
from typing import Any

from autotune.console import status
from autotune.storage import DEFAULT_STORAGE, redact

AFTER_TUNE = ("html", "json")
"""What ``tune`` writes: the page and the data. The Markdown's PNGs start a browser (seconds), so
``autotune report`` writes them when asked."""


def report_after_tune(study: Any, storage: str | None) -> None:
    """Write ``studies/<study>/report.html`` and ``report.json`` and print, on stderr (stdout stays the result),
    where they went and the commands that read the study again (``autotune report`` adds the Markdown and its
    PNGs). A report that cannot be written is a warning: the trials are stored."""
    from autotune.errors import AutotuneError
    from autotune.reporting import write_report

    try:
        written = write_report(study, formats=AFTER_TUNE)
    except (AutotuneError, OSError) as exc:
        status(f"autotune: warning: the report was not written ({exc}); the trials are stored: run "
               f"autotune report {shlex.quote(study.study_name)} later")
        return
    url = redact(storage or DEFAULT_STORAGE, storage)
    where = f" --storage {shlex.quote(url)}" if storage else ""
    name = shlex.quote(study.study_name)
    status(f"report: {written['html']} (data: {written['json']})")
    status(f"next: autotune best {name}{where} --json  (the configuration for a training script)")
    status(f"      autotune report {name}{where}  (adds report.md with PNG plots, for a pull request)")
    status(f"      optuna-dashboard {shlex.quote(url)}  (Optuna's own browser view)")
