"""How a report writes a number: one notation per kind of figure, so that a column never mixes them.

Losses keep four significant digits in plain decimals, throughputs are whole samples per second with thousands
separators, learning rates are always in scientific notation (they span decades), times have a unit.
"""

from __future__ import annotations

import math
from typing import Any

from autotune.units import format_size

MISSING = "–"
"""What an absent figure shows as (a dash that Markdown does not read as a list or a rule)."""


def loss(value: float | None) -> str:
    """``0.2423``, ``12.31``: plain decimals with four significant digits (an exponent only below 1e-4)."""
    if value is None:
        return MISSING
    if math.isnan(value):  # a diverged run
        return "NaN"
    if abs(value) >= 1e4:
        return f"{value:,.0f}"
    if value and abs(value) < 1e-4:  # plain decimals would need a run of zeros
        return f"{value:.3e}"
    return f"{value:.4g}"


def rate(value: float | None) -> str:
    """A learning rate: ``4.28e-02`` (scientific, three significant digits)."""
    return MISSING if value is None else f"{value:.2e}"


def throughput(value: float | None) -> str:
    """Samples per second: ``51,048``."""
    return MISSING if value is None else f"{value:,.0f}"


def milliseconds(seconds: float | None) -> str:
    """A step time: ``28.2 ms``."""
    return MISSING if seconds is None else f"{seconds * 1000:.3g} ms"


def duration(seconds: float | None) -> str:
    """A phase or trial length: ``8.4 s``, ``2 min 05 s``."""
    if seconds is None:
        return MISSING
    if seconds < 120:
        return f"{seconds:.1f} s"
    return f"{int(seconds // 60)} min {int(seconds % 60):02d} s"


def size(value: float | None) -> str:
    """Bytes as ``318.70 MiB``."""
    return MISSING if value is None else format_size(value)


def percent(value: float | None) -> str:
    return MISSING if value is None else f"{value:.1f} %"


def plain(value: Any) -> str:
    """Any other figure: a float with four significant digits, anything else as text."""
    if value is None:
        return MISSING
    if isinstance(value, float):
        return loss(value)
    return str(value)


def budget(trial_budget: dict[str, Any] | None) -> str:
    """The per-trial budget in words: ``1 s of training, 8 validation reports``."""
    if not trial_budget:
        return MISSING
    length = (f"{trial_budget['steps']} training steps" if trial_budget.get("steps")
              else f"{trial_budget.get('seconds'):g} s of training")
    reports = trial_budget.get("reports")
    return length + (f", {reports} validation reports" if reports else "")
