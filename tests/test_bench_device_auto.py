"""``--device auto``: the device is chosen by measured throughput among the devices the backend sees.

No second device exists here, so the backend below adds a fake one behind the interface: its sessions are
real torch sessions on the CPU, and whichever device is named slow does four steps' work per step."""

from __future__ import annotations

import pytest

from autotune.backends import _INSTANCES, get_backend
from autotune.backends.torch import TorchBackend
from autotune.bench import choose_mode
from autotune.devices import Device
from autotune.peak import MATMUL_SIZE
from tests.conftest import EXAMPLES

TASK = str(EXAMPLES / "torch_digits.py")


class _SlowSteps:
    """A session whose every step does ``factor`` steps' work (a device that slow, whatever the machine's load)."""

    def __init__(self, session, factor: int) -> None:
        self._session, self._factor = session, factor

    def train_step(self, indices) -> None:
        for _ in range(self._factor):
            self._session.train_step(indices)

    def __getattr__(self, name):
        return getattr(self._session, name)


class TwoDeviceTorch(TorchBackend):
    """torch with the CPU and a fake accelerator ``fake:0`` (trained on the CPU underneath)."""

    def __init__(self, slow: str) -> None:
        self.slow = slow

    def devices(self) -> list[Device]:
        return [*super().devices(), Device(id="fake:0", kind="npu", index=0, name="Fake NPU", backend="torch")]

    def bench_session(self, task, data, device, **options):
        session = super().bench_session(task, data, super().devices()[0], **options)
        return _SlowSteps(session, 4) if device.id == self.slow else session

    def matmul_seconds(self, device, precision, size, seconds):
        # on the CPU underneath, at the CPU's matmul size (an NPU's 8192 takes seconds a matmul there)
        return super().matmul_seconds(super().devices()[0], precision, min(size, MATMUL_SIZE["cpu"]), seconds)


@pytest.mark.timing  # compares two devices by their measured step times
@pytest.mark.parametrize("slow, expected", [("cpu", "fake:0"), ("fake:0", "cpu")])
def test_auto_picks_the_faster_of_the_devices_it_sees(slow, expected, monkeypatch, tmp_path):
    get_backend("torch")
    monkeypatch.setitem(_INSTANCES, "torch", TwoDeviceTorch(slow))
    monkeypatch.setenv("AUTOTUNE_CACHE_DIR", str(tmp_path))
    chosen = choose_mode(TASK, seconds=0.3, batch_size=32, isolation="none")
    device, why, table = chosen["device"], chosen["why"], chosen["table"]
    assert device == expected and (chosen["precision"], chosen["compile"]) == ("fp32", False)
    assert why.startswith(f"{expected} fp32 eager trains fastest") and f"runner-up {slow}" in why
    assert [row["device"] for row in table.rows] == [expected, slow]


def test_a_single_device_is_the_answer_without_a_bench():
    chosen = choose_mode(TASK)
    device, why, table = chosen["device"], chosen["why"], chosen["table"]
    assert (device, table) == ("cpu", None) and "only device" in why
