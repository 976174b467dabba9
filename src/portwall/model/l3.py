"""Routers, router interfaces and floating IPs: Neutron's L3 API, on a storage.

Called through the Model's methods of the same names; kept apart because router and NAT
rules grow independently of ports and security groups. ``m`` is a
:class:`~portwall.model.storage.Storage` (imported as ``Model`` so signatures read as
before); this module imports the port operations, never ``store.py``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any

from portwall.model.errors import Conflict, InvalidInput, NotFound, PortwallError
from portwall.model.networks import allocate
from portwall.model.parsing import parse, required
from portwall.model.ports import create_port
from portwall.model.resources import (
    ExternalFixedIP,
    FloatingIP,
    Port,
    Router,
    RouterRoute,
    Subnet,
)
from portwall.model.storage import Storage as Model


def create_router(m: Model, body: Mapping[str, Any]) -> Router:
    """``POST /routers``; a gateway gets a port (and address) on the external network."""
    if body.get("routes"):  # extraroute: allow_post False, the nexthops need interfaces
        raise InvalidInput("Attribute 'routes' not allowed in POST", field="routes",
                           resource="router", neutron_type="HTTPBadRequest")
    data = {"id": m._new_id("router", str(body.get("name", ""))), **body}
    data.pop("routes", None)
    gw = data.get("external_gateway_info")
    if gw and "network_id" in gw:
        net = m.get("network", gw["network_id"], field="external_gateway_info.network_id")
        if not net.router_external:
            raise InvalidInput(
                f"Network {net.label()} is not an external network (router:external is"
                " false), so it cannot be a router's gateway.",
                field="external_gateway_info.network_id", resource="router",
                neutron_type="BadRequest",
            )
        data["external_gateway_info"] = {**gw, "network_id": net.id}
    router = parse(Router, data, "router")
    m._unique_id("router", router.id)
    info = router.external_gateway_info
    if info is not None:
        # Neutron gives the router a gateway port (qg-) on the external network; its
        # address is what SNAT rewrites to, so it must be allocated like any port's.
        wanted = [f.model_dump(exclude_none=True) for f in info.external_fixed_ips]
        try:
            gw_port = create_port(m, {
                "name": f"{router.label()}-gw", "network_id": info.network_id,
                "device_owner": "network:router_gateway", "device_id": router.id,
                "project_id": router.project_id,
                **({"fixed_ips": wanted} if wanted else {}),
            })
        except PortwallError as e:  # report it against the router's own field
            e.resource = "router"
            e.field = "external_gateway_info." + (e.field or "").replace(
                "fixed_ips", "external_fixed_ips")
            raise
        if not gw_port.fixed_ips:
            m.remove("port", gw_port.id)
            raise InvalidInput(
                "The external network has no subnet to give the router a gateway address",
                field="external_gateway_info.network_id", resource="router",
                neutron_type="BadRequest")
        info.external_fixed_ips = [ExternalFixedIP(subnet_id=f.subnet_id,
                                                   ip_address=f.ip_address)
                                   for f in gw_port.fixed_ips]
    m.routers[router.id] = router
    m.router_interfaces[router.id] = []
    return router


def router_gateway_port(m: Model, router_id: str) -> Port | None:
    """The router's port on its external network (None without a gateway)."""
    for p in m.ports.values():
        if p.device_id == router_id and p.device_owner == "network:router_gateway":
            return p
    return None


def add_router_interface(m: Model, ref: str, body: Mapping[str, Any]) -> Port:
    """``PUT /routers/{id}/add_router_interface`` with ``subnet_id`` or ``port_id``."""
    router = m.get("router", ref)
    if ("subnet_id" in body) == ("port_id" in body):
        raise InvalidInput("Either subnet_id or port_id must be specified",
                           field="subnet_id", resource="router", neutron_type="BadRequest")
    if "subnet_id" in body:
        subnet = m.get("subnet", body["subnet_id"], field="subnet_id")
        for pid in m.router_interfaces[router.id]:
            if any(f.subnet_id == subnet.id for f in m.ports[pid].fixed_ips):
                raise InvalidInput(
                    f"Router already has a port on subnet {subnet.label()}",
                    field="subnet_id", resource="router", neutron_type="BadRequest",
                )
        if subnet.gateway_ip is None:
            raise InvalidInput(
                f"Subnet {subnet.label()} for router interface must have a gateway IP",
                field="subnet_id", resource="router", neutron_type="BadRequest")
        port = create_port(m, {
            "name": f"{router.label()}-{subnet.label()}",
            "network_id": subnet.network_id,
            "fixed_ips": [{"subnet_id": subnet.id, "ip_address": subnet.gateway_ip}],
            "device_owner": "network:router_interface",
            "device_id": router.id,
        })
    else:
        port = m.get("port", body["port_id"], field="port_id")
        if port.device_id and port.device_id != router.id:
            raise Conflict(f"Port {port.label()} is in use by {port.device_id}",
                           field="port_id", resource="router", neutron_type="PortInUse")
        if not port.fixed_ips:
            raise InvalidInput(f"Router port {port.label()} must have at least one fixed IP",
                               field="port_id", resource="router", neutron_type="BadRequest")
        mine = {f.subnet_id for pid in m.router_interfaces[router.id]
                for f in m.ports[pid].fixed_ips}
        clash = next((f.subnet_id for f in port.fixed_ips if f.subnet_id in mine), None)
        if clash is not None:
            raise InvalidInput(
                f"Router already has a port on subnet {m.subnets[clash].label()}",
                field="port_id", resource="router", neutron_type="BadRequest")
        # A router interface is trusted: Neutron stops filtering it. The stored port is
        # replaced, not edited: the incremental compiler keys its cache on port objects.
        port = port.model_copy(update={"device_owner": "network:router_interface",
                                       "device_id": router.id, "security_groups": []})
        m.ports[port.id] = port
    m.router_interfaces[router.id].append(port.id)
    m.touch("router", router.id)
    return port


#: Neutron's ``max_routes`` default.
MAX_ROUTES = 30


def _routes_error(routes: Any, reason: str) -> InvalidInput:
    return InvalidInput(f"Invalid format for routes: {routes}, {reason}", field="routes",
                        resource="router", neutron_type="InvalidRoutes")


def _hostroutes_error(data: Any) -> str | None:
    """neutron-lib's ``type:hostroutes`` validator: the first problem, in its words."""
    if not isinstance(data, list):
        return f"Invalid data format for hostroute: '{data}'"
    keys = ["destination", "nexthop"]
    seen: list[Any] = []
    for route in data:
        if not isinstance(route, dict):
            return f"Invalid input. '{route}' must be a dictionary with keys: {keys}"
        if set(route) != set(keys):
            return (f"Validation of dictionary's keys failed. Expected keys: {set(keys)}"
                    f" Provided keys: {set(route)}")
        dest = str(route["destination"])
        try:
            net = ipaddress.ip_network(dest, strict=False)
        except ValueError:
            return f"'{dest}' is not a valid IP subnet"
        if "/" not in dest or ipaddress.ip_interface(dest).ip != net.network_address:
            return f"'{dest}' isn't a recognized IP subnet cidr, '{net}' is recommended"
        try:
            ipaddress.ip_address(str(route["nexthop"]))
        except ValueError:
            return f"'{route['nexthop']}' is not a valid IP address"
        if route in seen:
            return f"Duplicate hostroute '{route}'"
        seen.append(route)
    return None


def set_routes(m: Model, ref: str, routes: Any) -> Router:
    """``PUT /routers/{id}`` with ``routes`` (extraroute): validated as Neutron does, then
    stored on a new Router object (the router compiler keys its cache on objects).

    A nexthop must lie on a subnet of one of the router's ports (internal interfaces or
    gateway, as Neutron's ``_validate_routes_nexthop``) and must not be the router's own
    address; at most :data:`MAX_ROUTES` routes."""
    router = m.get("router", ref)
    routes = [] if routes is None else routes
    why = _hostroutes_error(routes)
    if why is not None:
        raise InvalidInput(f"Invalid input for routes. Reason: {why}.", field="routes",
                           resource="router", neutron_type="HTTPBadRequest")
    if len(routes) > MAX_ROUTES:
        raise InvalidInput(
            f"Unable to complete operation for {router.id}. The number of routes exceeds the"
            f" maximum {MAX_ROUTES}.", field="routes", resource="router",
            neutron_type="RoutesExhausted")
    cidrs, ips = [], set()
    for p in m.ports.values():
        if p.device_id != router.id or not p.device_owner.startswith("network:router"):
            continue
        for f in p.fixed_ips:
            sub = m.subnets.get(f.subnet_id or "")
            if sub is not None:
                cidrs.append(sub.network)
            if f.ip_address:
                ips.add(ipaddress.ip_address(f.ip_address))
    shown = [{"destination": str(r["destination"]), "nexthop": str(r["nexthop"])}
             for r in routes]
    for r in shown:
        hop = ipaddress.ip_address(r["nexthop"])
        if not any(hop.version == c.version and hop in c for c in cidrs):
            raise _routes_error(shown, "the nexthop is not connected with router")
        if hop in ips:
            raise _routes_error(shown, "the nexthop is used by router")
        if ipaddress.ip_network(r["destination"], strict=False).version != hop.version:
            raise _routes_error(shown, "the nexthop and the destination are not the same"
                                " IP version")
    new = router.model_copy(update={"routes": [RouterRoute(**r) for r in shown]})
    m.routers[router.id] = new
    return new


def routes_using(m: Model, router_id: str, subnet_ids: set[str]) -> list[RouterRoute]:
    """The router's extra routes whose nexthop lies on one of ``subnet_ids`` (Neutron
    refuses to remove such an interface: RouterInterfaceInUseByRoute)."""
    nets = [m.subnets[s].network for s in subnet_ids if s in m.subnets]
    router = m.routers[router_id]
    return [r for r in router.routes if any(
        ipaddress.ip_address(r.nexthop) in n for n in nets
        if n.version == ipaddress.ip_address(r.nexthop).version)]


def create_floatingip(m: Model, body: Mapping[str, Any]) -> FloatingIP:
    """``POST /floatingips``; associated at once when ``port_id`` is given."""
    data = {"id": m._new_id("floatingip", str(body.get("floating_ip_address", "")
                                                 or body.get("name", ""))), **body}
    if data.get("floating_network_id") is None:
        raise required("floating_network_id", "floatingip")
    net = m.get("network", data["floating_network_id"], field="floating_network_id")
    if not net.router_external:
        raise InvalidInput(f"Network {net.label()} is not a valid external network",
                           field="floating_network_id", resource="floatingip",
                           neutron_type="BadRequest")
    data["floating_network_id"] = net.id
    fip = parse(FloatingIP, data, "floatingip")
    m._unique_id("floatingip", fip.id)
    ext = [s for s in m.subnets_of(net.id) if s.ip_version == 4]
    taken = {f.floating_ip_address for f in m.floating_ips.values()} | {
        f.ip_address for p in m.ports.values() for f in p.fixed_ips
    }
    if fip.floating_ip_address is None:
        if not ext:
            raise InvalidInput(f"External network {net.label()} has no IPv4 subnet",
                               field="floating_network_id", resource="floatingip",
                               neutron_type="BadRequest")
        fip.floating_ip_address = allocate(m, ext[0], taken)
    else:
        _check_floating_address(fip.floating_ip_address, ext, taken)
    if fip.port_id:
        _associate(m, fip, fip.port_id, fip.fixed_ip_address)
    m.floating_ips[fip.id] = fip  # only now: a failed association adds nothing
    return fip


def _check_floating_address(text: str, ext: list[Subnet], taken: set[str | None]) -> None:
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        raise InvalidInput(f"'{text}' is not a valid IP address",
                           field="floating_ip_address", resource="floatingip") from None
    if not any(addr in s.network for s in ext):
        raise InvalidInput(
            f"IP address {addr} is not a valid IP for any IPv4 subnet of the external"
            " network", field="floating_ip_address", resource="floatingip",
            neutron_type="InvalidIpForNetwork")
    if str(addr) in taken:
        raise Conflict(f"IP address {addr} already allocated on the external network",
                       field="floating_ip_address", resource="floatingip",
                       neutron_type="IpAddressAlreadyAllocated")


def update_floatingip(m: Model, ref: str, changes: Mapping[str, Any]) -> FloatingIP:
    """Associate (``port_id``) or disassociate (``port_id: null``) a floating IP."""
    fip = m.get("floatingip", ref)
    unknown = set(changes) - {"port_id", "fixed_ip_address", "description"}
    if unknown:
        field = sorted(unknown)[0]
        raise InvalidInput(f"Cannot update read-only attribute {field}", field=field,
                           resource="floatingip", neutron_type="HTTPBadRequest")
    if changes.get("port_id"):
        _associate(m, fip, changes["port_id"], changes.get("fixed_ip_address"))
    elif "port_id" in changes:
        fip.port_id = fip.fixed_ip_address = fip.router_id = None
        fip.status = "DOWN"
    m.touch("floatingip", fip.id)
    return fip


def _associate(m: Model, fip: FloatingIP, port_ref: str, fixed_ip: str | None) -> None:
    """Bind ``fip`` to a port's IPv4 fixed IP, through a router that has both the port's
    subnet and a gateway on the floating network (else 404, as in Neutron)."""
    port = m.get("port", port_ref, field="port_id")
    addrs = [f for f in port.fixed_ips if f.ip_address and
             ipaddress.ip_address(f.ip_address).version == 4]
    if fixed_ip is not None:
        addrs = [f for f in addrs if f.ip_address == fixed_ip]
    if not addrs:
        raise InvalidInput(f"Port {port.label()} does not have an IPv4 fixed IP"
                           + (f" {fixed_ip}" if fixed_ip else ""),
                           field="fixed_ip_address", resource="floatingip",
                           neutron_type="BadRequest")
    chosen = addrs[0]
    router_id = None
    for rid, pids in m.router_interfaces.items():
        gw = m.routers[rid].external_gateway_info
        if gw is None or gw.network_id != fip.floating_network_id:
            continue
        if any(f.subnet_id == chosen.subnet_id for pid in pids
               for f in m.ports[pid].fixed_ips):
            router_id = rid
            break
    if router_id is None:
        raise NotFound(
            f"External network {fip.floating_network_id} is not reachable from subnet"
            f" {chosen.subnet_id}: no router connects them.",
            field="port_id", resource="floatingip",
            neutron_type="ExternalGatewayForFloatingIPNotFound",
        )
    for other in m.floating_ips.values():
        if other.id != fip.id and other.port_id == port.id and \
                other.fixed_ip_address == chosen.ip_address:
            raise Conflict(
                f"fixed IP {chosen.ip_address} of port {port.label()} already has floating IP"
                f" {other.floating_ip_address}",
                field="port_id", resource="floatingip", neutron_type="FloatingIPPortAlreadyAssociated",
            )
    fip.port_id, fip.fixed_ip_address, fip.router_id = port.id, chosen.ip_address, router_id
    fip.status = "ACTIVE"
    m.touch("floatingip", fip.id)
