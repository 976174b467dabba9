"""The evaluator: what the IR decides for one packet, step by step, as the renderers enforce it.

Every backend renders the same :class:`~portwall.ir.types.HostPlan`; this module walks that
plan for one packet and returns the verdict *and* the steps it took, so that ``trace``,
``audit``, the applier's conntrack clean-up and the differential tests all share a single
definition of "allowed".

Semantics (``docs/architecture.md``):

* steps in order; a :class:`Rule` decides on first match (ALLOW / DROP);
* a :class:`Jump` allows if *any* rule of its :class:`RuleSet` matches, else continues;
* a :class:`SpoofCheck` drops unless (source IP, source MAC) matches a :class:`SpoofEntry`
  of the packet's family (``cidr`` None = any address; MACs compared case-insensitively);
* a :class:`Match` field left None matches anything; ``sport``/``dport`` need a protocol with
  ports, ``icmp_type``/``icmp_code`` need ICMP or ICMPv6; a :class:`SetRef` holds if the
  address lies in a member CIDR of ``plan.address_sets[set_id]``; ``ct`` holds if the
  packet's conntrack state is listed;
* a port with ``filtered=False`` (port security disabled) lets everything through;
* conntrack sees a hop unless both ends are stateless ports, or a stateless port and
  something that is not a port (:func:`hop_tracked`); an untracked packet's state is
  UNTRACKED. Stateless ports have no conntrack steps, so a stateful port talking to a
  stateless one still sees the replies as ESTABLISHED (as Neutron's OVS firewall does);
* layer 2 (:func:`evaluate_arp`, and ``Packet.nd_target`` for neighbour advertisements): a
  filtered port may send ARP only when the ARP sender MAC is the frame's source MAC and
  (MAC, sender IP) is covered by an IPv4 :class:`SpoofEntry`; an ICMPv6 neighbour
  advertisement only when its target is covered by an IPv6 entry of its source MAC.

Remote-group lookups go through a per-plan index built lazily on first use (members bucketed
by prefix length), so a lookup costs one dict probe per distinct prefix length instead of a
scan of every member: a trace stays far below a millisecond at 10,000 ports.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import weakref
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

from portwall.ir.types import (
    Action,
    AddressSet,
    CtState,
    Direction,
    Family,
    HostPlan,
    IPNetwork,
    Jump,
    Match,
    Origin,
    OriginKind,
    PortPlan,
    Rule,
    SetMember,
    SetRef,
    SpoofCheck,
    SpoofEntry,
    Step,
)
from portwall.model.protocols import ICMP_PROTOCOLS, PORT_PROTOCOLS

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
ND_ADVERT = 136  # ICMPv6 neighbour advertisement
Outcome = Literal["allow", "drop", "continue"]

__all__ = [
    "ArpPacket",
    "ArpResult",
    "DirectionResult",
    "HopResult",
    "Outcome",
    "Packet",
    "PlanIndex",
    "SetIndex",
    "StepResult",
    "evaluate_arp",
    "evaluate_direction",
    "evaluate_hop",
    "hop_tracked",
    "match_packet",
    "nd_entry_for",
    "plan_index",
    "spoof_entry_for",
]


# ------------------------------------------------------------------------ packet
@dataclass(frozen=True, slots=True)
class Packet:
    """One IP packet as the filter sees it.

    ``src``/``dst`` may be given as strings; they are parsed once here. ``src_mac`` None means
    "the MAC is not known" (e.g. a conntrack entry): the anti-spoof check then tests the
    source address only. ``ct`` is the conntrack state the packet has when it reaches the
    filter (NEW for the first packet of a connection).
    """

    family: Family
    src: IPAddress
    dst: IPAddress
    protocol: int
    sport: int | None = None
    dport: int | None = None
    icmp_type: int | None = None
    icmp_code: int | None = None
    src_mac: str | None = None
    ct: CtState = CtState.NEW
    #: the target address of an ICMPv6 neighbour advertisement (type 136); None when the
    #: packet is no NA or the target is not known (then it is not checked)
    nd_target: IPAddress | None = None

    def __post_init__(self) -> None:
        src = ipaddress.ip_address(self.src) if isinstance(self.src, str) else self.src
        dst = ipaddress.ip_address(self.dst) if isinstance(self.dst, str) else self.dst
        if src.version != self.family or dst.version != self.family:
            raise ValueError(f"packet {src} -> {dst} is not IPv{self.family}")
        object.__setattr__(self, "src", src)
        object.__setattr__(self, "dst", dst)
        if self.src_mac is not None:
            object.__setattr__(self, "src_mac", self.src_mac.lower())
        if self.nd_target is not None:
            t = self.nd_target
            t = ipaddress.ip_address(t) if isinstance(t, str) else t
            if t.version != 6 or self.protocol != 58 or self.icmp_type != ND_ADVERT:
                raise ValueError("nd_target needs an ICMPv6 neighbour advertisement (type 136)")
            object.__setattr__(self, "nd_target", t)
        if self.protocol not in PORT_PROTOCOLS and (self.sport is not None or self.dport is not None):
            raise ValueError(f"protocol {self.protocol} has no ports")
        if self.protocol not in ICMP_PROTOCOLS and (
                self.icmp_type is not None or self.icmp_code is not None):
            raise ValueError(f"protocol {self.protocol} has no ICMP type/code")

    def describe(self) -> str:
        """A one-line human description, e.g. ``tcp 10.0.1.100:40000 -> 10.0.2.101:22``."""
        from portwall.model.protocols import protocol_name

        name = protocol_name(self.protocol)
        if self.protocol in PORT_PROTOCOLS:
            sp = f":{self.sport}" if self.sport is not None else ""
            dp = f":{self.dport}" if self.dport is not None else ""
            return f"{name} {self.src}{sp} -> {self.dst}{dp} ({self.ct})"
        extra = ""
        if self.icmp_type is not None:
            extra = f" type {self.icmp_type}" + (
                f" code {self.icmp_code}" if self.icmp_code is not None else "")
        return f"{name}{extra} {self.src} -> {self.dst} ({self.ct})"


# ------------------------------------------------------------------------ indexes
class SetIndex:
    """Members of one :class:`AddressSet` bucketed by prefix length, for O(#lengths) lookup.

    ``lookup`` returns the most specific member containing an address (so a trace names a
    fixed IP before a wide address pair that also covers it)."""

    __slots__ = ("_bits", "_buckets")

    def __init__(self, aset: AddressSet):
        self._bits = 32 if aset.family == 4 else 128
        buckets: dict[int, dict[int, SetMember]] = {}
        for m in aset.members:
            b = buckets.setdefault(m.cidr.prefixlen, {})
            b.setdefault(int(m.cidr.network_address), m)
        full = (1 << self._bits) - 1
        self._buckets = [
            (full ^ ((1 << (self._bits - plen)) - 1), b)
            for plen, b in sorted(buckets.items(), reverse=True)
        ]

    def lookup(self, addr: int) -> SetMember | None:
        for mask, bucket in self._buckets:
            m = bucket.get(addr & mask)
            if m is not None:
                return m
        return None


class PlanIndex:
    """Lazily built lookups over one plan: address sets, ports by id and by fixed IP."""

    def __init__(self, plan: HostPlan):
        self.plan = plan
        self._sets: dict[str, SetIndex] = {}
        self._by_addr: dict[tuple[int, IPAddress], list[PortPlan]] | None = None
        self._by_id: dict[str, PortPlan] | None = None

    def set_index(self, set_id: str) -> SetIndex | None:
        idx = self._sets.get(set_id)
        if idx is None:
            aset = self.plan.address_sets.get(set_id)
            if aset is None:
                return None  # a set nobody references compiled away: matches nothing
            idx = self._sets[set_id] = SetIndex(aset)
        return idx

    def port(self, ref: str) -> PortPlan | None:
        """A port by id, name or device (None if unknown)."""
        if self._by_id is None:
            by: dict[str, PortPlan] = {}
            for p in self.plan.ports:
                for k in (p.device, p.name, p.id):  # id wins over a colliding name
                    by[k] = p
            self._by_id = by
        return self._by_id.get(ref)

    def ports_with_address(self, addr: IPAddress | str, zone: int | None = None) -> list[PortPlan]:
        """Ports whose *fixed IP* is ``addr`` (in conntrack ``zone`` if given)."""
        if self._by_addr is None:
            by: dict[tuple[int, IPAddress], list[PortPlan]] = {}
            for p in self.plan.ports:
                for net in p.addresses:
                    by.setdefault((p.zone, net.network_address), []).append(p)
                    by.setdefault((-1, net.network_address), []).append(p)
            self._by_addr = by
        a = ipaddress.ip_address(addr) if isinstance(addr, str) else addr
        return list(self._by_addr.get((-1 if zone is None else zone, a), ()))


_INDEXES: dict[int, PlanIndex] = {}


def plan_index(plan: HostPlan) -> PlanIndex:
    """The (cached) index of ``plan``; dropped when the plan is garbage-collected.

    Keyed by identity because a HostPlan holds dicts and so is not hashable."""
    key = id(plan)
    idx = _INDEXES.get(key)
    if idx is None or idx.plan is not plan:
        idx = _INDEXES[key] = PlanIndex(plan)
        weakref.finalize(plan, _INDEXES.pop, key, None)
    return idx


# ------------------------------------------------------------------------ matching
_NO_MEMBER: SetMember | None = None


def _addr_match(want: IPNetwork | SetRef, addr: IPAddress, idx: PlanIndex
                ) -> tuple[bool, SetMember | None]:
    if isinstance(want, SetRef):
        sidx = idx.set_index(want.set_id)
        m = None if sidx is None else sidx.lookup(int(addr))
        return m is not None, m
    return addr in want, None


def match_packet(m: Match, pkt: Packet, idx: PlanIndex) -> tuple[bool, SetMember | None]:
    """Does ``m`` hold for ``pkt``? Also returns the remote-group member that matched, if a
    :class:`SetRef` took part (the address and the port that contributed it)."""
    if m.family != pkt.family:
        return False, None
    if m.protocol is not None and m.protocol != pkt.protocol:
        return False, None
    if m.ct is not None and pkt.ct not in m.ct:
        return False, None
    if m.sport is not None and (pkt.protocol not in PORT_PROTOCOLS or pkt.sport not in m.sport):
        return False, None
    if m.dport is not None and (pkt.protocol not in PORT_PROTOCOLS or pkt.dport not in m.dport):
        return False, None
    if m.icmp_type is not None and (pkt.protocol not in ICMP_PROTOCOLS
                                    or pkt.icmp_type != m.icmp_type):
        return False, None
    if m.icmp_code is not None and (pkt.protocol not in ICMP_PROTOCOLS
                                    or pkt.icmp_code != m.icmp_code):
        return False, None
    if m.src_mac is not None and (pkt.src_mac is None or pkt.src_mac != m.src_mac.lower()):
        return False, None
    member = _NO_MEMBER
    if m.src is not None:
        ok, member = _addr_match(m.src, pkt.src, idx)
        if not ok:
            return False, None
    if m.dst is not None:
        ok, dmember = _addr_match(m.dst, pkt.dst, idx)
        if not ok:
            return False, None
        member = member or dmember
    return True, member


def spoof_entry_for(port: PortPlan, pkt: Packet) -> SpoofEntry | None:
    """The first anti-spoof entry that lets ``pkt`` leave ``port``, or None."""
    for e in port.spoof:
        if e.family != pkt.family:
            continue
        if e.cidr is not None and pkt.src not in e.cidr:
            continue
        if pkt.src_mac is not None and e.mac.lower() != pkt.src_mac:
            continue
        return e
    return None


def nd_entry_for(port: PortPlan, target: IPAddress, src_mac: str | None) -> SpoofEntry | None:
    """The IPv6 anti-spoof entry that lets ``port`` advertise ``target`` from ``src_mac``
    (any of its MACs when None), or None."""
    for e in port.spoof:
        if e.family != 6 or (e.cidr is not None and target not in e.cidr):
            continue
        if src_mac is not None and e.mac.lower() != src_mac:
            continue
        return e
    return None


def _untracked_end(port: PortPlan | None) -> bool:
    return port is None or (port.filtered and not port.stateful)


def hop_tracked(src: PortPlan | None, dst: PortPlan | None) -> bool:
    """Does conntrack see a packet from ``src`` to ``dst`` (None: not a port)? Yes unless
    both ends are stateless ports, or one is a stateless port and the other no port."""
    stateless = any(p is not None and p.filtered and not p.stateful for p in (src, dst))
    return not (stateless and _untracked_end(src) and _untracked_end(dst))


# ------------------------------------------------------------------------ results
@dataclass(frozen=True, slots=True)
class StepResult:
    """One step walked: what it was, what it did, and why.

    ``rule`` is the rule that matched (the step itself, or the rule inside a jumped-to rule
    set); ``member`` the remote-group member that made it match; ``spoof_entry`` the
    anti-spoof entry that let the packet pass a :class:`SpoofCheck`."""

    step: Step
    outcome: Outcome
    rule: Rule | None = None
    member: SetMember | None = None
    spoof_entry: SpoofEntry | None = None


@dataclass(frozen=True, slots=True)
class DirectionResult:
    """The verdict of one port's chain in one direction.

    ``decided_by`` is the rule (or the :class:`SpoofCheck`) that ended the walk; None only for
    an unfiltered port. ``origin`` always names the resource responsible. ``via`` is the
    group :class:`Jump` when a security-group rule allowed the packet."""

    port: PortPlan
    direction: Direction
    allowed: bool
    decided_by: Rule | SpoofCheck | None
    origin: Origin
    steps: tuple[StepResult, ...] = ()
    via: Jump | None = None
    member: SetMember | None = None
    spoof_entry: SpoofEntry | None = None
    spoof_checked: bool = False  # a SpoofCheck was walked (egress of a filtered port)
    #: a neighbour advertisement for an address the port does not own was dropped
    nd_target_denied: bool = False


@dataclass(frozen=True, slots=True)
class HopResult:
    """A packet between two ports on one L2 segment: sender's egress then receiver's ingress.

    Either side may be None (not a portwall port: nothing to filter there)."""

    packet: Packet
    egress: DirectionResult | None
    ingress: DirectionResult | None
    allowed: bool = field(init=False)

    def __post_init__(self) -> None:
        ok = all(r is None or r.allowed for r in (self.egress, self.ingress))
        object.__setattr__(self, "allowed", ok)

    @property
    def denied_by(self) -> DirectionResult | None:
        """The direction that dropped the packet (egress first), or None if allowed."""
        for r in (self.egress, self.ingress):
            if r is not None and not r.allowed:
                return r
        return None


# ------------------------------------------------------------------------ evaluation
def _unfiltered(port: PortPlan, direction: Direction) -> DirectionResult:
    origin = Origin(OriginKind.UNFILTERED, "port", port.id, port.name,
                    "port security is disabled: the port is not filtered")
    return DirectionResult(port, direction, True, None, origin)


def _walk(steps: Iterable[Step], port: PortPlan, direction: Direction, pkt: Packet,
          idx: PlanIndex) -> DirectionResult:
    walked: list[StepResult] = []
    spoof_entry: SpoofEntry | None = None
    spoof_checked = False
    for step in steps:
        if isinstance(step, Rule):
            ok, member = match_packet(step.match, pkt, idx)
            if not ok:
                walked.append(StepResult(step, "continue"))
                continue
            allowed = step.action is Action.ALLOW
            walked.append(StepResult(step, "allow" if allowed else "drop", step, member))
            return DirectionResult(port, direction, allowed, step, step.origin, tuple(walked),
                                   None, member, spoof_entry, spoof_checked)
        if isinstance(step, Jump):
            rs = idx.plan.rulesets.get(step.ruleset_id)
            for rule in rs.rules if rs is not None else ():
                ok, member = match_packet(rule.match, pkt, idx)
                if ok:
                    walked.append(StepResult(step, "allow", rule, member))
                    return DirectionResult(port, direction, True, rule, rule.origin,
                                           tuple(walked), step, member, spoof_entry,
                                           spoof_checked)
            walked.append(StepResult(step, "continue"))
            continue
        # SpoofCheck
        spoof_checked = True
        spoof_entry = spoof_entry_for(port, pkt)
        if spoof_entry is None:
            walked.append(StepResult(step, "drop"))
            return DirectionResult(port, direction, False, step, step.origin, tuple(walked),
                                   None, None, None, True)
        if pkt.nd_target is not None and nd_entry_for(port, pkt.nd_target, pkt.src_mac) is None:
            walked.append(StepResult(step, "drop", spoof_entry=spoof_entry))
            origin = Origin(OriginKind.SPOOF, "port", port.id, port.name,
                            f"neighbour advertisement for {pkt.nd_target}, which is not an "
                            "address of the port")
            return DirectionResult(port, direction, False, step, origin, tuple(walked),
                                   None, None, spoof_entry, True, True)
        walked.append(StepResult(step, "continue", spoof_entry=spoof_entry))
    # The compiler always ends with fallback drops; a plan without them still drops.
    origin = Origin(OriginKind.FALLBACK, "provider", "fallback", "fallback",
                    "end of chain: nothing allowed this traffic")
    return DirectionResult(port, direction, False, None, origin, tuple(walked), None, None,
                           spoof_entry, spoof_checked)


def evaluate_direction(plan: HostPlan, port: PortPlan, direction: Direction,
                       packet: Packet) -> DirectionResult:
    """Walk ``port``'s ``direction`` chain for ``packet``: the verdict and every step taken."""
    if not port.filtered:
        return _unfiltered(port, direction)
    return _walk(port.steps(direction), port, direction, packet, plan_index(plan))


def evaluate_hop(plan: HostPlan, packet: Packet, src_port: PortPlan | None,
                 dst_port: PortPlan | None) -> HopResult:
    """Egress of ``src_port`` then ingress of ``dst_port``; allowed iff both allow.

    Both sides are always evaluated (even when egress drops) so a trace can report every
    problem on the path at once. A hop conntrack does not see (:func:`hop_tracked`) is
    evaluated as UNTRACKED, whatever state the caller gave."""
    if packet.ct is not CtState.UNTRACKED and not hop_tracked(src_port, dst_port):
        packet = dataclasses.replace(packet, ct=CtState.UNTRACKED)
    eg = None if src_port is None else evaluate_direction(plan, src_port, "egress", packet)
    ing = None if dst_port is None else evaluate_direction(plan, dst_port, "ingress", packet)
    return HopResult(packet, eg, ing)


# ------------------------------------------------------------------------ ARP
@dataclass(frozen=True, slots=True)
class ArpPacket:
    """An ARP frame as the bridge sees it: the frame's source MAC and the ARP sender
    (MAC, IP) it claims (a gratuitous ARP claims the address it announces)."""

    frame_mac: str
    sender_mac: str
    sender_ip: ipaddress.IPv4Address
    target_ip: ipaddress.IPv4Address | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "frame_mac", self.frame_mac.lower())
        object.__setattr__(self, "sender_mac", self.sender_mac.lower())
        for k in ("sender_ip", "target_ip"):
            v = getattr(self, k)
            if isinstance(v, str):
                object.__setattr__(self, k, ipaddress.IPv4Address(v))


@dataclass(frozen=True, slots=True)
class ArpResult:
    """Whether a port may send an ARP frame, the entry that allowed it, and why not."""

    port: PortPlan
    packet: ArpPacket
    allowed: bool
    entry: SpoofEntry | None
    origin: Origin
    reason: str


def evaluate_arp(port: PortPlan, arp: ArpPacket) -> ArpResult:
    """May ``port`` send ``arp``? (The bridge table's ARP guard, step for step.)"""
    if not port.filtered:
        return ArpResult(port, arp, True, None, Origin(
            OriginKind.UNFILTERED, "port", port.id, port.name,
            "port security is disabled: ARP is not checked"), "port security disabled")
    deny = Origin(OriginKind.SPOOF, "port", port.id, port.name, "")
    if arp.sender_mac != arp.frame_mac:
        why = (f"ARP sender MAC {arp.sender_mac} is not the frame's source MAC "
               f"{arp.frame_mac}")
        return ArpResult(port, arp, False, None, dataclasses.replace(deny, detail=why), why)
    for e in port.spoof:
        if e.family == 4 and e.mac.lower() == arp.sender_mac and (
                e.cidr is None or arp.sender_ip in e.cidr):
            return ArpResult(port, arp, True, e, e.origin,
                             f"{arp.sender_ip} {arp.sender_mac} is allowed by {e.origin.detail}")
    why = (f"ARP from {arp.sender_mac} claims {arp.sender_ip}, not in its allowed pairs")
    return ArpResult(port, arp, False, None, dataclasses.replace(deny, detail=why), why)
