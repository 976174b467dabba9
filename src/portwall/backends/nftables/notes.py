"""The words after a rule's rid in its nft comment: the names behind it, for people.

``nft list table inet portwall`` then reads ``comment "sgr-<id> group web ingress tcp/22"``
or ``jump gi_<id> comment "sg-<id>-ingress group web"`` instead of bare UUIDs, as the
iptables backend's comments do. The rid stays the first token: the applier's error report
and provenance read only that (:func:`.spell.rid_of`); drift compares whole comments, which
the renderer and the kernel agree on. Port chains are shared by every port of a group
combination, so no rule there names a port (ports are set and map elements).
"""

from __future__ import annotations

from portwall.backends.nftables.spell import name_token
from portwall.ir.l3 import FirewallPlan, FloatingIPNat, FwRule
from portwall.ir.types import Rule, RuleSet

#: how nft and /etc/protocols spell the protocols a security group rule names most often
_PROTOCOLS = {1: "icmp", 2: "igmp", 4: "ipip", 6: "tcp", 17: "udp", 33: "dccp", 41: "ipv6",
              47: "gre", 50: "esp", 51: "ah", 58: "icmpv6", 89: "ospf", 103: "pim",
              112: "vrrp", 132: "sctp", 136: "udplite"}


def group_note(rs: RuleSet) -> str:
    """After a jump's rid (the rule set id): the group's name."""
    return f"group {name_token(rs.group_name)}"


def rule_note(rs: RuleSet, rule: Rule) -> str:
    """After a group rule's rid: group, direction, protocol and destination ports."""
    m = rule.match
    proto = _PROTOCOLS.get(m.protocol, str(m.protocol)) if m.protocol else "any"
    ports = f"/{m.dport}" if m.dport is not None else ""
    return f"{group_note(rs)} {rs.direction} {proto}{ports}"


# Routers (``table inet portwall_l3``): the same words as the iptables router comments.
def fw_chain(fw: FirewallPlan, direction: str) -> str:
    """A firewall group's chain: the name the iptables backend gives it too."""
    return f"pw-f{'i' if direction == 'ingress' else 'e'}{fw.id.replace('-', '')[:12]}"


def fw_group_note(fw: FirewallPlan, direction: str | None = None) -> str:
    """After a firewall group's rid: ``group <name> [<direction>]``."""
    return " ".join(["group", name_token(fw.name or fw.id), *((direction,) if direction else ())])


def fw_rule_note(fw: FirewallPlan, direction: str, r: FwRule) -> str:
    """After a firewall rule's rid: group, direction, protocol/port and action."""
    m = r.match
    proto = _PROTOCOLS.get(m.protocol, str(m.protocol)) if m.protocol else "any"
    ports = f"/{m.dport}" if m.dport is not None else ""
    return f"{fw_group_note(fw, direction)} {proto}{ports} {r.action.value}"


def fip_note(f: FloatingIPNat) -> str:
    """After a floating IP's rid: its name, the translation and the port's name."""
    return (f"fip {name_token(f.origin.resource_name or str(f.floating))} {f.floating}->"
            f"{f.fixed} port {name_token(f.port_name or f.port_id)}")
