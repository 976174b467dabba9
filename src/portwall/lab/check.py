"""``lab check``: a topology's ``expect:`` lines tested with real packets in a sandbox.

For every destination VM one echo server (``portwall.lab.probe serve``) listens on all the
TCP/UDP ports the expectations name; then every probe runs at once, each in its source VM's
namespace, with a short timeout (a dropped packet simply never answers). Probes are
independent flows, so running them concurrently cannot change a verdict, and a whole table
costs about one timeout rather than one per line.
"""

from __future__ import annotations

import contextlib
import ipaddress
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from portwall.lab.sandbox import Sandbox
from portwall.lab.state import LabError
from portwall.lab.traffic import DEFAULT_TIMEOUT, Server, probe
from portwall.lab.wiring import vm_of_address
from portwall.topology import Expect


@dataclass
class CheckResult:
    expect: Expect
    target: str  # the address probed
    target_vm: str | None  # who answers for it (None: nobody in the sandbox)
    observed: str  # allow | deny
    detail: str  # echo, refused, timeout, ...
    seconds: float

    @property
    def ok(self) -> bool:
        return self.observed == self.expect.verdict


def resolve_target(box: Sandbox, e: Expect) -> tuple[str, str | None]:
    """The address to probe and the VM that owns it.

    A VM name means its address on a network the source shares with it (else its first
    address), IPv4 first; an IP means whichever VM carries it (fixed IP or VIP).
    """
    vms = box.state.vms
    if e.dst in vms:
        dst, src = vms[e.dst], vms[e.src]
        shared = {p.network_id for p in src.ports}
        cands = [(p.network_id not in shared, ipaddress.ip_interface(a).version, i, a)
                 for i, p in enumerate(dst.ports) for a in p.addresses]
        if not cands:
            raise LabError(f"VM {e.dst} has no address to probe")
        addr = min(cands)[3]
        return str(ipaddress.ip_interface(addr).ip), e.dst
    owner = vm_of_address(vms, e.dst)
    return e.dst, owner[0].name if owner else None


@contextlib.contextmanager
def listeners(box: Sandbox, wants: dict[str, tuple[set[int], set[int]]]) -> Iterator[list[Server]]:
    """Echo servers, one per VM: {vm: (tcp ports, udp ports)}; always stopped."""
    servers: list[Server] = []
    try:
        for vm, (tcp, udp) in wants.items():
            servers.append(Server(box.state.vm(vm), tcp, udp))
        yield servers
    finally:
        for srv in servers:
            srv.stop()


def run_checks(box: Sandbox, expects: Sequence[Expect],
               timeout: float = DEFAULT_TIMEOUT) -> list[CheckResult]:
    """Probe every expectation with real traffic; results in the expectations' order."""
    for e in expects:
        box.state.vm(e.src)  # unknown VMs fail before any traffic
    targets = [resolve_target(box, e) for e in expects]
    wants: dict[str, tuple[set[int], set[int]]] = {}
    for e, (_, owner) in zip(expects, targets, strict=True):
        if owner is None or e.proto == "icmp" or e.port is None:
            continue
        tcp, udp = wants.setdefault(owner, (set(), set()))
        (tcp if e.proto == "tcp" else udp).add(e.port)

    def one(i: int) -> CheckResult:
        e, (target, owner) = expects[i], targets[i]
        t0 = time.monotonic()
        observed, detail = probe(box.state.vm(e.src), e.proto, target, e.port, timeout)
        return CheckResult(e, target, owner, observed, detail, time.monotonic() - t0)

    with listeners(box, wants), ThreadPoolExecutor(max_workers=16) as pool:
        return list(pool.map(one, range(len(expects))))
