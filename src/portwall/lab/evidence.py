"""Why a lab probe failed: dropped by portwall's policy, or never deliverable at all.

A probe that gets no answer proves nothing by itself: ``Network is unreachable``, a missing
neighbour or a gateway nobody answers look exactly like a filter's drop to a timeout. So an
expectation of *deny* passes only with evidence that the policy dropped the packet:

1. the evaluator (``trace`` over the same plan) says deny and names the rule that decides
   (a port chain's rule, a spoof check, a firewall group's rule or default deny) and where
   it is enforced (namespace, family, chain, rule id);
2. the probe failed by timeout or rejection, not by a local routing error;
3. that rule's packet counter in the kernel rose while the probe ran (``iptables-save -c``,
   or ``nft -j list table inet portwall_l3`` in a router on nftables; rules carry their rid
   as comment). Probes that would credit the same rule never run at
   the same time, so one probe's drop cannot vouch for another's.

A backend without readable counters falls back to 1 and 2 and says so.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from portwall.analyze.trace import TraceError, Tracer, TraceResult
from portwall.ir.l3 import FIREWALL_RULE
from portwall.ir.types import SpoofCheck
from portwall.lab import netns
from portwall.topology import Expect, Topology

#: (namespace, family, chain, rid): one kernel rule whose counter proves a drop
CounterKey = tuple[str, int, str, str]
_LINE = re.compile(r'^\[(\d+):\d+\] -A (\S+) .*?--comment "?([^" ]+)"?')


@dataclass
class Verdict:
    """The evaluator's answer for one expectation, and where a drop would be counted."""

    verdict: str  # allow | deny | reject | unknown | unreachable
    why: str
    counter: CounterKey | None = None


def evaluate(topo: Topology, tracer: Tracer, e: Expect, target: str, host_ns: str,
             router_ns: dict[str, str], port_ns: dict[str, str] | None = None) -> Verdict:
    """What the plan says about ``e`` (sent to ``target``), with the deciding rule.
    ``port_ns``: port id -> the host namespace enforcing it, when not ``host_ns`` (a
    multi-host sandbox: a drop is counted on the dropping port's host)."""
    try:
        res = tracer.trace(e.src, target, e.proto, dport=e.port)
    except (TraceError, ValueError) as err:
        return Verdict("unknown", f"cannot trace: {err}")
    if res.verdict == "unknown":
        return Verdict("unknown", res.unknown or "path leaves the model")
    if res.allowed:
        return Verdict("allow", "the plan allows it")
    return _denial(res, host_ns, router_ns, e, port_ns or {})


def _denial(res: TraceResult, host_ns: str, router_ns: dict[str, str], e: Expect,
            port_ns: dict[str, str]) -> Verdict:
    from portwall.backends.iptables.l3 import fw_chain
    from portwall.backends.iptables.render import egress_chain, ingress_chain, spoof_chain

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
                           (ns, fam, spoof_chain(d.port), "pw-spoof-drop"))
        if d.decided_by is None:
            return Verdict("deny", "end of chain", None)
        chain = ingress_chain(d.port) if d.direction == "ingress" else egress_chain(d.port)
        why = f"{d.direction} of port {d.port.name}: {d.origin.detail or d.decided_by.rid}"
        return Verdict("deny", why, (ns, fam, chain, d.decided_by.rid))
    return Verdict("unreachable", next((s.detail for s in res.steps if s.outcome == "deny"),
                                       "no path"))


def read_counters(namespaces: set[tuple[str, int]]) -> dict[CounterKey, int]:
    """Packet counters of every commented rule in those (namespace, family) pairs (and of
    the nftables router table, whose group chains carry the iptables chain names)."""
    from portwall.backends.nftables.l3 import read_counters as nft_l3_counters

    out: dict[CounterKey, int] = {}
    for ns in {n for n, _ in namespaces}:
        for (fam, chain, rid), n in nft_l3_counters(ns).items():
            if (ns, fam) in namespaces:
                out[(ns, fam, chain, rid)] = out.get((ns, fam, chain, rid), 0) + n
    for ns, fam in namespaces:
        tool = "iptables-save" if fam == 4 else "ip6tables-save"
        proc = netns.run(ns, [tool, "-c"], check=False)
        for line in proc.stdout.splitlines():
            m = _LINE.match(line)
            if m:
                key = (ns, fam, m.group(2), m.group(3))
                out[key] = out.get(key, 0) + int(m.group(1))
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
