"""`autotune bench` on the real backends (CPU): every precision the CPU build has, compile off and on, in workers;
MFU against the measured matmul peak; the ranked table; bad input as one line and exit code 2."""

from __future__ import annotations

import copy
import json
import os

import pytest

from autotune.backends import get_backend, is_installed
from autotune.bench import BenchError, bench, plan_modes, rank
from autotune.cli import main
from autotune.devices import Device
from tests.conftest import EXAMPLES, TASKS, assert_one_line_error, run_cli

BACKENDS = {
    "torch": EXAMPLES / "torch_digits.py",
    "tensorflow": EXAMPLES / "tensorflow_digits.py",
    "mindspore": EXAMPLES / "mindspore_digits.py",
}


def _check_row(row: dict) -> None:
    assert row["ok"], row.get("failure")
    assert row["throughput"] > 0 and row["throughput_in_budget"] <= row["throughput"]
    assert 0 < row["step_seconds_p50"] <= row["step_seconds_p95"] <= row["step_seconds_p99"]
    assert row["compile_seconds"] >= 0
    for latency in row["inference_seconds"].values():
        assert 0 < latency["p50"] <= latency["p95"]
    assert row["peak_memory_bytes"] > 0
    assert row["flops_per_sample"] > 0 and row["peak_flops"] > 0
    assert 0 < row["mfu"] <= 1, row["mfu"]
    assert row["mfu"] == pytest.approx(row["flops_per_sample"] * row["throughput"] / row["peak_flops"])
    if row["energy_per_sample_joules"] is None:
        assert row["energy_note"]  # never a guess: the reason instead


def _bench_cpu(name: str, cache) -> object:
    if not is_installed(name):
        pytest.skip(f"{name} is not installed")
    return bench(str(BACKENDS[name]), devices="cpu", batch_size=64, seconds=0.3, latency_seconds=0.05,
                 peak_cache=str(cache))


@pytest.fixture(scope="module")
def torch_bench(tmp_path_factory):
    cache = tmp_path_factory.mktemp("peak")
    return _bench_cpu("torch", cache), cache


@pytest.mark.parametrize("name", list(BACKENDS))
def test_bench_every_precision_and_compile_mode(name, tmp_path, request):
    if name == "torch":
        result, cache = request.getfixturevalue("torch_bench")
    else:
        result, cache = _bench_cpu(name, tmp_path), tmp_path
    backend = get_backend(name)
    precisions = backend.precisions(backend.resolve_device("cpu"))
    assert {(r["precision"], r["compile"]) for r in result.rows} == {
        (p, c) for p in precisions for c in (False, True)}
    for row in result.rows:
        _check_row(row)
    ranks = [row["rank"] for row in result.rows]
    assert ranks == list(range(1, len(ranks) + 1))
    scores = [row["throughput_in_budget"] for row in result.rows]
    assert scores == sorted(scores, reverse=True)
    assert result.to_dict()["winner"] == result.rows[0]["mode"]
    path = cache / "peak_flops.json"
    peaks = json.loads(path.read_text()) if path.exists() else {}
    assert len(peaks) <= len(precisions)  # one matmul peak per dtype at most (a busy machine's is not kept)
    for row in result.rows:
        if row["peak_flops_cached"]:
            assert any(entry["flops"] == row["peak_flops"] for entry in peaks.values())
        if row["peak_flops_busy"]:
            assert not row["peak_flops_cached"]
    if name == "torch":
        eager = next(r for r in result.rows if r["precision"] == "fp32" and not r["compile"])
        assert eager["flop_count"].startswith("torch.utils.flop_counter")
        for latency in eager["inference_int8_seconds"].values():  # dynamic int8 beside fp32
            assert 0 < latency["p50"] <= latency["p95"]


def test_a_compiled_mode_must_pay_for_its_compile_time_within_the_budget(torch_bench):
    rows = copy.deepcopy(torch_bench[0].rows)
    compiled = [r for r in rows if r["compile"]]
    assert min(r["compile_seconds"] for r in compiled) > 1.0  # torch.compile takes seconds
    rank(rows, budget=1.0)  # nothing is left of a 1 s budget once they have compiled
    assert all(r["throughput_in_budget"] == 0.0 for r in compiled)
    assert not rows[0]["compile"]
    rank(rows, budget=1e9)  # over a long enough run, the compile time no longer counts
    assert [r["throughput_in_budget"] for r in rows] == pytest.approx([r["throughput"] for r in rows], rel=1e-6)


def test_the_peak_is_measured_once_per_device_and_dtype_then_read_back(tmp_path, monkeypatch):
    import autotune.training
    from autotune.peak import peak_flops

    monkeypatch.setattr(autotune.training, "CONTENDED_CORES", float("inf"))  # keep it whatever the load
    backend = get_backend("torch")
    cpu = backend.resolve_device("cpu")
    first = peak_flops(backend, cpu, "fp32", cache_dir=tmp_path)
    again = peak_flops(backend, cpu, "fp32", cache_dir=tmp_path)
    assert not first["cached"] and again["cached"] and again["flops"] == first["flops"] > 0
    assert list(json.loads((tmp_path / "peak_flops.json").read_text())) == [
        f"torch|cpu|{cpu.name}|fp32|threads={len(os.sched_getaffinity(0))}"]


class _TwoDeviceBackend:
    """A backend that sees the CPU and a fake GPU (the interface only: nothing runs on it)."""

    name = "fake"

    def devices(self):
        return [Device(id="cpu", kind="cpu", index=0, name="cpu"),
                Device(id="gpu:0", kind="gpu", index=0, name="fake GPU")]

    def resolve_device(self, spec):
        from autotune.backends.base import Backend

        return Backend.resolve_device(self, spec)

    def precisions(self, device):
        return ("fp32", "bf16") if device.kind == "cpu" else ("fp32", "bf16", "fp16")

    def precision_notes(self, device):
        return {"fp16": "no fp16 matmul on this fake CPU"} if device.kind == "cpu" else {}


def test_plan_modes_covers_every_device_and_skips_what_a_device_lacks():
    modes, skipped = plan_modes(_TwoDeviceBackend(), "all", None, None)
    assert len(modes) == (2 + 3) * 2
    modes, skipped = plan_modes(_TwoDeviceBackend(), None, "fp16,fp32", "on")
    assert {(m.device, m.precision, m.compile) for m in modes} == {
        ("cpu", "fp32", True), ("gpu:0", "fp16", True), ("gpu:0", "fp32", True)}
    assert [s["mode"] for s in skipped] == ["cpu fp16"]


@pytest.mark.parametrize("devices, precisions, compiles, fragment", [
    ("tpu:3", None, None, "not available"),
    ("cpu", "fp8", None, "unknown 'fp8'"),
    ("cpu", "fp16", None, "no chosen device"),
    ("cpu", None, "sometimes", "unknown 'sometimes'"),
    ("cpu", "", None, "is empty"),
    (",", None, None, "names no device"),
])
def test_bad_requests_fail_before_any_measurement(devices, precisions, compiles, fragment):
    with pytest.raises(BenchError, match=fragment):
        plan_modes(_TwoDeviceBackend(), devices, precisions, compiles)


def _exit_code(argv: list[str]) -> int:
    """``autotune ARGV`` in this process: its return code, or argparse's exit code."""
    try:
        return main(argv)
    except SystemExit as exc:
        return int(exc.code)


@pytest.mark.parametrize("args, fragment", [
    (["--precision", "fp8"], "unknown 'fp8'"),
    (["--devices", "cuda:7"], "cuda:7"),
    (["--batch", "lots"], "not a whole number"),
    (["--batch", "100000"], "training samples"),
    (["--budget", "-5"], "above 0"),
])
def test_cli_bad_input_is_one_line_and_exit_2(args, fragment, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("AUTOTUNE_CACHE_DIR", str(tmp_path))
    code = _exit_code(["bench", str(BACKENDS["torch"]), *args])
    error = capsys.readouterr().err
    lines = [line for line in error.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, error
    assert lines[0].startswith("autotune: error: ") and fragment in lines[0], error
    assert not (tmp_path / "peak_flops.json").exists()  # nothing was measured


def test_cli_device_not_present_in_a_fresh_process():
    assert_one_line_error(run_cli("bench", str(BACKENDS["torch"]), "--devices", "cpu,cuda:3"), "cuda:3")


def test_cli_prints_the_ranked_table_and_json(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("AUTOTUNE_CACHE_DIR", str(tmp_path))
    common = ["bench", str(BACKENDS["torch"]), "--precision", "fp32", "--compile", "off", "--batch", "32",
              "--seconds", "0.2", "--quiet"]
    assert _exit_code(common) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["rank", "mode", "batch"]
    assert lines[2].startswith("*  1 ")  # the winner is marked
    assert any(line.startswith("winner: cpu fp32 eager") for line in lines)
    kept = (tmp_path / "peak_flops.json").exists()  # not when other processes shared the cores (a busy peak)
    assert _exit_code([*common, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["winner"] == data["rows"][0]["mode"] == "cpu fp32 eager" and data["batch_size"] == 32
    assert data["rows"][0]["peak_flops_cached"] == kept  # the first run measured the peak, the second read it


def test_a_task_that_cannot_train_is_one_line_before_any_mode_runs():
    """As `tune` checks it: the model and its loss on two samples first (bench printed a table of failed modes,
    torch's compile errors and exit 0)."""
    result = run_cli("bench", f"{TASKS / 'torch_tasks.py'}:broken", "--seconds", "0.2", "--json")
    assert_one_line_error(result, "the model fails on 2 training samples", "fix the model's input")
    assert result.stdout == ""


def test_a_mode_whose_loss_is_nan_fails_and_no_mode_run_exits_1():
    """A step that computes NaN trains nothing: its speed is no figure to rank (bench named it the winner)."""
    result = run_cli("bench", f"{TASKS / 'torch_tasks.py'}:nan_loss", "--seconds", "0.2", "--compile", "off",
                     "--precision", "fp32")
    assert result.returncode == 1, result.stderr
    assert "diverged: the training loss is nan" in result.stdout and "winner" not in result.stdout
    assert "autotune: no mode ran (cpu fp32 eager: diverged" in result.stderr
