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
