"""Why a lab probe failed: dropped by portwall's policy, or never deliverable at all.

A probe that gets no answer proves nothing by itself: ``Network is unreachable``, a missing
neighbour or a gateway nobody answers look exactly like a filter's drop to a timeout. So an
expectation of *deny* passes only with evidence that the policy dropped the packet:

1. the evaluator (``trace`` over the same plan) says deny and names the rule that decides
   (a port chain's rule, a spoof check, a firewall group's rule or default deny) and where
   it is enforced (namespace, family, chain, rule id);
2. the probe failed by timeout or rejection, not by a local routing error;
3. that rule's packet counter in the kernel rose while the probe ran, read by the
   sandbox's backend (:data:`COUNTER_READERS`: ``iptables-save -c``; on nftables a
   libnftables listing of ``table inet portwall``, ``table bridge portwall`` and the router
   table ``inet portwall_l3``; rules carry their rid as comment). Where a port's drop is
   counted is the backend's too (:func:`places`): iptables has a chain per port, nftables
   a chain per group combination shared by ports, so a key names the kernel rule itself.
   Probes that would credit the same rule never run at the same time, so one probe's drop
   cannot vouch for another's.

A backend without readable counters (ovs) falls back to 1 and 2 and says so.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from portwall import backends
from portwall.analyze.trace import TraceError, Tracer, TraceResult
from portwall.ir.l3 import FIREWALL_RULE
from portwall.ir.types import PortPlan, SpoofCheck
from portwall.lab import netns
from portwall.topology import Expect, Topology

#: (namespace, family, chain, rid): one kernel rule whose counter proves a drop
CounterKey = tuple[str, int, str, str]
_LINE = re.compile(r'^\[(\d+):\d+\] -A (\S+) .*?--comment "?([^" ]+)"?')


@dataclass(frozen=True)
class Places:
    """Where a backend counts a port's drops: the chain of (host namespace, port,
    direction), None when it has none; the (chain, rid) of the port's anti-spoof drop."""

    port_chain: Callable[[str, PortPlan, str], str | None]
    spoof: Callable[[PortPlan], tuple[str, str]]


def _iptables_places() -> Places:
    from portwall.backends.iptables.render import egress_chain, ingress_chain, spoof_chain

    return Places(lambda ns, p, d: ingress_chain(p) if d == "ingress" else egress_chain(p),
                  lambda p: (spoof_chain(p), "pw-spoof-drop"))


def _nftables_places() -> Places:
    """Port chains are shared and named by a digest of their lines: the namespace's own
    dispatch maps say which chain a port's device goes to (read once per namespace)."""
    from portwall.backends.nftables.counters import SPOOF_DROP, kernel_port_chains

    seen: dict[str, dict[str, tuple[str, str]]] = {}

    def chain(ns: str, p: PortPlan, direction: str) -> str | None:
        if ns not in seen:
            seen[ns] = kernel_port_chains(ns)
        pair = seen[ns].get(p.device)
        return None if pair is None else pair[0 if direction == "ingress" else 1]

    return Places(chain, lambda p: SPOOF_DROP)


#: backend -> where it counts port drops; a backend not listed gets iptables' chain names,
#: never read (it has no :data:`COUNTER_READERS` entry)
_PLACES: dict[str, Callable[[], Places]] = {
    "iptables": _iptables_places,
    "nftables": _nftables_places,
}


def places(backend: str | None) -> Places:
    """Where ``backend`` counts port drops."""
    return _PLACES.get(backends.get(backend).name, _iptables_places)()


@dataclass
class Verdict:
    """The evaluator's answer for one expectation, and where a drop would be counted."""

    verdict: str  # allow | deny | reject | unknown | unreachable
    why: str
    counter: CounterKey | None = None


def evaluate(topo: Topology, tracer: Tracer, e: Expect, target: str, host_ns: str,
             router_ns: dict[str, str], port_ns: dict[str, str] | None = None,
             where: Places | None = None) -> Verdict:
    """What the plan says about ``e`` (sent to ``target``), with the deciding rule.
    ``port_ns``: port id -> the host namespace enforcing it, when not ``host_ns`` (a
    multi-host sandbox: a drop is counted on the dropping port's host); ``where``: the
    backend's :func:`places` (iptables' when None)."""
    try:
        res = tracer.trace(e.src, target, e.proto, dport=e.port)
    except (TraceError, ValueError) as err:
        return Verdict("unknown", f"cannot trace: {err}")
    if res.verdict == "unknown":
        return Verdict("unknown", res.unknown or "path leaves the model")
    if res.allowed:
        return Verdict("allow", "the plan allows it")
    return _denial(res, host_ns, router_ns, e, port_ns or {}, where or _iptables_places())


def _denial(res: TraceResult, host_ns: str, router_ns: dict[str, str], e: Expect,
            port_ns: dict[str, str], where: Places) -> Verdict:
    from portwall.backends.iptables.l3 import fw_chain

    fam = res.packet.family
    for rr in res.routed:
        if rr.allowed:
            continue
        ns = next((n for n, rid in router_ns.items() if rid == rr.router.id), "")
        if rr.verdict == "unreachable":
            return Verdict("unreachable", f"router {rr.router.name} has no route")
        step = next(s for s in reversed(rr.steps) if s.outcome == "deny")
        direction = step.stage.split("-", 1)[1]
        itf = rr.inbound if direction == "egress" else rr.outbound
        fw = rr.router.firewall_of(itf.port_id)
        o = rr.decided_by
        rid = f"fwr-{o.resource_id}" if o.resource_type == FIREWALL_RULE else \
            f"fw-default-{fw.id}"
        kind = "reject" if rr.verdict == "reject" else "deny"
        return Verdict(kind, f"firewall group {fw.name or fw.id}: {step.detail}",
                       (ns, fam, fw_chain(fw, direction), rid))
    for hop in res.hops:
        d = hop.result.denied_by
        if d is None:
            continue
        ns = port_ns.get(d.port.id, host_ns)
        if isinstance(d.decided_by, SpoofCheck):
            return Verdict("deny", f"anti-spoof of port {d.port.name}",
                           (ns, fam, *where.spoof(d.port)))
        if d.decided_by is None:
            return Verdict("deny", "end of chain", None)
        chain = where.port_chain(ns, d.port, d.direction)
        why = f"{d.direction} of port {d.port.name}: {d.origin.detail or d.decided_by.rid}"
        return Verdict("deny", why, None if chain is None else
                       (ns, fam, chain, d.decided_by.rid))
    return Verdict("unreachable", next((s.detail for s in res.steps if s.outcome == "deny"),
                                       "no path"))


def _iptables_counters(ns: str, families: set[int]) -> dict[tuple[int, str, str], int]:
    out: dict[tuple[int, str, str], int] = {}
    for fam in families:
        tool = "iptables-save" if fam == 4 else "ip6tables-save"
        proc = netns.run(ns, [tool, "-c"], check=False)
        for line in proc.stdout.splitlines():
            m = _LINE.match(line)
            if m:
                key = (fam, m.group(2), m.group(3))
                out[key] = out.get(key, 0) + int(m.group(1))
    return out


def _nftables_counters(ns: str, families: set[int]) -> dict[tuple[int, str, str], int]:
    from portwall.backends.nftables import counters, l3

    return counters.read_counters(ns, (*counters.HOST_TABLES, (l3.FAMILY, l3.TABLE)))


#: backend -> its reader of one namespace's rule counters, (family, chain, rid) -> packets
#: (host tables and router tables alike); a backend not listed has none
COUNTER_READERS: dict[str, Callable[[str, set[int]], dict[tuple[int, str, str], int]]] = {
    "iptables": _iptables_counters,
    "nftables": _nftables_counters,
}


def counts(backend: str | None) -> bool:
    """Whether ``backend``'s port filters have counters the lab reads."""
    return backends.get(backend).name in COUNTER_READERS


def read_counters(namespaces: set[tuple[str, int]],
                  backend: str | None = None) -> dict[CounterKey, int]:
    """Packet counters of every commented, counting rule in those (namespace, family)
    pairs, read the way ``backend`` (the default one when None) and the backend that
    programs its routers write them."""
    from portwall.lab.routers import l3_backend

    name = backends.get(backend).name
    readers = [COUNTER_READERS[b] for b in dict.fromkeys((name, l3_backend(name)))
               if b in COUNTER_READERS]
    out: dict[CounterKey, int] = {}
    for ns in sorted({n for n, _ in namespaces}):
        fams = {f for n, f in namespaces if n == ns}
        for read in readers:
            for (fam, chain, rid), n in read(ns, fams).items():
                if fam in fams:
                    key = (ns, fam, chain, rid)
                    out[key] = out.get(key, 0) + n
    return out


def waves(keys: list[CounterKey | None]) -> list[list[int]]:
    """Indexes grouped so that no two in a wave credit the same counter."""
    out: list[tuple[set[CounterKey], list[int]]] = []
    for i, k in enumerate(keys):
        for used, idx in out:
            if k is None or k not in used:
                if k is not None:
                    used.add(k)
                idx.append(i)
                break
        else:
            out.append(({k} if k is not None else set(), [i]))
    return [idx for _, idx in out]
