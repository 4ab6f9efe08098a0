"""Process-wide settings changed only for the length of one call, then restored.

Importing autotune changes nothing global of the caller (warnings filters, logger levels, environment
variables, file descriptors); what a framework or Optuna needs while autotune works is set here, around the
call that needs it.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import os
import warnings
from typing import Callable, Iterator, ParamSpec, TypeVar


@contextlib.contextmanager
def environment_defaults(**values: str) -> Iterator[None]:
    """Set each variable the caller has not set for the body (a framework reads them while it loads), then
    remove it again; variables the caller set are left as they are."""
    added = {key: value for key, value in values.items() if key not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for key, value in added.items():
            if os.environ.get(key) == value:
                del os.environ[key]


@contextlib.contextmanager
def quiet_optuna(level: int | None = None) -> Iterator[None]:
    """Optuna at WARNING verbosity (or ``level``, if quieter) and without its ExperimentalWarning for the body,
    restored afterwards.

    autotune relies on the features Optuna marks experimental (heartbeats, grouped multivariate TPE), and its
    per-trial INFO lines would repeat what autotune reports itself.
    """
    import optuna

    verbosity = optuna.logging.get_verbosity()
    quiet = max(verbosity, optuna.logging.WARNING if level is None else level)
    optuna.logging.set_verbosity(quiet)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
            yield
    finally:
        if optuna.logging.get_verbosity() == quiet:
            optuna.logging.set_verbosity(verbosity)


_Params = ParamSpec("_Params")
_Result = TypeVar("_Result")


def collector_skips_the_callers_heap(function: Callable[_Params, _Result]) -> Callable[_Params, _Result]:
    """Run ``function`` with the objects that existed before the call out of the cycle collector's reach
    (``gc.freeze``), and give them back after (``gc.unfreeze``).

    autotune collects after each probe, trial or OOM so that the next one finds the memory free; in the
    caller's process a full pass also walks the caller's heap (0.3 s with torch, TensorFlow and MindSpore
    loaded, each time), while what it is there to free was all made during the call. Left alone where the
    caller froze objects itself (unfreezing would give theirs back too) or turned the collector off.
    """

    @functools.wraps(function)
    def call(*args: _Params.args, **kwargs: _Params.kwargs) -> _Result:
        if gc.get_freeze_count() or not gc.isenabled():
            return function(*args, **kwargs)
        gc.freeze()
        try:
            return function(*args, **kwargs)
        finally:
            gc.unfreeze()

    return call
