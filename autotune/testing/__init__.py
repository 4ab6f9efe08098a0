"""What a backend's own tests use: the conformance suite every backend runs, and registration for a test.

A backend proves itself by subclassing `BackendConformanceSuite` in its tests and giving the ``backend_case``
fixture (a `BackendCase`: its name, a tasks file and a CPU memory cap); see `autotune.testing.backend_suite`.
`cpu_session` and `train` serve a backend's own contract tests.
The suite needs pytest; it is imported on first use, so that a worker running `autotune.testing.runs` does
not map pytest too.
"""

from __future__ import annotations

from typing import Any

from autotune.testing.sessions import cpu_session, train

__all__ = ["BackendCase", "BackendConformanceSuite", "cpu_session", "temporarily_registered", "train"]
_SUITE = ("BackendCase", "BackendConformanceSuite", "temporarily_registered")


def __getattr__(name: str) -> Any:
    if name in _SUITE:
        from autotune.testing import backend_suite

        return getattr(backend_suite, name)
    raise AttributeError(f"module 'autotune.testing' has no attribute {name!r}")
