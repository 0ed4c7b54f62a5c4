"""A private PostgreSQL server for tests: its own data directory, port and socket directory.

Binaries come from Debian's ``postgresql`` package (``/usr/lib/postgresql/<version>/bin``;
.ci/run installs it). PostgreSQL refuses to run as root, so under root the data directory
belongs to the ``postgres`` system user and initdb and the server run as that user. The
directory is made with ``mkdtemp`` under the system temp dir rather than pytest's
``tmp_path``, whose root-only parent that user could not enter. Durability is switched off
(``fsync=off``): the data is thrown away anyway, and startup and writes get faster.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import free_port

STARTUP_TIMEOUT = 30.0
SUPERUSER = "postgres"


def binaries() -> Path:
    """The newest installed PostgreSQL's bin directory; fails the test when there is none."""
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/postgres"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    if not found:
        pytest.fail(
            "PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/postgres): "
            ".ci/run installs it with apt-get install postgresql"
        )
    return found[-1].parent


class PostgresServer:
    def __init__(self) -> None:
        self.bin = binaries()
        self.root = Path(tempfile.mkdtemp(prefix="servegate-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self._user: pwd.struct_passwd | None = None
        if os.geteuid() == 0:
            try:
                self._user = pwd.getpwnam("postgres")
            except KeyError:
                pytest.fail("running as root needs the 'postgres' system user (apt's postgresql)")
            os.chown(self.root, self._user.pw_uid, self._user.pw_gid)
        self._run(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            SUPERUSER,
            "--auth=trust",
            "--encoding=UTF8",
            "--no-locale",
            "--no-sync",
        )

    @property
    def dsn(self) -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/postgres"

    def dsn_for(self, database: str) -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        """Start the server on its data directory and wait until it accepts connections."""
        if self.proc is not None:
            return
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    str(self.bin / "postgres"),
                    "-D",
                    str(self.data),
                    "-p",
                    str(self.port),
                    "-c",
                    "listen_addresses=127.0.0.1",
                    "-c",
                    f"unix_socket_directories={self.root}",
                    "-c",
                    "fsync=off",
                    "-c",
                    "synchronous_commit=off",
                    "-c",
                    "full_page_writes=off",
                    "-c",
                    "max_connections=50",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                **self._options(),
            )
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not self._ready():
            if self.proc.poll() is not None:
                self.proc = None
                pytest.fail(f"postgres exited at start:\n{self._log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"postgres not ready in {STARTUP_TIMEOUT} s:\n{self._log_tail()}")
            time.sleep(0.05)

    def stop(self) -> None:
        """Fast shutdown (SIGINT: connections are cut, nothing waits for clients)."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def _ready(self) -> bool:
        probe = subprocess.run(
            [
                str(self.bin / "pg_isready"),
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-U",
                SUPERUSER,
                "-d",
                "postgres",
                "-t",
                "1",
            ],
            capture_output=True,
            check=False,
        )
        return probe.returncode == 0

    def _run(self, tool: str, *args: str) -> None:
        done = subprocess.run(
            [str(self.bin / tool), *args], capture_output=True, check=False, **self._options()
        )
        if done.returncode != 0:
            pytest.fail(f"{tool} failed:\n{done.stdout.decode()}{done.stderr.decode()}")

    def _options(self) -> dict[str, Any]:
        """Popen options: run in the server's own directory, as ``postgres`` under root."""
        options: dict[str, Any] = {"cwd": self.root}
        if self._user is not None:
            options.update(user=self._user.pw_uid, group=self._user.pw_gid, extra_groups=[])
        return options

    def _log_tail(self) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-20:])
        except OSError:
            return "(no server log)"


@contextmanager
def running_postgres() -> Iterator[PostgresServer]:
    """A started server, closed (and its data directory removed) on exit."""
    server = PostgresServer()
    try:
        server.start()
        yield server
    finally:
        server.close()
