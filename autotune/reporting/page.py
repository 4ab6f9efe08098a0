"""The report as one self-contained HTML page: real headings and tables, the plots interactive, plotly.js
inlined once, no request leaving the file (no CDN, no font or image from elsewhere). Every string that comes
from a study goes through `html.escape`.
"""

from __future__ import annotations

import html
from typing import Any

from autotune.reporting.document import Block, Bullets, Figure, Heading, Paragraph, Table

STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #1f2933; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.9em; }
th, td { border: 1px solid #cbd2d9; padding: 0.3em 0.6em; text-align: left; vertical-align: top; }
th { background: #f0f4f8; }
.note { color: #52606d; font-style: italic; }
.plot { margin: 1em 0 2em; }
"""
PLOT_CONFIG = {"displaylogo": False, "responsive": True}


def _text(value: Any) -> str:
    return html.escape(str(value))


def _table(table: Table) -> str:
    head = "".join(f"<th>{_text(h)}</th>" for h in table.headers) if any(table.headers) else ""
    rows = "".join("<tr>" + "".join(f"<td>{_text(cell)}</td>" for cell in row) + "</tr>" for row in table.rows)
    return f"<table>{f'<thead><tr>{head}</tr></thead>' if head else ''}<tbody>{rows}</tbody></table>"


def _figure(block: Figure, first: bool) -> str:
    plot = block.plot
    title = f"<h3>{_text(plot.title)}</h3>"
    if plot.figure is None:
        return f"{title}<p class='note'>No plot: {_text(plot.note or 'nothing to show')}.</p>"
    body = plot.figure.to_html(full_html=False, include_plotlyjs=first, config=PLOT_CONFIG,
                               div_id=f"plot-{plot.key}")
    return f"{title}<div class='plot'>{body}</div>"


def render(blocks: list[Block], *, title: str) -> str:
    """The page for ``blocks``; plotly.js goes in with the first plot drawn."""
    parts, first = [], True
    for block in blocks:
        if isinstance(block, Heading):
            parts.append(f"<h{block.level}>{_text(block.text)}</h{block.level}>")
        elif isinstance(block, Paragraph):
            parts.append(f"<p>{_text(block.text)}</p>")
        elif isinstance(block, Bullets):
            parts.append("<ul>" + "".join(f"<li>{_text(item)}</li>" for item in block.items) + "</ul>")
        elif isinstance(block, Table):
            parts.append(_table(block))
        elif isinstance(block, Figure):
            parts.append(_figure(block, first))
            first = first and block.plot.figure is None
    return ("<!doctype html><html lang='en'><head><meta charset='utf-8'>"
            f"<meta name='viewport' content='width=device-width, initial-scale=1'><title>{_text(title)}</title>"
            f"<style>{STYLE}</style></head><body>{''.join(parts)}</body></html>\n")
