"""A small fork server of autotune's own: one per set of preloaded modules, built on public APIs only.

multiprocessing keeps a single fork server per process, so a process that tunes several frameworks (a test
run, a notebook) would fork TensorFlow workers from a server that loaded torch. A `ForkServer` here is a child
process (started with `subprocess`, in the environment it is given) that imports its modules once and then
forks a worker for each request: the worker inherits the imported framework and starts in milliseconds.

A request carries two file descriptors (`socket.send_fds`): the worker's end of a `multiprocessing.Pipe`, and
the write end of a status pipe. The server writes the worker's pid to the status pipe when it forks and the
exit code (negative for a signal, as multiprocessing reports it) when the worker ends; the read end is the
caller's sentinel. Closing the control socket (the caller exits) makes the server kill its workers and exit.
"""

from __future__ import annotations

import atexit
import json
import multiprocessing.connection
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import traceback
import weakref
from typing import Any, Mapping, Sequence

_PID = struct.Struct("=q")
_CODE = struct.Struct("=i")


class ForkedWorker:
    """A worker forked by a `ForkServer`: the part of `multiprocessing.Process` the runner uses."""

    def __init__(self, pid: int | None, status_fd: int) -> None:
        self.pid = pid
        self.sentinel = status_fd
        self.exitcode: int | None = None
        self._ended = pid is None
        weakref.finalize(self, _close_quietly, status_fd)  # the sentinel lives as long as this handle

    def _collect(self, timeout: float | None) -> None:
        if self._ended:
            return
        if not multiprocessing.connection.wait([self.sentinel], timeout):
            return
        data = _read_exactly(self.sentinel, _CODE.size)
        self._ended = True
        if data is None:  # the server is gone: its worker must not outlive it unwatched
            self._signal(signal.SIGKILL)
        else:
            self.exitcode = _CODE.unpack(data)[0]

    def is_alive(self) -> bool:
        self._collect(0)
        return not self._ended

    def join(self, timeout: float | None = None) -> None:
        self._collect(timeout)

    def kill(self) -> None:
        if self.is_alive():
            self._signal(signal.SIGKILL)

    def _signal(self, signum: int) -> None:
        if self.pid is None:
            return
        try:
            os.kill(self.pid, signum)
        except ProcessLookupError:
            pass



def _close_quietly(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


class ForkServer:
    """A server process that preloaded ``preload`` and forks a worker for each `start`."""

    def __init__(self, preload: Sequence[str], *, environment: Mapping[str, str] | None = None) -> None:
        self.preload = tuple(preload)
        self.environment = dict(os.environ if environment is None else environment)
        self._process: subprocess.Popen[bytes] | None = None
        self._control: socket.socket | None = None
        self._lock = threading.Lock()

    def ensure_running(self) -> None:
        """Start the server now if it is not running (it imports its modules while the caller goes on)."""
        with self._lock:
            self._ensure_running()

    def _ensure_running(self) -> None:
        if self._process is not None and self._process.poll() is None:
            return
        self.stop()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        command = ("import sys, json; sys.path[:] = json.loads(sys.argv[1]); "
                   "from autotune.forkserver import serve; serve(int(sys.argv[2]), sys.argv[3:])")
        try:
            self._process = subprocess.Popen(
                [sys.executable, "-c", command, json.dumps(sys.path), str(theirs.fileno()), *self.preload],
                pass_fds=(theirs.fileno(),), env=self.environment, stdin=subprocess.DEVNULL)
        finally:
            theirs.close()
        self._control = ours

    def start(self, connection: multiprocessing.connection.Connection) -> ForkedWorker:
        """Fork a worker on ``connection``, the worker's end of a `multiprocessing.Pipe` (the caller closes its
        copy afterwards). The worker's first message from the other end is ``(target, args)``, which it runs
        as ``target(connection, *args)``: it is sent once the worker exists, so that no size blocks the fork."""
        status_read, status_write = os.pipe()
        try:
            with self._lock:
                self._ensure_running()
                assert self._control is not None
                try:
                    socket.send_fds(self._control, [b"F"], [connection.fileno(), status_write])
                except OSError:  # the server died since it was checked: one restart
                    self.stop()
                    self._ensure_running()
                    socket.send_fds(self._control, [b"F"], [connection.fileno(), status_write])
        except BaseException:
            os.close(status_read)
            raise
        finally:
            os.close(status_write)
        data = _read_exactly(status_read, _PID.size)
        return ForkedWorker(None if data is None else _PID.unpack(data)[0], status_read)

    def stop(self) -> None:
        """Close the control socket (the server kills its workers and exits) and wait for the server."""
        control, process = self._control, self._process
        self._control = self._process = None
        if control is not None:
            control.close()
        if process is not None:
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _read_exactly(fd: int, size: int) -> bytes | None:
    data = b""
    while len(data) < size:
        chunk = os.read(fd, size - len(data))
        if not chunk:
            return None
        data += chunk
    return data


# --------------------------------------------------------------------------------------------- server side

FILE_PRELOAD = "autotune-file:"
"""A preload entry that names a task file whose imports to import (`autotune.task.preload_file`)."""


def serve(control_fd: int, preload: Sequence[str]) -> None:
    """The server's loop: import ``preload``, then fork a worker per request until the control socket closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the caller decides what Ctrl-C means
    import importlib

    # What the imports print (a framework's load-time notices) is not shown: a worker that needs a module says
    # what is wrong with it itself, and the notices would repeat for every server
    saved_stderr = os.dup(2)
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 2)
    try:
        for module in preload:
            if module.startswith(FILE_PRELOAD):  # `autotune.task.preload_entry`: what a task file imports
                from autotune.task import preload_file

                preload_file(module)
                continue
            try:
                importlib.import_module(module)
            except ImportError:  # a task's sibling module, importable only once the task is loaded
                pass
    finally:
        sys.stderr.flush()
        os.dup2(saved_stderr, 2)
        os.close(saved_stderr)
    control = socket.socket(fileno=control_fd)
    children: dict[int, int] = {}  # pid -> write end of its status pipe

    def reap(*_: Any) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            fd = children.pop(pid, None)
            if fd is not None:
                _write_quietly(fd, _CODE.pack(os.waitstatus_to_exitcode(status)))
                os.close(fd)

    signal.signal(signal.SIGCHLD, reap)
    while True:
        try:
            message, fds, _flags, _addr = socket.recv_fds(control, 1, 2)
        except OSError:
            message, fds = b"", []
        if not message or len(fds) != 2:
            for fd in fds:
                os.close(fd)
            break
        worker_fd, status_fd = fds
        # SIGCHLD is held until the new worker is on the books, so that a worker that ends at once is reported
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
        try:
            pid = os.fork()
            if pid == 0:
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})
                control.close()
                for fd in (*children.values(), status_fd):
                    os.close(fd)
                os._exit(_run_worker(worker_fd))
            os.close(worker_fd)
            children[pid] = status_fd
            _write_quietly(status_fd, _PID.pack(pid))
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})
    for pid in list(children):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    os._exit(0)


def _run_worker(fd: int) -> int:
    code = 1
    try:
        connection = multiprocessing.connection.Connection(fd)
        target, args = connection.recv()
        target(connection, *args)
        code = 0
    except EOFError:  # the caller went away before sending the work
        pass
    except BaseException:  # noqa: BLE001 - a worker reports through its connection; this is the last resort
        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
    return code


def _write_quietly(fd: int, data: bytes) -> None:
    try:
        os.write(fd, data)
    except OSError:  # the caller closed its end: nobody is waiting for this
        pass


_SERVERS: dict[tuple[tuple[str, ...], tuple[tuple[str, str], ...]], ForkServer] = {}
_SERVERS_LOCK = threading.Lock()


def server_for(preload: Sequence[str], environment: Mapping[str, str]) -> ForkServer:
    """The one server of this process for ``preload`` in ``environment``, created on first use."""
    key = (tuple(preload), tuple(sorted(environment.items())))
    with _SERVERS_LOCK:
        server = _SERVERS.get(key)
        if server is None:
            server = _SERVERS[key] = ForkServer(preload, environment=environment)
        return server


@atexit.register
def _stop_servers() -> None:
    for server in list(_SERVERS.values()):
        server.stop()
