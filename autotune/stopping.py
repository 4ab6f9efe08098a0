"""When autotune's own loop stops starting trials: a signal, or a ``--timeout`` the next trial would overrun."""

from __future__ import annotations

import contextlib
import signal
import statistics
import threading
import time
from typing import Any, Iterator

from autotune.closed_output import SIGPIPE, output_closed
from autotune.errors import Interrupted


class Interrupts:
    """Ctrl-C or SIGTERM during a study: kill the running trial at once (it is recorded as interrupted);
    anywhere else (sampling, storage writes) only note it, so that Optuna's bookkeeping is never cut half-way.
    SIGTERM is Ctrl-C's twin: a scheduler's stop must not leave the trial RUNNING until the next run, and so is
    a closed output pipe (`autotune.closed_output`)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.requested = False
        self.waiting = False
        self.signum = int(signal.SIGINT)

    def _handler(self, signum: int, frame: Any) -> None:
        self.requested = True
        # a closed output pipe arrives as Ctrl-C (`autotune.closed_output`): recorded as what it was
        self.signum = SIGPIPE if signum == signal.SIGINT and output_closed() else signum
        if self.waiting:
            raise Interrupted(signum)

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {signum: signal.signal(signum, self._handler) for signum in self.SIGNALS}
        try:
            yield
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    @contextlib.contextmanager
    def interruptible(self) -> Iterator[None]:
        """The block a signal may cut at once (waiting on a worker); a signal already noted raises here."""
        self.waiting = True
        try:
            if self.requested:
                raise Interrupted(self.signum)
            yield
        finally:
            self.waiting = False


class Deadline:
    """``--timeout`` bounds the whole call: no trial starts that would end after it, judged by the median
    wall time of this call's full-budget trials; the first trial always starts."""

    def __init__(self, timeout: float | None) -> None:
        self.at = None if timeout is None else time.monotonic() + timeout
        self.full_runs: list[float] = []
        self.started = 0

    def left(self) -> float | None:
        return None if self.at is None else max(0.0, self.at - time.monotonic())

    def record(self, seconds: float | None, *, full_budget: bool) -> None:
        if seconds is not None and full_budget:
            self.full_runs.append(seconds)

    def reached(self) -> bool:
        left = self.left()
        if left is None or self.started == 0:
            return False
        return left <= 0 or (bool(self.full_runs) and left < statistics.median(self.full_runs))
