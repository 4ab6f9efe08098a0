"""Process-wide settings changed only for the length of one call, then restored.

Importing autotune changes nothing global of the caller (warnings filters, logger levels, environment
variables, file descriptors); what a framework or Optuna needs while autotune works is set here, around the
call that needs it.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from typing import Iterator


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
