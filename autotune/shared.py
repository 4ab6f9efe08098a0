"""Work done once per study when several processes join it: the ceiling fit and the learning-rate range test.

Each is claimed in the study's attributes before it starts; a process that finds a live claim waits for the
claimant's result instead of repeating the work (a fit or a range test takes seconds to minutes, and a second
one only competes with the first for the same machine). Optuna storages have no compare-and-set, so the claim
is settled by the last writer: claimants write, wait `SETTLE_SECONDS`, and read back, and only the one whose
claim is still there goes on. A claim lapses when its process is gone (same host), when it is released, or
after ``wait`` seconds, and the waiter then does the work itself.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from typing import Any, Callable

import optuna

from autotune.storage import _alive

SETTLE_SECONDS = 0.3
POLL_SECONDS = 1.0


def wait_for_shared(study: optuna.Study, key: str, read: Callable[[dict[str, Any]], Any], *,
                    say: Callable[[dict[str, Any]], None] | None = None, wait: float = 900.0) -> Any:
    """``read(study attributes)`` once it gives something: at once, or after another process that claimed
    ``key`` has done the work. None means this process holds the claim and does the work itself (then calls
    `release` when done, or lets the claim lapse with its process)."""
    found = read(_attrs(study))
    if found:
        return found
    claim = _claim_of(study, key)
    if not _live(claim):
        claim = _take(study, key, wait)
        if claim.get("token") == _token():
            return None
    if say is not None:
        work = "ceiling fit" if key.startswith("ceiling") else key.replace("_", " ")
        say({"event": "wait", "message": f"waiting for process {claim.get('pid')} on {claim.get('host')}, which "
                                         f"does the {work} for this study"})
    while _live(claim):
        time.sleep(POLL_SECONDS)
        found = read(_attrs(study))
        if found:
            return found
        claim = _claim_of(study, key)
    return read(_attrs(study)) or None


def release(study: optuna.Study, key: str) -> None:
    """Give up this process's claim on ``key`` (the work is done, or will not be done)."""
    if _claim_of(study, key).get("token") == _token():
        study.set_user_attr(f"claim:{key}", {"released": True})


def claimed_by_another(attrs: dict[str, Any]) -> bool:
    """Whether study attributes ``attrs`` hold a live claim of another process."""
    return any(key.startswith("claim:") and isinstance(value, dict) and value.get("token") != _token()
               and _live(value) for key, value in attrs.items())


def _take(study: optuna.Study, key: str, wait: float) -> dict[str, Any]:
    study.set_user_attr(f"claim:{key}", {"token": _token(), "host": socket.gethostname(), "pid": os.getpid(),
                                         "until": time.time() + wait})
    time.sleep(SETTLE_SECONDS)  # a rival that read no claim writes its own within this window; the last one wins
    return _claim_of(study, key)


def _live(claim: dict[str, Any]) -> bool:
    if not claim.get("token") or claim.get("released") or time.time() > float(claim.get("until", 0)):
        return False
    if claim.get("host") == socket.gethostname() and isinstance(claim.get("pid"), int):
        return claim["pid"] == os.getpid() or _alive(claim["pid"])
    return True


def _claim_of(study: optuna.Study, key: str) -> dict[str, Any]:
    value = _attrs(study).get(f"claim:{key}")
    return value if isinstance(value, dict) else {}


def _attrs(study: optuna.Study) -> dict[str, Any]:
    return study.user_attrs  # read from the storage at each access (Optuna caches trials, not study attributes)


_TOKEN = uuid.uuid4().hex


def _token() -> str:
    return f"{_TOKEN}-{os.getpid()}"  # per process: a forked child is not its parent
