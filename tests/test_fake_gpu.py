"""The accelerator logic of fit-batch (device-memory budget, the user's cap, the allocator's peak) on a fake
GPU: no GPU exists here, so the device calls sit behind a small backend whose memory is arithmetic."""

import math

import numpy as np
import pytest

import autotune
from autotune.backends import get_backend
from autotune.backends.base import Backend, TrainingSession
from autotune.devices import Device, cpu_device
from autotune.testing import temporarily_registered

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
def fake_gpu():
    with temporarily_registered("fakegpu", class_path=f"{__name__}:FakeGpuBackend", framework="numpy",
                                install_hint="-", default_space="-"):
        backend = get_backend("fakegpu")
        data = lambda: ((np.zeros((100_000, 2), np.float32), np.zeros(100_000)), (np.zeros((10, 2)), np.zeros(10)))  # noqa: E731
        task = autotune.Task(backend="fakegpu", model=lambda: None, data=data)
        yield backend, task


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


def _chunked(monkeypatch, chunk):
    """Make the fake device's memory grow in ``chunk``-sized steps; return the memory needed at a batch size."""

    def need(batch):
        return -(-(INTERCEPT + PER_SAMPLE * batch) // chunk) * chunk

    def train_step(self, indices):
        if need(len(indices)) > self.backend.capacity:
            raise FakeOOM("fake device out of memory")
        self._peak = max(self._peak, need(len(indices)))

    monkeypatch.setattr(FakeSession, "train_step", train_step)
    return need


def test_an_overshooting_model_costs_one_oom_and_lands_within_a_granule(fake_gpu, monkeypatch):
    """Memory that grows in 32 MiB chunks: the line through the probes may overshoot the edge; the planner then
    steps back under the failure (not back to the growth probes) and proves the edge with that one OOM."""
    backend, task = fake_gpu
    need = _chunked(monkeypatch, 32 * 1024**2)
    model_overshot = 0
    for limit_mib in range(4100, 4500, 16):
        backend.capacity = 16 * GIB
        limit = limit_mib * 1024**2
        fit = autotune.fit_batch_size(task, device="fake:0", isolation="none", margin=0.0, memory_limit=limit)
        truth = max(b for b in range(1, 2000) if need(b) <= limit)
        sizes = [(p.batch_size, p.fits) for p in fit.probes]
        assert fit.ooms <= 1, (limit_mib, sizes)
        assert truth - fit.granularity < fit.batch_size <= truth, (limit_mib, truth, fit)
        failed = next((i for i, p in enumerate(fit.probes) if not p.fits), None)
        if failed is None:
            continue
        first_failure = fit.probes[failed]
        predicted = autotune.MemoryModel.local(fit.probes[:failed], resident_slope=False).largest_under(limit)
        if predicted >= first_failure.batch_size:
            # the model itself went past the edge (not only the rounding): one step back, a granule or 1 %
            model_overshot += 1
            back = max(fit.granularity, math.ceil(0.01 * first_failure.batch_size))
            after = fit.probes[failed + 1:]
            assert after[0].fits and after[0].batch_size >= first_failure.batch_size - back - fit.granularity, \
                (limit_mib, sizes)
            assert len(after) <= 2, (limit_mib, sizes)
    assert model_overshot, "no limit in the range made the model overshoot: the test does not exercise the path"


def test_a_far_prediction_is_approached_halfway_then_aimed_at_directly(fake_gpu):
    """Memory linear in the batch: a prediction more than twice the largest size that ran is approached halfway
    first, in the growth probes' worker; the settled prediction is then the next probe itself, and the one after
    proves the edge: two probes near the edge, the answer and the failure above it."""
    backend, task = fake_gpu
    for limit_gib in (3, 4, 6, 9):
        backend.capacity = 16 * GIB
        limit = int(limit_gib * GIB)
        fit = autotune.fit_batch_size(task, device="fake:0", isolation="none", margin=0.0, memory_limit=limit)
        sizes = [p.batch_size for p in fit.probes]
        truth = _expected(limit, 0.0)
        assert sizes[:2] == [8, 64] and truth - fit.granularity < fit.batch_size <= truth, sizes
        assert fit.ooms == 1 and sizes[-2:] == [fit.batch_size, fit.batch_size + fit.granularity], sizes
        assert [s for s in sizes if s >= 0.75 * fit.batch_size] == sizes[-2:], sizes
        assert len(sizes) in (5, 6), sizes


def test_after_an_oom_a_size_the_model_puts_past_the_cap_is_not_probed(fake_gpu, monkeypatch):
    """Once an OOM is spent and the edge is bracketed within two granules, a size between that the model puts
    past the enforced cap is not risked for a second OOM (TensorFlow's peak near the edge moves by a MiB or so from
    one fresh worker to the next): the answer is reported with the bracket as its granularity."""
    backend, task = fake_gpu
    need = _chunked(monkeypatch, 32 * 1024**2)
    limit = 4344 * 1024**2  # a limit where the line overshoots, the step back fits and lands two granules under
    fit = autotune.fit_batch_size(task, device="fake:0", isolation="none", margin=0.0, memory_limit=limit)
    sizes = [(p.batch_size, p.fits) for p in fit.probes]
    assert fit.ooms == 1, sizes
    failure = next(p.batch_size for p in fit.probes if p.oom)
    between = fit.batch_size + 8  # the planner's granule at this size is 8
    assert fit.granularity == failure - fit.batch_size == 16 and between not in [s for s, _ in sizes], sizes
    assert fit.model.predict(between) > limit
    assert any(f"{between} was not tried" in note for note in fit.notes), fit.notes
    # the skipped size would have fitted here (928 falls in the same 32 MiB chunk as 920, 24.5 MiB under the
    # line): the cost is one granule of the answer, and the reported granularity is still the truth about it
    truth = max(b for b in range(1, 2000) if need(b) <= limit)
    assert truth == between and fit.batch_size <= truth < fit.batch_size + fit.granularity
    # the user's own granularity is honoured: the size between is probed
    backend.capacity = 16 * GIB
    exact = autotune.fit_batch_size(task, device="fake:0", isolation="none", margin=0.0, memory_limit=limit,
                                    granularity=8)
    assert exact.granularity == 8 and exact.batch_size == truth and not any("not tried" in n for n in exact.notes)


def test_the_memory_slope_is_the_steeper_of_the_whole_range_and_the_last_stretch():
    """Memory that grows faster than the batch (convex) is under-read by the slope from the smallest point; one
    that grows slower (fixed overheads amortised over the batch) by the last stretch's."""
    mib = 1024**2

    def probes(curve):
        return [autotune.memory.Probe(b, fits=True, peak_memory_bytes=int(curve(b))) for b in (8, 64, 512)]

    convex = autotune.MemoryModel.local(probes(lambda b: GIB + 3 * mib * b + 2000 * b * b), resident_slope=False)
    concave = autotune.MemoryModel.local(probes(lambda b: GIB + 200 * mib * math.sqrt(b)), resident_slope=False)
    secant = lambda curve: (curve(512) - curve(64)) / 448  # noqa: E731
    assert convex.bytes_per_sample == pytest.approx(secant(lambda b: 3 * mib * b + 2000 * b * b))
    assert concave.bytes_per_sample == pytest.approx(200 * mib * (math.sqrt(512) - math.sqrt(8)) / 504)
    # both lines pass through the largest point
    assert convex.predict(512) == pytest.approx(GIB + 3 * mib * 512 + 2000 * 512**2)


def test_a_search_cut_short_by_the_probe_limit_reports_the_resolution_it_reached(fake_gpu, monkeypatch):
    """The granularity is the gap to the smallest size known not to fit (or past the largest allowed), never
    finer than what the probes proved."""
    backend, task = fake_gpu
    monkeypatch.setattr(autotune.memory, "MAX_PROBES", 4)
    fit = autotune.fit_batch_size(task, device="fake:0", isolation="none", margin=0.0, memory_limit=6 * GIB)
    assert len(fit.probes) == 4 and any("stopped after 4 probes" in note for note in fit.notes), fit.notes
    assert all(p.fits for p in fit.probes) and fit.batch_size + fit.granularity == 100_001  # nothing failed yet
    # cut short inside a bracket: 936 ran out of memory, 920 fitted, 928 was not tried
    _chunked(monkeypatch, 32 * 1024**2)
    monkeypatch.setattr(autotune.memory, "MAX_PROBES", 5)
    backend.capacity = 16 * GIB
    fit = autotune.fit_batch_size(task, device="fake:0", isolation="none", margin=0.0, memory_limit=4344 * 1024**2)
    sizes = [(p.batch_size, p.fits) for p in fit.probes]
    assert sizes[-2:] == [(936, False), (920, True)] and fit.granularity == 16, (sizes, fit.granularity)
