"""The words after a rule's rid in its comment: the names behind it, for people.

``iptables -L``/``iptables-save`` then read ``sgr-<id> group web ingress tcp/22`` or
``port-<id> port web-1`` instead of bare UUIDs. The rid stays the first token (every parser,
:func:`.snapshot.comment_of` and the lab's evidence, reads only that); names are reduced to
one token of a safe charset by :func:`.spelling.name_token`.
"""

from __future__ import annotations

from portwall.backends.iptables.spelling import name_token, protocol_spelling
from portwall.ir.types import PortPlan, Rule, RuleSet


def port_note(port: PortPlan) -> str:
    """After a port line's rid (dispatch, spoof jump and entries): the port's name."""
    return f"port {name_token(port.name)}"


def group_note(rs: RuleSet) -> str:
    """After a group jump's rid: the group's name."""
    return f"group {name_token(rs.group_name)}"


def rule_note(rs: RuleSet, rule: Rule) -> str:
    """After a group rule's rid: group, direction, protocol and destination ports."""
    m = rule.match
    proto = (protocol_spelling(m.protocol) or "any") if m.protocol else "any"
    ports = f"/{m.dport}" if m.dport is not None else ""
    return f"{group_note(rs)} {rs.direction} {proto}{ports}"
