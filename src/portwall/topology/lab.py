"""The ``lab:`` section: VMs (namespaces owning ports) and the traffic expected between them.

Everything a sandbox would trip over later is refused here, with the line: a gateway or
route next hop on none of the VM's subnets, an expectation towards an address no VM
carries, or between families the source cannot speak. A check that cannot be carried out
would otherwise pass as "deny" without testing anything.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from typing import Any

from portwall.model.errors import PortwallError
from portwall.model.resources import Port
from portwall.model.store import Model
from portwall.topology.spec import VM, Expect, LabSpec, Outside, Route, TopologyError

#: Makes a TopologyError at a location: ``fail(location, message, cause=None)``.
Fail = Callable[..., TopologyError]
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

LAB_FIELDS = ("vms", "expect", "outside")
VM_FIELDS = ("ports", "forward", "gateway", "routes", "host")
ROUTE_FIELDS = ("destination", "via")
EXPECT_FIELDS = ("from", "to", "proto", "port", "verdict")
#: Namespace and interface names are built from VM names, and Linux caps them at 15 chars.
VM_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,11}$")
#: A compute host's name (binding:host_id) in a multi-host lab.
HOST_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


def parse_lab(raw: Any, model: Model, fail: Fail, line_of: Callable[[str], int | None],
              report: Callable[[TopologyError], None] | None = None,
              failed_ports: set[str] | frozenset[str] = frozenset()) -> LabSpec:
    """The lab section of a document whose resources are already in ``model``.

    With ``report``, every problem is passed to it and the section goes on (a VM or an
    expectation with an error is left out); without, the first one is raised. A VM that
    names a port in ``failed_ports`` (refused earlier) is left out silently, and so are the
    expectations about such VMs: their errors would only repeat the first one."""
    def note(err: TopologyError) -> None:
        if report is None:
            raise err
        report(err)

    if raw is None:
        return LabSpec()
    lab = LabSpec()
    if not isinstance(raw, dict):
        note(fail("lab", "'lab' must be a mapping with 'vms' and 'expect'"))
        return lab
    for k in raw:
        if k not in LAB_FIELDS:
            note(fail(f"lab.{k}", f"unknown lab field '{k}' (expected "
                      f"{', '.join(LAB_FIELDS)})"))
    if raw.get("outside") is not None:
        try:
            lab.outside = _outside(raw["outside"], model, fail)
        except TopologyError as e:
            note(e)
    vms = raw.get("vms") or {}
    if not isinstance(vms, dict):
        note(fail("lab.vms", "'vms' must map VM names to their settings"))
        vms = {}
    owner: dict[str, str] = {}
    skipped: set[str] = set()
    for name, spec in vms.items():
        refs = spec.get("ports") if isinstance(spec, dict) else None
        if isinstance(refs, list) and any(str(r) in failed_ports for r in refs):
            skipped.add(str(name))
            continue
        try:
            vm = _vm(str(name), spec, model, fail, owner)
        except TopologyError as e:
            note(e)
            skipped.add(str(name))
            continue
        lab.vms[vm.name] = vm
    expects = raw.get("expect") or []
    if not isinstance(expects, list):
        note(fail("lab.expect", "'expect' must be a list of {from, to, proto, port, verdict}"))
        expects = []
    addrs = _addresses(lab, model)
    for f in model.floating_ips.values():  # floating IPs answer for their VMs
        owners = [v.name for v in lab.vms.values() if f.port_id in v.ports]
        if f.floating_ip_address and owners:
            addrs.setdefault(ipaddress.ip_address(f.floating_ip_address), owners[0])
    if lab.outside is not None:
        addrs.setdefault(ipaddress.ip_address(lab.outside.address), "outside")
    for j, raw_e in enumerate(expects):
        if isinstance(raw_e, dict) and {str(raw_e.get("from")), str(raw_e.get("to"))} & skipped:
            continue
        try:
            lab.expect.append(_expect(f"lab.expect[{j}]", raw_e, lab, model, addrs, fail,
                                      line_of))
        except TopologyError as err:
            note(err)
    return lab


def _vm(name: str, spec: Any, model: Model, fail: Fail, owner: dict[str, str]) -> VM:
    loc = f"lab.vms.{name}"
    if not VM_NAME.match(name):
        raise fail(loc, f"VM name '{name}' must be 1-12 letters, digits, '-' or '_' (it"
                   " becomes part of namespace and interface names)")
    spec = spec or {}
    if not isinstance(spec, dict):
        raise fail(loc, "a VM must be a mapping (ports, forward, gateway, routes, host)")
    unknown = sorted(set(spec) - set(VM_FIELDS))
    if unknown:
        raise fail(f"{loc}.{unknown[0]}", f"unknown VM field '{unknown[0]}' (expected "
                   f"{', '.join(VM_FIELDS)})")
    refs = spec.get("ports") or []
    if not isinstance(refs, list) or not refs:
        raise fail(f"{loc}.ports", f"VM {name} needs a list of one or more ports (names or ids)")
    ports: list[Port] = []
    for j, ref in enumerate(refs):
        try:
            port = model.get("port", str(ref), field="port")
        except PortwallError as e:
            known = ", ".join(sorted(p.name for p in model.ports.values() if p.name))
            raise fail(f"{loc}.ports[{j}]", f"{e.message} (ports: {known or 'none'})",
                       cause=e) from None
        if port.is_trusted:
            raise fail(f"{loc}.ports[{j}]", f"port {ref} is owned by the network "
                       f"({port.device_owner}): a VM cannot plug it")
        if port.id in owner:
            raise fail(f"{loc}.ports[{j}]", f"port {ref} already belongs to VM {owner[port.id]}")
        owner[port.id] = name
        ports.append(port)
    forward = spec.get("forward", False)
    if not isinstance(forward, bool):
        raise fail(f"{loc}.forward", "forward must be true or false")
    nets = _subnets(ports, model)
    gateway = spec.get("gateway")
    if gateway is not None:
        _next_hop(f"{loc}.gateway", gateway, nets, fail)
    routes = []
    raw_routes = spec.get("routes") or []
    if not isinstance(raw_routes, list):
        raise fail(f"{loc}.routes", "routes must be a list of {destination: CIDR, via: IP}")
    for j, r in enumerate(raw_routes):
        rloc = f"{loc}.routes[{j}]"
        if not isinstance(r, dict) or set(r) != set(ROUTE_FIELDS):
            raise fail(rloc, "a route is {destination: CIDR, via: IP}")
        try:
            dest = ipaddress.ip_network(str(r["destination"]), strict=False)
        except ValueError:
            raise fail(f"{rloc}.destination", f"'{r['destination']}' is not a CIDR") from None
        via = _next_hop(f"{rloc}.via", r["via"], nets, fail)
        if via.version != dest.version:
            raise fail(f"{rloc}.via", f"next hop {via} is IPv{via.version} but the destination"
                       f" {dest} is IPv{dest.version}")
        routes.append(Route(str(dest), str(via)))
    return VM(name, [p.id for p in ports], forward,
              None if gateway is None else str(gateway), routes,
              _host(loc, spec.get("host"), ports, fail))


def _host(loc: str, raw: Any, ports: list[Port], fail: Fail) -> str | None:
    """The VM's compute host: ``host:``, else its ports' binding:host_id (all the same)."""
    bound = {p.binding_host_id for p in ports if p.binding_host_id}
    if raw is None:
        if len(bound) > 1:
            raise fail(f"{loc}.ports", f"the VM's ports are bound to different hosts "
                       f"({', '.join(sorted(bound))}): a VM lives on one host")
        return next(iter(bound), None)
    host = str(raw)
    if not HOST_NAME.match(host):
        raise fail(f"{loc}.host", f"host '{host}' must be 1-63 letters, digits, '.', '_' or '-'")
    if bound - {host}:
        raise fail(f"{loc}.host", f"host {host} differs from its ports' binding:host_id "
                   f"({', '.join(sorted(bound))})")
    return host


def _subnets(ports: list[Port], model: Model) -> list[ipaddress.IPv4Network |
                                                       ipaddress.IPv6Network]:
    """The subnets a VM is directly attached to: where its next hops can be."""
    return [s.network for p in ports for s in model.subnets_of(p.network_id)]


def _next_hop(loc: str, value: Any, nets: list[Any], fail: Fail) -> IPAddress:
    try:
        addr = ipaddress.ip_address(str(value))
    except ValueError:
        raise fail(loc, f"'{value}' is not an IP address") from None
    if not any(addr in n for n in nets):
        on = ", ".join(str(n) for n in nets) or "none"
        raise fail(loc, f"next hop {addr} is on none of the VM's subnets ({on}): the kernel"
                   " could not reach it")
    return addr


def _addresses(lab: LabSpec, model: Model) -> dict[IPAddress, str]:
    """Every address a lab VM answers on: fixed IPs and single-address pairs (VIPs)."""
    out: dict[IPAddress, str] = {}
    for vm in lab.vms.values():
        for pid in vm.ports:
            port = model.ports[pid]
            for a in port.addresses():
                out.setdefault(a, vm.name)
            for pair in port.allowed_address_pairs:
                net = pair.network
                if net.prefixlen == net.max_prefixlen:
                    out.setdefault(net.network_address, vm.name)
    return out


def _families(vm: VM, model: Model) -> set[int]:
    return {a.version for pid in vm.ports for a in model.ports[pid].addresses()}


def _expect(loc: str, e: Any, lab: LabSpec, model: Model, addrs: dict[IPAddress, str],
            fail: Fail, line_of: Callable[[str], int | None]) -> Expect:
    if not isinstance(e, dict):
        raise fail(loc, "an expectation is {from, to, proto, port, verdict}")
    unknown = sorted(set(e) - set(EXPECT_FIELDS))
    if unknown:
        raise fail(f"{loc}.{unknown[0]}", f"unknown field '{unknown[0]}' (expected "
                   f"{', '.join(EXPECT_FIELDS)})")
    vms = ", ".join(lab.vms) or "none"
    src, dst = str(e.get("from", "")), str(e.get("to", ""))
    if lab.outside is not None and "outside" not in lab.vms and "outside" in (src, dst):
        return _outside_expect(loc, e, src, dst, lab, addrs, fail, line_of)
    if src not in lab.vms:
        raise fail(f"{loc}.from", f"'{src}' is not a VM of lab.vms ({vms})")
    if dst == src:
        raise fail(f"{loc}.to", "a VM's traffic to itself never reaches the bridge: pick"
                   " another VM")
    if dst in lab.vms:
        if not _families(lab.vms[dst], model) and not any(v == dst for v in addrs.values()):
            raise fail(f"{loc}.to", f"VM {dst} has no IP address to send to")
    else:
        try:
            target = ipaddress.ip_address(dst)
        except ValueError:
            raise fail(f"{loc}.to", f"'{dst}' is neither a VM of lab.vms ({vms}) nor an IP"
                       " address") from None
        if target not in addrs:
            raise fail(f"{loc}.to", f"no lab VM has the address {target} (a fixed IP or a"
                       " single-address allowed address pair): nothing would answer")
        if addrs[target] == src:
            raise fail(f"{loc}.to", f"{target} belongs to {src} itself")
        if target.version not in _families(lab.vms[src], model):
            raise fail(f"{loc}.to", f"{src} has no IPv{target.version} address to send to"
                       f" {target} from")
    proto = str(e.get("proto", "icmp")).lower()
    if proto not in ("icmp", "tcp", "udp"):
        raise fail(f"{loc}.proto", f"proto must be icmp, tcp or udp, not '{proto}'")
    port = e.get("port")
    if proto == "icmp" and port is not None:
        raise fail(f"{loc}.port", "icmp has no port (the lab sends an echo request)")
    if proto != "icmp" and (not isinstance(port, int) or isinstance(port, bool)
                            or not 1 <= port <= 65535):
        raise fail(f"{loc}.port", f"{proto} needs a port 1-65535")
    verdict = str(e.get("verdict", "")).lower()
    if verdict not in ("allow", "deny"):
        raise fail(f"{loc}.verdict", f"verdict must be allow or deny, not '{verdict}'")
    return Expect(src, dst, proto, port, verdict, line_of(loc))


def _outside(raw: Any, model: Model, fail: Fail) -> Outside:
    """``outside: {network: EXTERNAL-NET, address: IP}``: the world beyond a router."""
    loc = "lab.outside"
    if not isinstance(raw, dict) or set(raw) - {"network", "address"} or "network" not in raw:
        raise fail(loc, "outside is {network: an external network, address: an IP outside"
                   " every subnet}")
    try:
        net = model.get("network", str(raw["network"]), field="network")
    except PortwallError as e:
        raise fail(f"{loc}.network", e.message, cause=e) from None
    if not net.router_external:
        raise fail(f"{loc}.network", f"network {net.label()} is not external (router:external)")
    subs = [s for s in model.subnets_of(net.id) if s.ip_version == 4 and s.gateway_ip]
    if not subs:
        raise fail(f"{loc}.network", f"network {net.label()} has no IPv4 subnet with a"
                   " gateway_ip (the outside host answers for it)")
    try:
        addr = ipaddress.ip_address(str(raw.get("address", "198.51.100.10")))
    except ValueError:
        raise fail(f"{loc}.address", f"'{raw.get('address')}' is not an IP address") from None
    if addr.version != 4 or any(addr in s.network for s in model.subnets.values()):
        raise fail(f"{loc}.address", f"{addr} must be an IPv4 address outside every subnet")
    return Outside(net.id, str(addr), str(subs[0].gateway_ip), subs[0].network.prefixlen)


def _outside_expect(loc: str, e: dict[str, Any], src: str, dst: str, lab: LabSpec,
                    addrs: dict[IPAddress, str], fail: Fail,
                    line_of: Callable[[str], int | None]) -> Expect:
    """An expectation from or to the outside: VMs by name or floating IP, IPv4 only."""
    other = dst if src == "outside" else src
    if other == "outside":
        raise fail(f"{loc}.to", "the outside's traffic to itself tests nothing")
    if other not in lab.vms:
        try:
            target = ipaddress.ip_address(other)
        except ValueError:
            raise fail(loc, f"'{other}' is neither a VM nor an IP address") from None
        if src != "outside" or target not in addrs:
            raise fail(f"{loc}.to", f"{other}: the outside reaches VMs by name or by a"
                       " floating IP the lab carries")
    proto = str(e.get("proto", "icmp")).lower()
    port = e.get("port")
    if proto not in ("icmp", "tcp", "udp") or (proto == "icmp") != (port is None):
        raise fail(f"{loc}.proto", "proto icmp (no port) or tcp/udp with a port")
    verdict = str(e.get("verdict", "")).lower()
    if verdict not in ("allow", "deny"):
        raise fail(f"{loc}.verdict", f"verdict must be allow or deny, not '{verdict}'")
    return Expect(src, dst, proto, port, verdict, line_of(loc))
