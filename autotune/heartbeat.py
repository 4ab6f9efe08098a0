"""A running trial's heartbeat, for ask-and-tell loops: Optuna beats only inside ``Study.optimize``.

With an RDB storage made with ``heartbeat_interval``, a trial whose process dies stops beating and is failed
by the next worker's ``optuna.storages.fail_stale_trials`` after the grace period. Only public storage calls.
"""

from __future__ import annotations

import threading
import warnings
from typing import Any

import optuna


class Heartbeat:
    """Beat for trial ``number`` of ``study`` every interval until `stop` (a no-op on storages without one)."""

    def __init__(self, store: Any, study: optuna.Study, number: int, *, study_id: int | None = None) -> None:
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        interval = getattr(store, "get_heartbeat_interval", lambda: None)()
        if not interval:
            return
        if study_id is None:
            study_id = store.get_study_id_from_name(study.study_name)
        trial_id = store.get_trial_id_from_study_id_trial_number(study_id, number)
        store.record_heartbeat(trial_id)  # at once: a trial must never look stale while it starts
        self._thread = threading.Thread(target=self._beat, args=(store, trial_id, float(interval)),
                                        name=f"autotune-heartbeat-{number}", daemon=True)
        self._thread.start()

    def _beat(self, store: Any, trial_id: int, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                store.record_heartbeat(trial_id)
            except Exception:  # a lost server fails the trial's own writes; the beat only goes quiet
                return

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


def fail_stale(study: optuna.Study) -> int:
    """Fail the study's trials whose heartbeat stopped and return how many (0 on storages without one)."""
    running = optuna.trial.TrialState.RUNNING
    try:
        before = {t.number for t in study.get_trials(deepcopy=False, states=(running,))}
        if not before:
            return 0
        with warnings.catch_warnings():  # experimental in Optuna's eyes; it is what RDB heartbeats are for
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
        now_failed = {t.number for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.FAIL,))}
        return len(before & now_failed)
    except Exception:
        return 0
