"""Networks and subnets, and address allocation on a subnet (Neutron's IPAM), on a
:class:`~portwall.model.storage.Storage`."""

from __future__ import annotations

import contextlib
import ipaddress
from collections.abc import Callable, Mapping
from typing import Any

from portwall.model.errors import Conflict, InvalidInput
from portwall.model.parsing import parse
from portwall.model.resources import IPAddress, IPNetwork, Network, Subnet
from portwall.model.storage import Storage


def create_network(m: Storage, body: Mapping[str, Any]) -> Network:
    data = {"id": m.new_id("network", str(body.get("name", ""))), **body}
    net = parse(Network, data, "network")
    m.check_unique("network", net.id)
    m.networks[net.id] = net
    return net


def create_subnet(m: Storage, body: Mapping[str, Any]) -> Subnet:
    data = {"id": m.new_id("subnet", str(body.get("name", ""))), **body}
    if "network_id" in data:
        data["network_id"] = m.get("network", data["network_id"], field="network_id").id
    if "cidr" in data and "ip_version" not in data:
        with contextlib.suppress(ValueError):
            data["ip_version"] = ipaddress.ip_network(str(data["cidr"]), strict=False).version
    sub = parse(Subnet, data, "subnet")
    m.check_unique("subnet", sub.id)
    net = sub.network
    if net.version != sub.ip_version:
        raise InvalidInput(
            f"cidr {sub.cidr} is not an IPv{sub.ip_version} network",
            field="cidr", resource="subnet",
        )
    if sub.gateway_ip is None and "gateway_ip" not in body and net.num_addresses > 2:
        sub.gateway_ip = str(net.network_address + 1)
    if sub.gateway_ip is not None:
        try:
            gw = ipaddress.ip_address(sub.gateway_ip)
        except ValueError:
            raise InvalidInput(
                f"'{sub.gateway_ip}' is not a valid IP address",
                field="gateway_ip", resource="subnet",
            ) from None
        if gw not in net:
            raise InvalidInput(
                f"gateway_ip {gw} is not in {net}", field="gateway_ip", resource="subnet"
            )
    for other in m.subnets_of(sub.network_id):
        if other.network.overlaps(net):
            raise InvalidInput(
                f"cidr {net} overlaps with subnet {other.label()} ({other.cidr}) of the same"
                " network",
                field="cidr", resource="subnet", neutron_type="InvalidInput",
            )
    m.subnets[sub.id] = sub
    return sub


def reserved_address(net: IPNetwork, addr: IPAddress, router_port: bool) -> str:
    """Neutron's ``check_subnet_ip``: an IPv4 port may not take the network or broadcast
    address (except on /31 and /32), an IPv6 non-router port not the subnet-router anycast
    address. Returns what the address is, or "" if a port may use it."""
    if net.version == 4 and net.prefixlen < 31:
        if addr == net.network_address:
            return "network"
        if addr == net.broadcast_address:
            return "broadcast"
    if net.version == 6 and addr == net.network_address and not router_port:
        return "subnet-router anycast"
    return ""


def allocate(m: Storage, subnet: Subnet, taken: Callable[[str], bool] | set[str | None]) -> str:
    """The next free address of the subnet's pools, starting after the last one handed
    out (a cursor per subnet keeps allocation O(1) instead of rescanning the pool)."""
    is_taken: Callable[[str], bool] = taken.__contains__ if isinstance(taken, set) else taken
    net = subnet.network
    if subnet.allocation_pools:
        pools = [(int(ipaddress.ip_address(p.start)), int(ipaddress.ip_address(p.end)))
                 for p in subnet.allocation_pools]
    else:
        first = int(net.network_address) + 1
        last = int(net.broadcast_address) - (1 if net.version == 4 else 0)
        pools = [(first, last)]
    make = ipaddress.IPv4Address if net.version == 4 else ipaddress.IPv6Address
    hint = m.alloc_hint.get(subnet.id, pools[0][0])
    # Two passes: from the cursor to the end of the pools, then from the beginning.
    for lo_bound in (hint, None):
        for lo, hi in pools:
            a = lo if lo_bound is None else max(lo, lo_bound)
            stop = hi if lo_bound is None or lo_bound <= hi else lo - 1
            while a <= stop:
                text = str(make(a))
                if not is_taken(text) and text != subnet.gateway_ip:
                    m.alloc_hint[subnet.id] = a + 1
                    return text
                a += 1
    raise Conflict(
        f"No more IP addresses available on subnet {subnet.label()}.",
        field="fixed_ips", resource="port", neutron_type="IpAddressGenerationFailure",
    )
