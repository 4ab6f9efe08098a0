"""The plots as PNG files for the Markdown report, drawn by plotly through kaleido (which drives a local
Chrome or Chromium: Debian's ``chromium`` serves, nothing is downloaded), all in one browser session.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from autotune.reporting.figures import Plot

WIDTH, HEIGHT = 900, 500
NO_RENDERER = ("PNG plots need kaleido (pip install 'autotune[plots]') and a Chrome or Chromium on this machine "
               "(apt-get install chromium)")


def write_pngs(plots: Sequence[Plot], folder: Path) -> tuple[dict[str, str], str | None]:
    """Write every drawn plot as ``folder/KEY.png``; returns ``{key: file name}`` and, when none could be
    written, the reason (the Markdown report then says it instead of linking a missing file)."""
    drawn = [plot for plot in plots if plot.figure is not None]
    if not drawn:
        return {}, None
    try:
        import kaleido  # noqa: F401  (plotly's PNG engine: missing, it raises only at the first write)
        import plotly.io as pio
    except ImportError:
        return {}, NO_RENDERER
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{plot.key}.png" for plot in drawn]
    try:
        pio.write_images([plot.figure for plot in drawn], paths, width=WIDTH, height=HEIGHT)
    except RuntimeError as exc:  # plotly's way of saying that kaleido found no browser
        if not any(folder.iterdir()):
            folder.rmdir()  # no empty folder beside a report that links nothing in it
        return {}, f"{NO_RENDERER}: {str(exc).strip().splitlines()[0][:160].rstrip('.')}"
    return {plot.key: path.name for plot, path in zip(drawn, paths)}, None
