"""Stage 2 of the spine: model -> per-host IR plan, with Neutron's rule order.

Nothing here knows about iptables, nftables or OpenFlow. The order of steps per port is the
order of Neutron's iptables driver (``neutron-semantics.md`` section 1), so every backend and
the evaluator inherit the same semantics.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from portwall.bulk import cached_build
from portwall.ir.l3 import RouterCompiler
from portwall.ir.types import (
    Action,
    AddressSet,
    CtState,
    Family,
    HostPlan,
    IPNetwork,
    Jump,
    Match,
    Origin,
    OriginKind,
    PortPlan,
    PortRange,
    Rule,
    RuleSet,
    SetMember,
    SetRef,
    SpoofCheck,
    SpoofEntry,
    Step,
)
from portwall.model.protocols import ICMP_PROTOCOLS, PORT_PROTOCOLS, UDP
from portwall.model.resources import Port, SecurityGroup, SecurityGroupRule
from portwall.model.store import Model

ICMPV6 = 58
V4_BROADCAST = ipaddress.ip_network("255.255.255.255/32")
V4_UNSPEC = ipaddress.ip_network("0.0.0.0/32")
V6_UNSPEC = ipaddress.ip_network("::/128")
V6_MCAST_LINK = ipaddress.ip_network("ff02::/16")
V6_LINK_LOCAL = ipaddress.ip_network("fe80::/64")


# ------------------------------------------------------------------ naming
def tap_name(port_id: str) -> str:
    """Host-side device of a port: Nova/Neutron's ``tap`` + first 11 chars of the id."""
    return "tap" + port_id[:11]


def bridge_name(network_id: str) -> str:
    """Host bridge of a network, Neutron linuxbridge style: ``brq`` + 11 chars."""
    return "brq" + network_id[:11]


def set_id(group_id: str, family: Family) -> str:
    return f"sg-{group_id}-v{family}"


def ruleset_id(group_id: str, direction: str) -> str:
    return f"sg-{group_id}-{direction}"


def link_local(mac: str) -> ipaddress.IPv6Network:
    """The EUI-64 IPv6 link-local address of a MAC, as a /128."""
    b = [int(x, 16) for x in mac.split(":")]
    b[0] ^= 0x02
    eui = [*b[:3], 255, 254, *b[3:]]
    iid = int.from_bytes(bytes(eui), "big")
    return ipaddress.IPv6Network((int(ipaddress.IPv6Address("fe80::")) | iid, 128))


def zone_for(network_ids: Iterable[str]) -> dict[str, int]:
    """A conntrack zone per network, derived from its id so that adding a network never
    renumbers the others (renumbering would orphan tracked connections)."""
    zones: dict[str, int] = {}
    used: set[int] = set()
    for nid in sorted(network_ids):
        z = 1 + int(hashlib.sha1(nid.encode()).hexdigest(), 16) % 65000
        while z in used:
            z = z % 65000 + 1
        used.add(z)
        zones[nid] = z
    return zones


# ------------------------------------------------------- provider (fixed) rules
def _provider(name: str, detail: str, family: Family, action: Action, **match: object) -> Rule:
    origin = Origin(OriginKind.PROVIDER, "provider", name, name, detail)
    return Rule(f"prov-{name}", Match(family=family, **match), action, origin)  # type: ignore[arg-type]


def _icmp6(types: Iterable[int], name: str, detail: str, action: Action, **m: object) -> list[Rule]:
    return [
        _provider(f"{name}-{t}", f"{detail} (ICMPv6 type {t})", 6, action,
                  protocol=ICMPV6, icmp_type=t, **m)
        for t in types
    ]


_EST = frozenset({CtState.ESTABLISHED, CtState.RELATED})
_CT_EST = {
    fam: Rule(f"ct-established-v{fam}", Match(family=fam, ct=_EST), Action.ALLOW,
              Origin(OriginKind.CONNTRACK, "provider", "ct-established", "ct-established",
                     "replies and related packets of allowed connections"))
    for fam in (4, 6)
}
_CT_INVALID = {
    fam: Rule(f"ct-invalid-v{fam}", Match(family=fam, ct=frozenset({CtState.INVALID})),
              Action.DROP,
              Origin(OriginKind.CONNTRACK, "provider", "ct-invalid", "ct-invalid",
                     "packets conntrack considers invalid"))
    for fam in (4, 6)
}

# Ingress, before state: ICMPv6 MLD query, neighbour solicitation/advertisement.
_IN_ND = _icmp6((130, 135, 136), "icmp6-nd-in", "IPv6 neighbour discovery / MLD", Action.ALLOW)
_IN_RA = _icmp6((134,), "icmp6-ra-in", "IPv6 router advertisement", Action.ALLOW)
_IN_DHCP_BCAST = _provider(
    "dhcp-reply-bcast", "DHCP server reply to broadcast (udp 67 -> 68)", 4, Action.ALLOW,
    protocol=UDP, dst=V4_BROADCAST, sport=PortRange(67, 67), dport=PortRange(68, 68))
_IN_DHCP6_LL = _provider(
    "dhcp6-reply-ll", "DHCPv6 server reply to link-local (udp 547 -> 546)", 6, Action.ALLOW,
    protocol=UDP, dst=V6_LINK_LOCAL, sport=PortRange(547, 547), dport=PortRange(546, 546))
# Egress, before the anti-spoof check.
_OUT_DHCP_DISCOVER = _provider(
    "dhcp-discover", "DHCP discover from 0.0.0.0 (udp 68 -> 67)", 4, Action.ALLOW,
    protocol=UDP, src=V4_UNSPEC, dst=V4_BROADCAST, sport=PortRange(68, 68),
    dport=PortRange(67, 67))
_OUT_DAD = _icmp6((131, 135, 143), "icmp6-dad", "IPv6 duplicate address detection from ::",
                  Action.ALLOW, src=V6_UNSPEC, dst=V6_MCAST_LINK)
# Egress, after the anti-spoof check.
_OUT_DHCP_CLIENT = _provider(
    "dhcp-client", "DHCP client request (udp 68 -> 67)", 4, Action.ALLOW,
    protocol=UDP, sport=PortRange(68, 68), dport=PortRange(67, 67))
_OUT_RA_DROP = _icmp6((134,), "icmp6-ra-out", "router advertisement sent by the VM",
                      Action.DROP)
_OUT_ICMP6 = _provider("icmp6-out", "other ICMPv6 from the VM", 6, Action.ALLOW,
                       protocol=ICMPV6)
_OUT_DHCP6_CLIENT = _provider(
    "dhcp6-client", "DHCPv6 client request (udp 546 -> 547)", 6, Action.ALLOW,
    protocol=UDP, sport=PortRange(546, 546), dport=PortRange(547, 547))
_OUT_DHCP_SERVER = _provider(
    "dhcp-server-drop", "DHCP server replies sent by the VM (udp 67 -> 68)", 4, Action.DROP,
    protocol=UDP, sport=PortRange(67, 67), dport=PortRange(68, 68))
_OUT_DHCP6_SERVER = _provider(
    "dhcp6-server-drop", "DHCPv6 server replies sent by the VM (udp 547 -> 546)", 6,
    Action.DROP, protocol=UDP, sport=PortRange(547, 547), dport=PortRange(546, 546))


# ------------------------------------------------------------------ compile
def compile_rule(rule: SecurityGroupRule, group: SecurityGroup) -> Rule:
    """One security-group rule -> one IR allow rule (direction resolved to src/dst)."""
    family: Family = 6 if rule.ethertype == "IPv6" else 4
    proto = rule.protocol_number
    remote: IPNetwork | SetRef | None = None
    if rule.remote_group_id is not None:
        remote = SetRef(set_id(rule.remote_group_id, family))
    elif rule.remote_ip_prefix is not None:
        net = ipaddress.ip_network(rule.remote_ip_prefix)
        remote = None if net.prefixlen == 0 else net  # a /0 prefix is omitted
    sport = dport = None
    icmp_type = icmp_code = None
    if proto in PORT_PROTOCOLS and rule.port_range_min is not None:
        dport = PortRange(rule.port_range_min, rule.port_range_max or rule.port_range_min)
    elif proto in ICMP_PROTOCOLS:
        icmp_type, icmp_code = rule.port_range_min, rule.port_range_max
    ingress = rule.direction == "ingress"
    match = Match(
        family=family,
        protocol=proto,
        src=remote if ingress else None,
        dst=None if ingress else remote,
        sport=sport,
        dport=dport,
        icmp_type=icmp_type,
        icmp_code=icmp_code,
    )
    origin = Origin(OriginKind.SG_RULE, "security_group_rule", rule.id,
                    rule.description or "", f"rule of security group {group.label()}")
    return Rule(f"sgr-{rule.id}", match, Action.ALLOW, origin)


def _host_net(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> IPNetwork:
    """An address as a /32 or /128, built from its integer: ``ip_network(addr)`` would format
    the address as text and parse it again, which dominates compile time at 10,000 ports."""
    if addr.version == 4:
        return ipaddress.IPv4Network(int(addr))
    return ipaddress.IPv6Network(int(addr))


def _port_nets(port: Port) -> tuple[tuple[IPNetwork, ...], tuple[IPNetwork, ...]]:
    """The port's fixed IPs (as host networks) and address-pair networks, parsed once."""
    return (tuple(_host_net(a) for a in port.addresses()),
            tuple(p.network for p in port.allowed_address_pairs))


def _spoof_entries(port: Port, fixed: tuple[IPNetwork, ...],
                   pair_nets: tuple[IPNetwork, ...]) -> tuple[SpoofEntry, ...]:
    """Address pairs first (CIDR as given, their MAC or the port's), then fixed IPs, then
    the IPv6 link-local of every MAC used; a port without fixed IPs gets MAC-only entries."""
    mac = port.mac_address or ""
    out: list[SpoofEntry] = []
    macs: list[str] = []
    for i, (pair, net) in enumerate(zip(port.allowed_address_pairs, pair_nets, strict=True)):
        pmac = pair.mac_address or mac
        out.append(SpoofEntry(net.version, net, pmac, Origin(
            OriginKind.ADDRESS_PAIR, "port", port.id, port.name,
            f"allowed_address_pairs[{i}] {pair.ip_address} {pmac}")))
        if pmac not in macs:
            macs.append(pmac)
    for net in fixed:
        a = net.network_address
        out.append(SpoofEntry(net.version, net, mac, Origin(
            OriginKind.FIXED_IP, "port", port.id, port.name, f"fixed IP {a} {mac}")))
    if mac not in macs:
        macs.append(mac)
    if not fixed:
        for fam in (4, 6):
            out.append(SpoofEntry(fam, None, mac, Origin(
                OriginKind.MAC_ONLY, "port", port.id, port.name,
                f"port has no fixed IP: any IPv{fam} source with MAC {mac}")))
    for m in macs:
        ll = link_local(m)
        out.append(SpoofEntry(6, ll, m, Origin(
            OriginKind.LINK_LOCAL, "port", port.id, port.name,
            f"IPv6 link-local {ll.network_address} of MAC {m}")))
    return tuple(out)


def _port_steps(port: Port, jumps_in: list[Jump], jumps_out: list[Jump], stateful: bool,
                addresses: tuple[IPNetwork, ...]) -> tuple[tuple[Step, ...], tuple[Step, ...]]:
    ingress: list[Step] = [*_IN_ND]
    if stateful:
        ingress += [_CT_EST[4], _CT_EST[6]]
    dhcp_origin = Origin(OriginKind.PROVIDER, "port", port.id, port.name, "")
    for a in addresses:
        if a.version == 4:
            ingress.append(Rule(
                f"prov-dhcp-reply-{port.id}-{a.network_address}",
                Match(family=4, protocol=UDP, dst=a, sport=PortRange(67, 67),
                      dport=PortRange(68, 68)),
                Action.ALLOW,
                Origin(dhcp_origin.kind, "port", port.id, port.name,
                       f"DHCP server reply to fixed IP {a.network_address} (udp 67 -> 68)")))
    ingress.append(_IN_DHCP_BCAST)
    for a in addresses:
        if a.version == 6:
            ingress.append(Rule(
                f"prov-dhcp6-reply-{port.id}-{a.network_address}",
                Match(family=6, protocol=UDP, dst=a, sport=PortRange(547, 547),
                      dport=PortRange(546, 546)),
                Action.ALLOW,
                Origin(dhcp_origin.kind, "port", port.id, port.name,
                       f"DHCPv6 reply to fixed IP {a.network_address} (udp 547 -> 546)")))
    ingress += [_IN_DHCP6_LL, *_IN_RA, *jumps_in]
    if stateful:
        ingress += [_CT_INVALID[4], _CT_INVALID[6]]
    ingress += _fallback(port, "ingress")

    egress: list[Step] = [_OUT_DHCP_DISCOVER, *_OUT_DAD,
                          SpoofCheck(Origin(OriginKind.SPOOF, "port", port.id, port.name,
                                            "source IP/MAC not among the port's fixed IPs or"
                                            " allowed address pairs")),
                          _OUT_DHCP_CLIENT, *_OUT_RA_DROP, _OUT_ICMP6, _OUT_DHCP6_CLIENT,
                          _OUT_DHCP_SERVER, _OUT_DHCP6_SERVER]
    if stateful:
        egress += [_CT_EST[4], _CT_EST[6]]
    egress += jumps_out
    if stateful:
        egress += [_CT_INVALID[4], _CT_INVALID[6]]
    egress += _fallback(port, "egress")
    return tuple(ingress), tuple(egress)


def _fallback(port: Port, direction: str) -> list[Rule]:
    return [
        Rule(f"fallback-v{fam}", Match(family=fam), Action.DROP,
             Origin(OriginKind.FALLBACK, "provider", "fallback", "fallback",
                    "no security group rule allows this traffic"))
        for fam in (4, 6)
    ]


def compile_plan(model: Model, host: str | None = None) -> HostPlan:
    """The IR for the ports bound to ``host`` (every port when None).

    Remote-group address sets include member ports of every host: a rule on this host may
    allow traffic from a VM elsewhere. One-shot; a long-running process that recompiles
    after each change keeps a :class:`PlanCompiler` instead.
    """
    return PlanCompiler(host).compile(model)


# ------------------------------------------------------------ incremental compile
#
# What each piece of the plan depends on, and so when a cached piece is reused:
#
# * a port's parsed addresses and address-set contributions: the Port object alone;
# * a PortPlan: the Port object, its network's conntrack zone, and the name and stateful
#   flag of each of its groups (the Jumps name the group; ``stateful`` decides the conntrack
#   steps). Nothing else: rules live in the shared RuleSets;
# * a RuleSet: its group's name and stateful flag and the group's rule objects of its
#   direction;
# * an AddressSet: the contributions of the ports in the group, and the group's name.
#
# The model replaces a Port or SecurityGroup object when it is updated and never mutates a
# rule once it is in a group (rules are added to / removed from the group's list), so object
# identity is an exact O(1) fingerprint. Every cache entry keeps the objects its key was made
# from alive, so an id() can never be reused by another object while it is part of a key.


@dataclass(slots=True)
class _PortEntry:
    """What was derived from one Port object, which it keeps (``entry.port is port``)."""

    port: Port
    on_host: bool  # gets a PortPlan: not a network-owned port, and bound to the host
    fixed: tuple[IPNetwork, ...]
    pair_nets: tuple[IPNetwork, ...]
    contributes: dict[str, tuple[SetMember, ...]]  # address-set id -> this port's members
    plan: PortPlan | None = None
    # (rule-set id, group id, direction) of every Jump of the plan, ingress first: the
    # order in which a fresh compile meets (and so inserts) rule sets.
    rulesets: tuple[tuple[str, str, str], ...] = ()


@dataclass(slots=True)
class _RuleSetEntry:
    key: tuple[object, ...]  # group name, stateful, ids of its rule objects (this direction)
    rules_alive: tuple[SecurityGroupRule, ...]  # keeps the ids in ``key`` valid
    ruleset: RuleSet
    sets: frozenset[str]  # address sets its rules match on


class PlanCompiler:
    """Compiles a model into a :class:`HostPlan` again and again, redoing only what changed.

    Keep one per host in a long-running process and call :meth:`compile` after every model
    change: the cost is O(ports) identity checks plus the work for what actually changed
    (one port's steps, one group's rules, one address set) instead of recompiling every
    port. The result is always equal to a fresh :func:`compile_plan` of the same model, and
    unchanged parts are the *same objects* as in the previous plan, so the renderer
    (:class:`portwall.backends.iptables.render.IptablesRenderer`) can cache by identity too.
    """

    def __init__(self, host: str | None = None) -> None:
        self.host = host
        self._reset()

    def _reset(self) -> None:
        self._ports: dict[str, _PortEntry] = {}
        # Address-set id -> port id -> that port's members; and the sets to rebuild.
        self._members: dict[str, dict[str, tuple[SetMember, ...]]] = {}
        self._dirty_sets: set[str] = set()
        self._sets: dict[str, AddressSet] = {}
        self._rulesets: dict[str, _RuleSetEntry] = {}
        self._jumps: dict[str, Jump] = {}
        self._group_sig: dict[str, tuple[str, bool]] = {}  # group id -> (name, stateful)
        self._zones_key: tuple[str, ...] | None = None
        self._zones: dict[str, int] = {}
        self._order_key: tuple[str, ...] | None = None
        self._order: list[str] = []
        self._routers = RouterCompiler()

    def compile(self, model: Model) -> HostPlan:
        """The plan for the model as it is now (see :func:`compile_plan`)."""
        with cached_build(self._reset):
            return self._compile(model)

    # ----------------------------------------------------------------- ports
    def _sync_ports(self, model: Model) -> None:
        """Bring the per-port entries and the address-set index up to date with the model."""
        entries = self._ports
        for pid, port in model.ports.items():
            entry = entries.get(pid)
            if entry is None or entry.port is not port:
                self._forget_port(pid)
                entry = entries[pid] = self._port_entry(port)
                for sid, mem in entry.contributes.items():
                    self._members.setdefault(sid, {})[pid] = mem
                    self._dirty_sets.add(sid)
        if len(entries) != len(model.ports):
            for pid in [p for p in entries if p not in model.ports]:
                self._forget_port(pid)

    def _forget_port(self, pid: str) -> None:
        entry = self._ports.pop(pid, None)
        if entry is not None:
            for sid in entry.contributes:
                del self._members[sid][pid]
                self._dirty_sets.add(sid)

    def _port_entry(self, port: Port) -> _PortEntry:
        fixed, pair_nets = _port_nets(port)
        contributes: dict[str, tuple[SetMember, ...]] = {}
        if port.port_security_enabled:
            contrib: list[tuple[IPNetwork, OriginKind]] = [
                (n, OriginKind.FIXED_IP) for n in fixed
            ] + [(n, OriginKind.ADDRESS_PAIR) for n in pair_nets]
            for gid in port.security_groups or ():
                for net, kind in contrib:
                    sid = set_id(gid, net.version)
                    contributes[sid] = (*contributes.get(sid, ()),
                                        SetMember(net, port.id, port.name, kind))
        on_host = not port.is_trusted and self.host in (None, port.binding_host_id)
        return _PortEntry(port, on_host, fixed, pair_nets, contributes)

    def _port_order(self, model: Model) -> list[str]:
        """Port ids sorted, re-sorted only when the set of ports changed."""
        key = tuple(model.ports)
        if key != self._order_key:
            self._order_key, self._order = key, sorted(key)
        return self._order

    def _zone_map(self, model: Model) -> tuple[dict[str, int], bool]:
        """The zone of every network, and whether it may differ from the last compile."""
        key = tuple(model.networks)
        if key == self._zones_key:
            return self._zones, False
        self._zones_key, self._zones = key, zone_for(key)
        return self._zones, True

    def _changed_groups(self, groups: Mapping[str, SecurityGroup]) -> set[str]:
        """Groups whose name or stateful flag (what a PortPlan reads) changed, or that
        appeared or went away, since the last compile."""
        sig = {gid: (g.name, g.stateful) for gid, g in groups.items()}
        old, self._group_sig = self._group_sig, sig
        if sig == old:
            return set()
        return {gid for gid in sig.keys() | old.keys() if sig.get(gid) != old.get(gid)}

    # ------------------------------------------------------------- rule sets
    def _ruleset(self, groups: Mapping[str, SecurityGroup], rsid: str, gid: str,
                 direction: str) -> _RuleSetEntry:
        g = groups[gid]
        rules = tuple(r for r in g.security_group_rules if r.direction == direction)
        key = (g.name, g.stateful, tuple(map(id, rules)))
        cached = self._rulesets.get(rsid)
        if cached is not None and cached.key == key:
            return cached
        compiled = tuple(compile_rule(r, g) for r in rules)
        refs = frozenset(a.set_id for r in compiled for a in (r.match.src, r.match.dst)
                         if isinstance(a, SetRef))
        ruleset = RuleSet(rsid, gid, g.name, direction, g.stateful, compiled)  # type: ignore[arg-type]
        entry = self._rulesets[rsid] = _RuleSetEntry(key, rules, ruleset, refs)
        return entry

    def _jump(self, group: SecurityGroup, rsid: str) -> Jump:
        """One Jump per rule set, shared by its ports (as a fresh compile shares it)."""
        j = self._jumps.get(rsid)
        if j is None or j.origin.resource_name != group.name:
            j = self._jumps[rsid] = Jump(rsid, Origin(
                OriginKind.GROUP, "security_group", group.id, group.name,
                f"port is in group {group.label()}"))
        return j

    # ---------------------------------------------------------------- compile
    def _compile(self, model: Model) -> HostPlan:
        groups = model.security_groups
        zones, zones_moved = self._zone_map(model)
        changed_groups = self._changed_groups(groups)
        self._sync_ports(model)

        rulesets: dict[str, RuleSet] = {}  # in first-use order, as a fresh compile builds it
        referenced_sets: set[str] = set()
        plans: list[PortPlan] = []
        for pid in self._port_order(model):
            entry = self._ports[pid]
            if not entry.on_host:
                continue
            plan = entry.plan
            if (plan is None
                    or (changed_groups and not changed_groups.isdisjoint(plan.groups))
                    or (zones_moved and plan.zone != zones[plan.network_id])):
                plan = self._port_plan(entry, groups, zones)
            plans.append(plan)
            for rsid, gid, direction in entry.rulesets:
                if rsid not in rulesets:
                    rs = self._ruleset(groups, rsid, gid, direction)
                    rulesets[rsid] = rs.ruleset
                    referenced_sets |= rs.sets

        address_sets = {sid: self._address_set(sid, groups) for sid in sorted(referenced_sets)}
        # Forget what is no longer in the plan (rebuilt if it comes back); so a set outside
        # the plan needs no dirty flag either.
        self._dirty_sets.clear()
        for sid in [s for s in self._sets if s not in address_sets]:
            del self._sets[sid]
        for rsid in [r for r in self._rulesets if r not in rulesets]:
            del self._rulesets[rsid]
            self._jumps.pop(rsid, None)
        return HostPlan(host=self.host, ports=tuple(plans), rulesets=rulesets,
                        address_sets=address_sets, routers=self._routers.compile(model))

    def _port_plan(self, entry: _PortEntry, groups: Mapping[str, SecurityGroup],
                   zones: Mapping[str, int]) -> PortPlan:
        """Compile one port (and remember the plan and the rule sets it jumps to)."""
        port = entry.port
        gids = tuple(port.security_groups or ())
        filtered = bool(port.port_security_enabled)
        stateful = all(groups[g].stateful for g in gids)
        rsids: tuple[tuple[str, str, str], ...] = ()
        if filtered:
            rsids = tuple((ruleset_id(g, d), g, d) for d in ("ingress", "egress") for g in gids)
            jumps = {d: [self._jump(groups[g], rsid) for rsid, g, dd in rsids if dd == d]
                     for d in ("ingress", "egress")}
            ingress, egress = _port_steps(port, jumps["ingress"], jumps["egress"], stateful,
                                          entry.fixed)
            spoof = _spoof_entries(port, entry.fixed, entry.pair_nets)
        else:
            ingress = egress = ()
            spoof = ()
        entry.plan = PortPlan(
            id=port.id, name=port.name, device=tap_name(port.id),
            bridge=bridge_name(port.network_id), mac=port.mac_address or "",
            network_id=port.network_id, zone=zones[port.network_id], filtered=filtered,
            stateful=stateful, addresses=entry.fixed, spoof=spoof, ingress=ingress,
            egress=egress, groups=gids,
        )
        entry.rulesets = rsids
        return entry.plan

    def _address_set(self, sid: str, groups: Mapping[str, SecurityGroup]) -> AddressSet:
        """The set, rebuilt only if a member port changed since the last compile."""
        gid, fam = sid[3:-3], int(sid[-1])
        name = groups[gid].name
        cached = self._sets.get(sid)
        if cached is not None and sid not in self._dirty_sets and cached.group_name == name:
            return cached
        # Sorted as ipaddress would (one family per set, so the integer orders the same).
        mem = tuple(sorted((m for ms in self._members.get(sid, {}).values() for m in ms),
                           key=lambda m: (int(m.cidr.network_address), m.cidr.prefixlen,
                                          m.port_id)))
        aset = self._sets[sid] = AddressSet(sid, fam, gid, name, mem)  # type: ignore[arg-type]
        return aset
