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

from portwall.analyze.trace import Tracer
from portwall.ir import compile_plan
from portwall.lab.evidence import (
    CounterKey,
    Verdict,
    counts,
    evaluate,
    places,
    read_counters,
    waves,
)
from portwall.lab.outside import outside_vm
from portwall.lab.sandbox import Sandbox
from portwall.lab.state import LabError, VMState
from portwall.lab.traffic import DEFAULT_TIMEOUT, Server, probe
from portwall.lab.wiring import vm_of_address
from portwall.topology import Expect, Topology, load_topology


@dataclass
class CheckResult:
    expect: Expect
    target: str  # the address probed
    target_vm: str | None  # who answers for it (None: nobody in the sandbox)
    observed: str  # allow | deny | unreachable | unexplained (no answer, policy not shown)
    detail: str  # echo, refused, timeout, ...
    seconds: float
    why: str = ""  # dropped by policy (which rule) / unreachable (what) / answered

    @property
    def ok(self) -> bool:
        return self.observed == self.expect.verdict


def resolve_target(box: Sandbox, e: Expect) -> tuple[str, str | None]:
    """The address to probe and the VM that owns it.

    A VM name means its address on a network the source shares with it (else its first
    address), IPv4 first; an IP means whichever VM carries it (fixed IP or VIP).
    """
    vms = box.state.vms
    if e.dst == "outside" and e.dst not in vms and box.state.outside_address:
        return box.state.outside_address, "outside"
    if e.dst in vms:
        dst = vms[e.dst]
        shared = {p.network_id for p in vms[e.src].ports} if e.src in vms else set()
        cands = [(p.network_id not in shared, ipaddress.ip_interface(a).version, i, a)
                 for i, p in enumerate(dst.ports) for a in p.addresses]
        if not cands:
            raise LabError(f"VM {e.dst} has no address to probe")
        addr = min(cands)[3]
        return str(ipaddress.ip_interface(addr).ip), e.dst
    owner = vm_of_address(vms, e.dst)
    if owner is None and e.dst in box.state.floating:
        return e.dst, box.state.floating[e.dst]
    return e.dst, owner[0].name if owner else None


def endpoint(box: Sandbox, name: str) -> VMState:
    """A VM of the sandbox, or its outside host."""
    if name == "outside" and name not in box.state.vms and box.state.outside:
        return outside_vm(box.state)
    return box.state.vm(name)


@contextlib.contextmanager
def listeners(box: Sandbox, wants: dict[str, tuple[set[int], set[int]]]) -> Iterator[list[Server]]:
    """Echo servers, one per VM: {vm: (tcp ports, udp ports)}; always stopped."""
    servers: list[Server] = []
    try:
        for vm, (tcp, udp) in wants.items():
            servers.append(Server(endpoint(box, vm), tcp, udp))
        yield servers
    finally:
        for srv in servers:
            srv.stop()


def run_checks(box: Sandbox, expects: Sequence[Expect],
               timeout: float = DEFAULT_TIMEOUT, topo: Topology | None = None
               ) -> list[CheckResult]:
    """Probe every expectation with real traffic; results in the expectations' order.

    With the topology (given, or reloaded from the file the sandbox was built from) a
    failed probe is classified (:mod:`portwall.lab.evidence`): "deny" only when the policy
    is shown to have dropped or rejected it, "unreachable" when nothing filtered it."""
    for e in expects:
        endpoint(box, e.src)  # unknown VMs fail before any traffic
    targets = [resolve_target(box, e) for e in expects]
    wants: dict[str, tuple[set[int], set[int]]] = {}
    for e, (_, owner) in zip(expects, targets, strict=True):
        if owner is None or e.proto == "icmp" or e.port is None:
            continue
        tcp, udp = wants.setdefault(owner, (set(), set()))
        (tcp if e.proto == "tcp" else udp).add(e.port)
    verdicts = _verdicts(box, expects, targets, topo)
    keys = [v.counter if v is not None else None for v in verdicts]
    results: list[CheckResult | None] = [None] * len(expects)

    def one(i: int) -> tuple[int, str, str, float]:
        e, (target, _) = expects[i], targets[i]
        t0 = time.monotonic()
        observed, detail = probe(endpoint(box, e.src), e.proto, target, e.port, timeout)
        return i, observed, detail, time.monotonic() - t0

    counted = {(k[0], k[1]) for k in keys if k is not None and _countable(box, k)}
    with listeners(box, wants), ThreadPoolExecutor(max_workers=16) as pool:
        for wave in waves(keys):
            before = read_counters(counted, box.state.backend) if counted else {}
            raw = list(pool.map(one, wave))
            after = read_counters(counted, box.state.backend) if counted else {}
            for i, observed, detail, secs in raw:
                e, (target, owner) = expects[i], targets[i]
                obs, why = _classify(box, observed, detail, verdicts[i], before, after)
                results[i] = CheckResult(e, target, owner, obs, detail, secs, why)
    return [r for r in results if r is not None]


def _countable(box: Sandbox, key: CounterKey) -> bool:
    return key[0] not in box.host_namespaces() or counts(box.state.backend)


def _verdicts(box: Sandbox, expects: Sequence[Expect], targets: list[tuple[str, str | None]],
              topo: Topology | None) -> list[Verdict | None]:
    if topo is None:
        with contextlib.suppress(Exception):
            topo = load_topology(box.state.topology)
    if topo is None:
        return [None] * len(expects)
    tracer = Tracer.for_topology(topo, compile_plan(topo.model))
    port_ns = box.port_namespaces()
    where = places(box.state.backend)
    return [evaluate(topo, tracer, e, t, box.host_ns, box.state.routers, port_ns, where)
            for e, (t, _) in zip(expects, targets, strict=True)]


def _classify(box: Sandbox, observed: str, detail: str, v: Verdict | None,
              before: dict[CounterKey, int], after: dict[CounterKey, int]) -> tuple[str, str]:
    """(observed, why) from the probe's outcome and the evaluator's verdict."""
    if v is None:
        return observed, "answered" if observed == "allow" else "not verified (no topology)"
    if observed == "allow" and detail == "refused" and v.verdict == "reject":
        detail = "rejected"  # a REJECT looks like a closed port to the client
    elif observed == "allow":
        return "allow", "answered"
    if detail == "unreachable":
        return "unreachable", f"unreachable (no route or no neighbour): not a policy drop;" \
            f" the plan says {v.verdict}: {v.why}"
    if v.verdict not in ("deny", "reject"):
        return "unexplained", f"no answer, but the plan says {v.verdict} ({v.why})"
    key = v.counter
    if key is None or not _countable(box, key):
        return "deny", f"dropped by policy (counter not read): {v.why}"
    delta = after.get(key, 0) - before.get(key, 0)
    if delta <= 0:
        return "unexplained", f"no answer, and rule {key[3]} ({v.why}) counted nothing"
    how = "rejected" if v.verdict == "reject" else "dropped"
    return "deny", f"{how} by policy: {v.why} (rule {key[3]} in {key[2]} counted {delta})"
