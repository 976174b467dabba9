"""OpenFlow building blocks: the table pipeline, registers, cookies and match spelling.

Pipeline of the integration bridge (``docs/architecture.md``, "OVS layout")::

    0  CLASSIFY      in_port -> ct(table=1, zone=<network>) for IP (lookup only), else table 1
    1  EGRESS_START  per port: reg6=zone, reg4[0]=sender stateful, evaluate the port's egress
                     groups (resubmit to 2 per group, one bit of reg2 each), -> 9
                     (unfiltered port: -> 30)
    2  EGRESS_RULES  rules of every egress rule set, keyed by reg3=<rule set>; remote groups
                     as conjunction(<rule set x address set>) with one flow per member address
    9  EGRESS_GUARD  ARP only from the port's (MAC, IPv4) entries; ICMPv6 NA only for targets
                     of its IPv6 entries; IP -> 10; other ethertypes -> 30 (as a Linux bridge)
    10-12 EGRESS     the IR egress steps in order, one table per anti-spoof segment;
                     allow -> 30, drop -> drop
    30 FORWARD       per network (reg6): destination MAC -> reg7=<port>, -> 40; broadcast
                     and multicast -> every port of the network, each through 40
    40 INGRESS_START per port (reg7): evaluate ingress groups (resubmit to 41), -> 42
    41 INGRESS_RULES like 2 for ingress rule sets
    42-44 INGRESS    the IR ingress steps; non-IP frames pass; allow -> 50
    50 OUTPUT        ct(commit) of +new IP packets unless both ends are stateless, output

Every flow carries a 64-bit cookie: 4 bits kind, 36 bits owner (a port, a rule set, a
member address, a network), 24 bits item. Everything one owner writes is replaced as a unit
(``delete cookie=<owner>/OWNER_MASK`` + adds in the same bundle); the item maps to the IR
rule id that produced the flow (:attr:`OvsRuleset.rids`).

Port numbers are not known when rendering: flows name devices as ``{tapXXXX}`` and the
applier substitutes the OpenFlow port number it reads from OVSDB.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field

from portwall.ir.types import CtState, IPNetwork, Match, Origin, PortRange, SetRef

T_CLASSIFY = 0
T_EGRESS_START = 1
T_EGRESS_RULES = 2
T_EGRESS_GUARD = 9
T_EGRESS = 10  # 10, 11, 12: one per anti-spoof segment
T_FORWARD = 30
T_INGRESS_START = 40
T_INGRESS_RULES = 41
T_INGRESS = 42  # 42, 43, 44
T_OUTPUT = 50
SEGMENTS = 3

TABLE_NAMES = {
    T_CLASSIFY: "classify", T_EGRESS_START: "egress-start", T_EGRESS_RULES: "egress-rules",
    T_EGRESS_GUARD: "egress-guard", T_FORWARD: "forward", T_INGRESS_START: "ingress-start",
    T_INGRESS_RULES: "ingress-rules", T_OUTPUT: "output",
    **{T_EGRESS + i: f"egress-{i}" for i in range(SEGMENTS)},
    **{T_INGRESS + i: f"ingress-{i}" for i in range(SEGMENTS)},
}

REG_BITS = "NXM_NX_REG2"  # bit 0: scratch "a rule matched"; bit k: the port's k-th group
REG_SET = "NXM_NX_REG3"  # rule-set number during group evaluation
REG_FLAGS = "NXM_NX_REG4"  # bit 0: the sender is stateful (its packets are tracked)
REG_ZONE = "NXM_NX_REG6"  # conntrack zone = network
REG_PORT = "NXM_NX_REG7"  # destination port (OpenFlow port number)
MAX_GROUPS = 31

KIND_BASE, KIND_PORT, KIND_RULESET, KIND_MEMBER, KIND_NET = 1, 2, 3, 4, 5
KIND_NAMES = {KIND_BASE: "base", KIND_PORT: "port", KIND_RULESET: "rule set",
              KIND_MEMBER: "member", KIND_NET: "network"}
OWNER_MASK = 0xFFFF_FFFF_FF00_0000
ITEM_MASK = 0xFF_FFFF

RULE_PRIORITY = 100  # every flow of the group rule tables (conjunctions need one priority)
STEP_TOP = 60000  # priority of a direction's first step; each next step 10 lower
STEP_GAP = 10

_PLACEHOLDER = re.compile(r"\{([^{}]+)\}")


def h(text: str, bits: int) -> int:
    """A stable hash of ``text`` in ``bits`` bits (never 0)."""
    v = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")
    return (v % ((1 << bits) - 1)) + 1


def owner_cookie(kind: int, key: str) -> int:
    return (kind << 60) | (h(key, 36) << 24)


def kind_of(cookie: int) -> int:
    return cookie >> 60


@dataclass(frozen=True, slots=True)
class Flow:
    """One flow; ``match`` and ``actions`` in ovs-ofctl syntax, devices as ``{name}``."""

    table: int
    priority: int
    match: str
    actions: str
    cookie: int

    def key(self) -> tuple[int, int, str]:
        return (self.table, self.priority, self.match)

    def text(self) -> str:
        m = f",{self.match}" if self.match else ""
        return (f"cookie={self.cookie:#x},table={self.table},priority={self.priority}{m} "
                f"actions={self.actions}")

    def devices(self) -> list[str]:
        return _PLACEHOLDER.findall(self.match) + _PLACEHOLDER.findall(self.actions)


def resolve(text: str, ofports: dict[str, int]) -> str | None:
    """``text`` with ``{device}`` replaced by port numbers; None if a device is missing.

    Flood actions (``set_field:{dev}->reg7,resubmit(,40)``) just lose the missing ports."""
    if "{" not in text:
        return text
    # common case, every device present: one split instead of two regex passes with a
    # callback per device (a flood flow names every port of its network)
    pieces = text.split("{")
    out = [pieces[0]]
    for piece in pieces[1:]:
        dev, sep, rest = piece.partition("}")
        port = ofports.get(dev)
        if port is None or not sep or not dev:
            return _resolve_slow(text, ofports)
        out += (str(port), rest)
    done = "".join(out).rstrip(",")
    return done if not done.endswith("actions=") else done + "drop"


def _resolve_slow(text: str, ofports: dict[str, int]) -> str | None:

    def flood_part(m: re.Match[str]) -> str:
        return m.group(0) if m.group(1) in ofports else ""

    text = _FLOOD_PART.sub(flood_part, text)
    missing = False

    def sub(m: re.Match[str]) -> str:
        nonlocal missing
        port = ofports.get(m.group(1))
        if port is None:
            missing = True
            return "0"
        return str(port)

    out = _PLACEHOLDER.sub(sub, text)
    if missing:
        return None
    out = out.rstrip(",")
    return out if not out.endswith("actions=") else out + "drop"


def flood_action(device: str) -> str:
    return f"set_field:{{{device}}}->reg7,resubmit(,{T_INGRESS_START}),"


_FLOOD_PART = re.compile(r"set_field:\{([^{}]+)\}->reg7,resubmit\(," + str(T_INGRESS_START)
                         + r"\),")


# ------------------------------------------------------------------ match spelling
_PROTO_FIELDS = {4: ("ip", "nw_src", "nw_dst"), 6: ("ipv6", "ipv6_src", "ipv6_dst")}
#: protocols whose ports OpenFlow can match (tp_src/tp_dst)
OF_PORT_PROTOCOLS = frozenset({6, 17, 132})
_CT_FLAGS = {
    CtState.NEW: "+new+trk",
    CtState.ESTABLISHED: "+est+trk",
    CtState.RELATED: "+rel+trk",
    CtState.INVALID: "+inv+trk",
    CtState.UNTRACKED: "-trk",
}


def port_masks(r: PortRange) -> list[str]:
    """A port range as value/mask matches (1-65535 -> none; 80 -> "80")."""
    lo, hi = r.lo, r.hi
    if lo <= 0 and hi >= 0xFFFF:
        return [""]
    out = []
    while lo <= hi:
        size = lo & -lo if lo else 1 << 16
        while size > hi - lo + 1:
            size >>= 1
        out.append(str(lo) if size == 1 else f"{lo:#x}/{0xFFFF ^ (size - 1):#x}")
        lo += size
    return out


def net_text(net: IPNetwork) -> str:
    if net.prefixlen == net.max_prefixlen:
        return str(net.network_address)
    return str(net)


class Unrenderable(ValueError):
    """The match cannot be expressed in OpenFlow (e.g. ports on DCCP)."""


def match_variants(m: Match, *, with_sets: bool = False) -> list[list[str]]:
    """The flows' match fields for an IR match: one list per variant (port ranges become
    several value/mask flows, a conntrack state set several ct_state flows). SetRef
    addresses are left out: the caller turns them into conjunction clauses."""
    base, src_f, dst_f = _PROTO_FIELDS[m.family]
    fields = [base]
    if m.protocol:
        fields.append(f"nw_proto={m.protocol}")
    if m.src_mac:
        fields.append(f"dl_src={m.src_mac.lower()}")
    for f, a in ((src_f, m.src), (dst_f, m.dst)):
        if a is not None and not isinstance(a, SetRef) and a.prefixlen:
            fields.append(f"{f}={net_text(a)}")
    if m.icmp_type is not None:
        if m.protocol not in (1, 58):
            raise Unrenderable(f"ICMP type on protocol {m.protocol}")
        fields.append(f"icmp_type={m.icmp_type}")
        if m.icmp_code is not None:
            fields.append(f"icmp_code={m.icmp_code}")
    variants = [fields]
    for name, r in (("tp_src", m.sport), ("tp_dst", m.dport)):
        if r is None:
            continue
        if m.protocol not in OF_PORT_PROTOCOLS:
            raise Unrenderable(f"port match on protocol {m.protocol or 'any'}")
        variants = [[*v, f"{name}={mask}"] if mask else v for v in variants
                    for mask in port_masks(r)]
    if m.ct is not None:
        flags = [_CT_FLAGS[s] for s in CtState if s in m.ct]
        variants = [[*v, f"ct_state={f}"] for v in variants for f in flags]
    return variants


def set_field(set_is_src: bool, family: int) -> str:
    _base, src_f, dst_f = _PROTO_FIELDS[family]
    return src_f if set_is_src else dst_f


class RenderError(ValueError):
    """The plan cannot be expressed as flows (e.g. a port in more than 31 groups)."""


@dataclass
class Owner:
    """The flows of one owner (a port, a rule set, a member address, a network)."""

    cookie: int
    label: str
    flows: tuple[Flow, ...]
    rids: dict[int, str] = field(default_factory=dict)  # flow cookie -> rid
    origins: dict[str, Origin] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()
    #: set by the applier: some flows name a device that is not on the bridge (so a cached
    #: resolution of this owner must not be trusted)
    flows_skipped: bool = False
