"""What a failed `tune` call leaves behind: a storage fault becomes one line, an empty new study is removed.

A full disk, a read-only database or a lost server surfaces from deep inside Optuna as an OSError or a
SQLAlchemy error, after the study is open; `guarded` turns those into `StorageError` (one line, exit 2) and
says that the finished trials are kept. A call that created its study and fails before the study holds
anything of value (a bad input, Ctrl-C during the ceiling fit) removes that study again, so that a corrected
rerun starts clean and `autotune studies` lists no empty husk.
"""

from __future__ import annotations

import contextvars
import functools
import os
import sqlite3
import threading
from typing import Any, Callable, TypeVar

import optuna

from autotune.errors import AutotuneError, StorageError, first_line
from autotune.reconnect import lost_connection
from autotune.redact import redact, url_secrets

F = TypeVar("F", bound=Callable[..., Any])
_created: contextvars.ContextVar[list[tuple[optuna.Study, Any]] | None] = contextvars.ContextVar(
    "autotune_created", default=None)
_STORAGE_CODE = (f"{os.sep}optuna{os.sep}storages{os.sep}", f"{os.sep}sqlalchemy{os.sep}")


def note_new_study(study: optuna.Study, *, storage: optuna.storages.BaseStorage) -> None:
    """Record that the running `tune` call created ``study`` in ``storage`` (the storage object it was opened
    with; removed again if the call fails early)."""
    created = _created.get()
    if created is not None:
        created.append((study, storage))


def guarded(function: F) -> F:
    """Wrap `tune`: storage faults become `StorageError`; a study it created is removed if it fails while the
    study has no trial and no ceiling yet."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        token = _created.set([])
        previous_hook = threading.excepthook

        def quiet_storage_faults(hook_args: Any) -> None:
            # Optuna's heartbeat thread writes too: its fault would print a traceback, while the run's next
            # write in this thread meets the same fault and reports it in one line
            if storage_fault(hook_args.exc_value) is None:
                previous_hook(hook_args)

        threading.excepthook = quiet_storage_faults
        try:
            return function(*args, **kwargs)
        except (AutotuneError, KeyboardInterrupt):
            for study, storage in _created.get() or []:
                _remove_if_empty(study, storage)
            raise
        except Exception as exc:
            fault = storage_fault(exc)
            if fault is None:
                raise
            url = kwargs.get("storage")
            reason = redact(first_line(fault), url_secrets(url))
            if url and lost_connection(exc) is not None:  # cut mid-statement, where no retry could take over
                raise StorageError(f"lost the storage server {redact(url, url_secrets(url))} ({reason[:200]}): the "
                                   "trials finished before are kept, and the next run fails the one left running; "
                                   "once the server is back, run the same command again") from None
            raise StorageError(f"the storage failed during the run ({reason[:300]}): the trials finished before "
                               "it are kept, and the next run fails the one left running; free the disk or fix "
                               "the storage, then run the same command again") from None
        finally:
            threading.excepthook = previous_hook
            _created.reset(token)

    return wrapper  # type: ignore[return-value]


def storage_fault(exc: BaseException) -> BaseException | None:
    """The I/O or database error raised inside Optuna's storage code or SQLAlchemy that ``exc`` is or comes
    from (Optuna re-raises a failed write as an AssertionError whose context is the OSError), else None."""
    seen: list[BaseException] = []
    while exc is not None and exc not in seen and len(seen) < 8:
        seen.append(exc)
        if _is_storage_error(exc):
            return exc
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return None


def _is_storage_error(exc: BaseException) -> bool:
    try:
        from sqlalchemy.exc import SQLAlchemyError
    except ImportError:  # pragma: no cover - optuna requires it
        SQLAlchemyError = OSError  # type: ignore[misc,assignment]
    if isinstance(exc, SQLAlchemyError):
        return True
    if not isinstance(exc, (OSError, sqlite3.Error, ValueError)):
        return False
    frames = []
    tb = exc.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame.f_code.co_filename)
        tb = tb.tb_next
    in_storage = any(marker in name for name in frames for marker in _STORAGE_CODE)
    # a ValueError from the storage is a journal line it cannot read; elsewhere it is a bug, kept as it is
    return in_storage and (not isinstance(exc, ValueError) or any("journal" in name for name in frames))


def _remove_if_empty(study: optuna.Study, storage: optuna.storages.BaseStorage) -> None:
    try:
        attrs = study.user_attrs
        if study.get_trials(deepcopy=False) or any(k.startswith("ceiling:") for k in attrs):
            return
        from autotune.shared import claimed_by_another

        if claimed_by_another(attrs):  # a process that joined meanwhile is working on it: not a husk
            return
        optuna.delete_study(study_name=study.study_name, storage=storage)
    except Exception:  # the storage may be what failed: leaving the husk is all that is lost
        pass

