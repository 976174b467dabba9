"""A throw-away PostgreSQL on loopback, for tests and benchmarks.

``with TempPostgres() as pg: url = pg.create_database()`` runs ``initdb`` and ``pg_ctl``
as the ``postgres`` user in a fresh directory, on a free port of 127.0.0.1 (socket in the
same directory), and removes everything on exit -- even when start-up fails half-way."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path

_BIN_DIRS = ["/usr/lib/postgresql/15/bin", "/usr/lib/postgresql/16/bin",
             "/usr/lib/postgresql/17/bin"]


def pg_bin(name: str) -> str | None:
    for d in _BIN_DIRS:
        if os.path.exists(os.path.join(d, name)):
            return os.path.join(d, name)
    return shutil.which(name)


def unavailable() -> str:
    """Why a temporary PostgreSQL cannot run here ("" when it can)."""
    if pg_bin("initdb") is None or pg_bin("pg_ctl") is None:
        return "PostgreSQL server binaries (initdb, pg_ctl) are not installed"
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        return "runuser is missing (needed to run PostgreSQL as the postgres user)"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed"
    return ""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class TempPostgres:
    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="pw-pg-"))
        self.data = self.dir / "data"
        self.port = 0
        self.started = False

    def _run(self, argv: list[str]) -> None:
        if os.geteuid() == 0:
            argv = ["runuser", "-u", "postgres", "--", *argv]
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                       stdin=subprocess.DEVNULL, timeout=60)

    def start(self) -> TempPostgres:
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
        self._run([pg_bin("initdb") or "initdb", "-D", str(self.data), "-A", "trust",
                   "-U", "postgres", "-E", "UTF8", "--no-sync"])
        for _ in range(5):
            self.port = free_port()
            try:
                self._run([pg_bin("pg_ctl") or "pg_ctl", "-D", str(self.data), "-w", "-l",
                           str(self.dir / "log"), "-o",
                           f"-p {self.port} -k {self.dir} -h 127.0.0.1 -c fsync=off "
                           "-c max_connections=200", "start"])
                self.started = True
                return self
            except subprocess.CalledProcessError:
                continue
        raise RuntimeError(f"PostgreSQL did not start: {(self.dir / 'log').read_text()[-2000:]}")

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        """A new empty database; its SQLAlchemy URL."""
        import psycopg

        name = "pw_" + uuid.uuid4().hex[:12]
        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres",
                             autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        if self.started:
            with contextlib.suppress(subprocess.CalledProcessError):
                self._run([pg_bin("pg_ctl") or "pg_ctl", "-D", str(self.data), "-m",
                           "immediate", "stop"])
            self.started = False
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> TempPostgres:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()
