"""Each training precision has its own batch-size ceiling (fit-batch, bench --batch ceiling, tune), and
``tune --device auto`` trains in the device, precision and compile mode the bench table ranks first.

Real torch on the CPU: bf16 autocast keeps half-size activations, so the memory-hungry test task fits about
twice the fp32 batch under the same cap."""

from __future__ import annotations

import json

import optuna
import pytest

import autotune
from autotune.backends import get_backend
from autotune.bench import BenchResult, explain, rank, trial_budget_seconds
from autotune.space import load_space
from autotune.study_open import ceiling_key
from tests.conftest import EXAMPLES, TASKS, assert_one_line_error, run_cli

HUNGRY = f"{TASKS / 'torch_tasks.py'}:hungry"
SMALL = f"{TASKS / 'torch_tasks.py'}:small"
CPU = get_backend("torch").resolve_device("cpu")
BF16 = "bf16" in get_backend("torch").precisions(CPU)
needs_bf16 = pytest.mark.skipif(not BF16, reason="this CPU's torch build has no bf16 kernels")


def test_fit_batch_names_a_precision_the_device_lacks_in_one_line():
    assert_one_line_error(run_cli("fit-batch", SMALL, "--precision", "fp16"),
                          "torch has no fp16 training on cpu", "it has fp32")


@needs_bf16
def test_fit_batch_reports_the_precision_it_fitted_in():
    result = run_cli("fit-batch", SMALL, "--precision", "bf16", "--max-batch", "64", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["precision"] == "bf16"


def test_a_trial_batch_is_bounded_by_its_own_precision_ceiling():
    space = load_space("torch", get_backend("torch").optimizer_names,
                       overrides={"precision": {"choices": ["fp32", "bf16"]}})
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    ceilings = {"fp32": 64, "bf16": 512}
    seen = {"fp32": set(), "bf16": set()}
    for _ in range(40):
        trial = study.ask()
        config = space.suggest(trial, ceilings)
        seen[config["precision"]].add(config["batch_size"])
        study.tell(trial, 1.0)
    assert max(seen["fp32"]) <= 64 and max(seen["bf16"]) <= 512
    assert max(seen["bf16"]) > 64  # bf16 trials do use the room fp32 lacks


@needs_bf16
def test_tune_fits_one_ceiling_per_precision(tmp_path):
    events: list[dict] = []
    result = autotune.tune(HUNGRY, device="cpu", n_trials=2, trial_steps=2, trial_time=None, confirm=0,
                           range_test=False, storage=f"sqlite:///{tmp_path / 's.db'}", memory_limit=800 * 2**20,
                           space_overrides={"precision": {"choices": ["fp32", "bf16"]}}, progress=events.append)
    attrs = result.study.user_attrs
    fp32, bf16 = (attrs[ceiling_key("torch", CPU, p)]["batch_size"] for p in ("fp32", "bf16"))
    assert bf16 > fp32  # half-size activations: a larger batch fits the same cap
    assert [e["precision"] for e in events if e.get("event") == "ceiling"] == ["fp32", "bf16"]
    ceilings = {"fp32": fp32, "bf16": bf16}
    for trial in result.study.get_trials():
        config = trial.user_attrs["config"]
        assert config["batch_size"] <= ceilings[config["precision"]]


def test_the_precision_is_part_of_the_ceiling_cache_key():
    from autotune.ceiling_cache import ceiling_key as cache_key
    from autotune.fingerprint import describe_task
    from autotune.task import load_task

    structure = describe_task(task=load_task(SMALL))
    options = {"device": CPU, "versions": {}, "memory_limit": None, "margin": 0.05, "max_batch": None}
    keys = {cache_key(structure, precision=p, **options) for p in ("fp32", "bf16", "fp16")}
    assert len(keys) == 3 and cache_key(structure, **options) in keys


def test_tune_stops_before_any_study_on_a_precision_the_device_lacks(tmp_path):
    result = run_cli("tune", SMALL, "--trials", "1", "--trial-steps", "2", "--no-range-test", "--confirm", "0",
                     "--no-report", "--storage", f"sqlite:///{tmp_path / 's.db'}", "--search-space",
                     str(_space_file(tmp_path, "fp32, fp16")))
    assert_one_line_error(result, "no fp16 training on cpu", "drop it from precision.choices")
    assert not (tmp_path / "s.db").exists()


def _space_file(tmp_path, precisions: str):
    path = tmp_path / "space.yaml"
    path.write_text(f"precision:\n  choices: [{precisions}]\n", encoding="utf-8")
    return path


@needs_bf16
def test_tune_device_auto_trains_in_the_bench_winner_mode(tmp_path):
    events: list[dict] = []
    result = autotune.tune(str(EXAMPLES / "torch_digits.py"), device="auto", n_trials=2, trial_steps=5,
                           trial_time=None, confirm=0, range_test=False, storage=f"sqlite:///{tmp_path / 's.db'}",
                           space_overrides={"precision": {"choices": ["fp32", "bf16"]}}, progress=events.append)
    choice = result.study.user_attrs["device_choice"]
    table = choice["table"]
    winner = next(row for row in table["rows"] if row["rank"] == 1)
    assert table["winner"] == winner["mode"]
    assert {row["precision"] for row in table["rows"]} == {"fp32", "bf16"}
    assert (choice["device"], choice["precision"], choice["compile"]) == (
        winner["device"], winner["precision"], winner["compile"])
    why = next(e["message"] for e in events if e.get("event") == "device")
    assert why.startswith(f"{winner['mode']} trains fastest") and "× the runner-up" in why
    for trial in result.study.get_trials():
        config = trial.user_attrs["config"]
        assert (config["precision"], config["compile"]) == (winner["precision"], winner["compile"])
        assert trial.user_attrs["measured"]["device"] == winner["device"]
    assert result.study.user_attrs["search_space"]["precision"]["choices"] == [winner["precision"]]
    assert (result.device, result.precision, result.compile) == (
        winner["device"], winner["precision"], winner["compile"])


def test_the_study_budget_decides_whether_a_compiled_mode_pays():
    rows = [{"mode": "cpu fp32 eager", "ok": True, "throughput": 100.0, "compile_seconds": 0.0},
            {"mode": "cpu fp32 compiled", "ok": True, "throughput": 150.0, "compile_seconds": 4.0}]
    for trial_time, expected in ((5.0, "cpu fp32 eager"), (60.0, "cpu fp32 compiled")):
        budget = trial_budget_seconds(trial_time, None, None, 10)
        ranked = [dict(row) for row in rows]
        rank(ranked, budget)
        assert ranked[0]["mode"] == expected
    assert trial_budget_seconds(None, 50, 120.0, 4) == 30.0  # steps: the timeout's share per trial


def test_explain_names_the_winner_and_the_runner_up_with_the_ratio():
    result = BenchResult(
        task="t", backend="torch", batch_size=8, budget_seconds=10.0, skipped=[], seconds=0.0,
        rows=[{"mode": "cpu bf16 eager", "ok": True, "throughput": 300.0, "compile_seconds": 0.0,
               "batch_size": 8, "compile": False},
              {"mode": "cpu fp32 eager", "ok": True, "throughput": 100.0, "compile_seconds": 0.0,
               "batch_size": 8, "compile": False}])
    rank(result.rows, 10.0)
    assert explain(result) == ("cpu bf16 eager trains fastest: 300 samples/s over a 10 s budget at batch 8, "
                               "3.00× the runner-up cpu fp32 eager (100)")


@needs_bf16
def test_bench_ceiling_trains_each_precision_at_its_own_fit():
    from autotune.bench import bench
    from autotune.memory import fit_batch_size

    result = bench(SMALL, devices="cpu", precisions="fp32,bf16", compile_modes="off", batch_size="ceiling",
                   seconds=0.2, latency_seconds=0.0, isolation="none")
    assert {row["precision"] for row in result.rows} == {"fp32", "bf16"}
    for row in result.rows:
        assert row["ok"], row.get("failure")
        fitted = fit_batch_size(SMALL, device="cpu", precision=row["precision"], isolation="none")
        assert row["batch_size"] == fitted.batch_size and fitted.precision == row["precision"]
