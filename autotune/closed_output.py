"""A closed terminal pipe (`autotune tune … | head`) stops the command as Ctrl-C does.

Python ignores SIGPIPE, so a write to a pipe whose reader has gone raises BrokenPipeError wherever a progress
line happens to be printed: inside a fit, between trials, in the interpreter's last flush. Left alone it ends the
run with a traceback and exit 1, past the clean-up that an interrupt gets (a new study with nothing in it is
removed, the finished trials are kept, the exit code is 128 + the signal's number).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from typing import Any, Iterator, TextIO

from autotune.errors import Interrupted


class _Closed:
    """Whether one of the command's outputs has been found closed: only the first finding interrupts."""

    def __init__(self) -> None:
        self.seen = False


class _WatchedStream:
    """``stream`` as it was, except that a broken pipe sends its descriptor to /dev/null (so that later lines,
    and the interpreter's flush at exit, go nowhere quietly) and, the first time, interrupts the main thread."""

    def __init__(self, stream: TextIO, closed: _Closed) -> None:
        self._stream, self._closed = stream, closed

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            self._gone()
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._gone()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)

    def _gone(self) -> None:
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._stream.fileno())
            os.close(devnull)
        except (OSError, ValueError, AttributeError):  # no descriptor behind it: nothing will flush it at exit
            pass
        if self._closed.seen or threading.current_thread() is not threading.main_thread():
            return
        self._closed.seen = True
        raise Interrupted(signal.SIGPIPE)


@contextlib.contextmanager
def stopped_when_output_closes() -> Iterator[None]:
    """Within the block, a write to a closed stdout or stderr raises `Interrupted` (SIGPIPE) once, so the
    command stops through its interrupt path; the streams are restored afterwards."""
    closed = _Closed()
    saved = sys.stdout, sys.stderr
    sys.stdout = _WatchedStream(sys.stdout, closed)
    sys.stderr = _WatchedStream(sys.stderr, closed)
    try:
        yield
    finally:
        sys.stdout, sys.stderr = saved
