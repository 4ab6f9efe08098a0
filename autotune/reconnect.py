"""Riding out a lost database server: an RDB storage that waits for the server for a bounded time.

A PostgreSQL (or MySQL) server restarted or briefly unreachable mid-study makes storage calls fail with a
connection error. `ReconnectingStorage` waits for it in two places, both public APIs: every new database
connection (SQLAlchemy's ``do_connect`` event: with ``pool_pre_ping`` each storage call that finds its pooled
connection dead reconnects there, whichever Optuna method made it), and every public storage call, retried when
its connection dropped mid-statement. The wait ends when the server answers again, or ``retry_seconds`` after
the outage began; it is said once on stderr. Past that it raises `StorageError` naming the server (password
masked), and every later call fails at once, so that the cleanup on the way out does not wait again.
"""

from __future__ import annotations

import functools
import logging
import sqlite3
import threading
import time
from typing import Any, Callable

import optuna
import sqlalchemy.event

from autotune.errors import StorageError, first_line
from autotune.redact import redact, url_secrets

STORAGE_RETRY_SECONDS = 20.0
"""How long a run waits for a lost database server by default (``--storage-retry``): under the heartbeat's
grace less one beat (`autotune.storage`: 30 - 10 s), so that after an outage this long no process finds another's
running trial stale and fails it. A shorter heartbeat cuts it (`autotune.storage.retry_window`)."""
_PAUSE = 1.0
"""Seconds between attempts: a restarting server takes about that to accept connections again."""
_RETRIED = (
    "create_new_study", "delete_study", "set_study_user_attr", "set_study_system_attr", "get_study_id_from_name",
    "get_study_name_from_id", "get_study_directions", "get_study_user_attrs", "get_study_system_attrs",
    "get_all_studies", "set_trial_param", "get_trial_id_from_study_id_trial_number",
    "get_trial_number_from_id", "get_trial_param", "set_trial_state_values", "set_trial_intermediate_value",
    "set_trial_user_attr", "set_trial_system_attr", "get_trial", "get_all_trials", "get_n_trials",
    "get_best_trial", "get_trial_params", "get_trial_user_attrs", "get_trial_system_attrs", "record_heartbeat",
)
"""Optuna's public storage calls that reach the database (what Study, Trial and the heartbeat use).
``create_new_trial`` is left out: a retry after a lost reply would create a second trial, RUNNING for good."""

log = logging.getLogger("autotune")


class ReconnectingStorage(optuna.storages.RDBStorage):
    """An `optuna.storages.RDBStorage` whose public calls wait up to ``retry_seconds`` for a lost server.

    The wait is shared by all threads (the run and its heartbeat): one outage, one message, one deadline.
    """

    def __init__(self, url: str, *, retry_seconds: float = STORAGE_RETRY_SECONDS, **kwargs: Any) -> None:
        super().__init__(url, **kwargs)  # connects once: a server that is not there at the start fails at once
        self.retry_seconds = float(retry_seconds)
        self._secrets = url_secrets(url)
        self._where = redact(url, self._secrets)
        self._lock = threading.Lock()
        self._since: float | None = None
        self._gave_up: str | None = None
        sqlalchemy.event.listen(self.engine, "do_connect", self._connect)

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state.pop("_lock", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)  # a new engine
        self._lock = threading.Lock()
        sqlalchemy.event.listen(self.engine, "do_connect", self._connect)

    def _connect(self, dialect: Any, record: Any, cargs: Any, cparams: Any) -> Any:
        """A new DBAPI connection, waiting while the server refuses them (SQLAlchemy's ``do_connect`` hook)."""
        while True:
            if self._gave_up is not None:
                raise StorageError(self._gave_up)
            try:
                connection = dialect.connect(*cargs, **cparams)
            except Exception as exc:
                if self.retry_seconds <= 0 or not _connection_state(exc):
                    raise
                self._wait(exc)
                continue
            if self._since is not None:
                self._back()
            return connection

    def call(self, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``method(self, *args, **kwargs)`` (an `RDBStorage` method), retried while the server is lost."""
        retried = False
        while True:
            if self._gave_up is not None:
                raise StorageError(self._gave_up)
            try:
                result = method(self, *args, **kwargs)
            except Exception as exc:
                if self._gave_up is not None:  # whatever the dead connection left behind, the cause is this
                    raise StorageError(self._gave_up) from None
                if retried:
                    done, answer = self._already_done(method.__name__, exc, args, kwargs)
                    if done:
                        result = answer
                        break
                if self.retry_seconds <= 0 or lost_connection(exc) is None:
                    raise
                self.remove_session()  # the thread's session holds the dead connection's transaction
                self._wait(lost_connection(exc) or exc)
                retried = True
                continue
            break
        if self._since is not None:
            self._back()
        return result

    def _already_done(self, name: str, exc: Exception, args: tuple[Any, ...],
                      kwargs: dict[str, Any]) -> tuple[bool, Any]:
        # a write whose commit reached the server before the connection dropped must not fail or count twice
        if name == "set_trial_state_values" and isinstance(exc, optuna.exceptions.UpdateFinishedTrialError):
            state = kwargs.get("state", args[1] if len(args) > 1 else None)
            return super().get_trial(args[0]).state == state, True
        if name == "create_new_study" and isinstance(exc, optuna.exceptions.DuplicatedStudyError):
            study_name = kwargs.get("study_name", args[1] if len(args) > 1 else None)
            return study_name is not None, super().get_study_id_from_name(study_name) if study_name else None
        return False, None

    def _wait(self, exc: BaseException) -> None:
        with self._lock:
            now = time.monotonic()
            if self._gave_up is not None:
                raise StorageError(self._gave_up)
            if self._since is None:
                self._since = now
                log.warning(f"autotune: warning: lost the storage server {self._where} ({self._reason(exc)}): "
                            f"waiting up to {self.retry_seconds:g} s for it to come back (--storage-retry)")
            if now - self._since > self.retry_seconds:
                self._gave_up = (
                    f"lost the storage server {self._where} for over {self.retry_seconds:g} s "
                    f"({self._reason(exc)[:200]}): the trials finished before are kept, and the next run fails the "
                    "one left running; start the server (or wait longer with --storage-retry), then run the same "
                    "command again")
                raise StorageError(self._gave_up) from None
            pause = min(_PAUSE, self.retry_seconds - (now - self._since))
        time.sleep(max(pause, 0.05))

    def _reason(self, exc: BaseException) -> str:
        return redact(first_line(exc), self._secrets)

    def _back(self) -> None:
        with self._lock:
            if self._since is None:
                return
            gone, self._since = time.monotonic() - self._since, None
        log.warning(f"autotune: the storage server {self._where} answers again after {gone:.0f} s: going on")


def _connection_state(error: Any) -> bool:
    """Whether a driver error says the server cannot be reached: no SQL state (refused, reset), or one of class
    08 (connection exception) or 57P (the server shutting down or starting). SQLite has no server to lose."""
    if isinstance(error, sqlite3.Error):
        return False
    state = getattr(error, "sqlstate", None) or getattr(error, "pgcode", None)
    return state is None or str(state).startswith(("08", "57P"))


def _retrying(name: str) -> Callable[..., Any]:
    method = getattr(optuna.storages.RDBStorage, name)

    @functools.wraps(method)
    def retrying(self: ReconnectingStorage, *args: Any, **kwargs: Any) -> Any:
        return self.call(method, *args, **kwargs)

    return retrying


for _name in _RETRIED:
    setattr(ReconnectingStorage, _name, _retrying(_name))


def lost_connection(exc: BaseException) -> BaseException | None:
    """The database error in ``exc``'s chain that says the connection to the server is gone, else None.

    SQLAlchemy marks a dropped connection (``connection_invalidated``); a refused new one is an OperationalError
    whose driver error has no SQL state, or one of class 08 (connection exception) or 57P (server shutting down
    or starting). Other database errors (a full disk, a constraint) are not waited for.
    """
    from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

    seen: list[BaseException] = []
    while exc is not None and exc not in seen and len(seen) < 8:
        seen.append(exc)
        if isinstance(exc, DBAPIError):
            if exc.connection_invalidated:
                return exc
            if isinstance(exc, (OperationalError, InterfaceError)):
                if _connection_state(exc.orig):
                    return exc
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return None

