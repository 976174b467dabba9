"""IP protocol names and numbers as Neutron's API accepts them.

Neutron stores a rule's protocol as the string the user sent ("tcp" or "6"); comparisons
(duplicate detection, rendering) go through the number, so both spellings are the same rule.
"""

from __future__ import annotations

#: Names Neutron's API accepts (neutron-lib ``IP_PROTOCOL_MAP``), and their numbers.
PROTOCOL_NUMBERS: dict[str, int] = {
    "ah": 51,
    "dccp": 33,
    "egp": 8,
    "esp": 50,
    "gre": 47,
    "hopopt": 0,
    "icmp": 1,
    "igmp": 2,
    "ip": 0,
    "ipip": 4,
    "ipv6-encap": 41,
    "ipv6-frag": 44,
    "ipv6-icmp": 58,
    "ipv6-nonxt": 59,
    "ipv6-opts": 60,
    "ipv6-route": 43,
    "ospf": 89,
    "pgm": 113,
    "rsvp": 46,
    "sctp": 132,
    "tcp": 6,
    "udp": 17,
    "udplite": 136,
    "vrrp": 112,
}
#: Legacy spellings of IPv6 ICMP that Neutron rewrites to ``ipv6-icmp``.
IPV6_ICMP_LEGACY = frozenset({"icmpv6", "icmp"})
PROTOCOL_NAMES: dict[int, str] = {
    n: name for name, n in PROTOCOL_NUMBERS.items() if name not in ("ip", "hopopt")
}
PROTOCOL_NAMES[0] = "hopopt"

TCP, UDP, ICMP, ICMPV6, SCTP, DCCP, UDPLITE = 6, 17, 1, 58, 132, 33, 136
#: Protocols whose rules may carry a port range (Neutron ``SG_PORT_PROTO_NUMS``).
PORT_PROTOCOLS = frozenset({TCP, UDP, SCTP, DCCP, UDPLITE})
ICMP_PROTOCOLS = frozenset({ICMP, ICMPV6})
#: Protocols only meaningful under IPv6: a rule with ethertype IPv4 may not use them.
IPV6_ONLY = frozenset({41, 43, 44, 58, 59, 60})
#: Spellings of "any protocol".
ANY = frozenset({"any", ""})


def protocol_number(protocol: str | int | None) -> int | None:
    """The IP protocol number of an (already validated) protocol value; None means any."""
    if protocol is None:
        return None
    text = str(protocol).strip().lower()
    if text in ANY:
        return None
    if text == "icmpv6":
        return ICMPV6
    if text in PROTOCOL_NUMBERS:
        return PROTOCOL_NUMBERS[text]
    return int(text)


def protocol_name(number: int | None) -> str:
    """A readable name for a protocol number ("any" for None)."""
    if number is None:
        return "any"
    return PROTOCOL_NAMES.get(number, str(number))
