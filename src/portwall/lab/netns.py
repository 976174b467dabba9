"""Network-namespace primitives shared by the lab, the appliers and the tests.

Namespaces are created with iproute2 (``ip netns add``) rather than pyroute2 because
pyroute2 silently creates a missing namespace when asked to enter one, which would turn a
typo into a stray namespace; iproute2 fails instead.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
from collections.abc import Iterator, Sequence


class NetnsError(RuntimeError):
    pass


def unique_name(prefix: str) -> str:
    """A namespace name no other run (or parallel test) can pick: prefix + pid + random."""
    return f"{prefix}-{os.getpid() % 100000}-{secrets.token_hex(3)}"


def exists(name: str) -> bool:
    return os.path.exists(f"/run/netns/{name}")


@contextlib.contextmanager
def fd(name: str) -> Iterator[int]:
    """An open file descriptor of namespace ``name`` (closed on exit); fails if missing."""
    handle = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        yield handle
    finally:
        os.close(handle)


def create(name: str) -> None:
    """Create namespace ``name`` with loopback up."""
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
    run(name, ["ip", "link", "set", "lo", "up"])


def delete(name: str) -> None:
    """Delete a namespace; killing what still runs in it first. Missing is fine."""
    if not exists(name):
        return
    pids = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True).stdout
    for pid in pids.split():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), 9)
    subprocess.run(["ip", "netns", "del", name], capture_output=True)


def run(
    name: str | None,
    argv: Sequence[str],
    *,
    input: str | None = None,
    check: bool = True,
    timeout: float = 60,
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` inside namespace ``name`` (the current one when None)."""
    cmd = list(argv) if name is None else ["ip", "netns", "exec", name, *argv]
    proc = subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise NetnsError(
            f"{' '.join(cmd)} failed ({proc.returncode}): {(proc.stderr or proc.stdout).strip()}"
        )
    return proc
