"""One exception root for autotune, with children that say who must act.

`AutotuneError` and its children carry a message written for the user (what is wrong and how to fix it);
the CLI prints that one line and exits 2. `TrialError` marks a trial that failed while the study goes on.
"""

from __future__ import annotations


class AutotuneError(Exception):
    """Root of every error autotune raises on purpose: the message is the user-facing line."""


class TaskError(AutotuneError):
    """The task reference or the Task object is missing, broken or malformed."""


class BackendNotInstalled(AutotuneError):
    """A backend was asked for whose framework is not importable."""


class UnknownBackend(AutotuneError):
    """A backend name that autotune does not know."""


class SearchSpaceError(AutotuneError):
    """A search-space file or dictionary that does not validate."""


class StorageError(AutotuneError):
    """An Optuna storage that cannot be reached or a study that is not in it."""


class DeviceError(AutotuneError):
    """A device that does not exist for the chosen backend."""


class FitError(AutotuneError):
    """Batch-size fitting cannot give an answer (limit too small, model broken, ...)."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, SIGTERM or a closed output pipe (SIGPIPE): the run stops as on Ctrl-C; ``signum`` gives the exit
    code (128 + signum)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum

    @property
    def reason(self) -> str:
        import signal

        if self.signum == signal.SIGPIPE:
            return "the output was closed"
        return "Ctrl-C" if self.signum == signal.SIGINT else signal.Signals(self.signum).name


class TrialError(Exception):
    """One trial failed (OOM, crash, timeout, divergence): record it and go on.

    ``kind`` is a short machine-readable word (``oom``, ``crash``, ``timeout``, ``error``, ``diverged``,
    ``interrupted``) and the message says what happened.
    """

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message

    def __str__(self) -> str:
        return f"{self.kind}: {self.message}"


def first_line(exc: BaseException) -> str:
    """``'TypeName: first line of the message'``: an error in one line."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__
