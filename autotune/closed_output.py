"""A closed terminal pipe (`autotune tune … | head`) stops the command as Ctrl-C does.

Python ignores SIGPIPE, so a write to a pipe whose reader has gone raises BrokenPipeError wherever a progress
line happens to be printed: inside a fit, between trials, in a relay thread, in the interpreter's last flush.
Left alone it ends the run with a traceback and exit 1, past the clean-up that an interrupt gets (a new study
with nothing in it is removed, the finished trials are kept, the exit code is 128 + the signal's number).

Here the failed write sends the stream to /dev/null and interrupts the main thread as Ctrl-C would
(`_thread.interrupt_main`), from any thread: during the trials `autotune.stopping.Interrupts` takes it, so a
storage write is never cut half-way. SIGPIPE itself stays ignored: the workers' own pipes break too, and each
of those is a failed trial, not a stop. The exit code and the reason say SIGPIPE (`stop_signal`, `stop_reason`).
"""

from __future__ import annotations

import _thread
import contextlib
import os
import signal
import sys
import threading
from typing import Any, Iterator, TextIO

_closed = threading.Event()
"""Set once an output of the running command was found closed."""

SIGPIPE = int(getattr(signal, "SIGPIPE", 13))


def stop_signal(exc: BaseException) -> int:
    """The signal a stop stands for: SIGPIPE once an output was found closed, else the interrupt's own."""
    return SIGPIPE if _closed.is_set() else int(getattr(exc, "signum", signal.SIGINT))


def stop_reason(exc: BaseException) -> str:
    """What stopped the run, in words, for its message and the interrupted trial's record."""
    return "the output was closed" if _closed.is_set() else str(getattr(exc, "reason", "Ctrl-C"))


def output_closed() -> bool:
    return _closed.is_set()


class _WatchedStream:
    """``stream`` as it was, except that a broken pipe sends its descriptor, and any other of the command's
    outputs on the same pipe (``2>&1``), to /dev/null: later lines and the interpreter's flush at exit go
    nowhere quietly, while an output still open (the terminal, for ``tune | head``) keeps its lines."""

    def __init__(self, stream: TextIO, streams: list["_WatchedStream"]) -> None:
        self._stream, self._streams = stream, streams
        self.stopping = True  # a closed pipe stops the command; not in the last flush, when nothing is left

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

    def _descriptor(self) -> int | None:
        try:
            return self._stream.fileno()
        except (OSError, ValueError, AttributeError):  # no descriptor behind it (a test's capture)
            return None

    def _gone(self) -> None:
        self._to_devnull()
        if _closed.is_set():
            return
        _closed.set()
        if self.stopping:
            _thread.interrupt_main()  # as Ctrl-C: at the main thread's next safe point

    def _to_devnull(self) -> None:
        broken = self._descriptor()
        if broken is None:
            return
        try:
            pipe = os.fstat(broken)
            targets = [broken]
            for other in self._streams:
                descriptor = other._descriptor()
                if descriptor is not None and descriptor != broken:
                    seen = os.fstat(descriptor)
                    if (seen.st_dev, seen.st_ino) == (pipe.st_dev, pipe.st_ino):
                        targets.append(descriptor)
            devnull = os.open(os.devnull, os.O_WRONLY)
            for target in targets:
                os.dup2(devnull, target)
            os.close(devnull)
        except OSError:
            pass


@contextlib.contextmanager
def stopped_when_output_closes() -> Iterator[None]:
    """Within the block, a write to a closed stdout or stderr stops the command as Ctrl-C does (`stop_signal`
    then gives SIGPIPE); the streams are restored afterwards, what they buffered written out first."""
    _closed.clear()
    streams: list[_WatchedStream] = []
    saved = sys.stdout, sys.stderr
    streams += [_WatchedStream(sys.stdout, streams), _WatchedStream(sys.stderr, streams)]
    sys.stdout, sys.stderr = streams[0], streams[1]
    try:
        yield
    finally:
        for stream in streams:  # through the watch: a pipe closed by now costs no error at the interpreter's exit
            stream.stopping = False
            stream.flush()
        sys.stdout, sys.stderr = saved
