"""The intermediate representation: one per-host plan that every backend and the evaluator read.

The IR says *what* is allowed, in Neutron's order, with no backend syntax:

* a :class:`PortPlan` per filtered port: its anti-spoof allow-list and two ordered step lists
  (``ingress`` = traffic to the VM, ``egress`` = traffic from the VM);
* a :class:`RuleSet` per (security group, direction), shared by every port in the group
  (one chain per group, as Calico does per policy, instead of copying rules into each port);
* an :class:`AddressSet` per (remote group, family): the addresses of every member port,
  fixed IPs and allowed-address-pairs alike, each member knowing which port put it there.

Steps are evaluated in order; the first :class:`Rule` whose match holds decides (ALLOW ends
the direction with "allowed", DROP with "dropped"); a :class:`Jump` allows if any rule of
the rule set matches and otherwise continues; a :class:`SpoofCheck` drops unless the
packet's (source IP, MAC) is on the port's allow-list. Every rule carries an
:class:`Origin` so that a verdict can always be explained in terms of the user's resources.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from portwall.ir.l3 import RouterPlan

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Family = Literal[4, 6]
Direction = Literal["ingress", "egress"]


class Action(StrEnum):
    ALLOW = "allow"
    DROP = "drop"


class CtState(StrEnum):
    """Connection-tracking state of a packet, as netfilter and OVS name them."""

    NEW = "new"
    ESTABLISHED = "established"
    RELATED = "related"
    INVALID = "invalid"
    UNTRACKED = "untracked"


class OriginKind(StrEnum):
    SG_RULE = "security_group_rule"  # a user's security group rule
    FIXED_IP = "fixed_ip"  # anti-spoof entry from a fixed IP
    ADDRESS_PAIR = "allowed_address_pair"  # anti-spoof entry from an address pair
    MAC_ONLY = "mac_only"  # anti-spoof entry of a port without fixed IPs
    LINK_LOCAL = "link_local"  # anti-spoof entry: IPv6 link-local of the port's MAC
    PROVIDER = "provider"  # fixed rules every port gets (DHCP, ICMPv6 ND, RA)
    CONNTRACK = "conntrack"  # ESTABLISHED/RELATED accept, INVALID drop
    SPOOF = "spoof"  # the anti-spoof drop
    FALLBACK = "fallback"  # the final drop when nothing allowed the packet
    GROUP = "security_group"  # a port's membership in a group (a Jump)
    UNFILTERED = "port_security_disabled"


@dataclass(frozen=True, slots=True)
class Origin:
    """The resource a rule comes from, so verdicts are explained in the user's terms."""

    kind: OriginKind
    resource_type: str  # "security_group_rule", "port", "security_group", "provider", ...
    resource_id: str
    resource_name: str = ""
    detail: str = ""


@dataclass(frozen=True, slots=True)
class PortRange:
    lo: int
    hi: int

    def __contains__(self, port: object) -> bool:
        return isinstance(port, int) and self.lo <= port <= self.hi

    def __str__(self) -> str:
        return str(self.lo) if self.lo == self.hi else f"{self.lo}-{self.hi}"


@dataclass(frozen=True, slots=True)
class SetRef:
    """A match against a named :class:`AddressSet` (a remote group's addresses)."""

    set_id: str


AddrMatch = IPNetwork | SetRef


@dataclass(frozen=True, slots=True)
class Match:
    """Conditions on a packet; a field left None matches anything.

    ``icmp_type``/``icmp_code`` apply to ICMP (protocol 1) and ICMPv6 (58) only;
    ``sport``/``dport`` to protocols with ports. ``ct`` holds if the packet's conntrack
    state is one of the listed states.
    """

    family: Family
    protocol: int | None = None
    src: AddrMatch | None = None
    dst: AddrMatch | None = None
    src_mac: str | None = None
    sport: PortRange | None = None
    dport: PortRange | None = None
    icmp_type: int | None = None
    icmp_code: int | None = None
    ct: frozenset[CtState] | None = None


@dataclass(frozen=True, slots=True)
class Rule:
    """One ordered decision. ``rid`` is unique in a plan and stable across compiles: the
    renderers write it as the rule's comment/cookie, tying kernel state back to the IR."""

    rid: str
    match: Match
    action: Action
    origin: Origin


@dataclass(frozen=True, slots=True)
class Jump:
    """Evaluate a shared :class:`RuleSet`; allow if any of its rules matches."""

    ruleset_id: str
    origin: Origin


@dataclass(frozen=True, slots=True)
class SpoofCheck:
    """Drop unless (source address, source MAC) is on the port's anti-spoof list."""

    origin: Origin


Step = Rule | Jump | SpoofCheck


@dataclass(frozen=True, slots=True)
class SpoofEntry:
    """An allowed (source CIDR, MAC) pair for a port's outgoing packets.

    ``cidr`` None means any source address of ``family`` (a port without fixed IPs gets a
    MAC-only entry, as in Neutron)."""

    family: Family
    cidr: IPNetwork | None
    mac: str
    origin: Origin


@dataclass(frozen=True, slots=True)
class RuleSet:
    """The allow rules of one security group in one direction, shared by all its ports."""

    id: str
    group_id: str
    group_name: str
    direction: Direction
    stateful: bool
    rules: tuple[Rule, ...]


@dataclass(frozen=True, slots=True)
class SetMember:
    """An address in a remote group's set and the port (and field) that contributed it."""

    cidr: IPNetwork
    port_id: str
    port_name: str
    kind: OriginKind  # FIXED_IP or ADDRESS_PAIR


class SetDelta:
    """How an AddressSet differs from the one the same compiler made before (``base``): the
    members that came and went, so a renderer updates a 10,000-member set in O(change).
    Not part of the set's value (equality ignores it). The compiler clears ``base`` when it
    makes the next set, so deltas never chain; a renderer uses a delta only when ``base`` is
    the set it rendered last, and otherwise diffs the members itself."""

    __slots__ = ("added", "base", "removed")

    def __init__(self, base: AddressSet | None, added: tuple[SetMember, ...],
                 removed: tuple[SetMember, ...]) -> None:
        self.base, self.added, self.removed = base, added, removed


@dataclass(frozen=True, slots=True)
class AddressSet:
    """Addresses of every port in a security group, for one family."""

    id: str
    family: Family
    group_id: str
    group_name: str
    members: tuple[SetMember, ...]
    delta: SetDelta | None = field(default=None, compare=False, repr=False)

    def cidrs(self) -> tuple[IPNetwork, ...]:
        """Distinct member networks, sorted: what a backend loads into the kernel."""
        return tuple(sorted({m.cidr for m in self.members},
                            key=lambda n: (n.network_address, n.prefixlen)))


@dataclass(frozen=True, slots=True)
class PortPlan:
    """Everything about one port that a backend needs to filter it."""

    id: str
    name: str
    device: str  # the host-side interface (tap) of the port
    bridge: str  # the host bridge of the port's network
    mac: str
    network_id: str
    zone: int  # conntrack zone (one per network)
    filtered: bool  # False when port security is disabled
    stateful: bool
    addresses: tuple[IPNetwork, ...]  # fixed IPs as /32 or /128
    spoof: tuple[SpoofEntry, ...]
    ingress: tuple[Step, ...]
    egress: tuple[Step, ...]
    groups: tuple[str, ...]  # security group ids, in the port's order

    def steps(self, direction: Direction) -> tuple[Step, ...]:
        return self.ingress if direction == "ingress" else self.egress


@dataclass(frozen=True)
class HostPlan:
    """The compiled policy for one host (or for every port when ``host`` is None)."""

    host: str | None
    ports: tuple[PortPlan, ...]
    rulesets: Mapping[str, RuleSet] = field(default_factory=dict)
    address_sets: Mapping[str, AddressSet] = field(default_factory=dict)
    #: Routers by id (:mod:`portwall.ir.l3`): NAT, routes and FWaaS; empty without routers.
    routers: Mapping[str, RouterPlan] = field(default_factory=dict)

    def port(self, ref: str) -> PortPlan:
        """A port by id, name or device."""
        for p in self.ports:
            if ref in (p.id, p.name, p.device):
                return p
        raise KeyError(ref)

    def rule_count(self) -> int:
        """IR rules: port steps + shared rule-set rules (set members are not rules)."""
        return sum(len(p.ingress) + len(p.egress) for p in self.ports) + sum(
            len(r.rules) for r in self.rulesets.values()
        )

    def set_member_count(self) -> int:
        return sum(len(s.members) for s in self.address_sets.values())
