"""Ports: Neutron's port create/update/delete checks (fixed IPs, MACs, address pairs,
port security, security groups), on a :class:`~portwall.model.storage.Storage`."""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Callable, Mapping
from typing import Any

from portwall.model.errors import Conflict, InvalidInput
from portwall.model.groups import ensure_default_group
from portwall.model.networks import allocate, reserved_address
from portwall.model.parsing import parse, required
from portwall.model.resources import (
    MAX_ADDRESS_PAIRS,
    AllowedAddressPair,
    FixedIP,
    Port,
    Subnet,
)
from portwall.model.storage import Storage


def _taken_by(subnet_id: str, chosen: list[FixedIP],
              in_use: Callable[[str, str], bool]) -> Callable[[str], bool]:
    """Is an address of ``subnet_id`` taken, by another port or earlier in this request?"""
    mine = {f.ip_address for f in chosen}
    return lambda ip: ip in mine or in_use(subnet_id, ip)


def _precheck_pairs(body: Mapping[str, Any]) -> None:
    """The address-pair errors Neutron's validator reports before any other port check."""
    pairs = body.get("allowed_address_pairs")
    if pairs is None or "allowed_address_pairs" not in body:
        return
    if not isinstance(pairs, list):
        raise InvalidInput("Allowed address pairs must be a list.",
                           field="allowed_address_pairs", resource="port",
                           neutron_type="HTTPBadRequest")
    if len(pairs) > MAX_ADDRESS_PAIRS:
        raise InvalidInput(
            f"The number of allowed address pair exceeds the maximum {MAX_ADDRESS_PAIRS}"
            f" (got {len(pairs)}).",
            field="allowed_address_pairs", resource="port",
            neutron_type="AllowedAddressPairExhausted",
        )
    for i, pair in enumerate(pairs):
        if isinstance(pair, Mapping) and "ip_address" not in pair:
            raise InvalidInput("AllowedAddressPair must contain ip_address",
                               field=f"allowed_address_pairs[{i}].ip_address", resource="port",
                               neutron_type="AllowedAddressPairsMissingIP")


def create_port(m: Storage, body: Mapping[str, Any]) -> Port:
    data = {"id": m.new_id("port", str(body.get("name", ""))), **body}
    if "network_id" not in data:
        raise required("network_id", "port")
    net = m.get("network", data["network_id"], field="network_id")
    data["network_id"] = net.id
    _precheck_pairs(data)
    port = parse(Port, data, "port")
    m.check_unique("port", port.id)
    if port.port_security_enabled is None:
        port.port_security_enabled = net.port_security_enabled
    if port.mac_address is None:
        port.mac_address = _generate_mac(m, port.id)
    _check_mac_free(m, port)
    port.fixed_ips = _resolve_fixed_ips(m, port, explicit="fixed_ips" in body)
    port.allowed_address_pairs = _check_pairs(port)
    port.security_groups = _resolve_groups(m, port, body.get("security_groups"),
                                           creating=True)
    m.ports[port.id] = port
    m.index_port(port)
    return port


def update_port(m: Storage, ref: str, changes: Mapping[str, Any]) -> Port:
    """Neutron's ``port-update``; the port is replaced only if every check passes."""
    old = m.get("port", ref)
    for k in ("id", "network_id", "project_id", "tenant_id"):
        if k in changes and changes[k] != getattr(old, k.replace("tenant_", "project_")):
            raise InvalidInput(f"Cannot update read-only attribute {k}", field=k,
                               resource="port", neutron_type="HTTPBadRequest")
    _precheck_pairs(changes)
    data = {**old.model_dump(by_alias=True), **changes}
    port = parse(Port, data, "port")
    if port.port_security_enabled is None:
        port.port_security_enabled = old.port_security_enabled
    if port.mac_address is None:
        port.mac_address = old.mac_address
    _check_mac_free(m, port, exclude=old.id)
    if "fixed_ips" in changes:
        port.fixed_ips = _resolve_fixed_ips(m, port, explicit=True, exclude=old.id)
    turning_off = old.port_security_enabled and port.port_security_enabled is False
    if turning_off and "security_groups" not in changes and old.security_groups:
        raise Conflict(
            f"Port {old.label()} has security groups: remove them before disabling port"
            " security.",
            field="port_security_enabled", resource="port",
            neutron_type="PortSecurityPortHasSecurityGroup",
        )
    port.allowed_address_pairs = _check_pairs(port)
    if "security_groups" in changes:
        port.security_groups = _resolve_groups(m, port, changes["security_groups"],
                                               creating=False)
    else:
        port.security_groups = list(old.security_groups or [])
    m.unindex_port(old)
    m.ports[old.id] = port
    m.index_port(port)
    return port


def delete_port(m: Storage, ref: str) -> None:
    port = m.get("port", ref)
    for fip in m.floating_ips.values():
        if fip.port_id == port.id:
            fip.port_id = fip.fixed_ip_address = fip.router_id = None
            fip.status = "DOWN"
            m.touch("floatingip", fip.id)
    m.unindex_port(port)
    del m.ports[port.id]


def _generate_mac(m: Storage, seed: str) -> str:
    # Neutron's base_mac is fa:16:3e:00:00:00 with random low bytes; ours are derived
    # from the port id so a topology file always gets the same MACs.
    used = m.macs_in_use()
    n = 0
    while True:
        digest = hashlib.sha256(f"{seed}/{n}".encode()).digest()
        mac = "fa:16:3e:" + ":".join(f"{b:02x}" for b in digest[:3])
        if mac not in used:
            return mac
        n += 1


def _check_mac_free(m: Storage, port: Port, exclude: str | None = None) -> None:
    owner = m.mac_owner(port.network_id, port.mac_address)
    if owner is not None and owner != exclude:
        raise Conflict(
            f"Unable to complete operation for network {port.network_id}. The mac address"
            f" {port.mac_address} is in use.",
            field="mac_address", resource="port", neutron_type="MacAddressInUse",
        )


def _resolve_fixed_ips(m: Storage, port: Port, *, explicit: bool,
                       exclude: str | None = None) -> list[FixedIP]:
    subnets = m.subnets_of(port.network_id)

    def in_use(subnet_id: str, ip: str) -> bool:
        owner = m.ip_owner(subnet_id, ip)
        return owner is not None and owner != exclude
    requested = port.fixed_ips if explicit else [
        FixedIP(subnet_id=s.id) for s in subnets if s.ip_version == 4
    ][:1]
    out: list[FixedIP] = []
    for i, fip in enumerate(requested):
        field = f"fixed_ips[{i}]"
        subnet: Subnet | None = None
        if fip.subnet_id is not None:
            subnet = m.get("subnet", fip.subnet_id, field=f"{field}.subnet_id")
            if subnet.network_id != port.network_id:
                raise InvalidInput(
                    f"subnet {subnet.label()} is not on network {port.network_id}",
                    field=f"{field}.subnet_id", resource="port",
                )
        if fip.ip_address is not None:
            addr = ipaddress.ip_address(fip.ip_address)
            if subnet is None:
                subnet = next((s for s in subnets if addr in s.network), None)
                if subnet is None:
                    raise InvalidInput(
                        f"IP address {addr} is not a valid IP for any subnet on network"
                        f" {port.network_id}",
                        field=f"{field}.ip_address", resource="port",
                        neutron_type="InvalidIpForNetwork",
                    )
            elif addr not in subnet.network:
                raise InvalidInput(
                    f"IP address {addr} is not a valid IP for the specified subnet"
                    f" {subnet.label()} ({subnet.cidr})",
                    field=f"{field}.ip_address", resource="port",
                    neutron_type="InvalidIpForSubnet",
                )
            reserved = reserved_address(subnet.network, addr, port.is_router_port)
            if reserved:
                raise InvalidInput(
                    f"IP address {addr} is not a valid IP for subnet {subnet.label()}"
                    f" ({subnet.cidr}): it is the subnet's {reserved} address",
                    field=f"{field}.ip_address", resource="port",
                    neutron_type="InvalidIpForSubnet",
                )
            if in_use(subnet.id, str(addr)) or any(
                o.ip_address == str(addr) for o in out
            ):
                raise Conflict(
                    f"IP address {addr} already allocated in subnet {subnet.label()}",
                    field=f"{field}.ip_address", resource="port",
                    neutron_type="IpAddressAlreadyAllocated",
                )
            out.append(FixedIP(subnet_id=subnet.id, ip_address=str(addr)))
        else:
            if subnet is None:
                raise InvalidInput("a fixed IP needs subnet_id or ip_address",
                                   field=field, resource="port")
            ip = allocate(m, subnet, _taken_by(subnet.id, out, in_use))
            out.append(FixedIP(subnet_id=subnet.id, ip_address=ip))
    return out


def _check_pairs(port: Port) -> list[AllowedAddressPair]:
    """Neutron's address-pair rules; a pair without a MAC gets the port's (as Neutron
    stores it), so a later MAC change of the port does not move the pair."""
    pairs = [p if p.mac_address else p.model_copy(update={"mac_address": port.mac_address})
             for p in port.allowed_address_pairs]
    if pairs and port.port_security_enabled is False:
        raise Conflict(
            "Port Security must be enabled in order to have allowed address pairs on a"
            " port.",
            field="allowed_address_pairs", resource="port",
            neutron_type="AddressPairAndPortSecurityRequired",
        )
    if len(pairs) > MAX_ADDRESS_PAIRS:
        raise InvalidInput(
            f"Exceeded maximum amount of allowed address pairs ({MAX_ADDRESS_PAIRS}).",
            field="allowed_address_pairs", resource="port",
            neutron_type="AllowedAddressPairExhausted",
        )
    seen: set[tuple[str, str | None]] = set()
    for i, pair in enumerate(pairs):
        key = (pair.ip_address, pair.mac_address)
        if key in seen:
            raise InvalidInput(
                f"Request contains duplicate address pair: mac_address {key[1]} ip_address"
                f" {key[0]}.",
                field=f"allowed_address_pairs[{i}]", resource="port",
                neutron_type="DuplicateAddressPairInRequest",
            )
        seen.add(key)
    return pairs


def _resolve_groups(m: Storage, port: Port, requested: Any, *, creating: bool) -> list[str]:
    if requested is not None and not isinstance(requested, list):
        raise InvalidInput("security_groups must be a list of ids or names",
                           field="security_groups", resource="port")
    if port.is_trusted:
        return []  # Neutron never applies groups to DHCP/router ports: it drops them.
    if not port.port_security_enabled:
        if requested:
            raise InvalidInput(
                "Port security must be enabled and port must have an IP address in order to"
                " use security groups.",
                field="security_groups", resource="port",
                neutron_type="PortSecurityAndIPRequiredForSecurityGroups",
            )
        return []
    if requested is None:
        if not creating:
            return []
        return [ensure_default_group(m, port.project_id).id]
    ids: list[str] = []
    for i, ref in enumerate(requested):
        sg = m.get("security_group", ref, field=f"security_groups[{i}]")
        if sg.id not in ids:
            ids.append(sg.id)
    modes = {m.security_groups[g].stateful for g in ids}
    if len(modes) > 1:
        stateless = [m.security_groups[g].label() for g in ids
                     if not m.security_groups[g].stateful]
        raise Conflict(
            "Cannot apply both stateful and stateless security groups on the same port at"
            f" the same time (stateless: {', '.join(stateless)}).",
            field="security_groups", resource="port",
            neutron_type="SecurityGroupConflict",
        )
    return ids
