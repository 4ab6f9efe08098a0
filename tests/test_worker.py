"""The reusable worker behind a study's trials: one process for unit after unit, replaced after a failure."""

import os
import signal

from autotune.runner import Worker


def test_worker_reuses_its_process_and_replaces_it_after_a_failure():
    with Worker() as worker:
        first, second = worker.run(os.getpid, {}), worker.run(os.getpid, {})
        assert first.ok and second.ok and first.value == second.value != os.getpid()

        crashed = worker.run(os.abort, {})
        assert not crashed.ok and crashed.kind == "crash" and "SIGABRT" in crashed.message

        after_crash = worker.run(os.getpid, {})
        assert after_crash.ok and after_crash.value != first.value

        hung = worker.run(signal.pause, {}, timeout=1)
        assert not hung.ok and hung.kind == "timeout"

        assert worker.run(os.getpid, {}).ok
        assert worker.started == 3 and worker.units == 6


def test_worker_under_a_cap_too_small_for_the_framework_fails_the_unit_not_the_caller():
    with Worker(memory_limit=16 * 1024**2, preload=("numpy",)) as worker:
        outcome = worker.run(os.getpid, {})
    assert not outcome.ok and outcome.kind == "oom" and "the worker alone" in outcome.message


def test_worker_servers_start_in_the_environment_autotune_was_imported_in():
    """A framework's native code can change the process environment behind os.environ (MindSpore sets
    OMP_NUM_THREADS=1): servers started afterwards must not hand that to their workers."""
    import ctypes

    from autotune.runner import run_in_worker

    libc = ctypes.CDLL(None)
    libc.setenv(b"AUTOTUNE_TEST_NATIVE", b"set behind os.environ", 1)
    try:
        assert "AUTOTUNE_TEST_NATIVE" not in os.environ
        outcome = run_in_worker(os.getenv, {"key": "AUTOTUNE_TEST_NATIVE"}, preload=("json", "string"))
    finally:
        libc.unsetenv(b"AUTOTUNE_TEST_NATIVE")
    assert outcome.ok and outcome.value is None


_HELD: list = []


def hold(mib: int) -> int:
    """Leave ``mib`` MiB behind in this worker, as a trial's leftovers would."""
    _HELD.append(bytearray(mib << 20))
    return len(_HELD)


def allocate(mib: int) -> int:
    return len(bytearray(mib << 20))


def paced(channel, pauses: int, seconds: float) -> int:
    import time

    for index in range(pauses):
        time.sleep(seconds)
        channel.ask(index)
    return pauses


def test_an_oom_after_other_units_is_run_again_in_a_fresh_worker():
    """What earlier units left behind must not decide an OOM: the unit is retried once, fresh."""
    from autotune.procmem import process_memory
    from autotune.runner import run_in_worker

    preload = ("test_worker",)
    baseline = run_in_worker(process_memory, {}, preload=preload).value["address_space"]
    with Worker(memory_limit=baseline + (200 << 20), preload=preload) as worker:
        assert worker.run(hold, {"mib": 120}).ok
        outcome = worker.run(allocate, {"mib": 120})  # 240 MiB with the leftover: only a fresh worker fits it
        assert outcome.ok and outcome.value == 120 << 20
        assert worker.started == 2
        alone = worker.run(allocate, {"mib": 400})  # too large even fresh: an OOM, after one retry
        assert not alone.ok and alone.kind == "oom"


def test_timeout_per_message_bounds_each_step_not_the_whole_series():
    from autotune.runner import run_in_worker

    kwargs = {"pauses": 4, "seconds": 0.5}
    paced_ok = run_in_worker(paced, kwargs, timeout=2, on_message=lambda _m: None, timeout_per_message=True,
                             preload=("test_worker",))
    assert paced_ok.ok and paced_ok.value == 4
    whole = run_in_worker(paced, kwargs, timeout=1, on_message=lambda _m: None, preload=("test_worker",))
    assert not whole.ok and whole.kind == "timeout"


def churn() -> int:
    """Bytes of address space that two freed 8 MiB blocks leave mapped."""
    from autotune.procmem import process_memory

    before = process_memory()["address_space"]
    for _ in range(2):
        block = bytearray(8 << 20)
        del block
    return process_memory()["address_space"] - before


def test_only_workers_that_measure_memory_pin_the_allocator():
    """A fit's probe returns every freed block at once (its peak is the live memory); a trial's worker keeps
    glibc's own threshold, as the user's training does, so a freed block stays in the heap for the next step."""
    from autotune.runner import run_in_worker

    assert run_in_worker(churn, {}, preload=("test_worker",)).value == 0  # exact_memory, a fit's probe
    assert run_in_worker(churn, {}, preload=("test_worker",), exact_memory=False).value > 4 << 20
    with Worker(preload=("test_worker",)) as worker:
        assert worker.run(churn, {}).value > 4 << 20  # most of a block stays mapped

