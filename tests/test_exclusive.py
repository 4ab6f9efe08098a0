"""The lock that keeps timing tests alone under pytest-xdist (tests/exclusive.py)."""

from __future__ import annotations

import threading
import uuid

from exclusive import _held


def test_a_timing_test_waits_for_the_running_test_and_then_runs_alone(monkeypatch):
    monkeypatch.setenv("PYTEST_XDIST_TESTRUNUID", uuid.uuid4().hex)
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw0")
    release_other, other_holds, timing_holds, release_timing = (threading.Event() for _ in range(4))
    order: list[str] = []

    def other_test() -> None:
        with _held(exclusive=False):
            other_holds.set()
            release_other.wait(10)
            order.append("other ends")

    def timing_test() -> None:
        with _held(exclusive=True):
            order.append("timing starts")
            timing_holds.set()
            release_timing.wait(10)

    def next_test() -> None:
        with _held(exclusive=False):
            order.append("next starts")

    threads = [threading.Thread(target=other_test)]
    threads[0].start()
    assert other_holds.wait(10)
    threads.append(threading.Thread(target=timing_test))
    threads[1].start()
    assert not timing_holds.wait(0.3)  # the running test still holds its shared lock
    release_other.set()
    assert timing_holds.wait(10)
    threads.append(threading.Thread(target=next_test))
    threads[2].start()
    threads[2].join(0.3)
    assert threads[2].is_alive()  # a test that comes later waits for the timing test
    release_timing.set()
    for thread in threads:
        thread.join(10)
    assert order == ["other ends", "timing starts", "next starts"]


def test_outside_an_xdist_worker_nothing_is_locked(monkeypatch):
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
    with _held(exclusive=True), _held(exclusive=True):  # would deadlock if it locked
        pass
