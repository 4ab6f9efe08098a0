"""Tests marked ``timing`` run alone when pytest-xdist runs the suite on several workers.

A timing test reads wall-clock budgets (a range test held to its share, validation judged cheap by its time),
so another test's CPU load beside it would fail it, not the code. Every test holds a shared lock and a timing
test an exclusive one; a turnstile taken first keeps a waiting timing test from being starved by the other
workers' next tests (a fair reader-writer lock over ``flock``, which every worker on the machine sees).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


def _lock_paths() -> tuple[Path, Path] | None:
    """The run's turnstile and reader-writer lock files, or None outside an xdist worker."""
    run = os.environ.get("PYTEST_XDIST_TESTRUNUID")
    if not run or not os.environ.get("PYTEST_XDIST_WORKER"):
        return None
    base = Path(tempfile.gettempdir()) / f"autotune-tests-{run}"
    return base.with_suffix(".turnstile"), base.with_suffix(".lock")


@contextlib.contextmanager
def _held(exclusive: bool) -> Iterator[None]:
    paths = _lock_paths()
    if paths is None:
        yield
        return
    turnstile, lock = (os.open(path, os.O_RDWR | os.O_CREAT, 0o600) for path in paths)
    try:
        fcntl.flock(turnstile, fcntl.LOCK_EX)
        fcntl.flock(lock, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        fcntl.flock(turnstile, fcntl.LOCK_UN)
        yield
    finally:
        os.close(lock)  # closing releases its flock
        os.close(turnstile)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    with _held(exclusive=item.get_closest_marker("timing") is not None):
        yield


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist, known only where it is installed
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """``-n auto``: one worker per core, at most two (each imports three frameworks and forks its own workers;
    two is what the suite is measured with)."""
    return max(1, min(2, os.cpu_count() or 1))
