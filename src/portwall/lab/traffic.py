"""Real traffic between lab VMs: one-shot probes, echo servers, long-lived sessions, streams
and forged frames, each run inside a VM's namespace with :mod:`portwall.lab.probe`.

``lab check``, the demo and the end-to-end tests all use these, so "allowed" means the same
thing everywhere: the request reached a listener in the destination VM and its answer came
back before the timeout.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
import sys
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import IO

from portwall.lab import netns
from portwall.lab.state import LabError, VMState

PROBE = [sys.executable, "-m", "portwall.lab.probe"]
DEFAULT_TIMEOUT = 0.8


def _in(vm: VMState, argv: list[str]) -> list[str]:
    return ["ip", "netns", "exec", vm.netns, *argv]


def probe(vm: VMState, proto: str, target: str, port: int | None = None,
          timeout: float = DEFAULT_TIMEOUT, sport: int | None = None) -> tuple[str, str]:
    """One request from ``vm``: (``allow`` | ``deny``, detail)."""
    if proto == "icmp":
        fam = "-6" if ipaddress.ip_address(target).version == 6 else "-4"
        argv = ["ping", fam, "-n", "-c", "1", "-W", str(timeout), target]
    else:
        argv = [*PROBE, proto, target, str(port), "--timeout", str(timeout)]
        if sport is not None:
            argv += ["--sport", str(sport)]
    proc = netns.run(vm.netns, argv, check=False, timeout=timeout + 10)
    rc = proc.returncode
    if rc == 0:
        return "allow", "reply" if proto == "icmp" else "echo"
    if rc == 2 and proto != "icmp":
        return "allow", "refused"  # the packets went through; nothing was listening
    if proto == "icmp":
        said = proc.stdout + proc.stderr
        if "Port Unreachable" in said:
            return "deny", "rejected"
        if "nreachable" in said or rc == 2:  # ping's own error: no route, no neighbour
            return "deny", "unreachable"
    if rc == 3:
        return "deny", "unreachable"
    return "deny", "timeout"


class Server:
    """An echo server in a VM that records what reached it (``udp PORT SRC`` lines).

    The server prints a line per datagram / connection. Reader threads drain its stdout and
    stderr as they come, so it never blocks on a full pipe (64 KiB is ~3,000 datagrams),
    however much traffic a test sends and however long it runs.
    """

    def __init__(self, vm: VMState, tcp: Iterable[int] = (), udp: Iterable[int] = ()):
        argv = [*PROBE, "serve"]
        argv += [x for p in sorted(set(tcp)) for x in ("--tcp", str(p))]
        argv += [x for p in sorted(set(udp)) for x in ("--udp", str(p))]
        self.vm = vm
        self.proc = subprocess.Popen(_in(vm, argv), stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self._lines: list[str] = []
        self._err: list[str] = []
        self._lock = threading.Lock()
        self._seen: list[str] | None = None
        first = self.proc.stdout.readline().strip()
        self._readers = [
            threading.Thread(target=self._drain, args=(self.proc.stdout, self._lines),
                             daemon=True),
            threading.Thread(target=self._drain, args=(self.proc.stderr, self._err),
                             daemon=True)]
        for t in self._readers:
            t.start()
        if first != "ready":
            self.stop_raw()
            raise LabError(f"probe server in {vm.name} did not start: {first} "
                           f"{''.join(self._err).strip()}")

    def _drain(self, pipe: IO[str], into: list[str]) -> None:
        for line in pipe:
            with self._lock:
                into.append(line)

    def lines(self) -> list[str]:
        """What reached the server so far (it keeps running)."""
        with self._lock:
            return [ln.strip() for ln in self._lines if ln.strip()]

    def stop_raw(self) -> tuple[str, str]:
        """Stop the server; (everything it printed after ``ready``, its stderr)."""
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for t in self._readers:
            t.join(timeout=5)
        with self._lock:
            return "".join(self._lines), "".join(self._err)

    def stop(self) -> list[str]:
        """Stop (idempotent) and return one line per TCP connection / UDP datagram seen."""
        if self._seen is None:
            self._seen = [ln for ln in self.stop_raw()[0].splitlines() if ln]
        return self._seen

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class StreamResult:
    sent: int
    received: int
    missing: list[int]


def stream(vm: VMState, target: str, port: int, interval: float, count: int = 0,
           wait: float = 1.0) -> subprocess.Popen[str]:
    """Start a steady UDP stream (numbered datagrams, echoes counted; endless when
    ``count`` is 0); :func:`finish` stops it and returns the counts."""
    argv = [*PROBE, "stream", target, str(port), "--count", str(count), "--interval",
            str(interval), "--timeout", str(wait)]
    return subprocess.Popen(_in(vm, argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def finish(proc: subprocess.Popen[str], timeout: float = 120) -> StreamResult:
    """Stop a stream (an endless one gets SIGTERM) and read its counts."""
    if proc.poll() is None:
        proc.terminate()
    out, err = proc.communicate(timeout=timeout)
    try:
        doc = json.loads(out.strip().splitlines()[-1])
    except (IndexError, ValueError):
        raise LabError(f"stream probe failed: {err.strip() or out.strip()}") from None
    return StreamResult(doc["sent"], doc["received"], doc["missing"])


class Session:
    """One long-lived TCP connection from a VM: :meth:`send` reports whether the echo came
    back, so a test can watch the same connection before and after a policy change."""

    def __init__(self, vm: VMState, target: str, port: int, timeout: float = DEFAULT_TIMEOUT):
        argv = [*PROBE, "session", target, str(port), "--timeout", str(timeout)]
        self.proc = subprocess.Popen(_in(vm, argv), stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.status = self._line()

    def _line(self) -> str:
        assert self.proc.stdout is not None
        return self.proc.stdout.readline().strip()

    @property
    def connected(self) -> bool:
        return self.status == "connected"

    def send(self, text: str = "ping") -> bool:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()
        return self._line() == "ok"

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class Frame:
    """One forged frame: any source IP and MAC, UDP to ``dport`` (or an ICMP echo)."""

    src_ip: str
    dst_ip: str
    src_mac: str
    dst_mac: str
    dport: int = 9
    sport: int = 40000
    icmp: bool = False
    iface: str = "eth0"
    count: int = 1


def forge(vm: VMState, frames: Iterable[Frame]) -> None:
    """Send hand-made frames from inside ``vm`` (scapy), whatever its own addresses are."""
    doc = json.dumps([vars(f) for f in frames])
    netns.run(vm.netns, [*PROBE, "forge", doc], timeout=60)
