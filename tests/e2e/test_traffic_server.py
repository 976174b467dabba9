"""The lab's echo server must never stall on its own output.

It prints a line per datagram; when nobody read that pipe it blocked after ~64 KiB (about
3,000 datagrams) and stopped echoing, which made long tests fail only under load. Here a
client in the same namespace sends more than 100,000 datagrams and waits for every echo.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable

import pytest

from portwall.lab.state import VMState
from portwall.lab.traffic import Server

NEEDS_ROOT = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)")
pytestmark = [pytest.mark.e2e, pytest.mark.slow, NEEDS_ROOT]

#: Sends COUNT datagrams in windows of WINDOW and waits for every echo; prints the echoes.
CLIENT = r"""
import socket, sys
count, window, port = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(3.0)
echoed = 0
try:
    for start in range(0, count, window):
        n = min(window, count - start)
        for i in range(n):
            s.sendto(b"%d" % (start + i), ("127.0.0.1", port))
        for _ in range(n):
            s.recvfrom(64)
            echoed += 1
except socket.timeout:
    pass
print(echoed)
"""

COUNT = 120_000


def test_server_echoes_more_than_100k_datagrams(make_netns: Callable[[str], str]) -> None:
    ns = make_netns("pwt-srv")
    vm = VMState(name="srv", netns=ns)
    port = 5000  # inside a private namespace: no other test can hold it
    with Server(vm, udp=[port]) as srv:
        out = subprocess.run(
            ["ip", "netns", "exec", ns, sys.executable, "-c", CLIENT, str(COUNT), "32",
             str(port)], capture_output=True, text=True, timeout=300, check=True)
        echoed = int(out.stdout.strip())
        assert echoed == COUNT, f"the server stopped echoing after {echoed} datagrams"
        seen = srv.stop()
    assert len(seen) == COUNT
    assert seen[0] == f"udp {port} 127.0.0.1"
    assert all(line.startswith(f"udp {port} ") for line in seen)
