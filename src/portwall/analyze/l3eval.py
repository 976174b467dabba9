"""The evaluator through a router: NAT, routing and FWaaS on the IR of :mod:`portwall.ir.l3`.

A packet entering a router by one of its interfaces goes through, in netfilter's order
(``neutron-semantics.md`` sections 4 and 5), exactly what the renderers program:

1. nat PREROUTING: the metadata redirect (169.254.169.254:80 from an internal interface is
   answered by the router itself and never forwarded), then floating-IP DNAT (F -> P);
2. routing: an address of the router itself is delivered locally; else the longest
   matching route picks the interface out (none: unreachable);
3. filter FORWARD: FWaaS, the firewall group of the interface the packet came in by
   (``egress`` policy) then the one of the interface it leaves by (``ingress`` policy);
   each: INVALID dropped, ESTABLISHED/RELATED accepted, enabled rules in order, default
   deny. portwall asks both groups to allow an east-west packet (Neutron's driver lets the
   first ACCEPT win; that would let one tenant's egress policy overrule another's ingress);
4. nat POSTROUTING: leaving by the gateway, float-SNAT (P -> F) first, else SNAT to the
   gateway address when ``enable_snat`` (never for connections that came in through the
   gateway); leaving by an internal interface, only DNATed connections are SNATed (to the
   sender's floating IP, else the gateway address: hairpin), never plain east-west traffic.

The result carries the translated packet, so trace shows every translation and tests can
compare the addresses that arrive with the evaluator's.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

from portwall.analyze.evaluate import IPAddress, Packet, match_packet, plan_index
from portwall.ir.l3 import FirewallPlan, FwAction, FwRule, Route, RouterInterface, RouterPlan
from portwall.ir.types import CtState, HostPlan, Origin
from portwall.model.protocols import TCP

Verdict = Literal["forward", "local", "drop", "reject", "unreachable"]
Outcome = Literal["allow", "deny", "info"]

__all__ = ["RouterResult", "RouterStep", "fwaas", "route_packet", "router_of_port",
           "router_with_floating_ip"]


@dataclass(frozen=True, slots=True)
class RouterStep:
    stage: str  # metadata | dnat | route | fwaas-egress | fwaas-ingress | snat | local
    detail: str
    outcome: Outcome = "info"
    origin: Origin | None = None


@dataclass(frozen=True)
class RouterResult:
    """What a router did with one packet: the verdict, the packet as it leaves (translated),
    the interface it leaves by and its next hop, and every step taken."""

    router: RouterPlan
    packet_in: Packet
    packet: Packet
    inbound: RouterInterface
    verdict: Verdict
    outbound: RouterInterface | None = None
    next_hop: IPAddress | None = None
    steps: tuple[RouterStep, ...] = ()
    decided_by: Origin | None = None
    dnat: bool = False
    snat: bool = False

    @property
    def allowed(self) -> bool:
        return self.verdict in ("forward", "local")


@dataclass
class _Walk:
    steps: list[RouterStep] = field(default_factory=list)

    def add(self, stage: str, detail: str, outcome: Outcome = "info",
            origin: Origin | None = None) -> None:
        self.steps.append(RouterStep(stage, detail, outcome, origin))


def router_of_port(plan: HostPlan, port_id: str) -> tuple[RouterPlan, RouterInterface] | None:
    """The router that owns a router port (internal or gateway), and that interface."""
    for r in plan.routers.values():
        itf = r.interface(port_id)
        if itf is not None:
            return r, itf
    return None


def router_with_floating_ip(plan: HostPlan, addr: IPAddress) -> RouterPlan | None:
    for r in plan.routers.values():
        if any(f.floating == addr for f in r.floating_ips):
            return r
    return None


def fwaas(fw: FirewallPlan, direction: Literal["ingress", "egress"], pkt: Packet,
          plan: HostPlan) -> tuple[FwAction, FwRule | None, str]:
    """One firewall group's verdict in one direction: (action, rule that decided, why)."""
    if pkt.ct is CtState.INVALID:
        return FwAction.DENY, None, "conntrack INVALID: dropped"
    if pkt.ct in (CtState.ESTABLISHED, CtState.RELATED):
        return FwAction.ALLOW, None, f"{pkt.ct} packet of an allowed connection: accepted"
    rules = fw.rules(direction)
    if rules is None:
        return FwAction.DENY, None, f"no {direction} policy: default deny"
    idx = plan_index(plan)
    for r in rules:
        if match_packet(r.match, pkt, idx)[0]:
            return r.action, r, f"{r.action} by firewall rule {r.origin.resource_name or r.rid}"
    return FwAction.DENY, None, f"no rule of the {direction} policy matches: default deny"


def _route(router: RouterPlan, dst: IPAddress) -> tuple[RouterInterface, IPAddress, Route] | None:
    """Longest prefix; at equal length an extra route wins (``ip route replace`` put it in
    place of the connected or default one)."""
    best = None
    for rt in router.routes:
        if rt.destination.version == dst.version and dst in rt.destination and (
                best is None or rt.destination.prefixlen > best.destination.prefixlen or (
                    rt.destination.prefixlen == best.destination.prefixlen and rt.extra)):
            best = rt
    if best is None:
        return None
    itf = router.interface(best.device)
    assert itf is not None
    return itf, best.via or dst, best


def route_packet(plan: HostPlan, router: RouterPlan, pkt: Packet,
                 inbound: RouterInterface) -> RouterResult:
    """Send ``pkt`` into ``router`` by ``inbound``: what comes out, and why."""
    w = _Walk()
    name = router.name or router.id
    first = pkt

    def result(verdict: Verdict, pkt: Packet, *, decided_by: Origin,
               outbound: RouterInterface | None = None, next_hop: IPAddress | None = None,
               dnat: bool = False, snat: bool = False) -> RouterResult:
        return RouterResult(router, first, pkt, inbound, verdict, outbound, next_hop,
                            tuple(w.steps), decided_by, dnat, snat)

    md = router.metadata
    if (md is not None and not inbound.gateway and pkt.family == 4 and pkt.dst == md.address
            and pkt.protocol == TCP and pkt.dport == md.port):
        local = inbound.address(4) or pkt.dst
        redirected = replace(pkt, dst=local, dport=md.local_port)
        w.add("metadata", f"{md.address}:{md.port} redirected to router {name}'s metadata"
              f" responder ({local}:{md.local_port}); never forwarded", "allow", md.origin)
        return result("local", redirected, decided_by=md.origin)
    dnat = False
    if pkt.family == 4:
        for f in router.floating_ips:
            if pkt.dst == f.floating:
                pkt = replace(pkt, dst=f.fixed)
                dnat = True
                w.add("dnat", f"floating IP {f.floating} -> fixed IP {f.fixed} (port"
                      f" {f.port_name or f.port_id})", "info", f.origin)
                break
    own = {a.ip for i in router.all_interfaces() for a in i.addresses}
    if pkt.dst in own:
        w.add("local", f"{pkt.dst} is router {name}'s own address: answered by the router",
              "allow", router.origin)
        return result("local", pkt, decided_by=router.origin, dnat=dnat)
    hop = _route(router, pkt.dst)
    if hop is None:
        w.add("route", f"router {name} has no route to {pkt.dst} (no interface on its subnet"
              " and no gateway)", "deny", router.origin)
        return result("unreachable", pkt, decided_by=router.origin, dnat=dnat)
    out, via, rt = hop
    if rt.extra:
        w.add("route", f"route {rt.destination} via {via} (router {name} extra route):"
              f" {pkt.dst} leaves by {out.device}", "info", rt.origin)
    else:
        w.add("route", f"router {name}: {pkt.dst} via {out.device}"
              + (f" next hop {via}" if via != pkt.dst else " (connected)"), "info", out.origin)
    fw_pkt = pkt if pkt.ct is not CtState.UNTRACKED else replace(pkt, ct=CtState.NEW)
    for itf, direction in ((inbound, "egress"), (out, "ingress")):
        fw = None if itf.gateway else router.firewall_of(itf.port_id)
        if fw is None or not fw.enabled:
            continue
        action, rule, why = fwaas(fw, direction, fw_pkt, plan)  # type: ignore[arg-type]
        origin = rule.origin if rule is not None else fw.origin
        allowed = action is FwAction.ALLOW
        w.add(f"fwaas-{direction}", f"firewall group {fw.name or fw.id} on {itf.device}"
              f" ({direction}): {why}", "allow" if allowed else "deny", origin)
        if not allowed:
            verdict: Verdict = "reject" if action is FwAction.REJECT else "drop"
            return result(verdict, pkt, outbound=out, next_hop=via, decided_by=origin,
                          dnat=dnat)
    snat = False
    if pkt.family == 4 and (out.gateway or dnat) and not inbound.gateway:
        fip = next((f for f in router.floating_ips if f.fixed == pkt.src), None)
        if fip is not None:
            pkt = replace(pkt, src=fip.floating)
            snat = True
            w.add("snat", f"source {fip.fixed} -> its floating IP {fip.floating}", "info",
                  fip.origin)
        elif router.snat is not None:
            pkt = replace(pkt, src=router.snat.to)
            snat = True
            why = "leaving by the gateway" if out.gateway else "DNATed, leaving by an" \
                " internal interface (hairpin)"
            w.add("snat", f"source {fw_pkt.src} -> gateway address {router.snat.to} ({why})",
                  "info", router.snat.origin)
    if not snat:
        why = ("IPv6 is routed, never translated" if pkt.family == 6 else
               "came in through the gateway: not SNATed" if inbound.gateway else
               "east-west: not SNATed" if not out.gateway else
               "enable_snat is false: the source is kept")
        w.add("snat", why, "info", router.origin)
    return result("forward", pkt, outbound=out, next_hop=via, decided_by=router.origin,
                  dnat=dnat, snat=snat)

