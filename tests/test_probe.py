"""`autotune probe` on this machine: the CPU figures agree with psutil; absent backends are never imported."""

import json

import psutil

from autotune import probe
from autotune.testing import temporarily_registered
from tests.conftest import run_cli


def test_probe_cpu_agrees_with_psutil():
    result = probe(["torch"])
    cpu = result["cpu"]
    assert cpu["logical_cores"] == psutil.cpu_count(logical=True)
    assert cpu["physical_cores"] == psutil.cpu_count(logical=False)
    assert cpu["ram_total"] == psutil.virtual_memory().total
    assert abs(cpu["ram_available"] - psutil.virtual_memory().available) < 0.2 * psutil.virtual_memory().total
    devices = result["backends"]["torch"]["devices"]
    assert devices[0]["id"] == "cpu" and devices[0]["memory_total"] == cpu["ram_total"]


def test_probe_without_nvidia_driver_is_a_plain_line():
    result = probe(["torch"])
    if not result["nvidia"]["gpus"]:
        assert result["nvidia"]["note"].startswith("no NVIDIA GPU")


def test_probe_cli_table_and_json():
    table = run_cli("probe", "--backend", "torch")
    assert table.returncode == 0, table.stderr
    assert "cpu" in table.stdout and "RAM" in table.stdout
    as_json = run_cli("probe", "--json", "--backend", "torch")
    data = json.loads(as_json.stdout)
    assert set(data) >= {"host", "cpu", "nvidia", "backends"}
    assert list(data["backends"]) == ["torch"]


def test_backend_not_installed_is_listed_and_never_imported():
    with temporarily_registered("ghost", class_path="ghost_backend:Ghost", framework="ghost_framework_xyz",
                                install_hint="pip install 'autotune[ghost]'", default_space="ghost.yaml"):
        result = probe(["ghost"])
    assert result["backends"]["ghost"] == {"installed": False, "hint": "pip install 'autotune[ghost]'"}


def test_unknown_backend_in_probe_is_an_error():
    result = run_cli("probe", "--backend", "caffe")
    assert result.returncode == 2 and "unknown backend 'caffe'" in result.stderr
