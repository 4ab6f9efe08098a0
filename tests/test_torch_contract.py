"""The Task contract on real PyTorch code: Datasets of dict batches, a model that computes its own loss (a
Hugging Face GPT-2), integer targets, probability outputs, variable-sized samples, and broken contracts."""

import json
import math
import os
import subprocess
import sys
import time

import numpy as np
import optuna
import pytest

import autotune
from autotune.backends import get_backend
from autotune.budget import range_test_budget
from autotune.errors import TaskError
from autotune.memory import fit_batch_size
from autotune.study import ModelDoesNotLearn
from autotune.training import CpuContention, LargestSampler
from autotune.trial import run_range_tests, run_trial
from autotune.verdict import not_learning
from tests.conftest import ROOT, TASKS, assert_one_line_error, run_cli

pytest.importorskip("transformers")

REAL = TASKS / "torch_real.py"
SPACE = str(ROOT / "tests" / "spaces" / "real_small.yaml")


def _task(name):
    return autotune.load_task(f"{REAL}:{name}")


def _session(name, batch_size=8, optimizer="adam"):
    task = _task(name)
    backend = get_backend("torch")
    return backend.session(task, task.load_data(), backend.resolve_device("cpu"), batch_size=batch_size,
                           optimizer={"name": optimizer, "lr": 1e-3})


@pytest.mark.timing  # the ceiling stops where a step outgrows a quarter of the trial: measured, so run alone
def test_gpt2_trains_through_the_library_with_a_dataset_and_dict_batches(tmp_path):
    storage = f"sqlite:///{tmp_path / 'g.db'}"
    result = autotune.tune(f"{REAL}:gpt2", n_trials=3, trial_time=1.5, search_space=SPACE, storage=storage,
                           study_name="gpt2", memory_limit=autotune.parse_size("3GiB"), confirm=0)
    assert result.batch_size in (8, 16) and result.optimizer == "adam"
    assert result.val_loss < math.log(256)  # better than uniform over the byte vocabulary
    study = result.study
    phases = study.user_attrs["phases"][-1]
    assert {"fit", "trials"} <= set(phases) and all(v >= 0 for v in phases.values())
    assert result.phases == phases
    for trial in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)):
        measured = trial.user_attrs["measured"]
        assert measured["steps_timed"] >= 1 and measured["step_seconds_p95"] >= measured["step_seconds_p50"]
        assert isinstance(measured["busy"], bool) and measured["other_cpu_cores"] is not None


@pytest.mark.timing  # the ceiling stops where a step outgrows a quarter of the trial: measured, so run alone
def test_gpt2_trains_through_the_cli(tmp_path):
    storage = f"sqlite:///{tmp_path / 'g.db'}"
    tuned = run_cli("tune", "--confirm", "0", f"{REAL}:gpt2", "--trials", "2", "--trial-time", "1.5", "--search-space", SPACE,
                    "--storage", storage, "--study", "gpt2", "--no-range-test", "--memory-limit", "3GiB")
    assert tuned.returncode == 0, tuned.stderr
    assert "batch size" in tuned.stdout and "(torch)" in tuned.stdout
    assert "time: fit" in tuned.stderr  # the phases and their seconds, at the end
    best = json.loads(run_cli("best", "gpt2", "--storage", storage, "--json").stdout)
    assert best["batch_size"] in (8, 16) and best["phases"]["trials"] > 0
    assert "Traceback" not in tuned.stderr and "[transformers]" not in tuned.stderr, tuned.stderr


def test_integer_targets_reach_a_custom_loss_as_integers():
    figures = run_trial(_task("integer_labels"), {"batch_size": 32, "optimizer": "adam", "lr": 1e-2}, "cpu",
                        steps=10, reports=2)
    assert figures["val_loss"] < math.log(4)


def test_a_model_ending_in_softmax_gets_the_loss_on_probabilities():
    session = _session("probabilities", batch_size=32)
    loss = session.evaluate()
    assert abs(loss - math.log(4)) < 0.3  # probabilities near uniform: cross entropy near ln 4
    task = _task("probabilities")
    task.from_logits = True  # told otherwise, it treats the softmax output as logits: a flatter, wrong loss
    backend = get_backend("torch")
    wrong = backend.session(task, task.load_data(), backend.resolve_device("cpu"), batch_size=32,
                            optimizer={"name": "adam", "lr": 1e-3})
    assert abs(wrong.evaluate() - loss) > 1e-3


@pytest.mark.timing
def test_trial_wall_time_stays_inside_its_bound():
    budget = 1.0
    started = time.perf_counter()
    figures = run_trial(_task("gpt2"), {"batch_size": 8, "optimizer": "adam", "lr": 1e-3}, "cpu", seconds=budget,
                        pruner_reports=(2, 6))
    wall = time.perf_counter() - started
    # recorded figures: training (warm-up included) within the budget plus one step, evaluation within its share
    step = figures["step_seconds_p95"]
    assert figures["train_seconds"] <= budget + 2 * step + 0.05, figures
    assert figures["eval_seconds"] <= 0.3 * budget + 1.0, figures
    assert wall < 3 * budget + 10  # generous: model build and data load on a shared machine


def test_fit_probes_the_largest_samples_when_sizes_differ():
    task = _task("ragged")
    backend = get_backend("torch")
    data = task.load_data()
    sizes = backend.sample_sizes(task, data)
    assert sizes is not None and sizes.max() == 257  # 256 tokens and a label
    order = np.argsort(-sizes, kind="stable")
    sampler = LargestSampler(order, 4)
    assert 200 in sampler.next() and set(sampler.next()) == set(order[:4])
    fit = fit_batch_size(task, max_batch=16, isolation="none")
    assert any("largest" in note for note in fit.notes), fit.notes
    assert backend.sample_sizes(_task("integer_labels"), _task("integer_labels").load_data()) is None


@pytest.mark.parametrize("name, fragment", [
    ("strings", "items must be tensors, arrays or numbers"),
    ("vector_loss", "must return a scalar"),
    ("dict_without_compute_loss", "compute_loss"),
    ("ragged_without_collate", "collate_fn"),
])
def test_a_broken_contract_is_one_line(name, fragment):
    result = run_cli("fit-batch", f"{REAL}:{name}", "--max-batch", "16")
    assert_one_line_error(result, fragment)
    with pytest.raises(TaskError, match=fragment.split()[0]):
        session = _session(name)
        session.train_step(np.arange(8))


def test_labels_of_a_type_the_loss_refuses_are_one_line_that_says_to_cast_them(tmp_path):
    result = run_cli("tune", f"{REAL}:int32_labels", "--trials", "1", "--trial-steps", "2", "--no-range-test",
                     "--storage", f"sqlite:///{tmp_path / 's.db'}")
    assert_one_line_error(result, "refuses the data's types", "targets int32", "cast the data")
    assert "input or output layer" not in result.stderr  # not the advice for a model that does not fit its data


def test_a_model_that_does_not_learn_gets_no_winner(tmp_path):
    storage = f"sqlite:///{tmp_path / 'f.db'}"
    result = run_cli("tune", "--confirm", "0", f"{REAL}:flat", "--trials", "3", "--trial-steps", "20", "--search-space", SPACE,
                     "--storage", storage, "--study", "flat", "--no-range-test", "--no-pruning")
    assert result.returncode == 1, result.stderr
    assert "does not learn" in result.stderr and "Traceback" not in result.stderr
    assert "batch size" not in result.stdout  # no configuration is reported
    study = optuna.load_study(study_name="flat", storage=storage)
    assert not_learning(study) is not None
    assert len(study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))) == 3  # the trials are kept

    # nor does `best` or `load_best` hand one to a training script afterwards
    best = run_cli("best", "flat", "--storage", storage, "--json")
    assert best.returncode == 1 and not best.stdout.strip(), best.stdout
    assert "has no winner: the model does not learn" in best.stderr and "Traceback" not in best.stderr
    with pytest.raises(ModelDoesNotLearn, match="no winner") as raised:
        autotune.load_best("flat", storage)
    assert raised.value.result.batch_size is not None  # the best-valued trial, for a caller who looks anyway
    with pytest.raises(ModelDoesNotLearn, match="no winner"):  # the own-loop door's pick, the same rule
        autotune.Tuner(study="flat", backend="torch", storage=storage, search_space=SPACE, ceiling=16).best()


def test_the_learning_verdict_reads_every_trials_reports():
    study = optuna.create_study()
    for values in ([1.0, 1.0, 1.0], [1.2, 1.25, 1.19]):
        trial = study.ask()
        for step, value in enumerate(values, 1):
            trial.report(value, step)
        study.tell(trial, values[-1])
    assert "does not learn" in not_learning(study)
    trial = study.ask()
    trial.report(1.0, 1)
    trial.report(0.5, 2)
    study.tell(trial, 0.5)
    assert not_learning(study) is None


def test_a_pruned_trial_is_judged_against_its_untrained_loss():
    # with costly validation a pruned trial may hold one report besides the untrained one: 1.5 % below it is
    # within the untrained model's own spread (UNTRAINED_MARGIN), not learning
    study = optuna.create_study()
    for untrained in (2.3026, 2.3030):
        trial = study.ask()
        trial.set_user_attr("history", [[-1, untrained, 0.0], [2, 0.985 * untrained, 0.5]])
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    assert "does not learn" in not_learning(study)


class PruneAtSecondReport:
    """The parent's side of a trial's channel: records each message and prunes at report 2."""

    def __init__(self):
        self.messages = []

    def ask(self, message):
        self.messages.append(message)
        return message[1] == 2


def test_a_trial_reports_its_untrained_loss_before_it_can_be_pruned():
    channel = PruneAtSecondReport()
    with pytest.raises(autotune.TrialError, match="pruned after report 2"):
        run_trial(_task("integer_labels"), {"batch_size": 32, "optimizer": "adam", "lr": 1e-2}, "cpu", steps=8,
                  reports=4, channel=channel)
    (kind, index, value, seconds), *later = channel.messages
    assert (kind, index, seconds) == ("report", -1, 0.0) and math.isfinite(value)
    assert [message[1] for message in later] == [1, 2]


@pytest.mark.timing
def test_the_range_test_is_held_to_its_share_of_the_study():
    seconds, steps = range_test_budget(n_trials=6, trial_time=4.0, trial_steps=None, timeout=None, optimizers=9)
    assert seconds == pytest.approx(0.15 * 24) and steps == 60
    assert range_test_budget(n_trials=6, trial_time=4.0, trial_steps=None, timeout=10, optimizers=9)[0] == 1.5
    assert range_test_budget(n_trials=4, trial_time=None, trial_steps=50, timeout=None, optimizers=3)[1] == 10
    autotune.load_task(f"{REAL}:gpt2")  # transformers imported before the clock starts
    started = time.perf_counter()
    tests = run_range_tests(f"{REAL}:gpt2", ["sgd", "adam", "adamw", "rmsprop"], 8, "cpu", 1e-4, 1e-1,
                            seconds=1.0)
    assert time.perf_counter() - started < 1.0 + 5.0  # the budget plus one model build and step, generously
    assert set(tests) == {"sgd", "adam", "adamw", "rmsprop"}
    assert any(value and value.get("skipped") for value in tests.values())


@pytest.mark.timing
def test_a_range_test_past_its_budget_is_stopped_and_keeps_what_it_finished():
    from autotune.budget import Phases
    from autotune.narrowing import narrow_learning_rates
    from autotune.runner import Worker
    from autotune.space import load_space
    from autotune.study import _run

    reference = f"{TASKS / 'torch_tasks.py'}:stalls_later"  # adam's test runs; sgd's model stalls 5 s
    backend = get_backend("torch")
    space = load_space("torch", backend.optimizer_names, overrides={"optimizers": {"adam": {}, "sgd": {}}})
    study, phases, events = optuna.create_study(), Phases(), []
    with Worker(preload=backend.worker_preload(autotune.load_task(reference))) as worker:
        assert worker.run(os.getpid, {}).ok  # started, as tune's worker is by its contract check
        narrow_learning_rates(study, space, handle=reference, device=backend.resolve_device("cpu"), batch_size=16,
                              seed=0, n_trials=2, trial_time=2.0, trial_steps=None, timeout=None,
                              run=lambda function, kwargs, limit, receive: _run(function, kwargs, worker, limit,
                                                                                receive),
                              phases=phases, say=events.append)
    assert set(space.lr_ranges) == {"adam"}  # the finished test is kept
    assert any("stopped at its 0.6 s" in event.get("message", "") for event in events), events
    assert phases.to_dict()["range_test"] < 5.0  # its 0.6 s and a second's grace, not the 5 s stall


def test_a_measurement_on_a_busy_machine_is_flagged():
    burner = subprocess.Popen([sys.executable, "-c", "import time\nend = time.time() + 3\nwhile time.time() < end: pass"])
    try:
        time.sleep(0.3)
        contention = CpuContention()
        time.sleep(1.0)
        figures = contention.finish()
    finally:
        burner.kill()
        burner.wait()
    assert figures["other_cpu_cores"] > 0.5 and figures["busy"] and "quiet machine" in figures["busy_reason"]


@pytest.mark.timing
@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two cores")
def test_only_the_cores_a_measurement_runs_on_count_as_contended():
    """A worker pinned to its share of the cores (`--devices cpu*2`) is not slowed by its sibling on the other
    core: that sibling's load must not flag its trials as measured on a busy machine; on its own core it must."""
    mine, other = sorted(os.sched_getaffinity(0))[:2]
    everything = os.sched_getaffinity(0)

    def measured_beside_a_burner(burner_core, own_cores):
        burner = subprocess.Popen([sys.executable, "-c", "import time\nend = time.time() + 3\nwhile time.time() < end: pass"],
                                  preexec_fn=lambda: os.sched_setaffinity(0, {burner_core}))
        os.sched_setaffinity(0, own_cores)
        try:
            time.sleep(0.3)
            contention = CpuContention()
            time.sleep(1.0)
            return contention.finish()
        finally:
            os.sched_setaffinity(0, everything)
            burner.kill()
            burner.wait()

    beside = measured_beside_a_burner(other, {mine})
    assert not beside["busy"] and beside["other_cpu_cores"] < 0.5, beside
    on_mine = measured_beside_a_burner(mine, {mine})
    assert on_mine["busy"], on_mine
