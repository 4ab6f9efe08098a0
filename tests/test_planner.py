"""The fit's search policy on synthetic memory curves: the pure planner, fed the probes a curve produces, in
milliseconds (no framework, no process). Each case checks the answer against the curve's true largest batch,
the OOMs it cost and the probes near the edge."""

import math

import numpy as np
import pytest

from autotune.errors import FitError
from autotune.fitting import Answer, Budget, Planner, Probe, ProbeAt
from autotune.fitting.executor import judge
from autotune.runner import WorkerOutcome

MIB, GIB = 1024**2, 1024**3


def device_budget(limit, margin=0.0, enforced=True):
    """A GPU-like budget: probes run under the cap (budget less margin) when ``enforced``."""
    return Budget("device_peak", int(limit), margin, cap_device=enforced)


def linear(intercept=1.5 * GIB, per_sample=3 * MIB):
    return lambda batch: intercept + per_sample * batch


def chunked(chunk, curve=None):
    curve = curve or linear()
    return lambda batch: math.ceil(curve(batch) / chunk) * chunk


def run(curve, budget, *, ceiling=100_000, granularity=None, jitter=None, max_probes=14):
    """Drive a planner on ``curve`` (bytes at a batch size) as the executor would: a run over the enforced cap is
    an OOM, one over the budget less margin is measured over it. ``jitter(batch)`` adds a run-to-run spread."""
    planner = Planner(budget, ceiling=ceiling, granularity=granularity, resident_slope=False, max_probes=max_probes)
    probes = []
    decision = planner.next(probes)
    while isinstance(decision, ProbeAt):
        batch = decision.batch_size
        need = int(curve(batch) + (jitter(batch) if jitter else 0))
        if need > budget.oom_at:
            probes.append(Probe(batch, fits=False, oom=True))
        else:
            probes.append(Probe(batch, fits=budget.fits(need), peak_memory_bytes=need))
        decision = planner.next(probes)
        assert len(probes) <= max_probes + 1, [(p.batch_size, p.fits) for p in probes]
    return decision, probes


def truth(curve, budget, ceiling=100_000):
    sizes = np.arange(1, ceiling + 1)
    fitting = sizes[np.array([curve(int(b)) for b in sizes]) <= budget.effective_bytes]
    return int(fitting.max())


def near_edge(probes, answer):
    """The probes within a quarter of the answer that are not the answer itself."""
    return [p.batch_size for p in probes if p.batch_size >= 0.75 * answer.batch_size
            and not (p.fits and p.batch_size == answer.batch_size)]


def sizes(probes):
    return [(p.batch_size, p.fits) for p in probes]


@pytest.mark.parametrize("limit_gib", [2.5, 4, 6, 9, 12.7])
def test_linear_memory_lands_on_the_edge_with_one_oom(limit_gib):
    curve, budget = linear(), device_budget(limit_gib * GIB)
    answer, probes = run(curve, budget)
    best = truth(curve, budget)
    assert isinstance(answer, Answer) and best - answer.granularity < answer.batch_size <= best, sizes(probes)
    assert sum(p.oom for p in probes) <= 1 and len(near_edge(probes, answer)) <= 1, sizes(probes)
    assert [p.batch_size for p in probes[:2]] == [8, 64]


@pytest.mark.parametrize("limit_mib", range(4000, 7000, 211))
def test_chunked_memory_costs_at_most_one_oom(limit_mib):
    """Allocator granules (32 MiB segments): the line through the growth probes may overshoot the edge."""
    curve, budget = chunked(32 * MIB), device_budget(limit_mib * MIB)
    answer, probes = run(curve, budget)
    best = truth(curve, budget)
    assert best - answer.granularity < answer.batch_size <= best, (best, sizes(probes))
    assert sum(p.oom for p in probes) <= 1, sizes(probes)


@pytest.mark.parametrize("limit_gib", [3, 5, 8])
def test_convex_memory_is_not_under_read(limit_gib):
    """Memory growing faster than the batch (attention's quadratic term): the last stretch's slope is used."""
    curve, budget = convex(), device_budget(limit_gib * GIB)
    answer, probes = run(curve, budget)
    best = truth(curve, budget, ceiling=5000)
    assert best - answer.granularity < answer.batch_size <= best, (best, sizes(probes))


def convex():
    """Memory growing faster than the batch: attention's quadratic term, TensorFlow's address space."""
    return lambda b: GIB + 2 * MIB * b + 900 * b * b


@pytest.mark.parametrize("limit_gib", [2.2, 3, 5, 8, 12])
def test_convex_memory_costs_at_most_one_oom(limit_gib):
    """A parabola through three spread probes aims at the edge (and sizes the step back after an overshoot): one
    OOM, one probe near the edge that is not the answer, and at least 95 % of the true largest. Under 4 GiB the
    probes 8, 64 and ~400 sag no more than 32 MiB chunks do: the line aims, overshoots, and the parabola's step
    back (a few percent under its edge) is a second probe near the edge."""
    curve, budget = convex(), device_budget(limit_gib * GIB)
    answer, probes = run(curve, budget)
    best = truth(curve, budget, ceiling=5000)
    assert sum(p.oom for p in probes) <= 1, (best, sizes(probes))
    assert len(near_edge(probes, answer)) <= (1 if limit_gib > 4 else 2), (best, sizes(probes))
    assert 0.95 * best <= answer.batch_size <= best, (best, sizes(probes))


def concave(power=0.5, scale=200 * MIB):
    """Memory growing slower than the batch (buffers shared across samples, an allocator's reuse)."""
    return lambda b: GIB + scale * b ** power


@pytest.mark.parametrize("power, scale", [(0.5, 200 * MIB), (0.7, 20 * MIB)])
@pytest.mark.parametrize("limit_gib", [3.5, 5, 8, 12.7])
def test_concave_memory_lands_on_the_edge_without_creeping(limit_gib, power, scale):
    """The line through the probes over-reads a concave curve's slope past them, so each aimed probe fits and the
    prediction creeps up a granule or two at a time; a power law through three spread probes aims at the edge:
    one OOM, one probe near the edge that is not the answer, at least 97 % of the true largest."""
    curve, budget = concave(power, scale), device_budget(limit_gib * GIB)
    answer, probes = run(curve, budget)
    best = truth(curve, budget, ceiling=20_000)
    assert sum(p.oom for p in probes) <= 1, (best, sizes(probes))
    assert len(near_edge(probes, answer)) <= 1, (best, sizes(probes))
    assert 0.97 * best <= answer.batch_size <= best, (best, sizes(probes))


def bent(at=800, ratio=0.5):
    """Linear memory whose per-sample cost drops to ``ratio`` of itself past batch ``at`` (a buffer that stops
    growing): the line through the probes before the bend over-reads the slope past it."""
    return lambda b: 1.5 * GIB + 3 * MIB * min(b, at) + 3 * MIB * ratio * max(0, b - at)


def test_a_creeping_prediction_is_stepped_over():
    """Past the bend each size aimed at the edge fits and the prediction creeps up a granule or two at a time
    (main: three to six probes near the edge that are not the answer). After two such fits the planner tries a
    size a few percent past the prediction: one OOM brackets the edge, the answer within 3 % of the truth."""
    curve = bent()
    for limit_mib in range(4000, 14000, 97):
        budget = device_budget(limit_mib * MIB)
        answer, probes = run(curve, budget)
        best = truth(curve, budget, ceiling=8000)
        assert sum(p.oom for p in probes) <= 1 and len(near_edge(probes, answer)) <= 3, (best, sizes(probes))
        assert 0.97 * best <= answer.batch_size <= best, (best, sizes(probes))


def jittery_fits(curve, limits_mib, ceiling):
    """Fit ``curve`` under each limit with a seeded ±4 MiB run-to-run spread; each answer ran, after one OOM at
    most. Yields the limit, the true largest (without the spread), the answer and the probes."""
    rng = np.random.default_rng(0)
    for limit_mib in limits_mib:
        budget = device_budget(limit_mib * MIB)
        answer, probes = run(curve, budget, jitter=lambda b: rng.uniform(-4, 4) * MIB)
        best = truth(curve, budget, ceiling=ceiling)
        ran = {p.batch_size for p in probes if p.fits}
        assert answer.batch_size in ran and sum(p.oom for p in probes) <= 1, (limit_mib, best, sizes(probes))
        yield limit_mib, best, answer, probes


def test_concave_jittery_runs_cost_at_most_one_oom():
    """The same with a few MiB of run-to-run spread: the answer within 3 % of the edge."""
    for limit_mib, best, answer, probes in jittery_fits(concave(), range(3500, 14000, 331), 20_000):
        assert 0.97 * best <= answer.batch_size <= best + 2, (limit_mib, best, sizes(probes))
        assert len(near_edge(probes, answer)) <= 2, (limit_mib, best, sizes(probes))


def test_convex_jittery_runs_cost_at_most_one_oom():
    """The same with a few MiB of run-to-run spread: the parabola's step back lands a few percent under its edge."""
    for limit_mib, best, answer, probes in jittery_fits(convex(), range(2200, 9000, 113), 5000):
        assert 0.95 * best <= answer.batch_size <= best + 2, (limit_mib, best, sizes(probes))


def test_jittery_runs_stay_under_the_budget():
    """Each run's peak moves a few MiB from one fresh process to the next: the answer is one that ran under the
    cap, within the reported granularity of the edge of the curve without the jitter."""
    rng = np.random.default_rng(0)
    for limit_mib in range(4100, 6100, 97):
        curve, budget = linear(), device_budget(limit_mib * MIB)
        answer, probes = run(curve, budget, jitter=lambda b: rng.uniform(-4, 4) * MIB)
        best = truth(curve, budget)
        ran = {p.batch_size for p in probes if p.fits}
        assert answer.batch_size in ran and sum(p.oom for p in probes) <= 2, sizes(probes)
        assert abs(answer.batch_size - best) <= answer.granularity + 2, (best, sizes(probes))


def block_pool(limit, block=GIB, framework=1.2 * GIB, base=30 * MIB, per_sample=0.78 * MIB):
    """A MindSpore-like CPU pool: address space in whole blocks, the pool's use (touched pages) linear."""
    budget = Budget("address_space", int(limit), 0.0, cpu_cap=int(limit), block=block)

    def probe(batch):
        touched = base + per_sample * batch
        blocks = math.ceil(touched / block)
        space = int(framework + blocks * block)
        if space > budget.cpu_cap:
            return Probe(batch, fits=False, oom=True)
        pool = {"blocks": blocks, "touched": int(touched)}
        return Probe(batch, fits=budget.fits(space, pool), peak_memory_bytes=space,
                     resident_peak_bytes=int(300 * MIB + touched), pool=pool)

    return budget, probe, int((block - base) // per_sample)


def test_a_block_pool_is_fitted_on_the_pools_own_use():
    budget, probe, best = block_pool(2.5 * GIB)
    planner = Planner(budget, ceiling=100_000, resident_slope=True)
    probes = []
    decision = planner.next(probes)
    while isinstance(decision, ProbeAt):
        probes.append(probe(decision.batch_size))
        decision = planner.next(probes)
    assert best - decision.granularity < decision.batch_size <= best, (best, sizes(probes))
    assert sum(p.oom for p in probes) <= 1 and len(probes) <= 14, sizes(probes)


def test_an_oom_at_an_unexpected_size_is_an_edge_below_the_prediction():
    """Memory jumps at batch 700 (a workspace the framework takes past some size): the line predicts far more,
    the run there fails, and the answer is proven below the jump."""
    base = linear()
    curve = lambda b: base(b) + (3 * GIB if b >= 700 else 0)  # noqa: E731
    budget = device_budget(6 * GIB)
    answer, probes = run(curve, budget)
    assert answer.batch_size == 699 or 699 - answer.granularity < answer.batch_size < 700, sizes(probes)
    assert any(p.oom for p in probes)


def test_a_first_size_that_fails_is_halved_and_batch_one_that_fails_is_an_error():
    curve, budget = linear(intercept=GIB, per_sample=200 * MIB), device_budget(2 * GIB)
    answer, probes = run(curve, budget)
    assert [p.batch_size for p in probes[:2]] == [8, 4] and answer.batch_size == truth(curve, budget) == 5, \
        sizes(probes)
    with pytest.raises(FitError, match="does not fit"):
        run(linear(intercept=3 * GIB), device_budget(2 * GIB))


def test_over_the_budget_without_an_enforced_cap_is_measured_not_an_oom():
    """In the caller's own process no cap is set: a size over the budget less margin runs and is measured over."""
    curve, budget = linear(), device_budget(6 * GIB, margin=0.05, enforced=False)
    answer, probes = run(curve, budget)
    best = truth(curve, budget)
    assert not any(p.oom for p in probes) and best - answer.granularity < answer.batch_size <= best, sizes(probes)
    assert not probes[-1].fits and probes[-1].batch_size == answer.batch_size + answer.granularity


def test_max_batch_caps_the_search():
    curve, budget = linear(), device_budget(12 * GIB)
    answer, probes = run(curve, budget, ceiling=300)
    assert answer.batch_size == 300 and max(p.batch_size for p in probes) == 300 and all(p.fits for p in probes)


def test_a_granularity_the_user_gives_is_honoured():
    curve, budget = chunked(32 * MIB), device_budget(4344 * MIB)
    answer, probes = run(curve, budget, granularity=8)
    best = truth(curve, budget)
    assert answer.granularity == 8 and all(p.batch_size % 8 == 0 for p in probes), sizes(probes)
    assert answer.batch_size == best - best % 8 and not any("not tried" in n for n in answer.notes)


def test_a_free_memory_budget_is_read_from_the_first_probe():
    budget = Budget("device_peak", 0, 0.05)
    assert budget.device_cap is None
    learnt = budget.resolve([Probe(8, fits=True, peak_memory_bytes=GIB, free_bytes=6 * GIB)])
    assert learnt.limit_bytes == 6 * GIB and learnt.device_cap == int(6 * GIB * 0.95)


def test_the_probe_limit_ends_the_search_with_the_resolution_reached():
    answer, probes = run(linear(), device_budget(6 * GIB), max_probes=4)
    assert len(probes) == 4 and answer.granularity == 100_001 - answer.batch_size
    assert any("stopped after 4 probes" in note for note in answer.notes)


def test_the_planner_wants_the_probe_it_asked_for():
    planner = Planner(device_budget(4 * GIB), ceiling=1000)
    first = planner.next([])
    assert first == ProbeAt(8, growth=True)
    with pytest.raises(ValueError, match="asked for batch 8"):
        planner.next([Probe(16, fits=True, peak_memory_bytes=GIB)])


@pytest.mark.parametrize("outcome", [
    WorkerOutcome(False, kind="crash", message="worker exited with code 0 without a result", exitcode=0),
    WorkerOutcome(False, kind="error", message="google.protobuf.message.DecodeError: Arena alloc failed"),
    WorkerOutcome(False, kind="crash", message="worker killed by SIGABRT", exitcode=-6),
])
def test_a_first_probe_that_vanishes_or_cannot_allocate_under_the_cap_is_memory(outcome):
    """TensorFlow under an address-space cap too small for its first batch exits without a result or reports
    protobuf's allocation failure: that is the cap (raise --memory-limit), not a broken task."""
    capped = Budget("address_space", 1 << 30, 0.05, cpu_cap=1 << 30)
    assert judge(capped, [], 8, outcome, 1.0).oom
    with pytest.raises(FitError, match="other than memory"):
        judge(Budget("resident", 1 << 30, 0.05), [], 8, outcome, 1.0)
