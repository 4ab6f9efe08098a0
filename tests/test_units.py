import pytest

from autotune import AutotuneError, format_size, parse_size


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
