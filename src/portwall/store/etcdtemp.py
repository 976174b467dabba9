"""A throw-away etcd cluster (1 or 3 members) on loopback, for tests, benchmarks and labs.

``with TempEtcd(members=3) as etcd: url = etcd.url()`` starts Debian's ``etcd`` on free
127.0.0.1 ports with data in a fresh temporary directory, and stops every member and
removes the directory on exit -- also when start-up fails half-way. Members can be killed
(``kill(i)``, SIGKILL) and started again (``start_member(i)``) to test faults.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import httpx

#: Big enough for a bulk import (etcd's defaults: 128 operations, 1.5 MiB per request).
MAX_TXN_OPS = 100_000
MAX_REQUEST_BYTES = 64 * 1024 * 1024


def unavailable() -> str:
    """Why an etcd cluster cannot be started here ("" when it can)."""
    if shutil.which("etcd") is None:
        return "etcd is not installed (apt-get install etcd-server, or bash scripts/etcd.sh)"
    return ""


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


class TempEtcd:
    def __init__(self, members: int = 1, base: Path | None = None) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="pw-etcd-", dir=base))
        self.n = members
        self.token = "pw-" + uuid.uuid4().hex[:10]
        ports = free_ports(2 * members)
        self.client_ports = ports[:members]
        self.peer_ports = ports[members:]
        self.procs: list[subprocess.Popen[bytes] | None] = [None] * members

    def name(self, i: int) -> str:
        return f"m{i}"

    def endpoints(self) -> list[str]:
        return [f"127.0.0.1:{p}" for p in self.client_ports]

    def url(self, prefix: str = "") -> str:
        """``etcd://h:p,h:p[/prefix]`` -- the store URL of this cluster."""
        return "etcd://" + ",".join(self.endpoints()) + (f"/{prefix.strip('/')}" if prefix else "")

    def start_member(self, i: int, fresh: bool = False) -> None:
        cluster = ",".join(f"{self.name(j)}=http://127.0.0.1:{self.peer_ports[j]}"
                           for j in range(self.n))
        cport, pport = self.client_ports[i], self.peer_ports[i]
        data = self.dir / self.name(i)
        log = open(self.dir / f"{self.name(i)}.log", "ab")  # noqa: SIM115 - owned by the proc
        argv = ["etcd", "--name", self.name(i), "--data-dir", str(data),
                "--listen-client-urls", f"http://127.0.0.1:{cport}",
                "--advertise-client-urls", f"http://127.0.0.1:{cport}",
                "--listen-peer-urls", f"http://127.0.0.1:{pport}",
                "--initial-advertise-peer-urls", f"http://127.0.0.1:{pport}",
                "--initial-cluster", cluster, "--initial-cluster-token", self.token,
                "--initial-cluster-state", "new",
                "--max-txn-ops", str(MAX_TXN_OPS), "--max-request-bytes", str(MAX_REQUEST_BYTES),
                "--heartbeat-interval", "50", "--election-timeout", "500",
                "--experimental-watch-progress-notify-interval", "5s",
                "--unsafe-no-fsync", "--logger", "zap", "--log-level", "warn"]
        self.procs[i] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()

    def start(self, timeout: float = 30.0) -> TempEtcd:
        for i in range(self.n):
            self.start_member(i)
        self.wait_healthy(timeout)
        return self

    def healthy(self, i: int) -> bool:
        try:
            r = httpx.get(f"http://{self.endpoints()[i]}/health", timeout=1.0)
            return r.status_code == 200 and r.json().get("health") == "true"
        except (httpx.HTTPError, ValueError):
            return False

    def wait_healthy(self, timeout: float = 30.0, members: list[int] | None = None) -> None:
        deadline = time.monotonic() + timeout
        todo = list(range(self.n)) if members is None else members
        while time.monotonic() < deadline:
            dead = [i for i in todo if (p := self.procs[i]) is not None and p.poll() is not None]
            if dead:
                raise RuntimeError(f"etcd member {dead[0]} exited: {self.log(dead[0])}")
            if all(self.healthy(i) for i in todo):
                return
            time.sleep(0.1)
        raise RuntimeError(f"etcd not healthy after {timeout}s: {self.log(todo[0])}")

    def log(self, i: int) -> str:
        p = self.dir / f"{self.name(i)}.log"
        return p.read_text(errors="replace")[-2000:] if p.exists() else ""

    def kill(self, i: int, sig: int = signal.SIGKILL) -> None:
        """Kill member ``i`` (SIGKILL by default: no clean shutdown)."""
        p = self.procs[i]
        if p is not None and p.poll() is None:
            os.kill(p.pid, sig)
            p.wait(10)
        self.procs[i] = None

    def stop(self) -> None:
        for i in range(self.n):
            p = self.procs[i]
            if p is not None and p.poll() is None:
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(10)
            self.procs[i] = None

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> TempEtcd:
        try:
            return self.start()
        except BaseException:
            self.remove()
            raise

    def __exit__(self, *exc: object) -> None:
        self.remove()



STATE = "cluster.json"


def detach(cluster: TempEtcd) -> Path:
    """Leave ``cluster`` running after this process; its state file (for :func:`stop_dir`)."""
    import json

    path = cluster.dir / STATE
    path.write_text(json.dumps({"url": cluster.url(), "endpoints": cluster.endpoints(),
                                "pids": [p.pid for p in cluster.procs if p is not None]}))
    return path


def stop_dir(directory: Path) -> list[int]:
    """Stop a detached cluster by its directory (SIGTERM, then SIGKILL) and remove it."""
    import json

    state = json.loads((directory / STATE).read_text())
    pids = [int(p) for p in state["pids"]]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    for pid in pids:
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.05)
        if _alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    shutil.rmtree(directory, ignore_errors=True)
    return pids


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie child of ours is gone for our purposes
    with contextlib.suppress(ChildProcessError):
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    return True
