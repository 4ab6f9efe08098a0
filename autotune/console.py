"""Plain-text tables and messages for the CLI: the only place output formatting lives."""

from __future__ import annotations

import sys
from typing import Any, Sequence


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A left-aligned text table; None shows as '-'."""
    cells = [[("-" if value is None else str(value)) for value in row] for row in rows]
    widths = [max(len(str(h)), *(len(row[i]) for row in cells)) if cells else len(str(h))
              for i, h in enumerate(headers)]
    lines = ["  ".join(str(h).ljust(w) for h, w in zip(headers, widths)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines.extend("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in cells)
    return "\n".join(lines)


def key_values(pairs: Sequence[tuple[str, Any]]) -> str:
    width = max(len(key) for key, _ in pairs)
    return "\n".join(f"{key.ljust(width)}  {'-' if value is None else value}" for key, value in pairs)


def status(message: str) -> None:
    """A progress line on stderr, so that stdout stays clean for --json."""
    print(message, file=sys.stderr, flush=True)


def number(value: float | None, digits: int = 4) -> str | None:
    if value is None:
        return None
    return f"{value:.{digits}g}"
