"""The report as Markdown for a pull request or a wiki: the document's blocks as text and tables, each plot
a PNG file beside the report, linked by a relative path.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from autotune.reporting.document import Block, Bullets, Figure, Heading, Paragraph, Table

_SPECIAL = re.compile(r"([\\`*\[\]<>|])")


def inline(text: str) -> str:
    """Study-derived text shown literally inside a line: Markdown's markup characters (and HTML's angle
    brackets) escaped, newlines folded (a table row is one line)."""
    return _SPECIAL.sub(r"\\\1", " ".join(str(text).split()))


def escape(text: str) -> str:
    """A line of study-derived text: `inline`, and a leading ``#`` escaped (it would start a heading)."""
    text = inline(text)
    return "\\" + text if text.startswith("#") else text


def _table(table: Table) -> list[str]:
    lines = ["| " + " | ".join(inline(h) for h in table.headers) + " |", "|" + "---|" * len(table.headers)]
    lines += ["| " + " | ".join(inline(cell) for cell in row) + " |" for row in table.rows]
    return lines


def render(blocks: list[Block], images: Mapping[str, str], *, no_images: str | None = None) -> str:
    """Markdown for ``blocks``; ``images`` maps a plot's key to its PNG's path relative to the report, and
    ``no_images`` says why a plot has none (no PNG renderer here)."""
    lines: list[str] = []
    for block in blocks:
        if isinstance(block, Heading):
            lines += ["#" * block.level + " " + escape(block.text), ""]
        elif isinstance(block, Paragraph):
            lines += [escape(block.text), ""]
        elif isinstance(block, Bullets):
            lines += [f"- {escape(item)}" for item in block.items] + [""]
        elif isinstance(block, Table):
            lines += _table(block) + [""]
        elif isinstance(block, Figure):
            plot = block.plot
            lines += [f"### {escape(plot.title)}", ""]
            if plot.figure is None:
                lines += [f"No plot: {escape(plot.note or 'nothing to show')}.", ""]
            elif plot.key in images:
                lines += [f"![{escape(plot.title)}]({images[plot.key]})", ""]
            else:
                lines += [f"Plot not rendered: {escape(no_images or 'no PNG was written')}.", ""]
    return "\n".join(lines).rstrip() + "\n"
