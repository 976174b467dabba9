"""Traffic probes run inside lab namespaces: ``python -m portwall.lab.probe ...``.

Hand-rolled on purpose (stdlib sockets, no netcat): the netcat variants differ in flags and
in how they report a timeout, while the lab needs one exact contract per probe:

* ``serve --tcp P --udp P ...``: listen on every address (IPv4 and IPv6), echo TCP and UDP,
  print ``ready`` once listening, and one line per UDP datagram / TCP connection
  (``udp PORT SRC`` / ``tcp PORT SRC``) so a test can count what actually arrived;
* ``tcp HOST PORT`` / ``udp HOST PORT``: one request, exit 0 when the echo came back,
  1 on timeout, 2 when refused (the packets passed but nothing listened, or a REJECT),
  3 when unreachable (no route, no neighbour: nothing was filtered);
* ``session HOST PORT``: a long-lived TCP connection driven by stdin lines (each line is
  sent; ``ok`` or ``timeout`` is printed), to watch one established connection over time;
* ``stream HOST PORT --count N --interval S``: a steady numbered UDP stream (``--count 0``:
  until SIGTERM); prints how many echoes came back as JSON;
* ``forge JSON``: Ethernet frames with any source IP/MAC (scapy), for spoofing tests.

Only the standard library is imported at start-up (scapy lazily, for ``forge``), so a probe
starts in milliseconds.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import select
import signal
import socket
import sys
import time
from collections.abc import Sequence

OK, TIMEOUT, REFUSED, UNREACHABLE = 0, 1, 2, 3
#: errors that mean "no route / no neighbour", never "a filter dropped it"
_UNREACH = (errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EADDRNOTAVAIL)


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


# ------------------------------------------------------------------- server
def serve(tcp_ports: Sequence[int], udp_ports: Sequence[int], duration: float | None) -> int:
    """Echo server on every address; dual-stack sockets so one listener serves v4 and v6."""
    listeners: dict[socket.socket, tuple[str, int]] = {}
    for kind, ports in (("tcp", tcp_ports), ("udp", udp_ports)):
        for port in ports:
            s = socket.socket(socket.AF_INET6,
                              socket.SOCK_STREAM if kind == "tcp" else socket.SOCK_DGRAM)
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("::", port))
            if kind == "tcp":
                s.listen(64)
            listeners[s] = (kind, port)
    conns: dict[socket.socket, int] = {}
    _say("ready")
    deadline = None if duration is None else time.monotonic() + duration
    while deadline is None or time.monotonic() < deadline:
        readable, _, _ = select.select([*listeners, *conns], [], [], 0.2)
        for s in readable:
            if s in listeners:
                kind, port = listeners[s]
                if kind == "tcp":
                    c, addr = s.accept()
                    conns[c] = port
                    _say(f"tcp {port} {_plain(addr[0])}")
                else:
                    data, addr = s.recvfrom(65535)
                    _say(f"udp {port} {_plain(addr[0])}")
                    with contextlib.suppress(OSError):
                        s.sendto(data, addr)
            else:
                try:
                    data = s.recv(65535)
                except OSError:
                    data = b""
                if not data:
                    conns.pop(s)
                    s.close()
                    continue
                with contextlib.suppress(OSError):
                    s.sendall(data)
    return OK


def _plain(addr: str) -> str:
    """``::ffff:10.0.0.1`` (a v4 client on a dual-stack socket) -> ``10.0.0.1``."""
    return addr[7:] if addr.startswith("::ffff:") else addr


# ------------------------------------------------------------------- clients
def tcp_once(host: str, port: int, timeout: float) -> int:
    s = socket.socket(_family(host), socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect((host, port))
        s.sendall(b"portwall-probe\n")
        return OK if s.recv(64) else TIMEOUT
    except ConnectionRefusedError:
        return REFUSED
    except OSError as e:
        return UNREACHABLE if e.errno in _UNREACH else TIMEOUT
    finally:
        s.close()


def udp_once(host: str, port: int, timeout: float, sport: int | None = None,
             broadcast: bool = False) -> int:
    s = socket.socket(_family(host), socket.SOCK_DGRAM)
    if broadcast:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    if sport is not None:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("", sport))
    s.settimeout(timeout)
    try:
        if broadcast:
            s.sendto(b"portwall-probe", (host, port))
        else:  # connected: ICMP errors (unreachable, refused) are reported to us
            s.connect((host, port))
            s.send(b"portwall-probe")
        s.recvfrom(64)
        return OK
    except ConnectionRefusedError:
        return REFUSED
    except OSError as e:
        return UNREACHABLE if e.errno in _UNREACH else TIMEOUT
    finally:
        s.close()


def session(host: str, port: int, timeout: float) -> int:
    """Keep one TCP connection; for every stdin line send it and print ok/timeout."""
    s = socket.socket(_family(host), socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect((host, port))
    except OSError as e:
        _say(f"connect-failed {e}")
        return TIMEOUT
    _say("connected")
    for line in sys.stdin:
        try:
            s.sendall(line.encode())
            _say("ok" if s.recv(65535) else "closed")
        except TimeoutError:
            _say("timeout")
        except OSError as e:
            _say(f"error {e}")
    s.close()
    return OK


def stream(host: str, port: int, count: int, interval: float, wait: float) -> int:
    """Send ``count`` numbered datagrams ``interval`` apart (until SIGTERM when ``count``
    is 0); count distinct echoes."""
    s = socket.socket(_family(host), socket.SOCK_DGRAM)
    s.setblocking(False)
    got: set[int] = set()
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    t0 = time.monotonic()
    i = 0
    while (count == 0 or i < count) and not stop:
        with contextlib.suppress(OSError):
            s.sendto(str(i).encode(), (host, port))
        i += 1
        got |= _drain(s, t0 + i * interval)
    got |= _drain(s, time.monotonic() + wait)
    missing = sorted(set(range(i)) - got)
    _say(json.dumps({"sent": i, "received": len(got), "missing": missing[:50]}))
    return OK if not missing else TIMEOUT


def _drain(s: socket.socket, until: float) -> set[int]:
    got: set[int] = set()
    while True:
        left = until - time.monotonic()
        if left <= 0:
            return got
        r, _, _ = select.select([s], [], [], left)
        if r:
            with contextlib.suppress(OSError, ValueError):
                got.add(int(s.recv(64)))


def forge(frames_json: str) -> int:
    """Send hand-made UDP (or ICMP echo) frames with whatever source the test wants.

    ``frames_json`` is a list of {iface, src_ip, dst_ip, src_mac, dst_mac, sport, dport,
    icmp, count}; one process sends them all (scapy's import is the slow part).
    """
    # Lazy imports: only this command needs scapy.
    from scapy.layers.inet import ICMP, IP, UDP
    from scapy.layers.inet6 import IPv6
    from scapy.layers.l2 import Ether
    from scapy.packet import Raw
    from scapy.sendrecv import sendp

    for f in json.loads(frames_json):
        v6 = ":" in f["dst_ip"]
        ip_layer = IPv6(src=f["src_ip"], dst=f["dst_ip"]) if v6 else IP(src=f["src_ip"],
                                                                           dst=f["dst_ip"])
        l4 = ICMP() if f.get("icmp") else UDP(sport=f.get("sport", 40000), dport=f["dport"])
        frame = Ether(src=f["src_mac"], dst=f["dst_mac"]) / ip_layer / l4 / Raw(b"pw-forged")
        sendp(frame, iface=f.get("iface", "eth0"), count=f.get("count", 1), verbose=False)
    return OK


# ---------------------------------------------------------------------- main
def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m portwall.lab.probe")
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--tcp", type=int, action="append", default=[])
    s.add_argument("--udp", type=int, action="append", default=[])
    s.add_argument("--duration", type=float, default=None)
    for name in ("tcp", "udp", "session", "stream"):
        c = sub.add_parser(name)
        c.add_argument("host")
        c.add_argument("port", type=int)
        c.add_argument("--timeout", type=float, default=0.8)
        if name == "udp":
            c.add_argument("--sport", type=int, default=None)
            c.add_argument("--broadcast", action="store_true")
        if name == "stream":
            c.add_argument("--count", type=int, default=100)
            c.add_argument("--interval", type=float, default=0.01)
    f = sub.add_parser("forge")
    f.add_argument("frames", help="JSON list of frames (see forge())")
    a = ap.parse_args(argv)
    if a.cmd == "serve":
        return serve(a.tcp, a.udp, a.duration)
    if a.cmd == "tcp":
        return tcp_once(a.host, a.port, a.timeout)
    if a.cmd == "udp":
        return udp_once(a.host, a.port, a.timeout, a.sport, a.broadcast)
    if a.cmd == "session":
        return session(a.host, a.port, a.timeout)
    if a.cmd == "stream":
        return stream(a.host, a.port, a.count, a.interval, a.timeout)
    return forge(a.frames)


if __name__ == "__main__":
    sys.exit(main())
