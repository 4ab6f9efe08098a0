"""Where to probe next, from the probes so far: a pure policy with explicit state (no I/O, no clock).

`Planner.next(probes)` returns the next size to probe (`ProbeAt`) or the answer (`Answer`). It is fed the
list of probes run so far, one more at each call; the executor that runs them is elsewhere
(`autotune.fitting.executor`), so a rule can be tested on synthetic memory curves in milliseconds.

The rules: grow the batch (8, 64, 512) to learn the slope; aim at the largest size the memory model puts
under the budget less margin (a far, still-moving extrapolation is approached halfway first, as one more
growth probe); prove the edge with a real run (a fit below it, a failure above); after an overshoot step back
once, a granule or 1 % under the failure; then bisect. Memory convex in the batch (three spread probes whose
middle one sags under the chord of the others) is read by the parabola through them, not the line; memory
concave in it (the middle one stands over the chord) by a power law through them, and after that overshoots, by
the line through the two largest fits (steeper than the curve past them: it lands under the edge). A prediction
that creeps (two sizes aimed at the edge fitted and it still puts the edge within a few percent) is stepped over
by a few percent, so that one failure brackets the edge.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

from autotune.errors import FitError
from autotune.fitting.budget import Budget
from autotune.fitting.model import MemoryModel, Probe, largest_in_blocks
from autotune.units import format_size

MAX_PROBES = 14
GROWTH = 8
FAR = 1.2  # a prediction this many times the largest size that ran is an extrapolation ...
SETTLED = 0.05  # ... that is trusted once it moved less than this fraction since the previous probe ...
TOO_FAR = 2.0  # ... and reaches less than this many times that size; else it is ...
AIM = 0.5  # ... approached this fraction of the way (a growth probe), then refitted
CONVEX = 0.03  # a middle probe this fraction of the rise under the chord of its neighbours: memory is convex
SAGGED = 0.01  # ... and once the line has overshot, this much sag is enough to believe it (chunks sag more rarely)
UNDER = 0.03  # after an overshoot, the step back lands this fraction under the parabola's edge (run-to-run spread)
SPREAD = 0.75  # the parabola's three runs are each at most this fraction of the next
CLOSE = 0.15  # ... and with a failure this fraction above the fit, its word that the next granule fails is taken
BEND = 16 * 2**20  # ... and it stands over it by more than this (real peaks move by MBs from run to run and chunk)
FLATTEST = 0.3  # a concave curve's power law is read no flatter than batch ** this (past it, an under-read)
BACK_OFF = 0.01  # after the model overshot, the next probe sits this fraction (at least a granule) below the failure


@dataclasses.dataclass(frozen=True)
class ProbeAt:
    """Probe this batch size next; ``growth``: it only grows the batch to learn the slope, it is not the answer."""

    batch_size: int
    growth: bool = False


@dataclasses.dataclass(frozen=True)
class Answer:
    """The largest size that fitted, the resolution proven (the next size up at it does not fit), and why."""

    batch_size: int
    granularity: int
    notes: tuple[str, ...] = ()
    limited_by: str = "memory"  # or "step time" (`autotune.fitting.step_time`)


class Planner:
    """The fit's search policy. State: the bracket (largest fit, smallest failure), the granule, the previous
    prediction, and whether the one step back after an overshoot is spent."""

    def __init__(self, budget: Budget, *, ceiling: int, granularity: int | None = None,
                 resident_slope: bool = True, max_probes: int = MAX_PROBES) -> None:
        if granularity is not None and granularity < 1:
            raise FitError(f"granularity must be a positive integer, got {granularity}")
        if ceiling < 1:
            raise FitError("max batch must be at least 1")
        self.budget = budget
        self.ceiling = ceiling
        self.granularity_given = granularity is not None
        self.step = granularity or 1
        self.resident_slope = resident_slope
        self.max_probes = max_probes
        self.fits_at = 0
        self.fails_at = ceiling + 1
        self.notes: list[str] = []
        self._previous_prediction: float | None = None
        self._explore = 0  # granule steps taken past a spent block-pool estimate
        self._backed_off = False  # after an overshoot, the one step back below the failure has been tried
        self._approached = False  # a far, unsettled prediction has been approached halfway once
        self._concave = False  # a concave curve's power law was aimed at (it out-read the line)
        self._aimed = False  # the size asked was the model's edge (not growth, not a step back or bisection)
        self._aimed_fits = 0  # consecutive aimed sizes that fitted
        self._stepped_over = False  # the size asked was past a creeping prediction
        self._asked: ProbeAt | None = None
        self._answer: Answer | None = None

    def next(self, probes: Sequence[Probe]) -> ProbeAt | Answer:
        """The next size to probe, or the answer, given every probe run so far (the last one: the size asked)."""
        if self._answer is not None:
            return self._answer
        if self._asked is None:
            self._asked = ProbeAt(min(max(self.step, _round_down(8, self.step)), self.ceiling), growth=True)
            return self._asked
        if not probes or probes[-1].batch_size != self._asked.batch_size:
            raise ValueError(f"the planner asked for batch {self._asked.batch_size}: pass its probe last")
        decision = self._decide(probes)
        if isinstance(decision, Answer):
            self._answer = decision
        else:
            self._asked = decision
        return decision

    def redirect(self, size: int) -> ProbeAt:
        """Probe ``size`` (below the size asked) instead: a caller's own bound on how far to grow (the step-time
        limit's aim). Its probe then stands for the one asked; it was not aimed at the memory edge."""
        if self._asked is None or not 1 <= size < self._asked.batch_size:
            raise ValueError(f"a redirect must lower the size asked, got {size}")
        self._asked = dataclasses.replace(self._asked, batch_size=size)
        self._aimed = False
        return self._asked

    def _answer_now(self) -> Answer:
        return Answer(self.fits_at, self.step, tuple(self.notes))

    def _decide(self, probes: Sequence[Probe]) -> ProbeAt | Answer:
        probe, budget = probes[-1], self.budget.resolve(probes)
        if probe.fits:
            self.fits_at = probe.batch_size
        else:
            self.fails_at = probe.batch_size
        self._aimed_fits = self._aimed_fits + 1 if self._aimed and probe.fits else 0
        fits_at, fails_at, step, ceiling = self.fits_at, self.fails_at, self.step, self.ceiling
        if fits_at == 0:
            if probe.batch_size <= step:
                raise FitError(_too_small_message(probe, budget))
            # even the first size failed: halve (still a growth probe: nothing is known of the slope)
            return ProbeAt(max(step, _round_down(probe.batch_size // 2, step)),
                           growth=bool(self._asked and self._asked.growth))
        if fits_at >= ceiling or fails_at - fits_at <= step:
            return self._answer_now()
        if self._stepped_over and not probe.fits:
            self.notes.append(f"sizes between {fits_at} and {fails_at} were not tried: the prediction crept up a "
                              "granule or two at a time, so the size past it was tried to bracket the edge")
            self.step = fails_at - fits_at
            return self._answer_now()
        if len(probes) >= self.max_probes:
            self.notes.append(f"stopped after {self.max_probes} probes: sizes between {fits_at} and "
                              f"{min(fails_at, ceiling + 1) - 1} were not tried")
            self.step = max(step, min(fails_at, ceiling + 1) - fits_at)  # the resolution actually reached
            return self._answer_now()
        model = MemoryModel.local(list(probes), resident_slope=self.resident_slope)
        predicted, searching = self._prediction(probes, model, budget)
        if not self.granularity_given and model is not None and math.isfinite(predicted) and predicted > 0:
            self.step = step = max(step, 2 ** int(math.log2(max(1.0, min(predicted, ceiling) / 64))))
        # No stop on the model's word alone: peaks grow in chunks (pages, arenas, allocator segments) about as
        # large as one step's worth of memory, so the edge is proven by a real run (a fit below, a failure above).
        # An extrapolation whose prediction still moves from probe to probe is not trusted (see RESULTS.md).
        settled = self._previous_prediction is not None and math.isfinite(predicted) \
            and abs(predicted - self._previous_prediction) <= SETTLED * predicted
        self._previous_prediction = predicted if math.isfinite(predicted) else None
        # An unsettled extrapolation is approached once; past that halfway point the line is trusted (a second
        # approach would be a probe near the edge that is not the answer).
        approach = math.isfinite(predicted) and predicted > FAR * fits_at and not searching \
            and ((not settled and not self._approached) or predicted > TOO_FAR * fits_at)
        if approach:
            self._approached = True
            # Land halfway, in the growth probes' worker, then refit: a probe near the edge that is not the answer
            # costs nearly a whole step at the answer's size, one halfway about half that and no worker start.
            # Halfway to a slight parabola, if the probes sag at all: a convex line's halfway is near the edge.
            target = min(predicted, _convex_largest(probes, budget.effective_bytes, self.resident_slope, least=SAGGED))
            predicted = fits_at + AIM * (max(target, FAR * fits_at) - fits_at)
        # Aim at the answer itself, rounded down: rounding to the nearest granule can cross an edge where the
        # address space jumps by tens of MB.
        candidate = _round_down(int(min(predicted, fits_at * GROWTH, ceiling)), step)
        candidate = max(candidate, fits_at + step)
        if candidate >= ceiling - step and ceiling < fails_at:
            candidate = ceiling  # within one step of the data or max-batch limit: try the limit itself
        if candidate >= fails_at:
            # The model overshot a size already seen to fail; an OOM adds no point, so the prediction stays. Step
            # back from the failure by a granule or 1 % (overshoots are small), once; else (no model, or after
            # that) bisect.
            below = 0
            # After a concave curve's power law overshot, the line through the two largest fits is steeper than the
            # curve past them: its edge is under the true one, and it climbs toward it with each fit (no 2nd OOM).
            secant = _secant_largest(probes, budget.effective_bytes, self.resident_slope) if self._concave else 0
            if fits_at < secant < fails_at * (1 - BACK_OFF):
                below = _round_down(int(secant), step)
            elif not self._backed_off and math.isfinite(predicted):
                below = min(_round_down(int(fails_at * (1 - BACK_OFF)), step), fails_at - step)
                # The overshoot is itself a sign of convex memory: a slight sag then sizes the step, if its parabola
                # puts the edge further under the 1 % step than the spread of its three runs moves it.
                convex = _convex_largest(probes, budget.effective_bytes, self.resident_slope, least=SAGGED)
                if fits_at < convex * (1 - UNDER) and convex * (1 + UNDER) < fails_at * (1 - BACK_OFF):
                    below = _round_down(int(convex * (1 - UNDER)), step)
                self._backed_off = True
            candidate = below if fits_at < below < fails_at else \
                fits_at + max(step, _round_down((fails_at - fits_at) // 2, step))
            self._aimed = False
        else:
            self._aimed = not approach and not searching
        over = fits_at + max(2 * step, _round_down(int(fits_at * UNDER), step))
        self._stepped_over = self._aimed_fits >= 2 and candidate < over < min(fails_at, ceiling) \
            and not self.granularity_given and not any(p.oom for p in probes)
        if self._stepped_over:
            # Two sizes at the model's edge fitted and it still puts the edge within a few percent: it creeps up a
            # granule or two at a time (concave memory, or peaks that move by MBs near the edge), each a probe
            # near the edge. The size a few percent past it brackets the edge with one failure (if none is spent).
            candidate = over
        if candidate >= fails_at:
            return self._answer_now()
        if self._concave and any(p.oom for p in probes) and not self.granularity_given \
                and self._concave_bracketed(probes, budget):
            # A concave curve's power law overshot and the step back under it fits close to the failure: each probe
            # between is near the edge and risks a second OOM. The bracket is the resolution (proven by the OOM).
            self.notes.append(f"sizes between {fits_at} and {fails_at} were not tried: memory grows slower than the "
                              "batch there, and after an OOM each would risk a second one")
            self.step = fails_at - fits_at
            return self._answer_now()
        if any(p.oom for p in probes) and not self.granularity_given and not budget.block and model is not None \
                and self._past_the_cap(probes, model, budget):
            # An OOM is spent, the edge is bracketed within two granules and the line puts the size between past
            # the cap: near the edge a run's peak moves by about a MB between fresh workers, so probing it risks a
            # second OOM. It is left untried and the answer's resolution is the bracket (proven by the OOM). Not
            # for a block pool, whose estimate is noisy near the edge.
            self.notes.append(f"{fits_at + step} was not tried: the memory model puts it over the cap, and after "
                              "an OOM it would risk a second one")
            self.step = fails_at - fits_at
            return self._answer_now()
        growth = candidate == fits_at * GROWTH < predicted or (approach and candidate < fails_at)
        self._aimed = self._aimed and not growth
        return ProbeAt(candidate, growth=candidate < ceiling and growth)

    def _concave_bracketed(self, probes: Sequence[Probe], budget: Budget) -> bool:
        """Whether the fit is within `UNDER` of the failure, or within `CLOSE` with the line through the two largest
        fits (steeper than a concave curve past them) putting the next granule up over the budget."""
        gap = self.fails_at - self.fits_at
        if gap <= UNDER * self.fails_at:
            return True
        return gap <= CLOSE * self.fails_at \
            and _secant_largest(probes, budget.effective_bytes, self.resident_slope) < self.fits_at + self.step

    def _past_the_cap(self, probes: Sequence[Probe], model: MemoryModel, budget: Budget) -> bool:
        """Whether the next granule up is past the cap by the line (the edge within two granules) or by a convex
        curve's parabola (any sag, after the OOM; the edge within `CLOSE` of the failure)."""
        fits_at, fails_at, step = self.fits_at, self.fails_at, self.step
        if fails_at - fits_at <= 2 * step and model.predict(fits_at + step) > budget.oom_at:
            return True
        return fails_at - fits_at <= CLOSE * fails_at \
            and _convex_largest(probes, budget.oom_at, self.resident_slope, least=SAGGED) < fits_at + step

    def _prediction(self, probes: Sequence[Probe], model: MemoryModel | None,
                    budget: Budget) -> tuple[float, bool]:
        """The size to aim at, and whether it is a search step (bisection, exploration), not the model's answer."""
        predicted = model.largest_under(budget.effective_bytes) if model else math.inf
        if not (budget.block and model is not None):
            convex = _convex_largest(probes, budget.effective_bytes, self.resident_slope)
            if math.isfinite(convex):
                return min(predicted, convex), False
            if self._concave and self.fails_at <= self.ceiling:
                # the power law overshot: the line through the two largest fits is under the edge from here on
                return _secant_largest(probes, budget.effective_bytes, self.resident_slope), False
            concave = _concave_largest(probes, budget.effective_bytes, self.resident_slope)
            self._concave = self._concave or concave > predicted
            return max(predicted, concave), False
        fits_at, fails_at, step = self.fits_at, self.fails_at, self.step
        predicted = largest_in_blocks(list(probes), budget.effective_bytes, budget.block, budget.margin)
        searching = fails_at <= self.ceiling or predicted < fits_at + 2 * step
        if fails_at <= self.ceiling:
            predicted = (fits_at + fails_at) / 2  # the edge is bracketed by real runs: bisect
        elif predicted < fits_at + 2 * step:
            # The estimate is spent and the run still fits (the pool's use is noisy near the edge): step up one
            # granule at a time, so the first failure ends the search; after two such steps, double them.
            self._explore += 1
            predicted = fits_at + step * 2 ** max(0, self._explore - 2)
        else:
            self._explore = 0
        return predicted, searching


def _convex_largest(probes: Sequence[Probe], budget_bytes: float, resident_slope: bool,
                    least: float = CONVEX) -> float:
    """The largest size under ``budget_bytes`` by a parabola through the three largest fitting runs, when the
    per-sample cost grew from the first stretch to the second (memory convex in the batch); else infinity.

    A line through the last two points under-reads a convex curve past them, so the aimed probe and the step
    back after it both fail; the parabola through three points is exact on a quadratic curve (attention).
    """
    spread = _spread(probes)
    if len(spread) < 3:
        return math.inf
    c, b, a = spread[:3]

    def rising(probe: Probe) -> float:
        return _rising(probe, resident_slope)

    first = (rising(b) - rising(a)) / (b.batch_size - a.batch_size)
    second = (rising(c) - rising(b)) / (c.batch_size - b.batch_size)
    # How far the middle point sags under the chord of the outer two, against their rise: allocator chunks move
    # a point by a chunk (a percent or two of the rise), a quadratic term by more once the points are spread.
    width = c.batch_size - a.batch_size
    sag = (second - first) * (b.batch_size - a.batch_size) * (c.batch_size - b.batch_size) / width
    if first <= 0 or sag <= least * (rising(c) - rising(a)):
        return math.inf
    curvature = (second - first) / width
    tangent = second + curvature * (c.batch_size - b.batch_size)  # the parabola's slope at the largest point
    room = budget_bytes - float(c.peak_memory_bytes or 0)
    return c.batch_size + (math.sqrt(max(0.0, tangent ** 2 + 4 * curvature * room)) - tangent) / (2 * curvature) \
        if room > 0 else float(c.batch_size)


def _spread(probes: Sequence[Probe]) -> list[Probe]:
    """The largest fitting measured runs, each at most `SPREAD` of the next, largest first: over shorter stretches
    the run-to-run spread swamps a curve's bend."""
    measured = sorted((p for p in probes if p.fits and p.peak_memory_bytes), key=lambda p: p.batch_size)
    spread: list[Probe] = []
    for probe in reversed(measured):
        if not spread or probe.batch_size <= SPREAD * spread[-1].batch_size:
            spread.append(probe)
    return spread


def _concave_largest(probes: Sequence[Probe], budget_bytes: float, resident_slope: bool,
                     least: float = CONVEX) -> float:
    """The largest size under ``budget_bytes`` by a power law ``a + k * batch ** p`` (p < 1) through the three
    largest spread fitting runs, when the middle one stands over the chord of the others (memory concave in the
    batch); else 0 (no word)."""
    spread = _spread(probes)
    if len(spread) < 3:
        return 0.0
    c, b, a = spread[:3]
    low, middle, high = (_rising(probe, resident_slope) for probe in (a, b, c))
    if not low < middle < high:
        return 0.0
    bulge = (middle - low) - (high - low) * (b.batch_size - a.batch_size) / (c.batch_size - a.batch_size)
    if bulge <= max(least * (high - low), BEND):
        return 0.0
    ratio = (high - middle) / (middle - low)

    def shape(p: float) -> float:
        return (c.batch_size ** p - b.batch_size ** p) / (b.batch_size ** p - a.batch_size ** p)

    lo, hi = FLATTEST, 1.0
    if shape(lo) < ratio:
        for _ in range(40):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if shape(mid) < ratio else (lo, mid)
    p = lo
    scale = (high - middle) / (c.batch_size ** p - b.batch_size ** p)
    room = budget_bytes - float(c.peak_memory_bytes or 0)
    if room <= 0:
        return float(c.batch_size)
    return (c.batch_size ** p + room / scale) ** (1 / p)


def _secant_largest(probes: Sequence[Probe], budget_bytes: float, resident_slope: bool) -> float:
    """The largest size under ``budget_bytes`` by the line through the two largest spread fitting runs; 0 if none."""
    spread = _spread(probes)
    if len(spread) < 2:
        return 0.0
    c, b = spread[:2]
    rise = _rising(c, resident_slope) - _rising(b, resident_slope)
    if rise <= 0:
        return 0.0
    return c.batch_size + (budget_bytes - float(c.peak_memory_bytes or 0)) * (c.batch_size - b.batch_size) / rise


def _rising(probe: Probe, resident_slope: bool) -> float:
    """The figure a slope is read from: resident memory on the CPU (it grows smoothly), else the peak itself."""
    return float((probe.resident_peak_bytes if resident_slope else None) or probe.peak_memory_bytes or 0)


def _round_down(value: int, granularity: int) -> int:
    return (value // granularity) * granularity


def _too_small_message(probe: Probe, budget: Budget) -> str:
    what = "address space (framework included)" if budget.metric == "address_space" else "memory"
    if probe.oom:
        return (f"batch size {probe.batch_size} does not fit in {format_size(budget.limit_bytes)} of {what}: "
                f"raise --memory-limit or use a smaller model")
    return (f"batch size {probe.batch_size} needs {format_size(probe.peak_memory_bytes)}, over the budget of "
            f"{format_size(budget.effective_bytes)} ({format_size(budget.limit_bytes)} less a {budget.margin:.0%} "
            "margin): raise --memory-limit, lower --margin or use a smaller model")
