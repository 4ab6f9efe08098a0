"""Study reports: ``report.html`` (one self-contained page with interactive plots), ``report.md`` (text, tables
and PNG plots beside it, for a pull request) and ``report.json`` (everything, for machines).

`write_report` is the one door: ``autotune report`` and the end of ``autotune tune`` both call it.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna

from autotune.errors import AutotuneError

FORMATS = ("html", "md", "json")
PLOTS_FOLDER = "plots"


def report_folder(study_name: str) -> Path:
    """``studies/NAME/``, the study name made a plain folder name: a name holding ``/`` or ``..`` must not
    write outside ``studies/`` (``-o DIR`` is the way to write elsewhere)."""
    name = re.sub(r"[^\w.-]", "_", study_name).lstrip(".") or "study"
    return Path("studies") / name


def parse_formats(text: str) -> list[str]:
    """``html,md`` -> ``['html', 'md']``, or `AutotuneError` naming the unknown one."""
    formats = [part.strip().lower() for part in text.split(",") if part.strip()]
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise AutotuneError(f"--format {text!r}: use one or more of {', '.join(FORMATS)}, comma-separated")
    return list(dict.fromkeys(formats))


def _plain(value: Any) -> Any:
    """JSON has no NaN or infinity: a diverged figure is written as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def render_json(data: dict[str, Any]) -> str:
    return json.dumps(_plain(data), indent=2, default=str, allow_nan=False) + "\n"


def write_report(study: optuna.Study, *, out_dir: str | Path | None = None,
                 formats: Sequence[str] = FORMATS, notes: list[str] | None = None) -> dict[str, Path]:
    """Write the study's report in ``formats`` into ``out_dir`` (default ``studies/<study>/``) and return the
    path of each file written, by format; the Markdown report's PNGs go to ``out_dir/plots/``. What the caller
    should tell its user (PNGs that could not be drawn, and why) is appended to ``notes``."""
    from autotune.reporting import document, markdown, page
    from autotune.reporting.data import report_data
    from autotune.reporting.figures import all_plots

    data = report_data(study)
    folder = Path(out_dir) if out_dir is not None else report_folder(study.study_name)
    folder.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    if "json" in formats:
        written["json"] = folder / "report.json"
        written["json"].write_text(render_json(data), encoding="utf-8")
    if "html" not in formats and "md" not in formats:
        return written
    plots = all_plots(study, data)
    blocks = document.build(data, plots)
    if "html" in formats:
        written["html"] = folder / "report.html"
        written["html"].write_text(page.render(blocks, title=f"autotune study {data['study']}"), encoding="utf-8")
    if "md" in formats:
        from autotune.reporting.images import write_pngs

        images, missing = write_pngs(plots, folder / PLOTS_FOLDER)
        if missing and notes is not None:
            notes.append(f"report.md has no PNG plots: {missing}")
        relative = {key: f"{PLOTS_FOLDER}/{name}" for key, name in images.items()}
        written["md"] = folder / "report.md"
        written["md"].write_text(markdown.render(blocks, relative, no_images=missing), encoding="utf-8")
    return written


def render_text(study: optuna.Study, fmt: str) -> str:
    """One format as text, for ``-o -`` (stdout): JSON or Markdown (whose plots are then not written)."""
    from autotune.reporting import document, markdown, page
    from autotune.reporting.data import report_data
    from autotune.reporting.figures import all_plots

    data = report_data(study)
    if fmt == "json":
        return render_json(data)
    blocks = document.build(data, all_plots(study, data))
    if fmt == "html":
        return page.render(blocks, title=f"autotune study {data['study']}")
    return markdown.render(blocks, {}, no_images="the Markdown went to stdout: write it to a folder for its PNGs")
