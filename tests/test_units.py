import io

import pytest

from autotune import AutotuneError, format_size, parse_size
from autotune.cli_study import ProgressDisplay
from autotune.units import format_memory_line


@pytest.mark.parametrize("text, expected", [
    ("2GiB", 2 * 1024**3), ("512MiB", 512 * 1024**2), ("1.5G", 1_500_000_000), ("1000", 1000),
    ("64 kib", 64 * 1024), (4096, 4096),
])
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "lots", "2XB", "-1GiB", "0"])
def test_parse_size_rejects(text):
    with pytest.raises(AutotuneError):
        parse_size(text)


def test_format_size_round_trips_to_readable_units():
    assert format_size(1536 * 1024**2) == "1.50 GiB"
    assert format_size(512) == "512 B"
    assert format_size(None) == "-"


def test_a_memory_line_that_falls_with_the_batch_reads_as_a_minus():
    assert format_memory_line(1.21 * 1024**3, 2.1 * 1024) == "1.21 GiB + 2.10 KiB × batch"
    assert format_memory_line(1.21 * 1024**3, -1.35 * 1024) == "1.21 GiB − 1.35 KiB × batch"


@pytest.mark.parametrize("state, failure, shown", [
    ("PRUNED", "pruned: pruned after report 2 of 8 (validation loss 2.3)", "pruned after report 2 of 8"),
    ("PRUNED", "pruned: one step at batch 64 takes 3 s", "pruned (one step at batch 64 takes 3 s)"),
    ("FAIL", "oom: out of memory at batch 512", "fail (oom: out of memory at batch 512)"),
])
def test_a_trial_line_says_the_state_once(state, failure, shown):
    stream = io.StringIO()
    ProgressDisplay(stream)({"event": "trial", "number": 3, "state": state, "value": None, "failure": failure,
                             "config": {"batch_size": 64, "optimizer": "adam", "lr": 1e-3}, "best": None, "done": 1,
                             "total": 4, "elapsed": 1.0, "time_left": None})
    line = stream.getvalue()
    assert f"trial 3: batch 64 adam lr 0.001: {shown}" in line, line
    assert "pruned (pruned" not in line
