"""Words for IR objects: what trace and audit print must name the user's resources, not rids."""

from __future__ import annotations

from portwall.ir.types import HostPlan, IPNetwork, Match, Rule, SetMember, SetRef
from portwall.model.protocols import ICMP_PROTOCOLS, PORT_PROTOCOLS, protocol_name


def set_label(plan: HostPlan, ref: SetRef) -> str:
    """``remote group <name>`` for a set reference (the set id holds the group id)."""
    aset = plan.address_sets.get(ref.set_id)
    if aset is not None:
        return f"remote group {aset.group_name or aset.group_id}"
    return f"remote group {ref.set_id[3:-3]}"


def addr_label(plan: HostPlan, a: IPNetwork | SetRef | None) -> str:
    if a is None:
        return "anywhere"
    if isinstance(a, SetRef):
        return set_label(plan, a)
    return str(a)


def match_label(plan: HostPlan, m: Match, direction: str | None = None) -> str:
    """``IPv4 tcp dport 22 from remote group admin`` and the like; with a ``direction`` a
    missing remote is spelled out (``from anywhere``)."""
    parts = [f"IPv{m.family}", protocol_name(m.protocol)]
    if m.sport is not None:
        parts.append(f"sport {m.sport}")
    if m.dport is not None:
        parts.append(f"dport {m.dport}")
    elif m.protocol in PORT_PROTOCOLS:
        parts.append("all ports")
    if m.protocol in ICMP_PROTOCOLS and m.icmp_type is not None:
        parts.append(f"type {m.icmp_type}" + (f" code {m.icmp_code}" if m.icmp_code is not None
                                              else ""))
    if m.src is not None or direction == "ingress":
        parts.append(f"from {addr_label(plan, m.src)}")
    if m.dst is not None or direction == "egress":
        parts.append(f"to {addr_label(plan, m.dst)}")
    if m.ct is not None:
        parts.append("ct " + ",".join(sorted(str(s) for s in m.ct)))
    return " ".join(parts)


def short_id(rid: str) -> str:
    """The first 8 characters of an id: enough to tell resources apart on one screen (the
    full id is in ``--json``)."""
    return rid[:8]


def rule_label(plan: HostPlan, rule: Rule, direction: str | None = None) -> str:
    """A rule as a person reads it: ``rule <id> (IPv4 tcp dport 22 from remote group x)``."""
    name = f" '{rule.origin.resource_name}'" if rule.origin.resource_name else ""
    return f"{rule.origin.resource_type.replace('_', ' ')}{name} {short_id(rule.origin.resource_id)}" \
           f" ({match_label(plan, rule.match, direction)})"


def member_label(member: SetMember) -> str:
    what = "fixed IP" if member.kind == "fixed_ip" else "allowed address pair"
    return f"{member.cidr} ({what} of port {member.port_name or member.port_id})"
