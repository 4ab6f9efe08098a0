"""Optuna storages by URL: the default SQLite file, any RDB URL, a journal file; passwords never shown.

RDB storages get Optuna's heartbeat, so trials left RUNNING by a killed process are failed on the next run.
Every trial also records its owner (host and process id), so that on storages without a heartbeat (journal
files) a RUNNING trial whose process is gone on this host is failed too.
"""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path
from typing import Any

import warnings

import optuna

from autotune.errors import StorageError

# Heartbeats and grouped TPE are marked experimental by Optuna; they are what we rely on, so say it once here.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
optuna.logging.set_verbosity(optuna.logging.WARNING)

DEFAULT_STORAGE = "sqlite:///studies/autotune.db"
HEARTBEAT_SECONDS = 10
GRACE_SECONDS = 30

_PASSWORD = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@]*:)(?P<password>[^@]*)(?P<tail>@)")


def redact(url: str) -> str:
    """``postgresql://user:secret@host/db`` → ``postgresql://user:***@host/db``."""
    return _PASSWORD.sub(lambda m: f"{m.group('head')}***{m.group('tail')}", url)


def open_storage(url: str | None = None, *, heartbeat: int = HEARTBEAT_SECONDS, grace: int = GRACE_SECONDS) -> Any:
    """An Optuna storage for ``url`` (default: SQLite under ./studies), or `StorageError` with the URL redacted.

    ``journal:PATH`` (or a path ending in ``.log``/``.jsonl``) opens a journal file.
    """
    url = url or DEFAULT_STORAGE
    try:
        if url.startswith("journal:") or url.endswith((".log", ".jsonl")):
            path = url.split(":", 1)[1] if url.startswith("journal:") else url
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            backend = optuna.storages.journal.JournalFileBackend(path)
            return optuna.storages.JournalStorage(backend)
        if url.startswith("sqlite:///"):
            path = url[len("sqlite:///"):]
            if path and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
        if "://" not in url:
            raise StorageError(f"storage {redact(url)!r} is not a URL: use sqlite:///path.db, "
                               "postgresql://user:pass@host/db or journal:path.log")
        return optuna.storages.RDBStorage(
            url, heartbeat_interval=heartbeat, grace_period=grace,
            engine_kwargs={"pool_pre_ping": True} if not url.startswith("sqlite") else None,
        )
    except StorageError:
        raise
    except Exception as exc:
        reason = redact(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
        raise StorageError(f"cannot open storage {redact(url)}: {reason[:300]}; check the URL and that the "
                           "server is reachable") from None


def owner() -> dict[str, Any]:
    """Who runs a trial: this host and process."""
    return {"host": socket.gethostname(), "pid": os.getpid()}


def fail_orphaned_trials(study: optuna.Study) -> int:
    """Fail RUNNING trials whose owner process on this host is gone (storages without a heartbeat).

    Returns how many were failed; with a heartbeat storage, Optuna's own stale-trial check runs as well.
    """
    failed = 0
    if isinstance(study._storage, optuna.storages.RDBStorage):
        try:
            failed += len(optuna.storages.fail_stale_trials(study) or [])
        except Exception:
            pass
    host = socket.gethostname()
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        who = trial.user_attrs.get("owner") or {}
        if who.get("host") != host or not isinstance(who.get("pid"), int) or _alive(who["pid"]):
            continue
        storage = study._storage
        storage.set_trial_user_attr(trial._trial_id, "failure", "interrupted: its process ended without finishing")
        storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.FAIL)
        failed += 1
    return failed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
