"""Sizes written as people write them (``2GiB``, ``512MiB``, ``1.5G``) and back."""

from __future__ import annotations

import re

from autotune.errors import AutotuneError

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3, "t": 1000**4, "tb": 1000**4,
    "ki": 1024, "kib": 1024, "mi": 1024**2, "mib": 1024**2, "gi": 1024**3, "gib": 1024**3,
    "ti": 1024**4, "tib": 1024**4,
}
_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*$")


def parse_size(text: str | int | float) -> int:
    """Bytes from ``'2GiB'``, ``'512MiB'``, ``'1.5G'`` or a plain number of bytes."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        if text <= 0:
            raise AutotuneError(f"size {text!r} must be positive")
        return int(text)
    match = _SIZE.match(str(text))
    unit = match.group(2).lower() if match else None
    if not match or unit not in _UNITS:
        raise AutotuneError(f"cannot read size {text!r}: write it like 2GiB, 512MiB or 1500000000")
    value = int(float(match.group(1)) * _UNITS[unit])
    if value <= 0:
        raise AutotuneError(f"size {text!r} must be positive")
    return value


def format_memory_line(intercept_bytes: float, bytes_per_sample: float) -> str:
    """A memory model's line in words: ``313.83 MiB + 2.10 KiB × batch`` (``−`` where memory falls with the
    batch, as a noisy fit's slope can)."""
    sign = "−" if bytes_per_sample < 0 else "+"
    return f"{format_size(intercept_bytes)} {sign} {format_size(abs(bytes_per_sample))} × batch"


def format_size(num_bytes: float | int | None) -> str:
    """``1536 * 2**20`` → ``'1.50 GiB'``; None → ``'-'``."""
    if num_bytes is None:
        return "-"
    value = float(num_bytes)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.2f} {unit}"
        value /= 1024
    return f"{value:.2f} TiB"
