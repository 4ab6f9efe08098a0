"""Process-wide settings autotune changes only for the length of its call (`autotune.scoped`)."""

import gc
import weakref

import autotune
from autotune.scoped import collector_skips_the_callers_heap

EXAMPLE = "examples/torch_digits.py"


class _Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the cycle collector frees it


def test_the_callers_heap_is_frozen_only_during_the_call_and_new_cycles_are_still_collected():
    old = _Node()
    during: dict[str, object] = {}

    @collector_skips_the_callers_heap
    def work() -> None:
        during["frozen"] = gc.get_freeze_count()
        young = weakref.ref(_Node())  # made in the call, garbage at once
        gc.collect()
        during["young collected"] = young() is None

    assert gc.get_freeze_count() == 0
    work()
    assert during["frozen"] > 0 and during["young collected"], during
    assert gc.get_freeze_count() == 0, "the caller's objects are handed back to the collector"
    dropped = weakref.ref(old)
    del old
    gc.collect()
    assert dropped() is None, "an object of the caller's is collectable again after the call"


def test_a_caller_that_froze_its_heap_itself_keeps_it_frozen():
    gc.freeze()
    try:
        collector_skips_the_callers_heap(lambda: None)()
        # not handed back (unfreezing would empty it); the count itself moves as frozen objects are freed
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()


def test_an_in_process_fit_hands_the_heap_back_even_when_it_fails():
    try:
        autotune.fit_batch_size(EXAMPLE, isolation="none", margin=2.0)  # bad input: a FitError
    except autotune.FitError:
        pass
    assert gc.get_freeze_count() == 0
    fit = autotune.fit_batch_size(EXAMPLE, isolation="none", max_batch=64)
    assert fit.batch_size == 64 and gc.get_freeze_count() == 0
