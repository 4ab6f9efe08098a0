"""Journal files after a cut write: find the torn line, keep a copy of the file, and mend it.

Optuna's journal file is one JSON record per line. A write cut short (a full disk, a file-size limit, a kill
during the write) leaves a last line without its newline; Optuna's reader skips it, but the next run appends
its first record onto it, and from then on every read of the file fails (``Expecting ',' delimiter``): every
study in the file is lost. `mend_journal` runs before a journal is opened, under Optuna's own file lock (so
no writer is half-way through a line): a torn tail is removed, a line that is a torn record with a whole one
appended keeps the whole one, an unreadable line is dropped, and the file as it was is copied aside first.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path

import optuna
import optuna.storages.journal

log = logging.getLogger("autotune")
_RECORD_START = b'{"op_code":'


def mend_journal(path: Path) -> Path | None:
    """Repair ``path`` if a cut write damaged it; returns the backup copy's path (after logging one warning
    line naming it), or None when the file was sound."""
    if not path.is_file() or path.stat().st_size == 0:
        return None
    lock = optuna.storages.journal.JournalFileSymlinkLock(str(path))
    lock.acquire()  # blocks while a writer appends: Optuna's writers hold this lock for each append
    try:
        original = path.read_bytes()
        mended, torn, dropped = _mend(original)
        if not torn and not dropped:
            return None
        stamp = time.strftime("%Y%m%dT%H%M%S")
        backup, n = path.with_name(f"{path.name}.torn-{stamp}"), 1
        while backup.exists():  # two repairs in one second keep both copies
            backup, n = path.with_name(f"{path.name}.torn-{stamp}-{n}"), n + 1
        shutil.copy2(path, backup)
        partial = path.with_name(f".{path.name}.mending")
        partial.write_bytes(mended)
        os.replace(partial, path)  # atomic: a reader sees the old file or the mended one, never half of it
    finally:
        lock.release()
    what = f"{torn} bytes of a cut record" + (f" and {dropped} unreadable line(s)" if dropped else "")
    log.warning(f"autotune: warning: journal {path} held {what} (a write that did not finish, e.g. on a full disk): "
                f"removed them, every whole record is kept; the file as it was is saved as {backup}")
    return backup


def _mend(data: bytes) -> tuple[bytes, int, int]:
    """(mended bytes, torn bytes removed, whole lines dropped)."""
    lines = data.split(b"\n")
    tail = lines.pop()  # what follows the last newline: empty for a sound file
    kept, torn, dropped = [], len(tail), 0
    for line in lines:
        if _parses(line):
            kept.append(line)
            continue
        start = line.find(_RECORD_START, 1)
        while start != -1 and not _parses(line[start:]):
            start = line.find(_RECORD_START, start + 1)
        if start == -1:
            dropped += 1
            continue
        kept.append(line[start:])  # a torn record with the next run's whole record appended onto it
        torn += start
    return b"".join(line + b"\n" for line in kept), torn, dropped


def _parses(line: bytes) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False
