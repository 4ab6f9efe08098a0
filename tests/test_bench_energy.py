"""The powercap (RAPL) counter on a fake sysfs tree: package zones summed, sub-zones left out, wrap-around."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from autotune.devices import Device
from autotune.energy import PowercapCounter, energy_reader, package_zones, powercap_reader


def _zone(root: Path, name: str, energy_uj: int, max_uj: int = 1_000_000) -> Path:
    zone = root / name
    zone.mkdir(parents=True)
    (zone / "energy_uj").write_text(f"{energy_uj}\n")
    (zone / "max_energy_range_uj").write_text(f"{max_uj}\n")
    return zone


def _set(zone: Path, energy_uj: int) -> None:
    (zone / "energy_uj").write_text(f"{energy_uj}\n")


def test_packages_are_summed_and_sub_zones_left_out(tmp_path):
    package0 = _zone(tmp_path, "intel-rapl:0", 100)
    package1 = _zone(tmp_path, "intel-rapl:1", 5_000)
    core = _zone(tmp_path, "intel-rapl:0:0", 50)  # inside package 0's figure
    assert package_zones(tmp_path) == [package0, package1]
    read, reason = powercap_reader(tmp_path)
    assert reason is None and read() == 0.0
    _set(package0, 300_100)
    _set(package1, 205_000)
    _set(core, 999_999)
    assert read() == pytest.approx(0.3 + 0.2)


def test_a_counter_that_wraps_counts_on(tmp_path):
    zone = _zone(tmp_path, "intel-rapl:0", 900_000, max_uj=1_000_000)
    read = PowercapCounter([zone])
    _set(zone, 950_000)
    assert read() == pytest.approx(0.05)
    _set(zone, 20_000)  # wrapped at 1 000 000: 50 000 + 20 000 more
    assert read() == pytest.approx(0.05 + 0.07)
    _set(zone, 30_000)
    assert read() == pytest.approx(0.13)


def test_no_zones_gives_the_reason_not_a_figure(tmp_path):
    read, reason = powercap_reader(tmp_path / "missing")
    assert read is None and "no RAPL zones" in reason
    cpu = Device(id="cpu", kind="cpu", index=0, name="test CPU")
    read, reason = energy_reader(cpu, powercap_root=tmp_path)
    assert read is None and "no RAPL zones" in reason


def test_an_unreadable_counter_gives_the_reason(tmp_path):
    zone = _zone(tmp_path, "intel-rapl:0", 1)
    (zone / "max_energy_range_uj").unlink()
    (zone / "max_energy_range_uj").mkdir()  # reading a directory fails as an unreadable file does
    read, reason = powercap_reader(tmp_path)
    assert read is None and "cannot be read" in reason


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_a_root_only_counter_says_so(tmp_path):
    zone = _zone(tmp_path, "intel-rapl:0", 1)
    (zone / "energy_uj").chmod(0)
    read, reason = powercap_reader(tmp_path)
    assert read is None and "root only" in reason


def test_the_real_counter_where_the_machine_has_one():
    read, reason = powercap_reader()
    if read is None:
        pytest.skip(reason)
    first = read()
    assert read() >= first >= 0.0
