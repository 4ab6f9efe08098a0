"""Storage faults on real storages: nothing finished is lost, a fault is one line, a typo creates nothing."""

import os
import resource
import sqlite3
import subprocess
import sys

import optuna
import pytest

from autotune.failures import finished
from autotune.storage import open_storage, retry_outlasts_grace, retry_window
from tests.conftest import ROOT, TASKS, assert_one_line_error, run_cli


@pytest.mark.parametrize("url", ["sqlite:///typo/s.db", "journal:typo/j.log", "sqlite:///file:typo/s.db?mode=ro&uri=true"])
@pytest.mark.parametrize("command", [("best", "s"), ("studies",), ("report", "s")])
def test_a_read_command_on_a_mistyped_storage_creates_nothing(tmp_path, url, command):
    result = run_cli(*command, "--storage", url, cwd=tmp_path)
    assert_one_line_error(result, "no storage file", "typo/")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", [("best", "s"), ("studies",), ("report", "s")])
def test_a_read_command_on_a_fresh_machine_names_the_file_it_looked_for_and_creates_nothing(tmp_path, command):
    result = run_cli(*command, "--json", cwd=tmp_path) if command[0] != "report" else run_cli(*command, cwd=tmp_path)
    assert_one_line_error(result, "no storage file", "studies/autotune.db")
    assert list(tmp_path.iterdir()) == []


SMALL = (f"{TASKS / 'torch_tasks.py'}:small", "--trial-steps", "5", "--search-space",
         str(ROOT / "tests" / "spaces" / "small.yaml"), "--no-range-test", "--study", "s", "--quiet")


def _tune(url, trials, file_size_limit=None):
    """``autotune tune`` on the small task; with ``file_size_limit``, under RLIMIT_FSIZE: a write past it fails
    with EFBIG after writing what fits, as on a full disk (Python ignores SIGXFSZ). Root is bound by it too."""
    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, file_size_limit))

    return subprocess.run([sys.executable, "-m", "autotune", "tune", "--confirm", "0", *SMALL, "--trials", str(trials), "--storage", url],
                          cwd=ROOT, capture_output=True, text=True, timeout=600,
                          preexec_fn=limit if file_size_limit else None, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def _finished_values(url):
    study = optuna.load_study(study_name="s", storage=open_storage(url))
    return {t.number: t.values for t in finished(study.trials)}


def test_a_journal_cut_by_a_full_disk_keeps_every_finished_trial_and_resumes(tmp_path):
    path = tmp_path / "j.log"
    url = f"journal:{path}"
    assert _tune(url, 2).returncode == 0
    cut = _tune(url, 8, file_size_limit=path.stat().st_size + 5000)
    assert_one_line_error(cut, "the storage failed during the run", "File too large", "finished before it are kept")
    torn = path.read_bytes()
    assert not torn.endswith(b"\n"), "the limit fell on a line boundary: no torn line to mend"
    before = {t.number: t.values for t in finished(  # what plain Optuna still reads: the torn tail is skipped
        optuna.load_study(study_name="s", storage=optuna.storages.JournalStorage(
            optuna.storages.journal.JournalFileBackend(str(path)))).trials)}
    assert len(before) >= 3
    again = _tune(url, 8)
    assert again.returncode == 0, again.stderr
    warnings = [line for line in again.stderr.splitlines() if "warning" in line]
    backups = list(tmp_path.glob("j.log.torn-*"))
    assert len(warnings) == 1 and len(backups) == 1 and str(backups[0]) in warnings[0], again.stderr
    assert backups[0].read_bytes() == torn
    after = _finished_values(url)
    assert len(after) == 8 and all(after[n] == values for n, values in before.items())


def test_sqlite_on_a_full_disk_stops_in_one_line_and_resumes(tmp_path):
    path = tmp_path / "s.db"
    url = f"sqlite:///{path}"
    assert _tune(url, 2).returncode == 0
    before = _finished_values(url)
    full = _tune(url, 30, file_size_limit=path.stat().st_size + 8192)
    assert_one_line_error(full, "the storage failed during the run", "finished before it are kept")
    assert sqlite3.connect(path).execute("pragma integrity_check").fetchone() == ("ok",)
    kept = _finished_values(url)
    assert len(kept) >= 2 and all(kept[n] == values for n, values in before.items())
    again = _tune(url, len(kept) + 2)
    assert again.returncode == 0, again.stderr
    after = _finished_values(url)
    assert len(after) == len(kept) + 2 and all(after[n] == values for n, values in kept.items())


def test_a_read_only_sqlite_database_is_one_line(tmp_path):
    path = tmp_path / "s.db"
    assert _tune(f"sqlite:///{path}", 1).returncode == 0
    size = path.stat().st_size
    # root may write a chmod 0444 file; SQLite's read-only open mode is a fault root cannot pass
    result = _tune(f"sqlite:///file:{path}?mode=ro&uri=true", 3)
    assert_one_line_error(result, "readonly database")
    assert path.stat().st_size == size and len(_finished_values(f"sqlite:///{path}")) == 1


def test_a_journal_line_torn_then_appended_to_is_mended(tmp_path):
    path = tmp_path / "j.log"
    study = optuna.create_study(study_name="s", storage=open_storage(f"journal:{path}"))
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=3)
    whole = path.read_bytes()
    # what an older autotune left: a cut record, then the next run's record appended onto it, then more
    appended = b'{"op_code":2,"worker_id":"other","study_id":0,"user_attr":{"note":"kept"}}\n'
    path.write_bytes(whole + b'{"op_code":5,"worker_id":"w","trial_id":9,"sta' + appended + appended)
    with pytest.raises(ValueError):  # what every command met from then on
        optuna.load_study(study_name="s", storage=optuna.storages.JournalStorage(
            optuna.storages.journal.JournalFileBackend(str(path))))
    mended = optuna.load_study(study_name="s", storage=open_storage(f"journal:{path}"))
    assert [t.values for t in mended.trials] == [t.values for t in study.trials]
    assert mended.user_attrs == {"note": "kept"}  # the record appended onto the cut one is recovered
    assert len(list(tmp_path.glob("j.log.torn-*"))) == 1


def test_a_storage_fault_in_a_background_thread_prints_no_traceback(monkeypatch):
    import threading

    from sqlalchemy.exc import OperationalError

    from autotune.guard import guarded

    reported = []
    monkeypatch.setattr(threading, "excepthook", lambda args: reported.append(str(args.exc_value)))

    def in_thread(error):
        def raise_it():
            raise error
        thread = threading.Thread(target=raise_it)
        thread.start()
        thread.join()

    @guarded
    def run():
        in_thread(OperationalError("UPDATE trial_heartbeats", {}, Exception("disk I/O error")))
        in_thread(RuntimeError("a bug in a thread"))

    run()
    assert reported == ["a bug in a thread"]  # what Python's hook would have printed as a traceback


def test_the_default_retry_stays_under_the_heartbeat_grace_less_one_beat_and_a_longer_chosen_one_is_named(
        tmp_path):
    # 20 s under the default 30 s grace less a 10 s beat; a short --heartbeat H (grace 2H) cuts it to H
    assert retry_window(heartbeat=10, grace=30, retry=None) == 20
    assert retry_window(heartbeat=3, grace=6, retry=None) == 3
    assert retry_window(heartbeat=1, grace=2, retry=None) == 1
    assert retry_window(heartbeat=1, grace=2, retry=0) == 0 and retry_window(heartbeat=1, grace=2, retry=9) == 9
    server = "postgresql://u@db.example/autotune"
    assert retry_outlasts_grace(server, heartbeat=1, grace=2, retry=1) is None
    warning = retry_outlasts_grace(server, heartbeat=1, grace=2, retry=5) or ""
    assert "--storage-retry 5 s outlasts" in warning and "--storage-retry 1 or less" in warning
    # a local file is never waited for: nothing to warn of
    assert retry_outlasts_grace(f"sqlite:///{tmp_path / 's.db'}", heartbeat=1, grace=2, retry=5) is None
    assert retry_outlasts_grace(f"journal:{tmp_path / 's.log'}", heartbeat=1, grace=2, retry=5) is None
    # SQLite keeps the heartbeat it is given (what the grace above is measured in)
    store = open_storage(f"sqlite:///{tmp_path / 'beat.db'}", heartbeat=1, grace=2)
    assert store.get_heartbeat_interval() == 1


def test_importing_what_a_database_needs_opens_nothing(tmp_path):
    # `tune` imports the storage's modules while the workers' server loads the framework, before any check
    code = ("import sys; from autotune.storage import import_for; import_for(sys.argv[1]); "
            "print('alembic.command' in sys.modules, 'sqlalchemy.orm' in sys.modules)")
    url = f"sqlite:///{tmp_path / 'new.db'}"
    done = subprocess.run([sys.executable, "-c", code, url], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["True", "True"]
    assert list(tmp_path.iterdir()) == []  # no database file made
