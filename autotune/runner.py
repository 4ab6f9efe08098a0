"""Run one unit of work (a memory probe, a trial) in an isolated worker process.

Workers come from a fork server (`autotune.forkserver`, one per set of preloaded modules) that has already
imported the backend's framework, so each starts in well under a second, with a clean allocator, and dies
with its memory. A worker can be capped: on the CPU its address space is limited with ``RLIMIT_AS`` (the
framework included), so going over is a genuine allocation failure. Whatever happens in the worker (an
exception, an OOM, a segfault, a hang past the timeout, a kill by the kernel's OOM killer) comes back as a
`WorkerOutcome`; the caller never crashes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import importlib
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import time
import traceback
import warnings
from typing import Any, Callable, Iterator, Sequence

from autotune.backends.native_noise import quiet_if_loading
from autotune.errors import AutotuneError, TrialError
from autotune.forkserver import server_for
from autotune.procmem import process_memory, return_freed_memory_at_once, single_malloc_arena
from autotune.units import format_size


@dataclasses.dataclass
class WorkerOutcome:
    """What came back from a worker: ``ok`` and ``value``, or a failure ``kind`` and its ``message``.

    ``kind`` is one of ``oom``, ``error``, ``crash``, ``timeout``, ``fatal`` (an `AutotuneError`: bad input,
    stop the whole run) or a `TrialError` kind raised by the work itself (``diverged``, ...).
    """

    ok: bool
    value: Any = None
    kind: str | None = None
    message: str = ""
    exitcode: int | None = None

    @property
    def killed_by_signal(self) -> bool:
        return self.kind == "crash" and self.exitcode is not None and self.exitcode < 0


def _process_environment() -> dict[str, str]:
    """The C library's environment, which child processes inherit: a framework's native code can change it
    without ``os.environ`` seeing (MindSpore sets OMP_NUM_THREADS=1 that way)."""
    try:
        import ctypes

        entries = ctypes.POINTER(ctypes.c_char_p).in_dll(ctypes.CDLL(None), "environ")
        result: dict[str, str] = {}
        index = 0
        while entries[index]:
            key, _, value = os.fsdecode(entries[index]).partition("=")
            result[key] = value
            index += 1
        return result
    except (OSError, ValueError, AttributeError):
        return dict(os.environ)


_ENVIRONMENT = _process_environment()
"""The environment as it was when autotune was imported, before a framework's import changed it (MindSpore's
sets OMP_NUM_THREADS=1 in native code). Every worker server starts in this environment, so that a worker's
memory does not depend on which framework the caller imported first (benchmarks/RESULTS.md, 2026-12-02)."""


def _forking() -> bool:
    """Workers fork from a server of autotune's own on Linux; elsewhere (fork is unsafe after a framework
    loaded threads, as on macOS) each is a fresh ``spawn`` process."""
    return sys.platform.startswith("linux")


def warm_up_for(task: Any, *, isolation: str = "process") -> None:
    """`warm_up_server` for the task named by ``task`` (a reference string), before this process loads it: the
    server loads the task and its framework meanwhile (a Task object, or no workers: nothing to do)."""
    if isolation == "process" and isinstance(task, str) and task.strip():
        from autotune.task import preload_entry

        entry = preload_entry(task)
        if entry is not None:
            warm_up_server((entry,))


def warm_up_server(preload: Sequence[str]) -> None:
    """Start the fork server for ``preload`` now: it imports the framework while the caller does other work,
    and the first worker starts without waiting for it (the server's start does not block)."""
    if _forking():
        server_for(preload, _ENVIRONMENT).ensure_running()


def _limit_address_space(limit_bytes: int) -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (limit_bytes, limit_bytes))


class Channel:
    """The worker's line to its parent: ``ask(message)`` sends a message and waits for the reply
    (a trial reports an intermediate loss and learns whether to stop)."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn

    def ask(self, message: Any) -> Any:
        self._conn.send(("ask", message))
        return self._conn.recv()


_IN_WORKER = False


def in_worker() -> bool:
    """Whether this process is an autotune worker (state kept here dies with the worker, not the caller's)."""
    return _IN_WORKER


def _prepare_worker(memory_limit: int | None, preload: Sequence[str], exact_memory: bool = True) -> None:
    """A new worker's set-up: its modules, the allocator settings, and the address-space cap. ``exact_memory``
    (fit probes, bench) pins the allocator so that peaks are the live memory; a trial's worker keeps the
    allocator as the user's own training has it, whose steps it times (pinned, a GPT-2 step at batch 128 took
    0.96-2.6 s against 0.68 s: benchmarks/RESULTS.md, 2026-12-02 15:07)."""
    global _IN_WORKER
    _IN_WORKER = True
    # A worker's framework and library warnings (a model config's notice, a deprecation) would repeat on the
    # terminal once per worker; what matters reaches the user as a trial's reason or autotune's own line.
    warnings.simplefilter("ignore")
    logging.disable(logging.WARNING)
    _import_preload(preload)
    # Everything imported so far lives as long as the worker: keep it out of the cycle collector, whose full
    # passes (a session's release runs one) would otherwise walk all of the framework's objects every trial.
    gc.freeze()
    if exact_memory:
        return_freed_memory_at_once()
    if memory_limit:
        mapped = process_memory()["address_space"]
        if mapped >= memory_limit:
            raise TrialError("oom", f"the worker alone (framework loaded) maps {format_size(mapped)} of address "
                                    f"space, more than the cap of {format_size(memory_limit)}")
        single_malloc_arena()
        _limit_address_space(memory_limit)


def _import_preload(preload: Sequence[str]) -> None:
    """Import a worker's modules: already there when the fork server preloaded them; else (a spawned worker, a
    module the server could not import) imported here, before the cap, without a framework's start-up noise,
    which would otherwise reach the terminal once per worker."""
    with quiet_if_loading(preload):
        for module in preload:
            try:
                importlib.import_module(module)
            except ImportError:  # a task's sibling module, importable only once the task is loaded
                pass


def _execute(conn: Any, function: Callable[..., Any], kwargs: dict[str, Any], with_channel: bool,
             prepare: Callable[[], None] | None = None) -> tuple[Any, ...]:
    """Run one unit of work; whatever happens becomes a ``(kind, value)`` result (``kind`` 'ok' on success)."""
    try:
        if prepare is not None:
            prepare()
        if with_channel:
            kwargs = {**kwargs, "channel": Channel(conn)}
        return ("ok", function(**kwargs))
    except TrialError as exc:
        return (exc.kind, exc.message)
    except AutotuneError as exc:
        return ("fatal", str(exc))
    except MemoryError as exc:
        return ("oom", f"MemoryError: {exc}")
    except BaseException as exc:  # noqa: BLE001 - everything is reported, nothing escapes the worker
        tail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        return ("error", tail[-2000:])


def _send_result(conn: Any, result: tuple[Any, ...]) -> None:
    try:
        conn.send(result)
    except Exception:
        try:
            conn.send(("error", "the worker's result could not be sent back (not picklable or out of memory)"))
        except Exception:
            pass


def _child(conn: Any, function: Callable[..., Any], kwargs: dict[str, Any], memory_limit: int | None,
           preload: Sequence[str], with_channel: bool, exact_memory: bool = True) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides what Ctrl-C means
    try:
        _send_result(conn, _execute(conn, function, kwargs, with_channel,
                                    prepare=lambda: _prepare_worker(memory_limit, preload, exact_memory)))
    finally:
        conn.close()


def _serve(conn: Any, memory_limit: int | None, preload: Sequence[str], exact_memory: bool) -> None:
    """A `Worker`'s loop: run each unit of work the parent sends, until it sends None or hangs up."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        ready = _execute(conn, lambda: None, {}, False,
                         prepare=lambda: _prepare_worker(memory_limit, preload, exact_memory))
        _send_result(conn, ready)
        if ready[0] != "ok":
            return
        while True:
            try:
                request = conn.recv()
            except EOFError:
                return
            if request is None:
                return
            function, kwargs, with_channel = request
            _send_result(conn, _execute(conn, function, kwargs, with_channel))
    finally:
        conn.close()


def _start(target: Callable[..., Any], args: tuple[Any, ...], preload: Sequence[str]) -> tuple[Any, Any]:
    parent_end, child_end = multiprocessing.Pipe(duplex=True)
    process: Any = None
    try:
        if _forking():
            process = server_for(preload, _ENVIRONMENT).start(child_end)
            try:
                parent_end.send((target, args))
            except OSError:  # the worker ended before taking its work: the caller sees that as a crash
                pass
        else:
            process = multiprocessing.get_context("spawn").Process(target=target, daemon=True,
                                                                   args=(child_end, *args))
            with _main_module_hidden():
                process.start()
    except BaseException:  # Ctrl-C while it starts: leave nothing behind
        parent_end.close()
        if process is not None and process.pid is not None:
            _kill(process)
        raise
    finally:
        child_end.close()
    return process, parent_end


def _await(process: Any, conn: Any, timeout: float | None, on_message: Callable[[Any], Any] | None,
           timeout_per_message: bool = False) -> WorkerOutcome | None:
    """Wait for the worker's result, answering its questions; None when it ended without one.

    A hang past ``timeout`` (since the start, or with ``timeout_per_message`` since the worker's last message)
    kills the worker. Ctrl-C (or any error here) kills it and re-raises.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        while True:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready = multiprocessing.connection.wait([conn, process.sentinel], timeout=remaining)
            if not ready:
                _kill(process)
                return WorkerOutcome(False, kind="timeout",
                                     message=f"no result after {timeout:g} s: the worker was stopped")
            if conn in ready or conn.poll():
                try:
                    received = conn.recv()
                except EOFError:
                    return None
                if received[0] == "ask" and on_message is not None:
                    conn.send(on_message(received[1]))
                    if timeout_per_message and timeout is not None:
                        deadline = time.monotonic() + timeout
                    continue
                if received[0] == "ok":
                    return WorkerOutcome(True, value=received[1])
                return WorkerOutcome(False, kind=received[0], message=received[1])
            return None
    except BaseException:
        _kill(process)
        raise


def run_in_worker(
    function: Callable[..., Any],
    kwargs: dict[str, Any],
    *,
    memory_limit: int | None = None,
    timeout: float | None = None,
    preload: Sequence[str] = (),
    on_message: Callable[[Any], Any] | None = None,
    timeout_per_message: bool = False,
    exact_memory: bool = True,
) -> WorkerOutcome:
    """Run ``function(**kwargs)`` in a fresh worker and report how it ended; never raises for the work's sake.

    ``function`` must be importable by name and ``kwargs`` picklable. ``memory_limit`` caps the worker's address
    space; ``timeout`` (seconds) kills a worker that hangs (``timeout_per_message``: that long without a message,
    for work made of several units). With ``on_message``, the function also gets a ``channel`` whose
    ``ask(message)`` returns ``on_message(message)`` computed here. ``exact_memory``: the allocator is pinned so
    that the peak is the live memory (a fit's probe); False keeps it as a user's training has it (timings).
    Ctrl-C kills the worker and re-raises.
    """
    process, conn = _start(_child, (function, kwargs, memory_limit, tuple(preload), on_message is not None,
                                    exact_memory), preload)
    try:
        outcome = _await(process, conn, timeout, on_message, timeout_per_message)
        process.join(timeout=30)
        if process.is_alive():
            _kill(process)
    finally:
        conn.close()
    if outcome is None:
        return WorkerOutcome(False, kind="crash", message=_death(process.exitcode, memory_limit),
                             exitcode=process.exitcode)
    outcome.exitcode = process.exitcode
    return outcome


class Worker:
    """One worker process that runs unit after unit of work (the trials of a study), keeping its imports and
    warmed-up framework, until a unit fails in a way that may have left it in any state (an OOM, an error, a
    crash, a hang; not a pruned or diverged unit): then it is retired and the next unit gets a new one. An OOM
    in a worker that had run other units is run again once in a fresh worker, so that what earlier units left
    behind never decides it.

    The isolation is that of `run_in_worker` (a crash, a hang or an OOM fails that unit only), at a fraction of
    the start-up cost per unit: the framework's first-step set-up is paid once per worker, not per unit
    (figures in benchmarks/RESULTS.md). Its allocator is the one a user's training has (unless
    ``exact_memory``), since trials time steps. Use as a context manager, or call `close`.
    """

    def __init__(self, *, memory_limit: int | None = None, preload: Sequence[str] = (),
                 exact_memory: bool = False) -> None:
        self.memory_limit = memory_limit
        self.preload = tuple(preload)
        self.exact_memory = exact_memory  # the allocator pinned, as for a fit's probes (`_prepare_worker`)
        self._process: Any = None
        self._conn: Any = None
        self.units = 0
        self.started = 0
        self._units_here = 0

    def _ensure(self) -> WorkerOutcome | None:
        if self._process is not None and self._process.is_alive():
            return None
        self.close()
        self._process, self._conn = _start(_serve, (self.memory_limit, self.preload, self.exact_memory),
                                           self.preload)
        self.started += 1
        self._units_here = 0
        ready = _await(self._process, self._conn, START_TIMEOUT, None)
        if ready is None or not ready.ok:
            failed = ready or WorkerOutcome(False, kind="crash", message=_death(self._process.exitcode,
                                                                                self.memory_limit))
            self.close()
            return failed
        return None

    def run(self, function: Callable[..., Any], kwargs: dict[str, Any], *, timeout: float | None = None,
            on_message: Callable[[Any], Any] | None = None) -> WorkerOutcome:
        """`run_in_worker`'s contract, in this worker (started, or restarted, as needed)."""
        failed = self._ensure()
        if failed is not None:
            return failed
        try:
            self._conn.send((function, kwargs, on_message is not None))
        except (OSError, EOFError):
            self.close()
            return WorkerOutcome(False, kind="crash", message="the worker was gone before the work could start")
        outcome = _await(self._process, self._conn, timeout, on_message)
        self.units += 1
        self._units_here += 1
        if outcome is None:
            self._process.join(timeout=30)
            exitcode = self._process.exitcode
            self.close()
            return WorkerOutcome(False, kind="crash", message=_death(exitcode, self.memory_limit), exitcode=exitcode)
        if not outcome.ok and outcome.kind not in RETAINING_KINDS:
            used = self._units_here
            self.close()  # a unit that failed may have left the process in any state: the next gets a new one
            if outcome.kind == "oom" and used > 1:
                return self.run(function, kwargs, timeout=timeout, on_message=on_message)
        return outcome

    def close(self) -> None:
        """Stop the worker (politely, then by force)."""
        process, conn = self._process, self._conn
        self._process = self._conn = None
        if process is None:
            return
        try:
            if process.is_alive():
                conn.send(None)
                process.join(timeout=5)
        except (OSError, EOFError, ValueError):
            pass
        _kill(process)
        try:
            conn.close()
        except OSError:
            pass

    def __enter__(self) -> "Worker":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


START_TIMEOUT = 600.0
"""Seconds a new `Worker` may take to import its modules before it counts as hung."""

RETAINING_KINDS = frozenset({"pruned", "diverged"})
"""Failures that leave a worker as it was (the work stopped itself, nothing broke): it stays for the next unit."""


@contextlib.contextmanager
def _main_module_hidden() -> Iterator[None]:
    """Start workers without re-running the caller's ``__main__`` in them.

    multiprocessing re-imports the main script in every non-fork worker, which runs a script's top-level code
    again when it lacks an ``if __name__ == "__main__"`` guard. Workers here only run autotune functions, so
    the main module is hidden from the start-up data while a worker starts.
    """
    main: Any = sys.modules.get("__main__")
    had_file = hasattr(main, "__file__")
    saved_file, saved_spec = getattr(main, "__file__", None), getattr(main, "__spec__", None)
    if had_file:
        del main.__file__
    main.__spec__ = None
    try:
        yield
    finally:
        if had_file:
            main.__file__ = saved_file
        main.__spec__ = saved_spec


def _kill(process: multiprocessing.process.BaseProcess) -> None:
    if process.is_alive():
        process.kill()
    process.join(timeout=10)


def _death(exitcode: int | None, memory_limit: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        if -exitcode == signal.SIGKILL:
            return f"worker killed by {name} (the system's out-of-memory killer, or an outside kill)"
        capped = " under its memory cap" if memory_limit else ""
        return f"worker crashed with {name}{capped}"
    return f"worker exited with code {exitcode} without a result"




class _DirectChannel:
    """`Channel` for work run in this process: ``ask`` calls the handler directly."""

    def __init__(self, handler: Callable[[Any], Any]) -> None:
        self._handler = handler

    def ask(self, message: Any) -> Any:
        return self._handler(message)


def run_here(function: Callable[..., Any], kwargs: dict[str, Any],
             on_message: Callable[[Any], Any] | None = None) -> WorkerOutcome:
    """`run_in_worker`'s in-process twin: the same outcome kinds, no isolation (``isolation='none'``)."""
    if on_message is not None:
        kwargs = {**kwargs, "channel": _DirectChannel(on_message)}
    try:
        return WorkerOutcome(True, value=function(**kwargs))
    except TrialError as exc:
        outcome = WorkerOutcome(False, kind=exc.kind, message=exc.message)
    except AutotuneError as exc:
        outcome = WorkerOutcome(False, kind="fatal", message=str(exc))
    except MemoryError as exc:
        outcome = WorkerOutcome(False, kind="oom", message=f"MemoryError: {exc}")
    except Exception as exc:
        outcome = WorkerOutcome(False, kind="error", message=f"{type(exc).__name__}: {exc}"[:300])
    # The failure's traceback held the failed step's frames (and their tensors) in reference cycles until the
    # handler ended: collect them now, so that the next unit of work in this process finds the memory free.
    gc.collect()
    return outcome
