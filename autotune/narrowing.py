"""Narrowing the learning rates before the search: one range test per optimizer at the reference batch,
within the share of the study's budget `autotune.budget` allows, its outcome stored for the report and for
every process that joins the study."""

from __future__ import annotations

from typing import Any, Callable, Mapping

import optuna

from autotune.budget import RANGE_TEST_GRACE, RANGE_TEST_SHARE, Phases, range_test_budget
from autotune.space import SearchSpace
from autotune.training import RANGE_TEST_MIN_STEPS
from autotune.trial import run_range_tests

Say = Callable[[dict[str, Any]], None]
Run = Callable[[Callable[..., Any], dict[str, Any], float, Callable[[Any], Any]], Any]
"""Runs a function with keyword arguments within a timeout (in the study's worker, or here), passing what it
sends through its channel to the last argument; None on failure."""


def narrow_learning_rates(study: optuna.Study, space: SearchSpace, *, handle: Any, device: Any, batch_size: int,
                          seed: int, n_trials: int, trial_time: float | None, trial_steps: int | None,
                          timeout: float | None, run: Run, phases: Phases, say: Say,
                          first_step_seconds: float | None = None) -> None:
    """Set ``space.lr_ranges`` from a range test (or from another process's, or a resumed study's).

    ``first_step_seconds``: what a fresh process's first training step cost in the fit (`fresh_first_step`);
    a share shorter than that would stop the test before any optimizer's sweep, so none is run."""
    from autotune.shared import release, wait_for_shared

    stored = None
    if not space.lr_ranges:  # another process on this study may be running it: use its ranges
        stored = wait_for_shared(study, "range_test", shared_lr_ranges, say=say)
        space.lr_ranges = {k: tuple(v) for k, v in (stored or {}).get("lr_ranges", {}).items()}
    if stored is not None:  # decided by another process, even with no ranges (skipped): not decided again here
        return
    seconds, steps = range_test_budget(n_trials=n_trials, trial_time=trial_time, trial_steps=trial_steps,
                                       timeout=timeout, optimizers=len(space.optimizers))
    if not space.lr_ranges and steps >= RANGE_TEST_MIN_STEPS and seconds is not None and first_step_seconds \
            and first_step_seconds > seconds:
        reason = (f"a fresh process's first training step took {first_step_seconds:.3g} s in the fit (tracing or "
                  f"compiling it), more than the range test's whole {seconds:.2g} s ({RANGE_TEST_SHARE:.0%} of the "
                  "study)")
        say({"event": "warning", "message": f"the learning-rate range test is skipped: {reason}; the learning "
             "rates stay as the search space gives them (a longer --trial-time or --timeout gives it room)"})
        _store_tests(study, space, {name: {"best_lr": None, "skipped": reason} for name in space.optimizers})
    elif not space.lr_ranges and steps >= RANGE_TEST_MIN_STEPS:
        say({"event": "range_test", "optimizer": ", ".join(sorted(space.optimizers))})
        kwargs = dict(task=handle, optimizers=sorted(space.optimizers), batch_size=batch_size, device=device.id,
                      low=space.lr_low, high=space.lr_high, seed=seed, steps=steps, seconds=seconds)
        sent: dict[str, Any] = {}  # each optimizer's test as the worker finishes it: kept if the run is stopped

        def receive(message: Any) -> None:
            _, name, outcome = message
            sent[name] = outcome

        with phases.timed("range_test"):
            tests = run(run_range_tests, kwargs, 600.0 if seconds is None else seconds + RANGE_TEST_GRACE,
                        receive)
        if tests is None and seconds is not None:
            tests = sent
            say({"event": "warning", "message": f"the learning-rate range test was stopped at its {seconds:.2g} s "
                 f"({RANGE_TEST_SHARE:.0%} of the study) after {len(sent)} of {len(space.optimizers)} optimizers: "
                 "the others' learning rates stay as the search space gives them"})
        tests = tests or {}
        for optimizer, value in tests.items():
            if value is not None and value.get("best_lr"):
                space.lr_ranges[optimizer] = narrowed(space, value)
        _store_tests(study, space, tests)
    release(study, "range_test")


def _store_tests(study: optuna.Study, space: SearchSpace, tests: Mapping[str, Any]) -> None:
    """The narrowed ranges and each optimizer's test (or why it was skipped), for the report and for every
    process that joins the study (`shared_lr_ranges` waits for ``range_tests``)."""
    stored = dict(study.user_attrs.get("search_space", {}))
    stored["lr_ranges"] = {k: list(v) for k, v in space.lr_ranges.items()}
    stored["range_tests"] = {k: {"best_lr": v.get("best_lr"), "diverge_lr": v.get("diverge_lr"),
                                 "skipped": v.get("skipped"), "rates": v.get("rates"), "losses": v.get("losses")}
                             for k, v in tests.items() if v}
    study.set_user_attr("search_space", stored)


def fresh_first_step(records: list[Mapping[str, Any] | None]) -> float | None:
    """The shortest first step of a fit's first probe among ``records`` (the study's ceiling records): what a
    fresh process pays before its first step ends (tracing or compiling it); None when no record has it."""
    firsts = [probes[0].get("first_step_seconds") for probes in
              ((record or {}).get("probes") or [] for record in records) if probes]
    measured = [float(value) for value in firsts if value]
    return min(measured) if measured else None


def shared_lr_ranges(attrs: Mapping[str, Any]) -> dict[str, Any] | None:
    """The range test's outcome once a process has stored it (``range_tests`` is written with the ranges)."""
    stored = attrs.get("search_space") or {}
    return {"lr_ranges": stored.get("lr_ranges") or {}} if "range_tests" in stored else None


def narrowed(space: SearchSpace, test: Mapping[str, Any]) -> tuple[float, float]:
    """Learning-rate range after a range test: a decade and a half below the best rate, up to the edge."""
    best = float(test["best_lr"])
    edge = float(test["diverge_lr"]) if test.get("diverge_lr") else best * 3
    low = max(space.lr_low, best / 30)
    high = min(space.lr_high, max(best * 1.5, min(edge, best * 3)))
    if not low < high:
        low, high = space.lr_low, space.lr_high
    return low, high
