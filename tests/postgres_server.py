"""A throw-away PostgreSQL server for the tests: its own data directory, a free localhost port, a password.

The tests of many processes on one study need a real RDB server, not a file. `PostgresServer` runs Debian's
binaries (`initdb`, `pg_ctl`) from the newest `/usr/lib/postgresql/*/bin` or from PATH; PostgreSQL refuses
to run as root, so as root the server runs as the `postgres` user (`runuser`), in a directory it owns.
"""

from __future__ import annotations

import contextlib
import glob
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterator

DATABASE = "autotune_test"
USER = "autotune"


def postgres_bin() -> Path | None:
    """The directory of `initdb` and `pg_ctl`, or None where PostgreSQL is not installed."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class PostgresServer:
    """One server started by `start` and removed by `stop`; `url` holds the password (keep it out of output)."""

    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir = bin_dir
        self.password = "pw-" + secrets.token_hex(8)
        self.port = _free_port()
        self.root = Path(tempfile.mkdtemp(prefix="autotune-pg-"))
        self.data = self.root / "data"
        self.sockets = self.root / "sockets"
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    @property
    def url(self) -> str:
        return f"postgresql://{USER}:{self.password}@127.0.0.1:{self.port}/{DATABASE}"

    def _run(self, *command: str) -> None:
        subprocess.run([*self.as_user, *command], check=True, capture_output=True, text=True, timeout=120)

    def start(self) -> None:
        self.sockets.mkdir()
        secret = self.root / "password"
        secret.write_text(self.password + "\n")
        if self.as_user:
            shutil.chown(self.root, "postgres")
            for path in (self.sockets, secret):
                shutil.chown(path, "postgres")
        self._run(str(self.bin_dir / "initdb"), "-D", str(self.data), "-U", USER, f"--pwfile={secret}",
                  "--auth=scram-sha-256", "-E", "UTF8", "--no-sync")
        secret.unlink()
        self.restart()
        self._create_database()

    def restart(self) -> None:
        """Start the server (again, after `halt`) on the same port and data."""
        options = f"-p {self.port} -k {self.sockets} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
        self._run(str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-o", options, "-l",
                  str(self.root / "server.log"), "-w", "-t", "60", "start")

    def halt(self) -> None:
        """Stop the server as an administrator would (`pg_ctl stop -m fast`: open sessions are cut), data kept."""
        self._run(str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")

    def _create_database(self) -> None:
        with self._connect("postgres") as connection:
            connection.execute(f"CREATE DATABASE {DATABASE}")

    def _connect(self, database: str):  # psycopg's Connection, in autocommit (CREATE DATABASE needs it)
        import psycopg

        return psycopg.connect(host="127.0.0.1", port=self.port, user=USER, password=self.password,
                               dbname=database, autocommit=True)

    def stop(self) -> None:
        if self.data.exists():
            with contextlib.suppress(subprocess.SubprocessError):
                self._run(str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)

    def fresh_database(self, name: str) -> str:
        """A URL of a new empty database ``name`` on this server (one per test keeps tests apart)."""
        with self._connect(DATABASE) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}"')
            connection.execute(f'CREATE DATABASE "{name}"')
        return f"postgresql://{USER}:{self.password}@127.0.0.1:{self.port}/{name}"


@contextlib.contextmanager
def running_server() -> Iterator[PostgresServer | None]:
    """A started server, stopped at the end; None where PostgreSQL's binaries are missing."""
    bin_dir = postgres_bin()
    if bin_dir is None:
        yield None
        return
    server = PostgresServer(bin_dir)
    try:
        server.start()
        yield server
    finally:
        server.stop()
