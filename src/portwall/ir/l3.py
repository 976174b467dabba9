"""L3 in the IR: Neutron routers (interfaces, gateway, routes), NAT and FWaaS v2 groups.

Like the port plans, these nodes say *what* a router does, with no backend syntax, so the
evaluator (:mod:`portwall.analyze.l3eval`), trace, audit and every renderer read one
definition (``neutron-semantics.md`` sections 4 and 5):

* a :class:`RouterPlan` per router: its internal interfaces (``qr-``, one per subnet), its
  gateway (``qg-``) on an external network, its connected and default routes;
* NAT: SNAT to the gateway address when ``enable_snat``; per floating IP a DNAT (F -> P)
  and a float-SNAT (P -> F) that runs before the default SNAT; the metadata redirect of
  169.254.169.254:80 arriving on an internal interface to the router's own responder;
* FWaaS v2: a :class:`FirewallPlan` per firewall group bound to router interfaces, with an
  ordered rule list per direction (``ingress`` = towards the tenant network, leaving by the
  interface; ``egress`` = from it). INVALID is dropped, ESTABLISHED/RELATED accepted, the
  enabled rules decide in order, anything else meets the default deny. A direction without
  a policy is default deny (as neutron-fwaas' driver: no rule list, only the drop).

Every node carries an :class:`Origin` so a verdict names the router, floating IP, firewall
group or firewall rule responsible.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Literal

from portwall.ir.types import Family, IPNetwork, Match, Origin, OriginKind, PortRange
from portwall.model.protocols import protocol_number

if TYPE_CHECKING:
    from portwall.model.resources import FirewallRule, FloatingIP, Port, Router
    from portwall.model.store import Model

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
METADATA_IP = ipaddress.IPv4Address("169.254.169.254")
METADATA_PORT = 80
METADATA_LOCAL_PORT = 9697  # where Neutron's metadata proxy listens in the router


class FwAction(StrEnum):
    ALLOW = "allow"
    DENY = "deny"  # dropped silently
    REJECT = "reject"  # answered with ICMP(v6) port unreachable


# Origins of router parts; plain strings on Origin.kind keep OriginKind (shared) unchanged.
ROUTER = "router"
FLOATING_IP = "floatingip"
FIREWALL_RULE = "firewall_rule"
FIREWALL_GROUP = "firewall_group"


def qr_name(port_id: str) -> str:
    """A router's internal interface, Neutron style: ``qr-`` + 11 chars of the port id."""
    return "qr-" + port_id[:11]


def qg_name(port_id: str) -> str:
    """A router's gateway interface: ``qg-`` + 11 chars of the port id."""
    return "qg-" + port_id[:11]


def router_netns(router_id: str) -> str:
    """Neutron names a router's namespace ``qrouter-<id>``; 15 chars fit interface limits."""
    return "qrouter-" + router_id[:8]


@dataclass(frozen=True, slots=True)
class RouterInterface:
    """One router port: an internal subnet (``qr-``) or the external gateway (``qg-``)."""

    port_id: str
    port_name: str
    device: str
    network_id: str
    bridge: str
    mac: str
    addresses: tuple[ipaddress.IPv4Interface | ipaddress.IPv6Interface, ...]
    gateway: bool  # True: the qg- interface on the external network
    origin: Origin

    def networks(self) -> tuple[IPNetwork, ...]:
        return tuple(a.network for a in self.addresses)

    def address(self, family: Family) -> IPAddress | None:
        return next((a.ip for a in self.addresses if a.version == family), None)


@dataclass(frozen=True, slots=True)
class Route:
    """A route of the router: connected (``via`` None), the default through the external
    subnet's gateway, or an extra route (``extra``: the router's ``routes`` attribute)."""

    destination: IPNetwork
    device: str
    via: IPAddress | None
    origin: Origin
    extra: bool = False


@dataclass(frozen=True, slots=True)
class FloatingIPNat:
    """DNAT floating -> fixed on the way in, float-SNAT fixed -> floating on the way out."""

    id: str
    floating: ipaddress.IPv4Address
    fixed: ipaddress.IPv4Address
    port_id: str
    port_name: str
    origin: Origin


@dataclass(frozen=True, slots=True)
class Snat:
    """Default SNAT of traffic leaving by the gateway (``enable_snat``)."""

    to: IPAddress
    device: str
    origin: Origin


@dataclass(frozen=True, slots=True)
class MetadataRedirect:
    """169.254.169.254:80 from an internal interface -> the router's own responder."""

    address: ipaddress.IPv4Address
    port: int
    local_port: int
    origin: Origin


@dataclass(frozen=True, slots=True)
class FwRule:
    """One enabled firewall rule, in policy order."""

    rid: str
    match: Match
    action: FwAction
    origin: Origin


@dataclass(frozen=True, slots=True)
class FirewallPlan:
    """A firewall group on router interfaces: ordered rules per direction, default deny.

    ``ingress`` / ``egress`` None means the group has no policy for that direction (default
    deny); ``enabled`` False (admin_state_up false) means the group does not filter."""

    id: str
    name: str
    enabled: bool
    ingress: tuple[FwRule, ...] | None
    egress: tuple[FwRule, ...] | None
    ports: tuple[str, ...]  # router interface port ids
    origin: Origin

    def rules(self, direction: Literal["ingress", "egress"]) -> tuple[FwRule, ...] | None:
        return self.ingress if direction == "ingress" else self.egress


@dataclass(frozen=True, slots=True)
class RouterPlan:
    """Everything one router does to packets: interfaces, routes, NAT, firewall groups."""

    id: str
    name: str
    netns: str
    interfaces: tuple[RouterInterface, ...]  # internal ones (qr-)
    gateway: RouterInterface | None
    routes: tuple[Route, ...]  # connected, the default via the gateway, then extra routes
    snat: Snat | None
    floating_ips: tuple[FloatingIPNat, ...]
    metadata: MetadataRedirect | None
    firewalls: tuple[FirewallPlan, ...]
    origin: Origin

    def all_interfaces(self) -> tuple[RouterInterface, ...]:
        return self.interfaces + ((self.gateway,) if self.gateway is not None else ())

    def interface(self, ref: str) -> RouterInterface | None:
        """By port id, port name or device."""
        for i in self.all_interfaces():
            if ref in (i.port_id, i.port_name, i.device):
                return i
        return None

    def firewall_of(self, port_id: str) -> FirewallPlan | None:
        for fw in self.firewalls:
            if port_id in fw.ports:
                return fw
        return None


# ------------------------------------------------------------------ compile
def _interface(m: Model, port: Port, gateway: bool, router_label: str) -> RouterInterface:
    from portwall.ir.compile import bridge_name

    addrs: list[ipaddress.IPv4Interface | ipaddress.IPv6Interface] = []
    for f in port.fixed_ips:
        if f.ip_address is None:
            continue
        sub = m.subnets.get(f.subnet_id or "")
        plen = sub.network.prefixlen if sub is not None else (
            32 if ":" not in f.ip_address else 128)
        addrs.append(ipaddress.ip_interface(f"{f.ip_address}/{plen}"))
    dev = qg_name(port.id) if gateway else qr_name(port.id)
    what = "gateway" if gateway else "interface"
    return RouterInterface(
        port.id, port.name, dev, port.network_id, bridge_name(port.network_id),
        port.mac_address or "", tuple(addrs), gateway,
        Origin(OriginKind.PROVIDER, "port", port.id, port.name,
               f"{what} {dev} of router {router_label} ({', '.join(map(str, addrs))})"))


def _ports_arg(text: str | None) -> PortRange | None:
    if text is None:
        return None
    lo, _, hi = text.partition(":")
    return PortRange(int(lo), int(hi or lo))


def compile_fw_rule(rule: FirewallRule) -> FwRule:
    """One FWaaS rule -> one IR rule (ports as ranges, addresses as networks)."""
    fam: Family = rule.ip_version
    proto = None
    if rule.protocol is not None:
        proto = protocol_number(rule.protocol)
        if rule.protocol == "icmp" and fam == 6:
            proto = 58
    match = Match(
        family=fam, protocol=proto,
        src=None if rule.source_ip_address is None else ipaddress.ip_network(
            rule.source_ip_address, strict=False),
        dst=None if rule.destination_ip_address is None else ipaddress.ip_network(
            rule.destination_ip_address, strict=False),
        sport=_ports_arg(rule.source_port), dport=_ports_arg(rule.destination_port))
    origin = Origin(OriginKind.PROVIDER, FIREWALL_RULE, rule.id, rule.name,
                    rule.description or f"firewall rule {rule.label()}")
    return FwRule(f"fwr-{rule.id}", match, FwAction(rule.action), origin)


def _policy_rules(m: Model, policy_id: str | None) -> tuple[FwRule, ...] | None:
    if policy_id is None:
        return None
    pol = m.firewall_policies[policy_id]
    return tuple(compile_fw_rule(m.firewall_rules[r]) for r in pol.firewall_rules
                 if m.firewall_rules[r].enabled)


def compile_firewall(m: Model, group_id: str) -> FirewallPlan:
    g = m.firewall_groups[group_id]
    return FirewallPlan(
        g.id, g.name, g.admin_state_up,
        _policy_rules(m, g.ingress_firewall_policy_id),
        _policy_rules(m, g.egress_firewall_policy_id), tuple(g.ports),
        Origin(OriginKind.PROVIDER, FIREWALL_GROUP, g.id, g.name,
               f"firewall group {g.label()}"))


@dataclass
class _Index:
    """Per-compile lookups so that R routers cost O(ports + fips + R), not O(R x ports)."""

    gw_ports: dict[str, Port]
    fips: dict[str, list[FloatingIP]]
    firewalls: dict[str, FirewallPlan]

    def firewall(self, m: Model, group_id: str) -> FirewallPlan:
        """A group's plan, compiled once per index (only groups on changed routers)."""
        fw = self.firewalls.get(group_id)
        if fw is None:
            fw = self.firewalls[group_id] = compile_firewall(m, group_id)
        return fw


def _index(m: Model) -> _Index:
    gw: dict[str, Port] = {}
    for p in m.ports.values():
        if p.device_owner == "network:router_gateway":
            gw.setdefault(p.device_id, p)
    fips: dict[str, list[FloatingIP]] = {}
    for f in m.floating_ips.values():
        if f.router_id:
            fips.setdefault(f.router_id, []).append(f)
    return _Index(gw, fips, {})  # firewall groups compiled on first use (firewall())


def compile_router(m: Model, router_id: str, index: _Index | None = None) -> RouterPlan:
    """One router's plan from the model (its ports, floating IPs and firewall groups)."""
    ix = index or _index(m)
    r = m.routers[router_id]
    label = r.label()
    rorigin = Origin(OriginKind.PROVIDER, ROUTER, r.id, r.name, f"router {label}")
    internal = tuple(_interface(m, m.ports[p], False, label)
                     for p in m.router_interfaces.get(r.id, []) if p in m.ports)
    gw_port = ix.gw_ports.get(r.id)
    gateway = None if gw_port is None else _interface(m, gw_port, True, label)
    routes: list[Route] = []
    for itf in (*internal, *((gateway,) if gateway else ())):
        for net in itf.networks():
            routes.append(Route(net, itf.device, None, itf.origin))
    snat = None
    if gateway is not None:
        for sub in m.subnets_of(gateway.network_id):
            if sub.gateway_ip:
                via = ipaddress.ip_address(sub.gateway_ip)
                default = ipaddress.ip_network("0.0.0.0/0" if via.version == 4 else "::/0")
                routes.append(Route(default, gateway.device, via, Origin(
                    OriginKind.PROVIDER, ROUTER, r.id, r.name,
                    f"default route of router {label} via {via} (external subnet"
                    f" {sub.label()})")))
        info = r.external_gateway_info
        to = gateway.address(4)
        if info is not None and info.enable_snat and to is not None:
            snat = Snat(to, gateway.device, Origin(
                OriginKind.PROVIDER, ROUTER, r.id, r.name,
                f"router {label} SNATs traffic leaving by its gateway to {to} (enable_snat)"))
    routes += _extra_routes(r, (*internal, *((gateway,) if gateway else ())))
    fips = []
    for f in sorted(ix.fips.get(r.id, ()), key=lambda f: f.floating_ip_address or ""):
        if not f.fixed_ip_address or not f.floating_ip_address:
            continue
        port = m.ports.get(f.port_id or "")
        fips.append(FloatingIPNat(
            f.id, ipaddress.IPv4Address(f.floating_ip_address),
            ipaddress.IPv4Address(f.fixed_ip_address), f.port_id or "",
            port.name if port else "",
            Origin(OriginKind.PROVIDER, FLOATING_IP, f.id, f.name or f.floating_ip_address,
                   f"floating IP {f.floating_ip_address} of {f.fixed_ip_address}"
                   f" (port {port.label() if port else f.port_id})")))
    metadata = None
    if internal:
        metadata = MetadataRedirect(METADATA_IP, METADATA_PORT, METADATA_LOCAL_PORT, Origin(
            OriginKind.PROVIDER, ROUTER, r.id, r.name,
            f"metadata {METADATA_IP}:{METADATA_PORT} answered by router {label}, never"
            " forwarded"))
    mine = {i.port_id for i in internal}
    fws = []
    for gid, g in m.firewall_groups.items():
        if mine.intersection(g.ports):
            fws.append(ix.firewall(m, gid))
    return RouterPlan(r.id, r.name, router_netns(r.id), internal, gateway, tuple(routes), snat,
                      tuple(fips), metadata, tuple(fws), rorigin)


def _extra_routes(r: Router, itfs: tuple[RouterInterface, ...]) -> list[Route]:
    """The router's ``routes`` (extraroute): each leaves by the interface whose subnet holds
    its nexthop (the model refused any other). Like the L3 agent's ``ip route replace``, an
    extra route replaces a connected or default route with the same destination."""
    out = []
    label = r.label()
    for er in r.routes:
        dest = ipaddress.ip_network(er.destination, strict=False)
        hop = ipaddress.ip_address(er.nexthop)
        itf = next((i for i in itfs if any(hop.version == n.version and hop in n
                                           for n in i.networks())), None)
        if itf is None:  # its interface was removed behind the model's back: no route
            continue
        out.append(Route(dest, itf.device, hop, Origin(
            OriginKind.PROVIDER, ROUTER, r.id, r.name,
            f"route {dest} via {hop} (router {label} extra route)"), extra=True))
    return out


def _first(key: tuple[object, ...]) -> str:
    """A floating IP's key sorts by its id (unique; ``key=str`` cost ~1.5 ms per compile)."""
    return str(key[0])


def compile_routers(m: Model) -> dict[str, RouterPlan]:
    """Every router of the model, by id (one-shot; see :class:`RouterCompiler`)."""
    return RouterCompiler().compile(m)


class RouterCompiler:
    """Compiles the routers again and again, redoing only routers whose inputs changed.

    A router's key is made of what its plan reads: the router and port objects (the model
    replaces them on update), its floating IPs' association fields (updated in place) and
    its firewall groups' policies and rules by value. Unchanged routers keep the very same
    RouterPlan object, so renderers can skip them by identity."""

    def __init__(self) -> None:
        self._cache: dict[str, tuple[tuple[object, ...], RouterPlan]] = {}

    def compile(self, m: Model) -> dict[str, RouterPlan]:
        if not m.routers:
            self._cache.clear()
            return {}
        ix: _Index | None = None
        gw: dict[str, Port] = {}
        fips: dict[str, list[tuple[object, ...]]] = {}
        for p in m.ports.values():
            if p.device_owner == "network:router_gateway":
                gw.setdefault(p.device_id, p)
        for f in m.floating_ips.values():
            if f.router_id:
                fips.setdefault(f.router_id, []).append(
                    (f.id, f.floating_ip_address, f.fixed_ip_address, f.port_id, f.name))
        fw_of: dict[str, list[tuple[object, ...]]] = {}
        for g in m.firewall_groups.values():
            key = (id(g), g.name, g.admin_state_up, tuple(g.ports), *(
                (pid, tuple(m.firewall_policies[pid].firewall_rules), tuple(
                    (id(m.firewall_rules[r]), m.firewall_rules[r].enabled)
                    for r in m.firewall_policies[pid].firewall_rules)) if pid else None
                for pid in (g.ingress_firewall_policy_id, g.egress_firewall_policy_id)))
            for pid in g.ports:
                fw_of.setdefault(pid, []).append(key)
        out: dict[str, RouterPlan] = {}
        for rid in sorted(m.routers):
            r = m.routers[rid]
            ports = tuple(m.ports.get(p) for p in m.router_interfaces.get(rid, []))
            rkey: tuple[object, ...] = (
                id(r), tuple(id(p) for p in ports), id(gw.get(rid)),
                tuple(sorted(fips.get(rid, []), key=_first)),
                tuple(k for p in ports if p is not None for k in fw_of.get(p.id, ())))
            hit = self._cache.get(rid)
            if hit is None or hit[0] != rkey:
                ix = ix or _index(m)
                hit = self._cache[rid] = (rkey, compile_router(m, rid, ix))
            out[rid] = hit[1]
        for rid in [k for k in self._cache if k not in out]:
            del self._cache[rid]
        return out
