"""autotune's own fork server: one per set of preloaded modules, workers that report how they ended, a server
that comes back after it dies, and no file descriptor left behind per worker."""

import gc
import os
import signal
import sys

from autotune.forkserver import server_for
from autotune.runner import _ENVIRONMENT, run_in_worker


def test_each_preload_set_has_its_own_server_and_its_workers_inherit_it():
    with_colorsys = run_in_worker(_loaded, {"name": "colorsys"}, preload=("colorsys",))
    with_netrc = run_in_worker(_loaded, {"name": "colorsys"}, preload=("netrc",))
    assert with_colorsys.ok and with_colorsys.value is True
    assert with_netrc.ok and with_netrc.value is False  # a worker of the netrc server did not get colorsys
    assert server_for(("colorsys",), _ENVIRONMENT) is not server_for(("netrc",), _ENVIRONMENT)


def test_a_killed_server_is_restarted_and_its_workers_fail_as_crashes():
    preload = ("wave",)
    assert run_in_worker(os.getpid, {}, preload=preload).ok
    server = server_for(preload, _ENVIRONMENT)
    os.kill(server._process.pid, signal.SIGKILL)
    server._process.wait()
    again = run_in_worker(os.getpid, {}, preload=preload)
    assert again.ok and again.exitcode == 0


def test_starting_many_workers_leaves_no_descriptor_behind():
    run_in_worker(os.getpid, {}, preload=("json",))
    gc.collect()
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(20):
        assert run_in_worker(os.getpid, {}, preload=("json",)).ok
    gc.collect()
    assert len(os.listdir("/proc/self/fd")) == before


def _loaded(name: str) -> bool:
    return name in sys.modules
