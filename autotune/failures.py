"""Failed trials the sampler learns from, the trials that count as finished, and why a study fell short.

Optuna's TPE reads only COMPLETE and PRUNED trials: a FAIL trial is invisible to it, so a configuration that
crashes, hangs or raises was drawn again and again. A trial that fails because of its configuration is
therefore stored as PRUNED with a violated constraint (``Trial.set_constraint``), which TPE ranks below every
feasible trial, and with a ``failure`` user attribute saying why. It does not count as finished (it trained
nothing), and every display shows it as FAIL: PRUNED is only the form the sampler can read.

A *surplus* trial is no failure: with an exact ``--trials`` across processes, a trial created while the others
already filled the count is stored FAIL unrun (Optuna has no state for "never ran"). No failure count, summary
or shortfall includes it; displays show it as SURPLUS.
"""

from __future__ import annotations

import collections
from typing import Any, Iterable, Mapping

import optuna

from autotune.storage import stale_reason, storage_option

INFEASIBLE_KINDS = ("crash", "timeout", "error", "oom")
"""Worker outcomes that say the configuration cannot run here: the sampler must steer away from them."""
UNFINISHED_KINDS = ("crash", "timeout", "error")
"""Of those, the ones that do not count towards ``--trials`` (an OOM prunes as before and counts)."""
SURPLUS = "surplus"
"""The start of a surplus trial's ``failure`` attribute (``surplus: ...``): the one mark of such a trial."""
_CONSTRAINT = "runs"


def mark_infeasible(trial: optuna.Trial, kind: str, message: str) -> None:
    """Record why ``trial`` failed and make the sampler see its configuration as infeasible; the caller then
    raises `optuna.TrialPruned` (a FAIL state would hide it from the sampler again)."""
    trial.set_user_attr("failure", f"{kind}: {message}")
    trial.set_user_attr("failure_kind", kind)
    trial.set_constraint(_CONSTRAINT, 1.0)


def surplus(trial: optuna.trial.FrozenTrial) -> bool:
    """Whether ``trial`` was created over an exact ``--trials`` count and stored FAIL without running."""
    return (trial.state == optuna.trial.TrialState.FAIL
            and str(trial.user_attrs.get("failure") or "").startswith(f"{SURPLUS}:"))


def failed(trial: optuna.trial.FrozenTrial) -> bool:
    """Whether ``trial`` failed: a FAIL state (a surplus trial's aside), or a configuration failure stored as
    infeasible."""
    if trial.state == optuna.trial.TrialState.FAIL:
        return not surplus(trial)
    return trial.user_attrs.get("failure_kind") in UNFINISHED_KINDS


def shown_state(trial: optuna.trial.FrozenTrial) -> str:
    """The state to show a person: FAIL for a failed trial, whatever form the sampler reads it in; SURPLUS for
    one that never ran."""
    return "SURPLUS" if surplus(trial) else "FAIL" if failed(trial) else trial.state.name


def finished(trials: Iterable[optuna.trial.FrozenTrial]) -> list[optuna.trial.FrozenTrial]:
    """Trials that count towards ``--trials``: complete or pruned, not failed."""
    done = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return [t for t in trials if t.state in done and not failed(t)]


def reason(trial: optuna.trial.FrozenTrial, study_attrs: Mapping[str, Any] | None = None) -> str | None:
    """Why ``trial`` failed: its ``failure`` attribute, else the heartbeat check's reason among ``study_attrs``."""
    own = trial.user_attrs.get("failure")
    return str(own) if own is not None else stale_reason(trial, study_attrs or {})


def failure_summary(trials: Iterable[optuna.trial.FrozenTrial],
                    study_attrs: Mapping[str, Any] | None = None) -> str:
    """``'7 failed (crash 5, timeout 2; last: crash: killed by SIGSEGV)'``, or '' when none failed."""
    bad = [t for t in trials if failed(t)]
    if not bad:
        return ""
    kinds = collections.Counter(_kind(t, study_attrs) for t in bad)
    last = (reason(bad[-1], study_attrs) or "no reason stored")[:120]
    return f"{len(bad)} failed ({', '.join(f'{k} {n}' for k, n in kinds.most_common())}; last: {last})"


def report_command(study_name: str, storage: str | None) -> str:
    """The `autotune report` command line for a study, with its storage unless it is the default (a password in
    the URL is masked: the line reaches the terminal)."""
    import shlex

    return f"`autotune report {shlex.quote(study_name)}{storage_option(storage)}`"


def shortfall(study: optuna.Study, wanted: int, *, timed_out: bool, attempts: int | None,
              storage: str | None = None) -> str | None:
    """Why ``study`` ends with fewer than ``wanted`` finished trials (one line), or None if it has enough."""
    trials = study.get_trials(deepcopy=False)
    done = len(finished(trials))
    if done >= wanted:
        return None
    if timed_out:
        why = "--timeout was reached"
    elif attempts is not None:
        why = f"the run stops after {attempts} attempts so that a failing task cannot loop"
    else:
        why = "the run was stopped"
    failures = failure_summary(trials, study.user_attrs)
    return (f"study {study.study_name!r} has {done} of {wanted} finished trials: {why}"
            + (f"; {failures}" if failures else "")
            + f"; {report_command(study.study_name, storage)} lists every trial")


def none_completed(study: optuna.Study, *, storage: str | None = None) -> str:
    """Why ``study`` has no complete trial to pick (one line): how many were pruned or failed, and the last reason
    of each, since a pruned trial's reason (a step too slow for its budget) is usually the fix."""
    trials = study.get_trials(deepcopy=False)
    pruned = [t for t in trials if t.state == optuna.trial.TrialState.PRUNED and not failed(t)]
    parts = [f"{len(pruned)} pruned (last: {(reason(pruned[-1]) or 'by the pruner')[:160]})"] if pruned else []
    failures = failure_summary(trials, study.user_attrs)
    parts += [failures] if failures else []
    return (f"no trial of study {study.study_name!r} completed" + (f": {'; '.join(parts)}" if parts else "")
            + f"; {report_command(study.study_name, storage)} lists every trial")


def _kind(trial: optuna.trial.FrozenTrial, study_attrs: Mapping[str, Any] | None) -> str:
    kind = trial.user_attrs.get("failure_kind")
    if kind:
        return str(kind)
    return (reason(trial, study_attrs) or "").split(":", 1)[0] or "failed"
