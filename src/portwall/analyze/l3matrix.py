"""``audit --matrix`` across routers: a flow's services along the path trace walks.

The pure-policy matrix (:mod:`portwall.analyze.matrix`) meets two ports' filters. A flow
between networks also crosses routers (FWaaS, NAT) and maybe forwarding VMs, so with
routers in the plan a pair on different networks is answered along its path:

1. the path is the one :class:`portwall.analyze.trace.Tracer` walks for a packet of an
   established connection (which every filter and firewall group lets through, so the walk
   reaches the end whatever the services): the hops between ports, and every router hop
   with the packet as it enters and leaves (NAT);
2. the services are those a NEW packet may use on *every* step: each hop's sender egress
   and receiver ingress walked exactly (:func:`portwall.analyze.reach.services_walk`) with
   that hop's (translated) addresses, met with each router's FWaaS verdict (first match,
   default deny) for the addresses it sees.

A path that leaves everything modelled is ``unknown`` (trace answers unknown too); a path
that is cut whatever the service (no route, a VM that does not forward, anti-spoofing) is
``nothing`` with the reason. So the matrix and ``trace`` agree on every pair
(``tests/unit/test_l3_matrix.py`` checks it packet by packet on the routed examples).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from portwall.analyze.intervals import Box, IntervalSet, box_empty, box_intersect, boxes_subtract
from portwall.analyze.reach import (
    FULL_BOX,
    FULL_PORTS,
    OTHER,
    Services,
    SetIntervals,
    chain_protocols,
    services_text,
    services_walk,
)
from portwall.ir.l3 import FirewallPlan, FwAction
from portwall.ir.types import PortPlan, SpoofCheck
from portwall.model.protocols import ICMP, ICMPV6

if TYPE_CHECKING:
    from portwall.analyze.evaluate import IPAddress, Packet
    from portwall.analyze.l3eval import RouterResult
    from portwall.analyze.trace import Tracer, TraceResult
    from portwall.ir.types import HostPlan
    from portwall.model.store import Model
    from portwall.topology.spec import LabSpec

__all__ = ["RoutedAnswer", "RoutedMatrix", "allows"]


@dataclass(frozen=True)
class RoutedAnswer:
    """One flow's answer: ``services`` None when the path is unknown; ``path`` in words."""

    services: Services | None
    text: str
    path: str


def allows(sv: Services, protocol: int, dport: int | None, sport: int | None = None,
           icmp_type: int | None = None, icmp_code: int | None = None) -> bool:
    """Does the services map let this one packet through? (tests compare with trace)"""
    boxes = sv.get(protocol, sv.get(OTHER, []))
    pt = (sport, dport, icmp_type, icmp_code)
    return any(all(v is None or v in dim for v, dim in zip(pt, b, strict=True))
               for b in boxes)


def _fw_services(fw: FirewallPlan, direction: str, pkt: Packet, keys: set[int]) -> Services:
    """What one firewall group's policy allows a NEW packet from pkt.src to pkt.dst, per
    protocol key (first match wins, default deny)."""
    rules = fw.rules(direction)  # type: ignore[arg-type]
    out: Services = {k: [] for k in keys}
    seen: dict[int, list[Box]] = {k: [] for k in keys}
    for r in rules or ():
        m = r.match
        if m.family != pkt.family or not _has(m.src, pkt.src) or not _has(m.dst, pkt.dst):
            continue
        box: Box = (FULL_PORTS if m.sport is None else IntervalSet.span(m.sport.lo, m.sport.hi),
               FULL_PORTS if m.dport is None else IntervalSet.span(m.dport.lo, m.dport.hi),
               FULL_BOX[2], FULL_BOX[3])
        for k in (keys if m.protocol is None else (m.protocol,) if m.protocol in keys else ()):
            if r.action is FwAction.ALLOW:
                pieces = [box]
                for s in seen[k]:
                    pieces = boxes_subtract(pieces, s)
                out[k] += pieces
            seen[k].append(box)
    return out


def _has(net: object, addr: object) -> bool:
    """A firewall rule's address (a network, never a remote group) holds ``addr``."""
    return net is None or (isinstance(net, ipaddress.IPv4Network | ipaddress.IPv6Network)
                           and addr in net)


def _meet(a: Services, b: Services, keys: set[int]) -> Services:
    out: Services = {}
    for k in keys:
        xs, ys = a.get(k, a.get(OTHER, [])), b.get(k, b.get(OTHER, []))
        both = (box_intersect(x, y) for x in xs for y in ys)
        out[k] = [z for z in both if not box_empty(z)]
    return out


class RoutedMatrix:
    """Answers flows across routers for one plan (trace-built paths, cached walks)."""

    def __init__(self, model: Model, plan: HostPlan, lab: LabSpec | None = None):
        from portwall.analyze.trace import Tracer

        self.plan = plan
        self.tracer: Tracer = Tracer(model, plan, lab)
        self.sets = SetIntervals(plan)
        self.fw_protos = {r.match.protocol for rp in plan.routers.values()
                          for fw in rp.firewalls for d in ("ingress", "egress")
                          for r in fw.rules(d) or ()
                          if r.match.protocol is not None}
        self._walks: dict[tuple[Any, ...], Services] = {}
        self._pairs: dict[tuple[Any, ...], RoutedAnswer] = {}
        self._sigs: dict[tuple[IPAddress, int], tuple[bool, ...]] = {}
        self._route_nets = sorted({rt.destination for rp in plan.routers.values()
                                   for rt in rp.routes}, key=str)
        self._fw_nets = sorted({(r.match.src, r.match.dst) for rp in plan.routers.values()
                                for fw in rp.firewalls for d in ("ingress", "egress")
                                for r in fw.rules(d) or ()}, key=str)

    def same_vm(self, a: PortPlan, b: PortPlan) -> bool:
        """Two ports of one lab VM: traffic between them never leaves the VM."""
        vm = self.tracer._vm_of.get(a.id)
        return vm is not None and vm is self.tracer._vm_of.get(b.id)

    def outside(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
        return self.tracer.lab_outside()

    # -------------------------------------------------------------- pairs of ports
    def pair(self, a: PortPlan, b: PortPlan, family: int, classes: tuple[object, object]
             ) -> RoutedAnswer | None:
        """:meth:`answer` for two ports, shared between equivalent pairs.

        ``classes`` are the pair's sender and receiver classes of the pure matrix: equal
        classes mean equal port-filter answers. Two pairs with equal classes, networks, the
        sender's routing towards the destination, and equal memberships of their addresses
        in every route destination and firewall rule address take the same path through
        the same routers and get the same services; only answers whose text names nothing
        pair-specific are shared (no forwarding VM, no NAT; ``unknown`` in general words)."""
        sa = next((x.network_address for x in a.addresses if x.version == family), None)
        sb = next((x.network_address for x in b.addresses if x.version == family), None)
        if sa is None or sb is None:
            return None
        key = (id(classes[0]), id(classes[1]), a.network_id, b.network_id, family,
               self._context(a, sb), self._sig(sa, 0), self._sig(sb, 1))
        hit = self._pairs.get(key)
        if hit is not None:
            return hit
        ans, shareable = self._answer(a.id, b.id, family)
        if ans is not None and shareable:
            self._pairs[key] = ans
        return ans

    def _context(self, a: PortPlan, dst: IPAddress) -> tuple[object, ...]:
        vm = self.tracer._vm_of.get(a.id)
        if vm is None:
            return (None,)
        nets = self.tracer._subnets
        ports = tuple((self.tracer.model.ports[p].network_id, any(
            dst in n for n in nets.get(self.tracer.model.ports[p].network_id, ())))
            for p in vm.ports)
        routes = tuple((r.via, dst in ipaddress.ip_network(r.destination, strict=False))
                       for r in vm.routes if ipaddress.ip_network(
                           r.destination, strict=False).version == dst.version)
        return (ports, routes, vm.gateway, a.id if len(vm.ports) > 1 else None)

    def _sig(self, addr: IPAddress, side: int) -> tuple[bool, ...]:
        hit = self._sigs.get((addr, side))
        if hit is None:
            nets = self._route_nets if side == 1 else ()
            hit = self._sigs[(addr, side)] = tuple(
                n is not None and addr.version == n.version and addr in n
                for n in (*nets, *(x[side] for x in self._fw_nets)))
        return hit

    # -------------------------------------------------------------- one flow
    def answer(self, src: str, dst: str, family: int) -> RoutedAnswer | None:
        """``src``/``dst``: port ids, lab VM names, ``outside`` or addresses, as trace
        takes them. None when trace cannot even resolve the pair."""

        return self._answer(src, dst, family)[0]

    def _answer(self, src: str, dst: str, family: int) -> tuple[RoutedAnswer | None, bool]:
        """The answer, and whether it may be shared with equivalent pairs."""
        from portwall.analyze.trace import TraceError

        try:
            t = self.tracer.trace(src, dst, "udp", dport=9, state="established",
                                  family=family)  # type: ignore[arg-type]
        except TraceError:
            return None, False
        vms = [s for s in t.steps if s.stage == "forward" and s.resource_type == "vm"]
        nat = any(r.dnat or r.snat for r in t.routed)
        ans = self._from_trace(t)
        if ans.services is None and not vms:  # in general words: shared, NAT or not
            path = ans.path.split(" (")[0]
            return RoutedAnswer(None, "unknown: the path leaves what portwall models (trace"
                                " the pair for where)", path), True
        return ans, not vms and not nat and not ans.text.startswith("nothing (")

    def _from_trace(self, t: TraceResult) -> RoutedAnswer:
        via = [f"router {s.resource_name or s.resource_id}" if s.resource_type == "router"
               else f"VM {s.resource_name}" for s in t.steps if s.stage == "forward"
               and s.resource_type in ("router", "vm")]
        via = [f"router {r.router.name or r.router.id}" for r in t.routed] + via
        path = ("via " + ", ".join(dict.fromkeys(via))) if via else ""
        nat = [r for r in t.routed if r.dnat or r.snat]
        if nat:
            path += " (" + "; ".join(_nat_words(r) for r in nat) + ")"
        if t.verdict == "unknown":
            return RoutedAnswer(None, f"unknown: {t.unknown}", path)
        if t.verdict == "deny":
            bad = next((h for h in t.hops if not h.result.allowed), None)
            if bad is not None:
                d = bad.result.denied_by
                if d is None or not isinstance(d.decided_by, SpoofCheck):
                    why = "a stateless port's filter on the path drops established packets"
                    return RoutedAnswer(None, f"unknown: {why} (trace each service)", path)
            why = next((s.detail for s in reversed(t.steps) if s.outcome == "deny"
                        and s.stage != "verdict"), "cut on the path")
            return RoutedAnswer({OTHER: []}, f"nothing ({why})", path)
        ports: list[tuple[PortPlan, str, Packet]] = []
        for h in t.hops:
            for d in (h.result.egress, h.result.ingress):
                if d is not None and d.port.filtered:
                    ports.append((d.port, d.direction, h.result.packet))
        keys = {OTHER} | set(self.fw_protos)
        for p, direction, _ in ports:
            keys |= chain_protocols(self.plan, p.steps(direction))  # type: ignore[arg-type]
        keys -= {ICMPV6 if t.packet.family == 4 else ICMP}  # the other family's ICMP
        sv: Services = {k: [FULL_BOX] for k in keys}
        fk = frozenset(keys)
        for p, direction, pkt in ports:
            key = (p.id, direction, pkt.family, int(pkt.src), int(pkt.dst), fk)
            w = self._walks.get(key)
            if w is None:
                w = self._walks[key] = services_walk(
                    self.plan, p, direction, pkt.family,  # type: ignore[arg-type]
                    int(pkt.src), int(pkt.dst), keys, self.sets)
            sv = _meet(sv, w, keys)
        for res in t.routed:
            sv = _meet(sv, self._router(res, keys), keys)
        return RoutedAnswer(sv, services_text(sv), path)

    def _router(self, res: RouterResult, keys: set[int]) -> Services:
        from dataclasses import replace

        r = res.router
        out: Services = {k: [FULL_BOX] for k in keys}
        # FWaaS sees the packet after DNAT, before SNAT
        seen = replace(res.packet_in, dst=res.packet.dst)
        for itf, direction in ((res.inbound, "egress"), (res.outbound, "ingress")):
            if itf is None or itf.gateway:
                continue
            fw = r.firewall_of(itf.port_id)
            if fw is None or not fw.enabled:
                continue
            out = _meet(out, _fw_services(fw, direction, seen, keys), keys)
        return out


def _nat_words(r: RouterResult) -> str:
    parts = []
    if r.dnat:
        parts.append(f"DNAT {r.packet_in.dst} -> {r.packet.dst}")
    if r.snat:
        parts.append(f"SNAT {r.packet_in.src} -> {r.packet.src}")
    return ", ".join(parts)


def routed_key(a: PortPlan, b: PortPlan) -> bool:
    """Is the pair answered along its path? (ports on different networks)"""
    return a.network_id != b.network_id
