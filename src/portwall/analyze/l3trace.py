"""Trace across routers and to the edges of the model (kept apart from ``trace.py``).

* :func:`through_router`: one router hop with :func:`portwall.analyze.l3eval.route_packet`;
  every NAT, route and FWaaS step becomes a trace line and the walk goes on with the
  translated packet from the interface the router chose;
* :func:`leave`: the packet leaves portwall's ports towards an address no port owns. Out
  of a modelled router's gateway that is the outside world (allowed as far as portwall
  decides: say so); anywhere else the next hop is a gateway no router models, so nothing
  after it was evaluated: the verdict is *unknown* (never allow);
* :func:`from_outside`: a source outside every tenant subnet reaches tenants through a
  router's gateway (floating IPs).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from portwall.analyze.evaluate import IPAddress, Packet
from portwall.analyze.l3eval import RouterResult, route_packet, router_with_floating_ip
from portwall.ir.l3 import RouterInterface, RouterPlan

if TYPE_CHECKING:
    from portwall.analyze.trace import Tracer, TraceResult, _Sender
    from portwall.model.resources import Port


def _steps(tracer: Tracer, result: TraceResult, res: RouterResult) -> None:
    from portwall.analyze.trace import TraceStep

    for st in res.steps:
        o = st.origin
        result.steps.append(TraceStep(
            st.stage, o.resource_type if o else "router", o.resource_id if o else res.router.id,
            o.resource_name if o else res.router.name, st.detail, st.outcome))


def through_router(tracer: Tracer, result: TraceResult, router: RouterPlan,
                   inbound: RouterInterface, pkt: Packet
                   ) -> tuple[_Sender, tuple[Port, IPAddress, str], Packet] | None:
    """Route ``pkt`` through ``router``; None when the walk ends there (dropped, rejected,
    answered by the router, or gone to the outside)."""
    from portwall.analyze.trace import TraceStep, _Sender

    res = route_packet(tracer.plan, router, pkt, inbound)
    result.routed.append(res)
    _steps(tracer, result, res)
    name = router.name or router.id
    if res.packet != pkt:
        result.translated = res.packet
    if res.verdict in ("drop", "reject", "unreachable"):
        result.allowed = False
        if res.verdict == "reject":
            result.steps.append(TraceStep(
                "fwaas", "router", router.id, router.name,
                "rejected: the sender gets ICMP port unreachable", "deny"))
        return None
    if res.verdict == "local":
        result.steps.append(TraceStep("deliver", "router", router.id, router.name,
                                      f"answered by router {name}: end of the path"))
        return None
    out = res.outbound
    assert out is not None and res.next_hop is not None
    port = tracer.model.ports[out.port_id]
    sender = _Sender(f"router {name}", [port], router_id=router.id)
    return sender, (port, res.next_hop, f"leaves by {out.device}"), res.packet


def leave(tracer: Tracer, result: TraceResult, sender: _Sender, port: Port, via: IPAddress,
          dst: IPAddress) -> None:
    """The packet leaves ``port`` for ``via``, which no port owns."""
    from portwall.analyze.trace import TraceStep

    routed = sender.router_id is not None and tracer.plan.routers.get(sender.router_id)
    outside = tracer.lab_outside()
    if routed and port.device_owner == "network:router_gateway":
        if _to_other_router(tracer, result, sender, port, dst):
            return
        owner = tracer._owner(dst)
        if owner is not None:  # a tenant address behind something else: not evaluated
            what = (f"{dst} is port {owner.label()}'s address, but the packet leaves by"
                    f" {sender.label}'s gateway towards {via}; whether the upstream routes"
                    " it back there is not modelled")
            result.leaves_model(what)
            result.steps.append(TraceStep("deliver", "address", str(via), "",
                                          f"unknown: {what}"))
            result.suggest(f"reach {owner.label()} through its floating IP, or attach both"
                           " subnets to one router", 1)
            return
        where = ("the lab's outside host" if outside is not None and dst == outside
                 else "the outside world")
        result.steps.append(TraceStep(
            "deliver", "router", port.device_id, "",
            f"{dst} is {where}: the packet leaves by {sender.label}'s gateway (next hop"
            f" {via}); nothing portwall enforces lies beyond it", "info"))
        return
    if via == dst:
        what = f"{dst} is owned by no port on {port.label()}'s network"
    else:
        what = f"leaves through gateway {via}, which no router models"
    result.leaves_model(what)
    result.steps.append(TraceStep(
        "deliver", "address", str(via), "",
        f"unknown: {what}; only {port.label()}'s egress was evaluated, not what lies beyond"))
    result.suggest(f"model the router that owns {via} (routers: with interfaces on its"
                   " subnets) so the whole path can be evaluated", 1)


def _to_other_router(tracer: Tracer, result: TraceResult, sender: _Sender, port: Port,
                     dst: IPAddress) -> bool:
    """``dst`` is a floating IP of another router on the same external network: that
    router's gateway answers for it, so the walk goes on through it (DNAT to the port)."""
    from portwall.analyze.trace import TraceStep

    other = router_with_floating_ip(tracer.plan, dst)
    if other is None or other.gateway is None or other.id == sender.router_id or \
            other.gateway.network_id != port.network_id:
        return False
    pkt = result.translated or result.packet
    result.steps.append(TraceStep(
        "route", "router", other.id, other.name,
        f"{dst} is a floating IP of router {other.name or other.id}: its gateway"
        f" {other.gateway.device} answers for it on the external network"))
    nxt = through_router(tracer, result, other, other.gateway, pkt)
    if nxt is not None:
        s2, forced, p2 = nxt
        tracer._walk(result, s2, p2.dst, p2, forced)
    return True


def from_outside(tracer: Tracer, result: TraceResult, pkt: Packet) -> bool:
    """A packet from the outside to a floating IP: in through the router's gateway.
    False when no router owns the destination (the caller keeps its old behaviour)."""
    from portwall.analyze.trace import TraceStep

    router = router_with_floating_ip(tracer.plan, pkt.dst)
    what = "a floating IP"
    if router is None:  # a tenant address behind a router: only if upstream routes it there
        what = "behind"
        router = next((r for r in tracer.plan.routers.values() if r.gateway is not None and any(
            pkt.dst in n for i in r.interfaces for n in i.networks())), None)
    if router is None or router.gateway is None:
        return False
    name = router.name or router.id
    result.steps.append(TraceStep(
        "route", "router", router.id, router.name,
        f"{pkt.dst} is a floating IP of router {name}: the packet arrives on its gateway"
        f" {router.gateway.device}" if what != "behind" else
        f"{pkt.dst} is behind router {name}: a packet routed to it from the outside arrives"
        f" on its gateway {router.gateway.device} (only tenant networks the upstream routes"
        " there; floating IPs are the usual way in)"))
    nxt = through_router(tracer, result, router, router.gateway, pkt)
    if nxt is not None:
        sender, forced, p2 = nxt
        tracer._walk(result, sender, p2.dst, p2, forced)
    return True
