"""``portwall audit`` on the L3 IR: routers, floating IPs, FWaaS v2 and extra routes.

=====  ========================================================================
code   finding
=====  ========================================================================
PW010  a floating IP nothing from the outside can reach (security groups, FWaaS)
PW011  a firewall rule can never match: earlier rules of its policy cover it
PW012  a firewall group denies every new connection in one direction (and family)
PW013  a router has enable_snat false and no floating IP: its subnets have no way out
PW014  a tenant subnet overlaps a subnet of an external network
PW015  an extra route's nexthop is no port's address, or it replaces a connected route
=====  ========================================================================

Every answer is exact over addresses, protocols and ports: a firewall policy is first
match, so the packets a rule decides are its box minus the boxes of the rules before it
(:mod:`portwall.analyze.intervals`); nothing is sampled.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from portwall.analyze.intervals import (
    Box,
    IntervalSet,
    box_empty,
    box_intersect,
    boxes_subtract,
    covered,
)
from portwall.analyze.reach import SetIntervals, ct_new, full_space
from portwall.ir.l3 import FirewallPlan, FwAction, FwRule, RouterPlan, compile_fw_rule
from portwall.ir.types import Action, HostPlan, Jump, Match, PortPlan

if TYPE_CHECKING:
    from portwall.analyze.audit import Finding, ResourceRef
    from portwall.model.store import Model

PORTS = IntervalSet.span(0, 65535)
PROTOS = IntervalSet.span(0, 255)

__all__ = ["fw_allowed", "fw_box", "router_findings"]


# ------------------------------------------------------------------ boxes
def fw_box(m: Match, sets: SetIntervals | None = None) -> Box:
    """A match as a box over (source, destination, protocol, source port, dest port)."""
    def addr(a: object) -> IntervalSet:
        if a is None:
            return full_space(m.family)
        if sets is not None and not isinstance(a, ipaddress.IPv4Network | ipaddress.IPv6Network):
            return sets.addr(a, m.family)  # type: ignore[arg-type]
        return IntervalSet.of_network(a)  # type: ignore[arg-type]

    def ports(r: object) -> IntervalSet:
        return PORTS if r is None else IntervalSet.span(r.lo, r.hi)  # type: ignore[attr-defined]

    proto = PROTOS if m.protocol is None else IntervalSet.point(m.protocol)
    return (addr(m.src), addr(m.dst), proto, ports(m.sport), ports(m.dport))


def fw_allowed(rules: Sequence[FwRule], family: int) -> list[Box]:
    """What an ordered policy allows (first match wins), as disjoint boxes."""
    seen: list[Box] = []
    out: list[Box] = []
    for r in rules:
        if r.match.family != family:
            continue
        b = fw_box(r.match)
        if r.action is FwAction.ALLOW:
            pieces = [b]
            for s in seen:
                pieces = boxes_subtract(pieces, s)
                if not pieces:
                    break
            out += pieces
        seen.append(b)
    return out


def _meets(a: Iterable[Box], b: Sequence[Box]) -> bool:
    return any(not box_empty(box_intersect(x, y)) for x in a for y in b)


# ------------------------------------------------------------------ checks
class _L3:
    def __init__(self, model: Model, plan: HostPlan):
        from portwall.analyze.audit import ResourceRef

        self.model, self.plan, self.Ref = model, plan, ResourceRef
        self.sets = SetIntervals(plan)
        self.ports = {p.id: p for p in plan.ports}
        external = {n.id for n in model.networks.values() if n.router_external}
        self.external = [s for s in model.subnets.values() if s.network_id in external]
        self.tenant = [s for s in model.subnets.values() if s.network_id not in external]

    def router_ref(self, r: RouterPlan) -> ResourceRef:
        return self.Ref("router", r.id, r.name)

    def fw_ref(self, fw: FirewallPlan) -> ResourceRef:
        return self.Ref("firewall_group", fw.id, fw.name)


def _sg_allowed(c: _L3, port: PortPlan, family: int) -> list[Box]:
    """The boxes a port's security groups admit (ingress, new connections): the union of
    its groups' rules, seen as (source, destination, protocol, sport, dport)."""
    out = []
    for step in port.ingress:
        if not isinstance(step, Jump):
            continue
        rs = c.plan.rulesets.get(step.ruleset_id)
        for r in rs.rules if rs else ():
            if r.action is Action.ALLOW and r.match.family == family and ct_new(r.match):
                out.append(fw_box(r.match, c.sets))
    return out


def check_unreachable_fips(c: _L3) -> list[Finding]:
    from portwall.analyze.audit import Finding

    out = []
    tenant = IntervalSet.of_networks(s.network for s in c.tenant if s.network.version == 4)
    outside = full_space(4) - tenant
    for r in c.plan.routers.values():
        for f in r.floating_ips:
            port = c.ports.get(f.port_id)
            fixed = IntervalSet.point(int(f.fixed))
            # what may arrive after DNAT: from any address outside the tenant, to the fixed IP
            arriving: Box = (outside, fixed, PROTOS, PORTS, PORTS)
            why = None
            sg = [arriving] if port is None or not port.filtered else [
                box_intersect(b, arriving) for b in _sg_allowed(c, port, 4)]
            sg = [b for b in sg if not box_empty(b)]
            if not sg:
                why = (f"no ingress rule of port {f.port_name}'s security groups admits any"
                       " address outside the tenant's subnets")
            fw = next((r.firewall_of(i.port_id) for i in r.interfaces
                       if any(f.fixed in n for n in i.networks())), None)
            if why is None and fw is not None and fw.enabled:
                allowed = fw_allowed(fw.ingress or (), 4)
                if not _meets(sg, allowed):
                    why = (f"firewall group {fw.name or fw.id}'s ingress policy allows none of"
                           f" what port {f.port_name}'s security groups admit from the outside")
            if why is None:
                continue
            refs = [c.Ref("floatingip", f.id, f.origin.resource_name),
                    c.Ref("port", f.port_id, f.port_name), c.router_ref(r)]
            if fw is not None and "firewall group" in why:
                refs.append(c.fw_ref(fw))
            out.append(Finding(
                "PW010", "low",
                f"floating IP {f.floating} of port {f.port_name} is unreachable from the outside",
                refs,
                f"router {r.name or r.id} translates {f.floating} to {f.fixed}, but {why}:"
                " every new connection to the floating IP is dropped. Checked over every"
                " outside address, protocol and port.",
                "add an ingress rule for the service (e.g. `openstack security group rule"
                " create --ingress --protocol tcp --dst-port 443 GROUP`), allow it in the"
                " firewall group's ingress policy, or release the floating IP"))
    return out


def _rule_ref(c: _L3, r: FwRule) -> ResourceRef:
    return c.Ref("firewall_rule", r.origin.resource_id, r.origin.resource_name)


def check_shadowed_fw_rules(c: _L3) -> list[Finding]:
    from portwall.analyze.audit import Finding

    out = []
    m = c.model
    for pol in m.firewall_policies.values():
        rules = [compile_fw_rule(m.firewall_rules[x]) for x in pol.firewall_rules
                 if x in m.firewall_rules and m.firewall_rules[x].enabled]
        for i, r in enumerate(rules):
            before = [p for p in rules[:i] if p.match.family == r.match.family]
            if not before or not covered(fw_box(r.match), [fw_box(p.match) for p in before]):
                continue
            b = fw_box(r.match)
            cover = [p for p in before if not box_empty(box_intersect(fw_box(p.match), b))]
            name = r.origin.resource_name or r.rid
            catch = [p for p in cover if p.match.protocol is None and p.match.src is None
                     and p.match.dst is None]
            deny = r.action is not FwAction.ALLOW
            what = (f"after catch-all rule {catch[0].origin.resource_name or catch[0].rid}"
                    f" ({catch[0].action})" if catch else "covered by rules " + ", ".join(
                        f"{p.origin.resource_name or p.rid} ({p.action})" for p in cover))
            out.append(Finding(
                "PW011", "medium" if deny else "low",
                f"firewall rule {name} of policy {pol.name or pol.id} can never match",
                [_rule_ref(c, r), c.Ref("firewall_policy", pol.id, pol.name),
                 *(_rule_ref(c, p) for p in cover)],
                f"rule {name} ({r.action}, position {i + 1}) is {what}: every packet it"
                f" matches is decided earlier, so its {r.action} never applies"
                + (" (the traffic it was meant to stop is decided by the earlier rules)."
                   if deny else "."),
                f"move rule {name} before the rules that cover it, or delete it"))
    return out


def check_deny_everything(c: _L3) -> list[Finding]:
    from portwall.analyze.audit import Finding

    out = []
    for fw in {f.id: f for r in c.plan.routers.values() for f in r.firewalls}.values():
        if not fw.enabled:
            continue
        fams = sorted({a.version for r in c.plan.routers.values() for i in r.interfaces
                       if i.port_id in fw.ports for a in i.addresses})
        for direction in ("ingress", "egress"):
            rules = fw.rules(direction)
            for fam in fams:
                if rules is not None and fw_allowed(rules, fam):
                    continue
                why = (f"it has no {direction} policy" if rules is None else
                       f"no rule of its {direction} policy allows any IPv{fam} packet")
                where = ("towards the networks behind its interfaces" if direction == "ingress"
                         else "from the networks behind its interfaces")
                out.append(Finding(
                    "PW012", "medium" if direction == "egress" else "low",
                    f"firewall group {fw.name or fw.id} denies every new IPv{fam}"
                    f" {direction} connection",
                    [c.fw_ref(fw)],
                    f"firewall group {fw.name or fw.id} is enabled and {why}: every new IPv{fam}"
                    f" connection {where} meets the default deny (only replies of established"
                    " connections pass).",
                    f"add allow rules to the {direction} policy (or remove the group from the"
                    " ports if it is not meant to filter yet)"))
    return out


def check_no_way_out(c: _L3) -> list[Finding]:
    from portwall.analyze.audit import Finding

    out = []
    for rid, r in c.plan.routers.items():
        if r.gateway is None or r.snat is not None or not r.interfaces:
            continue
        if r.gateway.address(4) is None:
            continue
        router = c.model.routers.get(rid)
        project = router.project_id if router else None
        fips = [f for x in c.plan.routers.values() for f in x.floating_ips
                if (p := c.model.ports.get(f.port_id)) is not None and p.project_id == project]
        if fips or r.floating_ips:
            continue
        nets = ", ".join(str(n) for i in r.interfaces for n in i.networks() if n.version == 4)
        out.append(Finding(
            "PW013", "medium",
            f"router {r.name or rid} has enable_snat false and its project no floating IP",
            [c.router_ref(r)],
            f"router {r.name or rid} has a gateway ({r.gateway.address(4)}) but does not SNAT,"
            f" and project {project} has no floating IP: packets from {nets or 'its subnets'}"
            " leave with tenant addresses the outside cannot answer, so nothing behind it"
            " reaches the outside (unless the upstream routes these subnets back).",
            "set enable_snat true on the gateway, associate floating IPs, or have the upstream"
            " router route the tenant subnets to this router's gateway address"))
    return out


def check_external_overlaps(c: _L3) -> list[Finding]:
    from portwall.analyze.audit import Finding

    out = []
    for s in c.tenant:
        for e in c.external:
            if s.network.version == e.network.version and s.network.overlaps(e.network):
                out.append(Finding(
                    "PW014", "high",
                    f"tenant subnet {s.label()} ({s.cidr}) overlaps external subnet"
                    f" {e.label()} ({e.cidr})",
                    [c.Ref("subnet", s.id, s.name), c.Ref("subnet", e.id, e.name)],
                    f"{s.cidr} and the external network's {e.cidr} overlap: a router attached"
                    " to both cannot tell tenant hosts from outside ones, and floating IPs"
                    " and SNAT addresses can collide with tenant addresses.",
                    "renumber the tenant subnet out of the external network's range"))
    return out


def check_extra_routes(c: _L3) -> list[Finding]:
    from portwall.analyze.audit import Finding

    out = []
    owned = {a for p in c.model.ports.values() for a in p.addresses()}
    owned |= {pair.network.network_address for p in c.model.ports.values()
              for pair in p.allowed_address_pairs
              if pair.network.prefixlen == pair.network.max_prefixlen}
    for r in c.plan.routers.values():
        connected = [rt for rt in r.routes if rt.via is None]
        for rt in (x for x in r.routes if x.extra):
            assert rt.via is not None
            label = f"route {rt.destination} via {rt.via}"
            if rt.via not in owned:
                out.append(Finding(
                    "PW015", "medium",
                    f"router {r.name or r.id}'s extra {label}: no port has {rt.via}",
                    [c.router_ref(r)],
                    f"router {r.name or r.id} forwards {rt.destination} to {rt.via}, but no"
                    " port (fixed IP or address pair) has that address: the router's ARP for"
                    " it goes unanswered and the packets are lost.",
                    f"give the nexthop VM's port the address {rt.via}, or fix the route"))
            hit = next((x for x in connected if x.destination == rt.destination), None)
            if hit is not None:
                out.append(Finding(
                    "PW015", "medium",
                    f"router {r.name or r.id}'s extra {label} replaces a connected route",
                    [c.router_ref(r)],
                    f"{rt.destination} is the subnet of the router's interface {hit.device};"
                    f" the extra route replaces that route (ip route replace), so hosts on"
                    f" the subnet are reached through {rt.via} instead of directly.",
                    "use a more specific destination, or delete the route"))
    return out


def router_findings(model: Model, plan: HostPlan) -> list[Finding]:
    """Every L3 finding (PW010-PW015); external overlaps are checked even without routers."""
    c = _L3(model, plan)
    out = check_external_overlaps(c) + check_shadowed_fw_rules(c)
    if plan.routers:
        for check in (check_unreachable_fips, check_deny_everything, check_no_way_out,
                      check_extra_routes):
            out += check(c)
    return out
