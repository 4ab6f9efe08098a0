"""Optuna storages by URL: the default SQLite file, any RDB URL, a journal file; passwords never shown.

RDB storages get Optuna's heartbeat, so trials left RUNNING by a killed process are failed on the next run.
Every trial also records its owner (host and process id), so that on storages without a heartbeat (journal
files) a RUNNING trial whose process is gone on this host is failed too.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Any, Mapping

import optuna
import optuna.storages.journal
import psutil

from autotune.errors import StorageError
from autotune.journal import mend_journal
from autotune.reconnect import STORAGE_RETRY_SECONDS, ReconnectingStorage
from autotune.redact import redact as _redact, unencoded_at_in_password, url_secrets
from autotune.scoped import quiet_optuna

DEFAULT_STORAGE = "sqlite:///studies/autotune.db"
HEARTBEAT_SECONDS = 10
GRACE_SECONDS = 30



def redact(text: str, url: str | None = None) -> str:
    """``text`` with passwords masked (``postgresql://user:***@host/db``), the secrets of ``url`` included."""
    return _redact(text, url_secrets(url))


def storage_option(storage: str | None) -> str:
    """`` --storage URL`` for a command line a message suggests (password masked, shell-quoted); empty for the
    default storage, which needs no option."""
    import shlex

    return f" --storage {shlex.quote(redact(storage, storage))}" if storage else ""


def retry_window(*, heartbeat: int, grace: int, retry: float | None) -> float:
    """Seconds a lost database server is waited for: ``retry`` when given, else the default
    (`STORAGE_RETRY_SECONDS`) cut to the heartbeat's ``grace`` less one beat, so that after the longest default
    wait no process finds another's running trial stale (its last beat is at most one beat old when the wait
    begins)."""
    if retry is not None:
        return float(retry)
    return min(STORAGE_RETRY_SECONDS, float(max(grace - heartbeat, 0)))


def retry_outlasts_grace(url: str | None, *, heartbeat: int, grace: int, retry: float) -> str | None:
    """The warning for a ``retry`` the user chose beside a ``heartbeat`` they chose, when the wait outlasts the
    grace less one beat on a database server; None when it does not, or ``url`` is a local file (never waited
    for).

    A warning, not a refusal: each value is valid and together they make a real trade (ride out a long outage,
    at the risk that another process fails this one's running trial as interrupted once the server is back:
    that trial is lost, stored failed with its reason, and every finished trial stays); refusing would forbid
    the one way to survive a long outage with a short heartbeat."""
    url = url or DEFAULT_STORAGE
    if retry <= grace - heartbeat or url.startswith("sqlite") or is_journal(url):
        return None
    return (f"--storage-retry {retry:g} s outlasts the heartbeat's grace less one beat ({grace} - {heartbeat} s): "
            "after an outage that long another process may fail this one's running trial as interrupted; give "
            f"--storage-retry {max(grace - heartbeat, 0)} or less to keep it")


def open_storage(url: str | None = None, *, heartbeat: int = HEARTBEAT_SECONDS, grace: int = GRACE_SECONDS,
                 must_exist: bool = False, retry: float | None = None) -> Any:
    """An Optuna storage for ``url`` (default: SQLite under ./studies), or `StorageError` with the URL redacted.

    ``journal:PATH`` (or a path ending in ``.log``/``.jsonl``) opens a journal file. With ``must_exist`` (the
    read commands) a SQLite or journal file that is not there is an error, not a new empty database. On a
    database server, a call that finds the server gone waits up to ``retry`` seconds for it (`autotune.reconnect`;
    None: `retry_window`'s default, under ``grace`` less ``heartbeat``).
    """
    url = url or DEFAULT_STORAGE
    try:
        file = local_file(url)
        if file is not None and not file.exists():
            if must_exist:
                raise StorageError(f"no storage file {str(file.absolute())!r} ({redact(url, url)}): check --storage; "
                                   "autotune tune creates it")
            file.parent.mkdir(parents=True, exist_ok=True)
        if file is not None and is_journal(url):
            mend_journal(file)  # a cut last line would make the file unreadable after the next append
            backend = optuna.storages.journal.JournalFileBackend(str(file))
            return optuna.storages.JournalStorage(backend)
        if "://" not in url:
            raise StorageError(f"storage {redact(url, url)!r} is not a URL: use sqlite:///path.db, "
                               "postgresql://user:pass@host/db or journal:path.log")
        if unencoded_at_in_password(url):
            raise StorageError(f"storage {redact(url, url)}: the password holds a raw '@', which ends it for the "
                               "URL parser: percent-encode it (@ as %40, : as %3A, / as %2F)")
        return _rdb_storage(url, heartbeat, grace, retry_window(heartbeat=heartbeat, grace=grace, retry=retry))
    except StorageError:
        raise
    except Exception as exc:
        reason = redact(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__, url)
        raise StorageError(f"cannot open storage {redact(url, url)}: {reason[:300]}; check the URL and that the "
                           "server is reachable") from None


RDB_MODULES = ("sqlalchemy.orm", "alembic.command", "alembic.config", "alembic.migration", "alembic.script")
"""What Optuna's database storage imports when it opens (with alembic's templates and highlighter: 0.3 to 0.8 s)."""


def import_for(url: str | None) -> None:
    """Import what opening ``url`` will need, without opening it: `tune` does this while the workers' server is
    still loading the framework, so that the wait pays for it and no file or study is made before the checks."""
    import importlib

    if is_journal(url or DEFAULT_STORAGE):
        return
    for module in RDB_MODULES:
        try:
            importlib.import_module(module)
        except ImportError:  # opening the storage says what is missing
            return


# Two processes creating one new database race to create its tables: the loser sees "UNIQUE constraint failed:
# alembic_version" or "table ... already exists", and a moment later finds the winner's schema complete
_CREATION_RACE = ("alembic_version", "already exists", "database is locked")


STALE_REASON_KEY = "failure:{number}"
"""Study attribute holding the reason of trial ``number`` failed by the heartbeat check (`stale_reason`)."""


def _stale_recorder(grace: int) -> Any:
    """Optuna's ``heartbeat_stale_trial_callback``: store why a stale trial failed, as a study attribute.

    Optuna fails a stale trial before calling back, so the trial itself can no longer be written; the study can.
    """
    def record(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        who = trial.user_attrs.get("owner") or {}
        whose = f" from process {who.get('pid')} on {who.get('host')}" if who else ""
        study.set_user_attr(STALE_REASON_KEY.format(number=trial.number),
                            f"interrupted: no heartbeat for over {grace} s{whose}")
    return record


def stale_reason(trial: optuna.trial.FrozenTrial, study_attrs: Mapping[str, Any]) -> str | None:
    """Why ``trial`` was failed by the heartbeat check, from the study's attributes ``study_attrs``, if it was."""
    reason = study_attrs.get(STALE_REASON_KEY.format(number=trial.number))
    return str(reason) if reason is not None else None


def _rdb_storage(url: str, heartbeat: int, grace: int, retry: float, attempts: int = 4) -> Any:
    options = dict(heartbeat_interval=heartbeat, grace_period=grace,
                   heartbeat_stale_trial_callback=_stale_recorder(grace))
    for attempt in range(attempts):
        try:
            with quiet_optuna():  # the heartbeat is an experimental option
                if url.startswith("sqlite"):  # a local file: its faults (full disk, read-only) do not pass
                    return optuna.storages.RDBStorage(url, **options)
                return ReconnectingStorage(url, retry_seconds=retry, engine_kwargs={"pool_pre_ping": True}, **options)
        except Exception as exc:
            if attempt == attempts - 1 or not any(sign in str(exc) for sign in _CREATION_RACE):
                raise
            time.sleep(0.25 * (attempt + 1))


def is_journal(url: str) -> bool:
    """``journal:PATH``, or a plain path ending in ``.log`` or ``.jsonl``."""
    return url.startswith("journal:") or (url.endswith((".log", ".jsonl")) and "://" not in url)


def local_file(url: str) -> Path | None:
    """The file behind a journal or SQLite URL (``sqlite:///file:PATH?mode=ro&uri=true`` included), else None."""
    if is_journal(url):
        return Path(url.split(":", 1)[1] if url.startswith("journal:") else url)
    if not url.startswith("sqlite:///"):
        return None
    path, _, query = url[len("sqlite:///"):].partition("?")
    if "uri=true" in query.lower() and path.startswith("file:"):
        path = path[len("file:"):]
    if not path or path == ":memory:" or path.startswith("file::memory:"):
        return None
    return Path(path)


WORKER_ENV = "AUTOTUNE_WORKER"
"""Set by `autotune.parallel` in each per-device process: the worker's label (``cpu#0``, ``cuda:1``)."""


def owner() -> dict[str, Any]:
    """Who runs a trial: this host and process (and the `autotune.parallel` worker with its cores, if one)."""
    who: dict[str, Any] = {"host": socket.gethostname(), "pid": os.getpid()}
    if os.environ.get(WORKER_ENV):
        who["worker"] = os.environ[WORKER_ENV]
        if hasattr(os, "sched_getaffinity"):
            who["cpus"] = sorted(os.sched_getaffinity(0))
        if os.environ.get("OMP_NUM_THREADS", "").isdigit():
            who["threads"] = int(os.environ["OMP_NUM_THREADS"])
    return who


def fail_orphaned_trials(study: optuna.Study, *, storage: optuna.storages.BaseStorage,
                         watch: UnownedWatch | None = None) -> int:
    """Fail RUNNING trials that can no longer finish (`abandoned`: their owner process on this host is gone, or,
    with ``watch``, they have had no owner for too long), with the reason in their ``failure`` attribute; then,
    on heartbeat storages, those whose heartbeat stopped.

    ``storage`` is the one ``study`` was opened with (`open_storage`). Returns how many were failed.
    """
    study_id = storage.get_study_id_from_name(study.study_name)
    running = optuna.trial.TrialState.RUNNING
    host = socket.gethostname()

    failed = 0
    for trial in study.get_trials(deepcopy=False, states=(running,)):
        reason = abandoned(trial, watch=watch, host=host)
        if reason is None:
            continue
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
        try:
            storage.set_trial_user_attr(trial_id, "failure", reason)
            storage.set_trial_state_values(trial_id, optuna.trial.TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # another process failed it first (or its owner finished it): nothing left to do
        failed += 1
    if isinstance(storage, optuna.storages.RDBStorage) and storage.get_heartbeat_interval():
        # after the owner check, so that the trials it can explain carry their reason; Optuna's own check
        # fails the rest (another host's), as Optuna's optimize() would, without one
        before = len(study.get_trials(deepcopy=False, states=(running,)))
        try:
            with quiet_optuna():  # fail_stale_trials is experimental
                optuna.storages.fail_stale_trials(study)
        except Exception:  # a storage fault shows at the next write, in one line
            return failed
        failed += before - len(study.get_trials(deepcopy=False, states=(running,)))
    return failed


def orphaned(who: Mapping[str, Any], host: str | None = None) -> bool:
    """Whether a trial's ``owner`` record names a process on this host (``host``) that is gone."""
    pid = who.get("pid")
    return who.get("host") == (host or socket.gethostname()) and isinstance(pid, int) and not _alive(pid)


LOCAL_UNOWNED_SECONDS = 15.0
"""How long a RUNNING trial with no ``owner`` record may stay so on a local file (SQLite, journal) before it is
judged dead: autotune names the owner in the writes right after creating a trial, so only a process cut between
them (a full disk, a kill) leaves one; three SQLite lock waits (5 s each) fit in it. A database server's writes
may wait out an outage, so there the heartbeat's grace applies. A study autotune tunes is autotune's: a plain
Optuna worker's trials on it have no owner record and would be failed too."""


def unowned_grace(storage: Any) -> float:
    """Seconds a trial may be seen without an owner record on ``storage`` before it is judged dead."""
    local = isinstance(storage, optuna.storages.JournalStorage) or (
        isinstance(storage, optuna.storages.RDBStorage) and str(storage.url).startswith("sqlite"))
    return LOCAL_UNOWNED_SECONDS if local else float(GRACE_SECONDS)


class UnownedWatch:
    """How long this process has seen each RUNNING trial without an owner record, on its own monotonic clock
    (a trial's stored start is another host's wall clock, in its time zone)."""

    def __init__(self, grace: float) -> None:
        self.grace = grace
        self._since: dict[int, float] = {}

    def reason(self, trial: optuna.trial.FrozenTrial) -> str | None:
        """Why ``trial`` is dead, once it has been seen without an owner for over the grace; else None."""
        if trial.user_attrs.get("owner"):
            self._since.pop(trial.number, None)
            return None
        first = self._since.setdefault(trial.number, time.monotonic())
        if time.monotonic() - first <= self.grace:
            return None
        return ("interrupted: its process stopped right after creating it (no owner recorded in "
                f"{self.grace:g} s, e.g. a full disk or a kill)")


def abandoned(trial: optuna.trial.FrozenTrial, *, watch: UnownedWatch | None = None,
              host: str | None = None) -> str | None:
    """Why RUNNING ``trial`` can no longer finish, or None: its owner on this host is gone, or (with ``watch``)
    it has had no owner for longer than the watch's grace."""
    who = trial.user_attrs.get("owner")
    if who:
        return (f"interrupted: its process {who.get('pid')} on {who.get('host')} ended without finishing"
                if orphaned(who, host) else None)
    return None if watch is None else watch.reason(trial)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a killed child its parent has not reaped yet is a zombie: dead, though kill(pid, 0) still finds it
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
