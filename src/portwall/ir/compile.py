"""Stage 2 of the spine: model -> per-host IR plan, with Neutron's rule order.

Nothing here knows about iptables, nftables or OpenFlow. The order of steps per port is the
order of Neutron's iptables driver (``neutron-semantics.md`` section 1), so every backend and
the evaluator inherit the same semantics.
"""

from __future__ import annotations

import hashlib
import ipaddress
import socket
from collections.abc import Iterable

from portwall.ir.types import (
    Action,
    CtState,
    Family,
    HostPlan,
    IPNetwork,
    Jump,
    Match,
    Origin,
    OriginKind,
    PortRange,
    Rule,
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


_FE80 = int(ipaddress.IPv6Address("fe80::"))


def link_local(mac: str) -> ipaddress.IPv6Network:
    """The EUI-64 IPv6 link-local address of a MAC, as a /128."""
    m = int(mac.replace(":", ""), 16) ^ (0x02 << 40)
    iid = (m >> 24) << 40 | 0xFFFE << 24 | (m & 0xFFFFFF)
    return ipaddress.IPv6Network(_FE80 | iid)


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


def _fixed_net(text: str) -> IPNetwork:
    """A fixed IP (already validated by the model) as a host network, parsed in C
    (``inet_pton``: a third of the time of ``ip_address``); anything odd takes the slow path."""
    try:
        if ":" in text:
            return ipaddress.IPv6Network(
                int.from_bytes(socket.inet_pton(socket.AF_INET6, text), "big"))
        return ipaddress.IPv4Network(int.from_bytes(socket.inet_pton(socket.AF_INET, text), "big"))
    except OSError:
        return _host_net(ipaddress.ip_address(text))


def _ip_text(net: IPNetwork) -> str:
    """A host network's address as ``str()`` spells it, formatted in C (``inet_ntop``); IPv6
    addresses with IPv4 inside (::/96, ::ffff:0:0/96), which the two spell differently, and
    anything else odd take ``str()``."""
    n = int(net.network_address)
    if net.version == 4:
        return socket.inet_ntop(socket.AF_INET, n.to_bytes(4, "big"))
    if (n >> 32) in (0, 0xFFFF):
        return str(net.network_address)
    return socket.inet_ntop(socket.AF_INET6, n.to_bytes(16, "big"))


def _port_nets(port: Port) -> tuple[tuple[IPNetwork, ...], tuple[IPNetwork, ...]]:
    """The port's fixed IPs (as host networks) and address-pair networks, parsed once."""
    return (tuple(_fixed_net(f.ip_address) for f in port.fixed_ips if f.ip_address),
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
        a = _ip_text(net)
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
            f"IPv6 link-local {_ip_text(ll)} of MAC {m}")))
    return tuple(out)


_P67, _P68, _P546, _P547 = (PortRange(p, p) for p in (67, 68, 546, 547))


def _port_steps(port: Port, jumps_in: list[Jump], jumps_out: list[Jump], stateful: bool,
                addresses: tuple[IPNetwork, ...]) -> tuple[tuple[Step, ...], tuple[Step, ...]]:
    ingress: list[Step] = [*_IN_ND]
    if stateful:
        ingress += [_CT_EST[4], _CT_EST[6]]
    for a in addresses:
        if a.version == 4:
            t = _ip_text(a)
            ingress.append(Rule(
                f"prov-dhcp-reply-{port.id}-{t}",
                Match(family=4, protocol=UDP, dst=a, sport=_P67, dport=_P68),
                Action.ALLOW,
                Origin(OriginKind.PROVIDER, "port", port.id, port.name,
                       f"DHCP server reply to fixed IP {t} (udp 67 -> 68)")))
    ingress.append(_IN_DHCP_BCAST)
    for a in addresses:
        if a.version == 6:
            t = _ip_text(a)
            ingress.append(Rule(
                f"prov-dhcp6-reply-{port.id}-{t}",
                Match(family=6, protocol=UDP, dst=a, sport=_P547, dport=_P546),
                Action.ALLOW,
                Origin(OriginKind.PROVIDER, "port", port.id, port.name,
                       f"DHCPv6 reply to fixed IP {t} (udp 547 -> 546)")))
    ingress += [_IN_DHCP6_LL, *_IN_RA, *jumps_in]
    if stateful:
        ingress += [_CT_INVALID[4], _CT_INVALID[6]]
    ingress += _FALLBACK

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
    egress += _FALLBACK
    return tuple(ingress), tuple(egress)


#: the final drops: the same for every port and direction, so one pair of objects (the
#: renderers' per-rule caches then hit instead of spelling two rules per port and direction)
_FALLBACK: tuple[Rule, ...] = tuple(
    Rule(f"fallback-v{fam}", Match(family=fam), Action.DROP,
         Origin(OriginKind.FALLBACK, "provider", "fallback", "fallback",
                "no security group rule allows this traffic"))
    for fam in (4, 6))


def compile_plan(model: Model, host: str | None = None) -> HostPlan:
    """The IR for the ports bound to ``host`` (every port when None).

    Remote-group address sets include member ports of every host: a rule on this host may
    allow traffic from a VM elsewhere. One-shot; a long-running process that recompiles
    after each change keeps a :class:`PlanCompiler` instead.
    """
    return PlanCompiler(host).compile(model)


# The incremental compiler lives in its own module; it reads this module's helpers
# through the module object (so tests may count or patch them).
from portwall.ir.incremental import PlanCompiler  # noqa: E402

__all__ = ["PlanCompiler", "compile_plan", "compile_rule", "link_local", "zone_for"]
