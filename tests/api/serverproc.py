"""A real ``portwall server`` process on a free loopback port, for client end-to-end tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

TOKEN = "e2e-admin-token"
VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    def __init__(self, db: str, *extra: str) -> None:
        self.db, self.extra = db, extra
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.log: Path | None = None

    def start(self, log_dir: Path) -> ServerProcess:
        for _ in range(5):
            port = free_port()
            self.url = f"http://127.0.0.1:{port}"
            self.log = log_dir / f"server-{port}.log"
            with open(self.log, "wb") as out:
                self.proc = subprocess.Popen(
                    [str(VENV_BIN / "portwall"), "server", "--port", str(port), "--db",
                     self.db, "--admin-token", TOKEN, *self.extra],
                    stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    env={**os.environ, "PYTHONUNBUFFERED": "1"})
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and self.proc.poll() is None:
                try:
                    httpx.get(self.url + "/", timeout=1)
                    return self
                except httpx.HTTPError:
                    time.sleep(0.1)
            self.stop()
        raise RuntimeError(f"server did not start: {self.log and self.log.read_text()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None


def openstack(url: str, *args: str) -> str:
    """Run the real python-openstackclient against ``url`` (no Keystone)."""
    argv = [str(VENV_BIN / "openstack"), "--os-auth-type", "admin_token", "--os-token", TOKEN,
            "--os-endpoint", url, *args]
    r = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                       timeout=120)
    if r.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed: {r.stderr}")
    return r.stdout.strip()
