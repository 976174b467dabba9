"""The operations Model lacks (updates and deletes of networks, subnets, routers, floating
IPs and FWaaS objects), built on the Model's own checks.

Updates of FWaaS objects and routers re-run the Model's ``create_*`` with the merged body
and the same id after taking the old object out, so there is exactly one place that knows
what a valid firewall rule, policy, group or router is; on failure the old one is put back.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from portwall.model import Conflict, InvalidInput, Model, NotFound, l3
from portwall.model.parsing import parse
from portwall.model.resources import Network, Port, Resource, Subnet


def _read_only(kind: str, changes: Mapping[str, Any], allowed: set[str]) -> None:
    for k in changes:
        if k not in allowed:
            raise InvalidInput(f"Cannot update read-only attribute {k}", field=k,
                               resource=kind, neutron_type="HTTPBadRequest")


# ------------------------------------------------------------------- networks
NETWORK_UPDATABLE = {"name", "description", "admin_state_up", "shared", "mtu",
                     "port_security_enabled", "router:external"}


def update_network(m: Model, ref: str, changes: Mapping[str, Any]) -> Network:
    old = m.get("network", ref)
    _read_only("network", changes, NETWORK_UPDATABLE)
    net = parse(Network, {**old.model_dump(by_alias=True), **changes}, "network")
    m.networks[old.id] = net
    return net


def delete_network(m: Model, ref: str) -> None:
    net = m.get("network", ref)
    users = [p for p in m.ports.values() if (p.network_id == net.id and not p.is_trusted)
             or (p.network_id == net.id and p.device_owner.startswith("network:router"))]
    if users:
        raise Conflict(
            f"Unable to complete operation on network {net.id}. There are one or more ports"
            " still in use on the network.", resource="network", neutron_type="NetworkInUse")
    for p in [p for p in m.ports.values() if p.network_id == net.id]:
        m.delete_port(p.id)
    for s in m.subnets_of(net.id):
        del m.subnets[s.id]
    del m.networks[net.id]


# -------------------------------------------------------------------- subnets
SUBNET_UPDATABLE = {"name", "description", "gateway_ip", "enable_dhcp", "dns_nameservers",
                    "host_routes", "allocation_pools"}


def update_subnet(m: Model, ref: str, changes: Mapping[str, Any]) -> Subnet:
    old = m.get("subnet", ref)
    _read_only("subnet", changes, SUBNET_UPDATABLE)
    return _recreate(m, "subnet", old, changes, m.create_subnet)  # type: ignore[return-value]


def delete_subnet(m: Model, ref: str) -> None:
    sub = m.get("subnet", ref)
    users = [p for p in m.ports.values() if any(f.subnet_id == sub.id for f in p.fixed_ips)]
    if users:
        raise Conflict(
            f"Unable to complete operation on subnet {sub.id}: One or more ports have an IP"
            " allocation from this subnet.", resource="subnet", neutron_type="SubnetInUse")
    del m.subnets[sub.id]


# ---------------------------------------------------------------------- ports
def delete_port(m: Model, ref: str) -> None:
    port = m.get("port", ref)
    if port.device_owner in ("network:router_interface", "network:router_gateway"):
        raise Conflict(
            f"Port {port.id} cannot be deleted directly via the port API: has device owner"
            f" {port.device_owner}.", resource="port", neutron_type="ServicePortInUse")
    m.delete_port(port.id)


# -------------------------------------------------------------------- routers
ROUTER_UPDATABLE = {"name", "description", "admin_state_up", "external_gateway_info", "routes"}


def _drop_gateway(m: Model, router_id: str) -> Port | None:
    gw = m.router_gateway_port(router_id)
    if gw is not None:
        m.delete_port(gw.id)
    return gw


def update_router(m: Model, ref: str, changes: Mapping[str, Any]) -> Resource:
    old = m.get("router", ref)
    _read_only("router", changes, ROUTER_UPDATABLE)
    interfaces = list(m.router_interfaces.get(old.id, []))
    gw = _drop_gateway(m, old.id) if "external_gateway_info" in changes else None
    body = {**old.model_dump(by_alias=True, exclude={"external_gateway_info"}), **changes}
    routes = body.pop("routes", [])  # extraroute: checked against the interfaces below
    if "external_gateway_info" not in changes and old.external_gateway_info is not None:
        gw_keep = old.external_gateway_info
    else:
        gw_keep = None
    del m.routers[old.id]
    try:
        if not body.get("external_gateway_info"):
            body.pop("external_gateway_info", None)
        new = m.create_router(body)
    except Exception:
        m.routers[old.id] = old
        if gw is not None:
            m.put("port", gw)
        raise
    if gw_keep is not None:
        new.external_gateway_info = gw_keep
    m.router_interfaces[old.id] = interfaces
    if "routes" in changes or new.routes != old.routes:
        try:
            new = l3.set_routes(m, old.id, routes)
        except Exception:
            m.routers[old.id] = old
            raise
    return new


def delete_router(m: Model, ref: str) -> None:
    router = m.get("router", ref)
    if m.router_interfaces.get(router.id):
        raise Conflict(f"Router {router.id} still has ports", resource="router",
                       neutron_type="RouterInUse")
    if any(f.router_id == router.id for f in m.floating_ips.values()):
        raise Conflict(f"Router {router.id} still has floating IPs", resource="router",
                       neutron_type="RouterInUse")
    _drop_gateway(m, router.id)
    del m.routers[router.id]
    m.router_interfaces.pop(router.id, None)


def remove_router_interface(m: Model, ref: str, body: Mapping[str, Any]) -> dict[str, Any]:
    router = m.get("router", ref)
    if ("subnet_id" in body) == ("port_id" in body):
        raise InvalidInput("Either subnet_id or port_id must be specified",
                           field="subnet_id", resource="router", neutron_type="BadRequest")
    mine = m.router_interfaces.get(router.id, [])
    if "port_id" in body:
        pid = body["port_id"]
        if pid not in mine:
            raise NotFound(f"Router {router.id} does not have an interface with id {pid}",
                           field="port_id", resource="router",
                           neutron_type="RouterInterfaceNotFound")
    else:
        sub = m.get("subnet", body["subnet_id"], field="subnet_id")
        found = [p for p in mine if any(f.subnet_id == sub.id for f in m.ports[p].fixed_ips)]
        if not found:
            raise NotFound(f"Router {router.id} has no interface on subnet {sub.id}",
                           field="subnet_id", resource="router",
                           neutron_type="RouterInterfaceNotFoundForSubnet")
        pid = found[0]
    port = m.ports[pid]
    subnets = [f.subnet_id for f in port.fixed_ips]
    for fip in m.floating_ips.values():
        bound = m.ports.get(fip.port_id or "")
        if fip.router_id == router.id and bound is not None and any(
                f.subnet_id in subnets for f in bound.fixed_ips):
            raise Conflict(f"Router interface for subnet {subnets[0]} on router {router.id}"
                           " cannot be deleted, as it is required by one or more floating IPs.",
                           resource="router", neutron_type="RouterInterfaceInUseByFloatingIP")
    if l3.routes_using(m, router.id, {s for s in subnets if s}):
        raise Conflict(f"Router interface for subnet {subnets[0]} on router {router.id}"
                       " cannot be deleted, as it is required by one or more routes.",
                       resource="router", neutron_type="RouterInterfaceInUseByRoute")
    m.router_interfaces[router.id] = [p for p in mine if p != pid]
    m.delete_port(pid)
    return {"id": router.id, "tenant_id": router.project_id, "project_id": router.project_id,
            "port_id": pid, "subnet_id": subnets[0] if subnets else None,
            "subnet_ids": subnets}


def delete_floatingip(m: Model, ref: str) -> None:
    fip = m.get("floatingip", ref)
    del m.floating_ips[fip.id]


# ---------------------------------------------------------------------- FWaaS
FW_UPDATABLE = {
    "firewall_rule": {"name", "description", "protocol", "ip_version", "source_ip_address",
                      "destination_ip_address", "source_port", "destination_port", "action",
                      "enabled", "shared"},
    "firewall_policy": {"name", "description", "firewall_rules", "audited", "shared"},
    "firewall_group": {"name", "description", "ingress_firewall_policy_id",
                       "egress_firewall_policy_id", "ports", "admin_state_up", "shared"},
}


def _recreate(m: Model, kind: str, old: Resource, changes: Mapping[str, Any],
              create: Callable[[Mapping[str, Any]], Resource]) -> Resource:
    tab = m.table(kind)
    del tab[old.id]
    try:
        return create({**old.model_dump(by_alias=True), **changes, "id": old.id})
    except Exception:
        tab[old.id] = old
        raise


def update_fw(m: Model, kind: str, ref: str, changes: Mapping[str, Any]) -> Resource:
    old = m.get(kind, ref)
    _read_only(kind, changes, FW_UPDATABLE[kind])
    create = {"firewall_rule": m.create_firewall_rule,
              "firewall_policy": m.create_firewall_policy,
              "firewall_group": m.create_firewall_group}[kind]
    return _recreate(m, kind, old, changes, create)


def delete_fw(m: Model, kind: str, ref: str) -> None:
    obj = m.get(kind, ref)
    if kind == "firewall_rule":
        users = [p for p in m.firewall_policies.values() if obj.id in p.firewall_rules]
        if users:
            raise Conflict(f"Firewall rule {obj.id} is being used.", resource=kind,
                           neutron_type="FirewallRuleInUse")
    if kind == "firewall_policy":
        groups = [g for g in m.firewall_groups.values()
                  if obj.id in (g.ingress_firewall_policy_id, g.egress_firewall_policy_id)]
        if groups:
            raise Conflict(f"Firewall policy {obj.id} is being used.", resource=kind,
                           neutron_type="FirewallPolicyInUse")
    del m.table(kind)[obj.id]
