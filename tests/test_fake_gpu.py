"""The accelerator logic of fit-batch (device-memory budget, the user's cap, the allocator's peak) on a fake
GPU: no GPU exists here, so the device calls sit behind a small backend whose memory is arithmetic."""

import math

import numpy as np
import pytest

import autotune
from autotune.backends import _BUILTIN, _INSTANCES, BackendEntry
from autotune.backends.base import Backend, TrainingSession
from autotune.devices import Device, cpu_device

GIB = 1024**3
INTERCEPT, PER_SAMPLE = 1.5 * GIB, 3 * 1024**2


class FakeOOM(RuntimeError):
    pass


class FakeSession(TrainingSession):
    def __init__(self, backend, batch_size):
        self.backend, self.batch_size, self._peak = backend, batch_size, 0

    def train_step(self, indices):
        need = INTERCEPT + PER_SAMPLE * len(indices)
        if need > self.backend.capacity:
            raise FakeOOM("fake device out of memory")
        self._peak = max(self._peak, need)

    def last_loss(self):
        return 1.0

    def evaluate(self, max_batches=None):
        return 1.0

    def reset_peak_memory(self):
        self._peak = 0

    def peak_memory(self):
        return int(self._peak)


class FakeGpuBackend(Backend):
    name = "fakegpu"
    optimizer_names = ("adam", "sgd")

    def __init__(self):
        self.capacity = 16 * GIB
        self.free = 12 * GIB

    def version(self):
        return "0"

    def devices(self):
        return [cpu_device("fakegpu"), Device("fake:0", "gpu", 0, "Fake GPU", "fakegpu", 16 * GIB, self.free)]

    def session(self, task, data, device, *, batch_size, optimizer, seed=0):
        self.validate_optimizer(optimizer)
        return FakeSession(self, batch_size)

    def is_oom(self, exc):
        return isinstance(exc, FakeOOM)

    def free_memory(self, device):
        return self.free

    def limit_memory(self, device, limit_bytes):
        self.capacity = min(self.capacity, limit_bytes)


@pytest.fixture
def fake_gpu(monkeypatch):
    backend = FakeGpuBackend()
    monkeypatch.setitem(_BUILTIN, "fakegpu", BackendEntry("fakegpu", "unused:Unused", "numpy", "fakegpu"))
    monkeypatch.setitem(_INSTANCES, "fakegpu", backend)
    data = lambda: ((np.zeros((100_000, 2), np.float32), np.zeros(100_000)), (np.zeros((10, 2)), np.zeros(10)))  # noqa: E731
    task = autotune.Task(backend="fakegpu", model=lambda: None, data=data)
    return backend, task


def _expected(budget, margin):
    return int((budget * (1 - margin) - INTERCEPT) // PER_SAMPLE)


def test_gpu_budget_is_the_free_device_memory(fake_gpu):
    backend, task = fake_gpu
    fit = autotune.fit_batch_size(task, device="fake:0", isolation="none", margin=0.05, granularity=1)
    assert fit.memory_metric == "device_peak" and fit.budget_bytes == 12 * GIB
    assert fit.batch_size == _expected(12 * GIB, 0.05)
    assert fit.model.bytes_per_sample == pytest.approx(PER_SAMPLE)
    # in the caller's own process no cap is set that the caller did not ask for (it would outlive the fit):
    # the size above the answer is measured over the budget, not run out of memory
    assert backend.capacity == 16 * GIB
    assert fit.ooms == 0 and not fit.probes[-1].fits and fit.probes[-1].batch_size == fit.batch_size + 1


def test_gpu_memory_limit_is_enforced_through_the_backend(fake_gpu):
    backend, task = fake_gpu
    fit = autotune.fit_batch_size(task, device="fake:0", isolation="none", margin=0.0, memory_limit=4 * GIB,
                                  granularity=1)
    assert backend.capacity == 4 * GIB
    assert fit.batch_size == _expected(4 * GIB, 0.0) and fit.ooms <= 1


def test_default_device_is_the_accelerator(fake_gpu):
    backend, task = fake_gpu
    assert backend.resolve_device(None).id == "fake:0"


def test_an_overshooting_model_costs_one_oom_and_lands_within_a_granule(fake_gpu, monkeypatch):
    """Memory that grows in 32 MiB chunks: the line through the growth probes overshoots the edge; the planner
    then steps back under the failure (not back to the growth probes) and proves the edge with that one OOM."""
    backend, task = fake_gpu
    chunk = 32 * 1024**2

    def need(batch):
        return -(-(INTERCEPT + PER_SAMPLE * batch) // chunk) * chunk

    def train_step(self, indices):
        if need(len(indices)) > self.backend.capacity:
            raise FakeOOM("fake device out of memory")
        self._peak = max(self._peak, need(len(indices)))

    monkeypatch.setattr(FakeSession, "train_step", train_step)
    model_overshot = 0
    for limit_mib in range(5000, 5400, 16):
        backend.capacity = 16 * GIB
        limit = limit_mib * 1024**2
        fit = autotune.fit_batch_size(task, device="fake:0", isolation="none", margin=0.0, memory_limit=limit)
        truth = max(b for b in range(1, 2000) if need(b) <= limit)
        assert fit.ooms <= 1, (limit_mib, [(p.batch_size, p.fits) for p in fit.probes])
        assert truth - fit.granularity < fit.batch_size <= truth, (limit_mib, truth, fit)
        aimed = [p for p in fit.probes if p.batch_size > 512]
        predicted = autotune.MemoryModel.local(fit.probes[:3]).largest_under(limit)
        if aimed and not aimed[0].fits and predicted >= aimed[0].batch_size:
            # the model itself went past the edge (not only the rounding): one step back, a granule or 1 %
            model_overshot += 1
            back = max(fit.granularity, math.ceil(0.01 * aimed[0].batch_size))
            assert aimed[1].fits and aimed[1].batch_size >= aimed[0].batch_size - back - fit.granularity, \
                (limit_mib, [(p.batch_size, p.fits) for p in fit.probes])
            assert len(aimed) <= 3, (limit_mib, [(p.batch_size, p.fits) for p in fit.probes])
    assert model_overshot, "no limit in the range made the model overshoot: the test does not exercise the path"


def test_a_settled_prediction_is_aimed_at_directly_a_far_one_in_two_goes(fake_gpu):
    """Memory linear in the batch: after the growth probes (8, 64, 512) the prediction no longer moves, so the
    next probe is the answer itself and the one after proves the edge; a prediction beyond 4x the largest size
    that ran is approached 85 % of the way first."""
    backend, task = fake_gpu
    for limit_gib, direct in ((4, True), (6, True), (9, False)):
        backend.capacity = 16 * GIB
        fit = autotune.fit_batch_size(task, device="fake:0", isolation="none", margin=0.0, memory_limit=limit_gib * GIB)
        sizes = [p.batch_size for p in fit.probes]
        truth = _expected(limit_gib * GIB, 0.0)
        assert sizes[:3] == [8, 64, 512] and truth - fit.granularity < fit.batch_size <= truth, sizes
        assert fit.ooms == 1 and sizes[-1] == fit.batch_size + fit.granularity, sizes
        if direct:
            assert sizes[3] == fit.batch_size and len(sizes) == 5, sizes
        else:
            assert sizes[3] < fit.batch_size and len(sizes) == 6, sizes
