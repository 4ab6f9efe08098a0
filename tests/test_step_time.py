"""A time-budgeted study's ceiling stops where a trial is too short to use the batch: the rule on synthetic
probes (milliseconds), stored fits read under a limit, and the whole path through `tune` on a real torch model
whose step time grows with the batch."""

import dataclasses
import subprocess
import sys
import time

import optuna
import pytest

import autotune
from autotune.backends import get_backend
from autotune.fitting import Budget, Planner, Probe
from autotune.fitting.result import run_plan
from autotune.fitting.step_time import STEPS_PER_TRIAL, StepTimeLimit, capped_record
from autotune.study_open import ceiling_key
from autotune.training import BatchSampler, configured_session, measure_probe
from tests.conftest import TASKS, assert_one_line_error, run_cli

MIB, GIB = 1024**2, 1024**3
COMPUTE_BOUND = f"{TASKS / 'torch_tasks.py'}:compute_bound"


def timed(batch, step_seconds, fits=True):
    return Probe(batch, fits=fits, throughput=batch / step_seconds if fits else None)


def test_the_ceiling_is_read_between_the_slow_probe_and_the_largest_quick_one():
    limit = StepTimeLimit(4.0)  # a step may take 1 s
    assert limit.seconds == 4.0 / STEPS_PER_TRIAL
    assert limit.answer([timed(8, 0.1), timed(64, 0.5)]) is None  # nothing slow yet: the fit goes on
    answer = limit.answer([timed(8, 0.1), timed(64, 0.5), timed(256, 2.0)])
    assert answer.limited_by == "step time" and answer.batch_size == 128  # 64 + 192 * (0.5 / 1.5)
    assert "batch 256 fits in memory but one step takes 2.00 s" in answer.notes[0]


def test_when_every_probe_is_slow_the_ceiling_scales_the_smallest_down():
    answer = StepTimeLimit(1.0).answer([timed(8, 1.0)])  # a step may take 0.25 s
    assert answer.batch_size == 2 and answer.limited_by == "step time"


def test_the_answer_never_reaches_the_slow_size_nor_falls_under_the_quick_one():
    limit = StepTimeLimit(4.0)
    assert limit.answer([timed(100, 0.999), timed(101, 5.0)]).batch_size == 100
    assert limit.answer([timed(100, 0.5), timed(101, 1.0001)]).batch_size == 100  # never the slow 101


def test_step_time_never_lowers_the_ceiling_below_the_spaces_smallest_batch():
    """A ceiling under every choice would leave the study nothing to try: the smallest choice stays, since a
    probe at or above it fitted memory, and the note says its trials run fewer steps."""
    limit = StepTimeLimit(1.5, floor=8)  # GPT-2 under load: batch 8 stepped 0.70 s against 0.375 s
    answer = limit.answer([timed(2, 0.2), timed(16, 1.4)])
    assert answer.batch_size == 8 and answer.limited_by == "step time"
    assert "the ceiling stays at 8, the search space's smallest batch" in answer.notes[0]
    assert limit.answer([timed(8, 0.7)]).batch_size == 8  # the slow probe is the floor itself
    assert StepTimeLimit(1.5).answer([timed(8, 0.7)]).batch_size == 4  # no floor: scaled down as before
    # slow only below the floor: no answer yet, and the floor is the next size to learn
    assert limit.answer([timed(4, 0.5)]) is None and limit.aim([timed(4, 0.5)]) == 8
    assert limit.aim([timed(4, 0.5), Probe(8, fits=False, oom=True)]) is None  # memory decides below it


class CurveExecutor:
    """Runs the planner's sizes on a synthetic memory curve and step-time line, as the worker executor would."""

    def __init__(self, budget, memory, step_seconds):
        self.budget, self.memory, self.step_seconds, self.sizes = budget, memory, step_seconds, []

    def run(self, first, decide):
        batch = first.batch_size
        self.sizes.append(batch)
        need = self.memory(batch)
        if need > self.budget.oom_at:
            return decide(Probe(batch, fits=False, oom=True))
        return decide(Probe(batch, fits=self.budget.fits(need), peak_memory_bytes=need,
                            throughput=batch / self.step_seconds(batch)))


def fit(step_seconds, limit):
    budget = Budget("device_peak", 4 * GIB, 0.0)
    executor = CurveExecutor(budget, lambda b: GIB + 2 * MIB * b, step_seconds)
    answer = run_plan(Planner(budget, ceiling=100_000, resident_slope=False), executor, [], limit)
    return answer, executor.sizes


def test_the_fit_stops_at_the_first_slow_probe_instead_of_probing_the_memory_edge():
    plain, plain_sizes = fit(lambda b: 0.001 * b, None)
    assert plain.limited_by == "memory" and plain.batch_size > 1400  # (4 GiB - 1 GiB) / 2 MiB = 1536
    answer, sizes = fit(lambda b: 0.001 * b, StepTimeLimit(1.2))  # a step may take 0.3 s: batch 300
    assert answer.limited_by == "step time" and 256 <= answer.batch_size <= 300
    assert sum(1 for size in sizes if 0.001 * size > 0.3) == 1  # one slow probe, then the answer
    assert len(sizes) < len(plain_sizes)
    unbound, _ = fit(lambda b: 0.001 * b, StepTimeLimit(60.0))  # no step comes near 15 s: memory decides
    assert unbound == plain


def test_once_two_probes_time_the_step_the_next_aims_just_past_the_limit():
    limit = StepTimeLimit(4.0)  # a step may take 1 s
    assert limit.aim([timed(8, 0.114)]) is None  # one timing: no line yet
    assert limit.aim([timed(8, 0.114), timed(64, 0.664)]) == 123  # GPT-2's pinned probes: 1.25 s predicted there
    assert limit.aim([timed(8, 0.5), timed(64, 0.5)]) is None  # flat step time: nothing to extrapolate
    assert limit.aim([timed(8, 0.1), timed(64, 2.0)]) is None  # already slow: the answer, not an aim
    _, memory_sizes = fit(lambda b: 0.01 + 0.0005 * b, None)
    answer, sizes = fit(lambda b: 0.01 + 0.0005 * b, StepTimeLimit(4.0))  # 1 s at batch 1980, edge at 1536
    assert answer.limited_by == "memory" and sizes == memory_sizes  # the limit lies past the memory edge
    answer, sizes = fit(lambda b: 0.01 + 0.005 * b, StepTimeLimit(4.0))  # 1 s at batch 198
    slow = [size for size in sizes if 0.01 + 0.005 * size > 1.0]
    assert slow and 0.01 + 0.005 * slow[0] <= 1.3  # the one slow probe steps near the limit, not at the edge
    assert answer.limited_by == "step time" and 190 <= answer.batch_size <= 198


def test_a_fit_slow_below_the_floor_probes_the_floor_and_memory_still_rules():
    answer, sizes = fit(lambda b: 0.1 * b, StepTimeLimit(1.2, floor=64))  # every size is slow; 64 fits memory
    assert answer.batch_size == 64 and answer.limited_by == "step time" and 64 in sizes
    assert max(sizes) <= 64  # the edge is never probed
    budget = Budget("device_peak", 4 * GIB, 0.0)
    executor = CurveExecutor(budget, lambda b: GIB + 2 * MIB * b, lambda b: 0.1 * b)
    answer = run_plan(Planner(budget, ceiling=100_000, resident_slope=False), executor, [],
                      StepTimeLimit(1.2, floor=4096))  # past the memory edge (1536): memory's answer stands
    assert answer.limited_by == "memory" and answer.batch_size < 4096


def test_a_stored_fit_is_read_under_each_limit_or_refitted():
    probes = [{"batch_size": b, "fits": True, "throughput": b / (0.001 * b)} for b in (8, 64, 512, 1500)]
    memory = {"batch_size": 1500, "limited_by": "memory", "probes": probes}
    assert capped_record(memory, None) == memory
    assert capped_record(memory, StepTimeLimit(60.0)) == memory  # no probe was slow: memory decides
    lowered = capped_record(memory, StepTimeLimit(1.2))
    assert lowered["limited_by"] == "step time" and 256 <= lowered["batch_size"] <= 300
    assert lowered["step_time_limit"] == pytest.approx(0.3)
    assert capped_record(lowered, StepTimeLimit(1.2))["batch_size"] == lowered["batch_size"]
    assert capped_record(lowered, StepTimeLimit(0.4))["batch_size"] < lowered["batch_size"]  # still in its probes
    short = {**lowered, "probes": probes[:3]}  # fitted under 0.3 s a step: stopped at 512
    assert capped_record(short, StepTimeLimit(4.0)) is None  # a longer step is past its probes: fit again
    assert capped_record(short, None) is None  # and a study counted in steps needs the memory edge


def test_tune_bounds_the_ceiling_by_the_trial_budget_and_the_cache_keeps_both(tmp_path):
    """A real torch model whose step grows with the batch (0.2-1 s at 2000, tens of ms at 64 on this CPU):
    with 1.6 s trials the fit stops at its first probe over 0.4 s, below the whole training set; a study
    counted in steps fits on to the dataset, and a second time-budgeted study reuses that fit's probes."""
    storage = f"sqlite:///{tmp_path / 's.db'}"
    common = dict(n_trials=1, range_test=False, confirm=0, storage=storage)
    autotune.tune(COMPUTE_BOUND, study_name="timed", trial_time=1.6, **common)
    record = optuna.load_study(study_name="timed", storage=storage).user_attrs[ceiling_key("torch", _cpu())]
    assert record["limited_by"] == "step time" and record["batch_size"] < 2000, record
    slow = [p for p in record["probes"] if p["throughput"] and p["batch_size"] / p["throughput"] > 0.4]
    assert len(slow) == 1 and max(p["batch_size"] for p in record["probes"]) == slow[0]["batch_size"]
    assert "fits in memory but one step takes" in record["notes"][0]

    autotune.tune(COMPUTE_BOUND, study_name="steps", trial_steps=2, **common)
    whole = optuna.load_study(study_name="steps", storage=storage).user_attrs[ceiling_key("torch", _cpu())]
    assert whole["limited_by"] == "dataset" and "cached" not in whole  # the step-time fit could not serve

    autotune.tune(COMPUTE_BOUND, study_name="again", trial_time=1.6, **common)
    again = optuna.load_study(study_name="again", storage=storage).user_attrs[ceiling_key("torch", _cpu())]
    assert again["cached"] and again["limited_by"] == "step time" and again["batch_size"] < 2000


def test_a_space_whose_smallest_batch_steps_too_slowly_keeps_it_and_says_to_raise_the_trial_time(tmp_path):
    """The compute-bound model's batch 1024 steps in about 0.3 s here, far over 1/4 of a 0.05 s trial: the
    ceiling stays at the space's smallest batch instead of falling under every choice ("no candidate at or below
    the memory ceiling ...; lower batch_size.low", the wrong limit and the wrong fix), and trials too slow for
    their budget end the command with the fix in their reason, in one line, with no pick to put in context."""
    space = tmp_path / "space.yaml"
    space.write_text("batch_size:\n  choices: [1024, 2048]\noptimizers:\n  sgd: {}\n")
    storage = f"sqlite:///{tmp_path / 's.db'}"
    result = run_cli("tune", COMPUTE_BOUND, "--study", "floor", "--trial-time", "0.05", "--search-space", str(space),
                     "--trials", "1", "--no-range-test", "--storage", storage)
    if result.returncode:  # a machine fast enough to step 1024 in 25 ms completes the trial
        assert_one_line_error(result, "no trial of study 'floor' completed: 1 pruned", "give --trial-time at least")
        trial_line = next(line for line in result.stderr.splitlines() if line.startswith("trial 0:"))
        assert "give --trial-time at least" in trial_line  # the trial's own line carries the fix
        assert "context:" not in result.stderr  # no pick, so no re-runs of it
    study = optuna.load_study(study_name="floor", storage=storage)
    record = study.user_attrs[ceiling_key("torch", _cpu())]
    assert record["batch_size"] == 1024 and record["limited_by"] == "step time", record
    assert "the ceiling stays at 1024, the search space's smallest batch" in record["notes"][0]
    assert [t.user_attrs["batch_size"] for t in study.trials] == [1024]


def test_a_global_batch_study_fits_to_memory(tmp_path):
    """Its step trains the global batch whatever the micro-batch: a step-time bound would only shrink those."""
    storage = f"sqlite:///{tmp_path / 's.db'}"
    autotune.tune(COMPUTE_BOUND, study_name="global", trial_time=1.6, global_batch=64, n_trials=1, range_test=False,
                  confirm=0, storage=storage)
    record = optuna.load_study(study_name="global", storage=storage).user_attrs[ceiling_key("torch", _cpu())]
    assert record["limited_by"] == "dataset", record


def _cpu():
    from autotune.backends import get_backend

    return get_backend("torch").resolve_device("cpu")



def test_a_ceiling_set_by_a_step_timed_on_a_busy_machine_says_so_and_a_reuse_says_it_again():
    """One step timed while another process took the CPU is slower than the task's own: the ceiling it sets is
    low and the cache hands it to later runs, so the note names the load and the fix (--refit on a quiet one)."""
    limit = StepTimeLimit(4.0)  # a step may take 1 s
    quiet = limit.answer([timed(8, 0.1), timed(64, 1.53)])
    busy = dataclasses.replace(timed(64, 1.53), busy=True, other_cpu_cores=1.04)
    loaded = limit.answer([timed(8, 0.1), busy])
    assert quiet is not None and loaded is not None and loaded.batch_size == quiet.batch_size
    assert "other processes" not in quiet.notes[0]
    assert "timed while other processes used 1.0 CPU cores" in loaded.notes[0] and "--refit" in loaded.notes[0]
    record = {"batch_size": loaded.batch_size, "limited_by": "step time",
              "probes": [{"batch_size": 8, "fits": True, "throughput": 80.0},
                         {"batch_size": 64, "fits": True, "throughput": 64 / 1.53, "busy": True,
                          "other_cpu_cores": 1.04}]}
    assert "--refit on a quiet machine" in capped_record(record, limit)["notes"][0]  # as a cached fit is reused


def test_a_probe_records_other_processes_cpu_use():
    """The figure the note reads, from a real torch step beside a process that takes a core."""
    task = autotune.load_task(COMPUTE_BOUND)
    backend = get_backend("torch")
    data = task.load_data()
    session = configured_session(backend, task, data, backend.resolve_device("cpu"), {"batch_size": 64},
                                 optimizer={"name": "sgd", "lr": 0.01}, seed=0)
    burner = subprocess.Popen([sys.executable, "-c", "import time\nend = time.time() + 20\nwhile time.time() < end: pass"])
    try:
        time.sleep(0.3)
        figures = measure_probe(session, BatchSampler(2000, 64, 0), steps=8)
    finally:
        burner.kill()
        burner.wait()
    assert figures["other_cpu_cores"] is not None and figures["other_cpu_cores"] > 0.5 and figures["busy"], figures
