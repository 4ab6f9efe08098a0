"""One machine, many devices: ``tune --devices cpu*2`` runs two pinned CPU workers on one study (this machine
has two cores), and a worker killed mid-trial takes only that trial down."""

import argparse
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import optuna
import pytest

from autotune.backends import get_backend
from autotune.errors import DeviceError
from autotune.parallel import child_arguments, plan_slots, shared_arguments
from autotune.study import _share_of
from tests.conftest import EXAMPLES, ROOT, assert_one_line_error, run_cli

TASK = str(EXAMPLES / "torch_digits.py")
SPACE = str(ROOT / "tests" / "spaces" / "small.yaml")
TORCH = get_backend("torch")


def test_cpu_workers_split_the_cores_and_bad_specs_are_one_line():
    slots = plan_slots("cpu*3", TORCH, cpus=range(8))
    assert [s.cpus for s in slots] == [[0, 1, 2], [3, 4, 5], [6, 7]]
    assert [s.label for s in slots] == ["cpu#0", "cpu#1", "cpu#2"] and {s.device for s in slots} == {"cpu"}
    assert [s.cpus for s in plan_slots("all", TORCH, cpus=[0, 1])] == [[0, 1]]  # no accelerator: the CPU, whole
    for spec, words in (("cpu*9", "too few"), ("cpu*x", "whole number"), ("cpu,cpu", "twice"),
                        ("cuda:7", "not available")):
        with pytest.raises(DeviceError, match=words):
            plan_slots(spec, TORCH, cpus=range(8))
    argv = ["tune", "t.py", "--devices", "cpu*2", "--json", "--trials", "4"]
    assert child_arguments(argv, slots[1]) == ["tune", "t.py", "--trials", "4", "--device", "cpu", "--no-report"]


def test_cpu_workers_split_one_reading_of_the_available_ram(tmp_path):
    slots = plan_slots("cpu*2", TORCH, cpus=[0, 1])
    argv = ["tune", "t.py", "--devices", "cpu*2"]
    shared = shared_arguments(argparse.Namespace(study="s", memory_limit=None), None, slots, argv, TORCH)
    children = [child_arguments(shared, slot) for slot in slots]
    wholes = {int(child[child.index("--memory-whole") + 1]) for child in children}
    assert len(wholes) == 1 and all(child[child.index("--memory-share") + 1] == "2" for child in children)
    (whole,) = wholes
    assert 0 < whole <= TORCH.resolve_device("cpu").memory_total
    # each worker divides the whole it was given, whatever its own moment's reading of the free RAM says
    cpu = TORCH.resolve_device("cpu")
    assert _share_of(None, dataclasses.replace(cpu, memory_free=whole // 3), 2, whole) == whole // 2
    # the user's --memory-limit is the whole then; a single worker has no share to split
    given = shared_arguments(argparse.Namespace(study="s", memory_limit=2**30), None, slots, argv, TORCH)
    assert "--memory-whole" not in given and "--memory-share" in given
    alone = shared_arguments(argparse.Namespace(study="s", memory_limit=None), None, slots[:1], argv, TORCH)
    assert alone == argv


def test_cpu_workers_without_a_memory_limit_accept_the_whole_they_are_given_and_take_equal_budgets(tmp_path):
    # the workers' own parser must take --memory-whole (else each stops on it, exit 2)
    result = run_cli("tune", TASK, "--devices", "cpu*2", "--trials", "2", "--trial-steps", "2", "--confirm", "0",
                     "--no-range-test", "--search-space", SPACE, "--storage", f"sqlite:///{tmp_path / 's.db'}",
                     "--study", "pair", "--json", cwd=tmp_path)
    assert result.returncode in (0, 1), result.stderr[-3000:]  # 1: two steps may not beat the untrained model
    workers = json.loads(result.stdout)["workers"]
    budgets = {row["budget_bytes"] for row in workers}
    assert len(workers) == 2 and len(budgets) == 1 and None not in budgets, workers
    # one report, written by the coordinator once both workers ended (workers writing it would race)
    assert result.stderr.count("report: studies/pair/report.html") == 1, result.stderr[-3000:]
    assert (tmp_path / "studies" / "pair" / "report.json").exists()


def test_a_bad_devices_option_stops_before_any_study(tmp_path):
    storage = tmp_path / "s.db"
    result = run_cli("tune", "--confirm", "0", TASK, "--devices", "cpu*64", "--storage", f"sqlite:///{storage}")
    assert_one_line_error(result, "--devices cpu*64", "cpu*")
    assert not storage.exists()


@pytest.mark.parametrize("devices", [None, "cpu*2"])
def test_a_cap_the_framework_alone_outgrows_says_to_raise_it_once(tmp_path, devices):
    """A worker whose framework alone maps more than its cap: the fix is the cap, not the task; with N workers
    the line says each got 1/N of it, and the same line from every worker is said once."""
    storage = tmp_path / "s.db"
    limit = "512MiB" if devices is None else "1GiB"
    extra = ("--devices", devices) if devices else ()
    result = run_cli("tune", "--confirm", "0", TASK, "--memory-limit", limit, *extra, "--storage",
                     f"sqlite:///{storage}")
    assert_one_line_error(result, "within the memory cap of 512.00 MiB (", "framework included", "raise --memory-limit",
                          *(["each of the 2 workers' share"] if devices else []))
    assert not storage.exists() or not optuna.get_all_study_names(f"sqlite:///{storage}")


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="two CPU workers need two cores")
def test_two_pinned_cpu_workers_share_a_study_and_one_killed_loses_only_its_trial(tmp_path):
    storage = f"sqlite:///{tmp_path / 's.db'}"
    command = [sys.executable, "-m", "autotune", "tune", "--confirm", "0", TASK, "--devices", "cpu*2", "--trials", "8",
               "--trial-time", "1", "--no-pruning", "--no-range-test", "--search-space", SPACE,
               "--storage", storage, "--study", "pair", "--json", "--memory-limit", "8GiB",
               "--confirm", "0", "--no-report"]
    coordinator = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                   env={**os.environ, "PYTHONUNBUFFERED": "1"})
    victim, killed_trial = None, None
    deadline = time.monotonic() + 300
    while victim is None and time.monotonic() < deadline and coordinator.poll() is None:
        time.sleep(0.1)
        try:
            trials = optuna.load_study(study_name="pair", storage=storage).get_trials(deepcopy=False)
        except (KeyError, Exception):
            continue
        for trial in trials:
            who = trial.user_attrs.get("owner") or {}
            if trial.state == optuna.trial.TrialState.RUNNING and who.get("worker") == "cpu#1":
                victim, killed_trial = who["pid"], trial.number
                os.kill(victim, signal.SIGKILL)
                break
    out, err = coordinator.communicate(timeout=600)
    assert victim is not None, err[-3000:]
    assert coordinator.returncode == 0, err[-3000:]
    summary = json.loads(out)
    workers = {row["worker"]: row for row in summary["workers"]}
    assert workers["cpu#1"]["exit"] == -signal.SIGKILL and workers["cpu#0"]["exit"] == 0
    assert summary["result"]["batch_size"] in (16, 32, 64)

    study = optuna.load_study(study_name="pair", storage=storage)
    trials = study.get_trials(deepcopy=False)
    killed = trials[killed_trial]
    assert killed.state == optuna.trial.TrialState.FAIL and killed.user_attrs["failure"].startswith("interrupted")
    assert optuna.trial.TrialState.RUNNING not in [t.state for t in trials]
    finished = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(finished) == 8 and workers["cpu#0"]["complete"] >= 1  # --trials counts the study's, exactly
    owners = {t.user_attrs["owner"]["worker"]: t.user_attrs["owner"] for t in trials}
    assert set(owners) == {"cpu#0", "cpu#1"}, "both workers ran trials"
    assert owners["cpu#0"]["cpus"] != owners["cpu#1"]["cpus"]  # pinned to disjoint cores
    assert all(len(who["cpus"]) == 1 and who["threads"] == 1 for who in owners.values())
    # --memory-limit is the two workers' budget together: one of them fits the ceiling of a half, the other
    # reuses it; the study keeps it apart from a whole-memory ceiling, and each worker records the one it took
    (key,) = [k for k in study.user_attrs if k.startswith("ceiling:torch:cpu")]
    record = study.user_attrs[key]
    assert key.endswith(":1/2") and record["memory_share"] == 2 and record["budget_bytes"] == 4 * 2**30, record
    assert record["fitted_by"]["pid"] in {row["pid"] for row in workers.values()}
    assert record["fitted_by"]["worker"] in workers
    for label, row in workers.items():
        took = study.user_attrs[f"worker:{label}"]
        assert took["ceiling"] == key and took["budget_bytes"] == 4 * 2**30 and took["owner"]["worker"] == label
        assert row["ceiling"] == record["batch_size"] and row["budget_bytes"] == 4 * 2**30
    assert "samples/s" not in out and workers["cpu#0"]["throughput"] > 0  # per worker, on its own core
    assert summary["result"]["worker"]["worker"] in workers  # the pick's samples/s: that worker's device only


def test_shared_memory_ceilings_are_kept_apart_from_whole_memory_ones():
    from autotune.ceiling_cache import ceiling_key as cache_key
    from autotune.study_open import ceiling_key

    cpu = TORCH.resolve_device("cpu")
    assert ceiling_key("torch", cpu, share=2) == ceiling_key("torch", cpu) + ":1/2"
    bounds = dict(device=cpu, versions={}, memory_limit=None, margin=0.05, max_batch=64)
    assert cache_key({}, **bounds, share=2) != cache_key({}, **bounds) == cache_key({}, **bounds, share=1)
