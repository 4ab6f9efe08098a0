"""The backend conformance suite: what every backend must do, written once, run on the real framework.

A backend's tests subclass `BackendConformanceSuite` and give the ``backend_case`` fixture::

    from autotune.testing import BackendCase, BackendConformanceSuite

    class TestMyBackend(BackendConformanceSuite):
        @pytest.fixture
        def backend_case(self):
            return BackendCase("mybackend", tasks="tests/my_tasks.py", cap="1GiB")

The tasks file defines four `autotune.Task` objects: ``small`` (a 16-feature, 4-class classifier on 480
training samples: it must learn within 80 steps), ``hungry`` (about half a MiB of activations per sample, so
that fit-batch under ``cap`` lands at a few hundred samples), ``broken`` (fails at every batch size for a
reason other than memory) and ``regression`` (an ``mse`` loss). Everything runs on the CPU, the capped parts
in worker processes under ``RLIMIT_AS`` (Linux).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import pytest

from autotune.backends import _INSTANCES, _REGISTRY, backend_for_modules, get_backend, register_backend
from autotune.errors import AutotuneError, DeviceError, FitError
from autotune.optimizers import OPTIMIZERS
from autotune.runner import WorkerOutcome, run_in_worker
from autotune.task import file_imports, load_task, preload_entry, task_file
from autotune.testing.runs import capped_training
from autotune.training import BatchSampler
from autotune.units import parse_size

JITTER = 16 * 1024**2
"""Bytes a capped run's peak may move between fresh workers (torch's hungry task at one size: 13.5 MB apart;
benchmarks/RESULTS.md has the runs): an answer must re-run under the cap plus this, the size above it fail
under the cap less this."""


@dataclasses.dataclass(frozen=True)
class BackendCase:
    """One backend under test: its registered ``name``, the ``tasks`` file (see the module docstring), a CPU
    address-space ``cap`` under which the hungry task fits a few hundred samples, and ``xfail``: test name →
    the reason it is a known gap of this backend (strict: a pass flags the gap as fixed)."""

    name: str
    tasks: str | Path
    cap: str
    xfail: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def task(self, attr: str) -> str:
        """The reference ``"tasks.py:attr"`` of one of the four tasks."""
        return f"{self.tasks}:{attr}"


def _missing_modules(names: Sequence[str]) -> list[str]:
    """Which of ``names`` a worker does not have loaded when it starts."""
    import sys

    return [name for name in names if name not in sys.modules]


@contextlib.contextmanager
def temporarily_registered(name: str, **registration: Any) -> Iterator[None]:
    """`register_backend(name, **registration)` for the body, the registry as it was afterwards."""
    saved, instance = _REGISTRY.get(name), _INSTANCES.get(name)
    register_backend(name, **registration)
    try:
        yield
    finally:
        _REGISTRY.pop(name, None)
        _INSTANCES.pop(name, None)
        if saved is not None:
            _REGISTRY[name] = saved
        if instance is not None:
            _INSTANCES[name] = instance


def _session(case: BackendCase, attr: str = "small", optimizer: Mapping[str, Any] | None = None,
             batch_size: int = 32, seed: int = 0) -> tuple[Any, Any, BatchSampler]:
    task = load_task(case.task(attr))
    backend = get_backend(task.backend)
    data = task.load_data()
    session = backend.session(task, data, backend.resolve_device("cpu"), batch_size=batch_size, seed=seed,
                              optimizer=optimizer or {"name": "adam", "lr": 1e-2})
    n_train, _ = backend.data_size(data)
    return backend, session, BatchSampler(n_train, batch_size, seed)


def capped_run(case: BackendCase, batch: int, cap: int, steps: int = 1) -> WorkerOutcome:
    """A run of the hungry task in a fresh worker capped at ``cap``, started as fit-batch starts its own (the
    task's imports preloaded: a worker that imported them after the cap would map more than fit-batch's)."""
    backend = get_backend(case.name)
    return run_in_worker(capped_training, dict(task=case.task("hungry"), batch_size=batch, steps=steps),
                         memory_limit=cap, timeout=300, preload=backend.worker_preload(load_task(case.task("hungry"))))


class BackendConformanceSuite:
    """The tests every backend passes; a subclass gives the ``backend_case`` fixture (a `BackendCase`)."""

    @pytest.fixture
    def backend_case(self) -> BackendCase:
        raise NotImplementedError("a subclass of BackendConformanceSuite defines the backend_case fixture")

    @pytest.fixture
    def case(self, backend_case: BackendCase, request: Any) -> BackendCase:
        reason = backend_case.xfail.get(request.node.originalname)
        if reason:
            request.applymarker(pytest.mark.xfail(reason=reason, strict=True))
        return backend_case

    def test_devices_include_the_cpu_and_bad_names_fail(self, case: BackendCase) -> None:
        backend = get_backend(case.name)
        devices = backend.devices()
        assert any(d.kind == "cpu" for d in devices)
        assert all(d.backend == case.name for d in devices)
        assert backend.resolve_device("cpu").kind == "cpu"
        assert backend.resolve_device(None) in devices
        with pytest.raises(DeviceError, match="not available"):
            backend.resolve_device("quantum:7")

    def test_training_lowers_the_validation_loss(self, case: BackendCase) -> None:
        _, session, sampler = _session(case)
        before = session.evaluate()
        for _ in range(80):
            session.train_step(sampler.next())
        session.synchronize()
        after = session.evaluate()
        assert math.isfinite(after) and after < 0.5 * before, (before, after)
        assert math.isfinite(session.last_loss())
        session.close()

    def test_same_seed_same_result(self, case: BackendCase) -> None:
        losses = []
        for _ in range(2):
            _, session, sampler = _session(case, seed=3)
            for _ in range(10):
                session.train_step(sampler.next())
            losses.append(session.evaluate())
            session.close()
        assert losses[0] == pytest.approx(losses[1], rel=1e-4)

    def test_every_claimed_optimizer_builds_and_steps(self, case: BackendCase) -> None:
        backend = get_backend(case.name)
        assert {"sgd", "momentum", "adam", "adamw", "rmsprop", "adagrad"} <= set(backend.optimizer_names)
        for optimizer in backend.optimizer_names:
            assert optimizer in OPTIMIZERS, optimizer
            _, session, sampler = _session(case, optimizer={"name": optimizer, "lr": 1e-2})
            for _ in range(3):
                session.train_step(sampler.next())
            assert math.isfinite(session.last_loss()), optimizer
            session.close()

    def test_allocating_optimizer_state_leaves_the_model_as_it_was(self, case: BackendCase) -> None:
        """A memory probe allocates the optimizer's state before its one step: for every optimizer, that moves
        no parameter (the validation loss is unchanged) and the session trains on afterwards."""
        for optimizer in get_backend(case.name).optimizer_names:
            spec = {"name": optimizer, **({} if optimizer == "ftrl" else {"weight_decay": 0.1})}
            _, untouched, _ = _session(case, optimizer=spec, seed=5)
            _, primed, sampler = _session(case, optimizer=spec, seed=5)
            primed.allocate_optimizer_state()
            assert primed.evaluate() == pytest.approx(untouched.evaluate(), rel=1e-6), optimizer
            primed.train_step(sampler.next())
            assert math.isfinite(primed.last_loss()), optimizer
            untouched.close()
            primed.close()

    def test_a_probe_runs_one_step_unless_the_first_cannot_be_timed(self, case: BackendCase,
                                                                    monkeypatch: Any) -> None:
        """One training step shows the peak once the optimizer's state is allocated; a second, timed one runs
        only where the first compiled or was too short to time."""
        import autotune.training as training

        for retime_below, expected in ((0.0, 1), (math.inf, 2)):
            monkeypatch.setattr(training, "RETIME_BELOW", retime_below)
            _, session, sampler = _session(case, batch_size=64)
            figures = training.measure_probe(session, sampler, steps=1)
            assert figures["train_steps"] == (2 if session.first_step_compiles else expected), figures
            assert figures["throughput"] > 0
            session.close()

    def test_unknown_optimizer_and_parameter_are_clear_errors(self, case: BackendCase) -> None:
        backend = get_backend(case.name)
        with pytest.raises(AutotuneError, match=f"not available on backend {case.name}"):
            backend.validate_optimizer({"name": "shampoo"})
        with pytest.raises(AutotuneError, match="has no parameter 'betas'"):
            backend.validate_optimizer({"name": "sgd", "betas": [0.9, 0.99]})

    def test_loss_by_name_mse(self, case: BackendCase) -> None:
        _, session, sampler = _session(case, attr="regression", optimizer={"name": "adam", "lr": 3e-2})
        before = session.evaluate()
        for _ in range(60):
            session.train_step(sampler.next())
        assert session.evaluate() < before
        session.close()

    def test_a_worker_preloads_the_framework_and_the_task_modules(self, case: BackendCase) -> None:
        """Capped workers import these before the cap (fit-batch and tune alike): the framework's first."""
        backend, task = get_backend(case.name), load_task(case.task("hungry"))
        path = str(task_file(str(task.reference)))
        preload = backend.worker_preload(task)
        if backend_for_modules([module for module, _name in file_imports(path)]) == backend.name:
            assert preload == (preload_entry(path),)  # the server reads the file's imports, this backend's first
        else:  # a backend registered in code, which the server does not know: the list, as this process reads it
            assert preload == (*backend.preload_modules(), *task.imports)
        outcome = run_in_worker(_missing_modules, {"names": backend.preload_modules()[:1]}, timeout=300,
                                preload=preload)
        assert outcome.ok and outcome.value == [], outcome  # a worker starts with the framework loaded

    def test_recognises_its_own_oom_and_nothing_else(self, case: BackendCase) -> None:
        backend = get_backend(case.name)
        assert not backend.is_oom(ValueError("shapes do not match"))
        assert not backend.is_oom(RuntimeError("something else went wrong"))
        outcome = capped_run(case, 2000, parse_size(case.cap))
        assert not outcome.ok and outcome.kind == "oom", outcome

    def test_fit_batch_under_a_real_cap(self, case: BackendCase) -> None:
        """The answer fits in a capped worker; the next size up at the reported granularity does not."""
        from autotune import fit_batch_size

        cap = parse_size(case.cap)
        fit = fit_batch_size(case.task("hungry"), memory_limit=cap, margin=0.0)
        assert fit.limited_by == "memory" and fit.batch_size >= 64, fit
        assert fit.ooms <= 1 and fit.memory_metric == "address_space"
        assert fit.peak_memory_bytes is not None and fit.peak_memory_bytes <= cap
        assert all(p.throughput and p.throughput > 0 for p in fit.probes if p.fits)
        # at margin 0 either side of the edge may land on the other in a re-run: see JITTER
        assert capped_run(case, fit.batch_size, cap + JITTER).ok
        above = capped_run(case, fit.batch_size + fit.granularity, cap - JITTER)
        assert not above.ok and above.kind in ("oom", "crash", "error"), above

    def test_with_the_default_margin_a_longer_run_fits(self, case: BackendCase) -> None:
        """The probe is a short run (one or two steps); with the default margin, a run of more steps at the
        answer fits under the cap (at margin 0 it may not: the edge moves by a MiB or so between runs, and a
        block pool fills its block to the brim)."""
        from autotune import fit_batch_size

        cap = parse_size(case.cap)
        fit = fit_batch_size(case.task("hungry"), memory_limit=cap)
        assert fit.margin > 0 and fit.limited_by == "memory", fit
        longer = capped_run(case, fit.batch_size, cap, steps=4)
        assert longer.ok and longer.value["train_steps"] >= 4, longer

    def test_fit_batch_limited_by_the_dataset(self, case: BackendCase) -> None:
        from autotune import fit_batch_size

        fit = fit_batch_size(case.task("small"), max_batch=None, margin=0.05)
        assert fit.limited_by == "dataset" and fit.batch_size == 480
        assert fit.ooms == 0 and "fits in one batch" in " ".join(fit.notes)

    def test_fit_batch_limit_too_small_for_batch_one(self, case: BackendCase) -> None:
        from autotune import fit_batch_size

        with pytest.raises(FitError, match="does not fit"):
            fit_batch_size(case.task("small"), memory_limit=parse_size("64MiB"), margin=0.0)

    def test_fit_batch_model_broken_for_other_reasons(self, case: BackendCase) -> None:
        from autotune import fit_batch_size

        with pytest.raises(FitError, match="other than memory"):
            fit_batch_size(case.task("broken"), memory_limit=parse_size(case.cap))

    def test_in_process_probe_releases_memory(self, case: BackendCase) -> None:
        from autotune import fit_batch_size

        fit = fit_batch_size(case.task("small"), isolation="none", max_batch=256)
        assert fit.batch_size == 256 and fit.limited_by == "max_batch"
        assert any("in-process" in note for note in fit.notes)
