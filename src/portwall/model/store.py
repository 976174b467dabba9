"""The model: every resource of one deployment, changed only through Neutron's operations.

Each ``create_*`` / ``update_*`` / ``delete_*`` method applies the same checks and defaults
as Neutron's API (see ``shared/reference/neutron-semantics.md`` section 6) and raises a typed
error naming the field. A failed call leaves the model unchanged: every method validates
fully before it writes anything.

The topology-file loader and the API server both drive this class, so a file and an API call
can never disagree about what is valid.

A stored port, network or group is replaced by a new object when it changes, never edited in
place (a group's rule list only gains or loses whole rules): the incremental compiler
(``portwall.ir.compile.PlanCompiler``) recognises unchanged resources by identity.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from portwall.model import fwaas, l3
from portwall.model.errors import Conflict, InvalidInput, NotFound, PortwallError
from portwall.model.parsing import parse, required
from portwall.model.resources import (
    MAX_ADDRESS_PAIRS,
    AllowedAddressPair,
    FirewallGroup,
    FirewallPolicy,
    FirewallRule,
    FixedIP,
    FloatingIP,
    IPAddress,
    IPNetwork,
    Network,
    Port,
    Resource,
    Router,
    SecurityGroup,
    SecurityGroupRule,
    Subnet,
    normalize_rule,
)

#: A function that makes the id of a new resource from its kind and name.
IdFactory = Callable[[str, str], str]

_NAMESPACE = uuid.UUID("6d1f3c0e-4d5c-4e8e-9a55-70727477616c")  # "portwall" in the tail


def random_ids(kind: str, name: str) -> str:
    """Ids as Neutron makes them: random UUIDs."""
    return str(uuid.uuid4())


def stable_ids(scope: str = "") -> IdFactory:
    """Ids derived from (scope, kind, name, n): the same file always yields the same ids,
    which keeps rendered output byte-identical across runs."""
    seen: dict[tuple[str, str], int] = {}

    def make(kind: str, name: str) -> str:
        n = seen.get((kind, name), 0)
        seen[(kind, name)] = n + 1
        return str(uuid.uuid5(_NAMESPACE, f"{scope}/{kind}/{name}/{n}"))

    return make


def _reserved_address(net: IPNetwork, addr: IPAddress, router_port: bool) -> str:
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


class Model:
    """All resources of one deployment, keyed by id, with Neutron's create/update rules."""

    def __init__(self, id_factory: IdFactory = random_ids):
        self._new_id = id_factory
        self.networks: dict[str, Network] = {}
        self.subnets: dict[str, Subnet] = {}
        self.ports: dict[str, Port] = {}
        # Indexes kept by _index/_unindex so that creating a port stays O(1) in the number of
        # ports (scanning every port per create made building 10,000 ports quadratic).
        self._ip_owner: dict[tuple[str | None, str | None], str] = {}  # (subnet, ip) -> port
        self._mac_owner: dict[tuple[str, str | None], str] = {}  # (network, mac) -> port
        self._alloc_hint: dict[str, int] = {}  # subnet id -> next address to try
        self.security_groups: dict[str, SecurityGroup] = {}
        self.routers: dict[str, Router] = {}
        self.router_interfaces: dict[str, list[str]] = {}  # router id -> port ids
        self.floating_ips: dict[str, FloatingIP] = {}
        self.firewall_rules: dict[str, FirewallRule] = {}
        self.firewall_policies: dict[str, FirewallPolicy] = {}
        self.firewall_groups: dict[str, FirewallGroup] = {}

    # ------------------------------------------------------------------ lookups
    def _table(self, kind: str) -> dict[str, Any]:
        tables: dict[str, dict[str, Any]] = {
            "network": self.networks,
            "subnet": self.subnets,
            "port": self.ports,
            "security_group": self.security_groups,
            "router": self.routers,
            "floatingip": self.floating_ips,
            "firewall_rule": self.firewall_rules,
            "firewall_policy": self.firewall_policies,
            "firewall_group": self.firewall_groups,
        }
        return tables[kind]

    def get(self, kind: str, ref: str, *, field: str | None = None) -> Any:
        """A resource by id or (unique) name; :class:`NotFound` otherwise."""
        table = self._table(kind)
        if ref in table:
            return table[ref]
        named = [r for r in table.values() if r.name == ref]
        if len(named) == 1:
            return named[0]
        if len(named) > 1:
            raise Conflict(
                f"{len(named)} {kind}s are named '{ref}': use the id", field=field, resource=kind
            )
        nice = {"floatingip": "FloatingIP"}.get(kind) or "".join(
            p.capitalize() for p in kind.split("_"))
        raise NotFound(
            f"{kind.replace('_', ' ')} '{ref}' could not be found",
            field=field, resource=kind, neutron_type=f"{nice}NotFound",
        )

    def names(self, kind: str) -> list[str]:
        """The names in use for a kind of resource, sorted: for "did you mean" messages."""
        return sorted({r.name for r in self._table(kind).values() if r.name})

    def security_group_rule(self, rule_id: str) -> SecurityGroupRule:
        for sg in self.security_groups.values():
            for r in sg.security_group_rules:
                if r.id == rule_id:
                    return r
        raise NotFound(
            f"security group rule {rule_id} could not be found",
            resource="security_group_rule", neutron_type="SecurityGroupRuleNotFound",
        )

    def subnets_of(self, network_id: str) -> list[Subnet]:
        return [s for s in self.subnets.values() if s.network_id == network_id]

    def ports_in_group(self, sg_id: str) -> list[Port]:
        return [p for p in self.ports.values() if sg_id in (p.security_groups or ())]

    def default_group(self, project_id: str) -> SecurityGroup | None:
        for sg in self.security_groups.values():
            if sg.name == "default" and sg.project_id == project_id:
                return sg
        return None

    # ----------------------------------------------------------------- networks
    def create_network(self, body: Mapping[str, Any]) -> Network:
        data = {"id": self._new_id("network", str(body.get("name", ""))), **body}
        net = parse(Network, data, "network")
        self._unique_id("network", net.id)
        self.networks[net.id] = net
        return net

    def create_subnet(self, body: Mapping[str, Any]) -> Subnet:
        data = {"id": self._new_id("subnet", str(body.get("name", ""))), **body}
        if "network_id" in data:
            data["network_id"] = self.get("network", data["network_id"], field="network_id").id
        if "cidr" in data and "ip_version" not in data:
            with contextlib.suppress(ValueError):
                data["ip_version"] = ipaddress.ip_network(str(data["cidr"]), strict=False).version
        sub = parse(Subnet, data, "subnet")
        self._unique_id("subnet", sub.id)
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
        for other in self.subnets_of(sub.network_id):
            if other.network.overlaps(net):
                raise InvalidInput(
                    f"cidr {net} overlaps with subnet {other.label()} ({other.cidr}) of the same"
                    " network",
                    field="cidr", resource="subnet", neutron_type="InvalidInput",
                )
        self.subnets[sub.id] = sub
        return sub

    # ------------------------------------------------------------ security groups
    def ensure_default_group(self, project_id: str) -> SecurityGroup:
        """The project's ``default`` group, created on first use as Neutron does: egress to
        anywhere and ingress from members of the group itself, for IPv4 and IPv6."""
        existing = self.default_group(project_id)
        if existing:
            return existing
        sg_id = self._new_id("security_group", f"{project_id}/default")
        sg = SecurityGroup(id=sg_id, name="default", project_id=project_id,
                           description="Default security group")
        self.security_groups[sg.id] = sg
        for direction in ("egress", "ingress"):
            for ethertype in ("IPv4", "IPv6"):
                remote = sg.id if direction == "ingress" else None
                self._add_rule(sg, {"direction": direction, "ethertype": ethertype,
                                    "remote_group_id": remote})
        return sg

    def create_security_group(self, body: Mapping[str, Any]) -> SecurityGroup:
        body = dict(body)
        rules = body.pop("security_group_rules", None)
        data = {"id": self._new_id("security_group", str(body.get("name", ""))), **body}
        sg = parse(SecurityGroup, data, "security_group")
        self._unique_id("security_group", sg.id)
        if sg.name == "default":
            # Reserved: each project has exactly one, made by ensure_default_group.
            raise Conflict(
                "Default security group already exists: 'default' is reserved for the group"
                " Neutron creates for each project.", field="name",
                resource="security_group", neutron_type="SecurityGroupDefaultAlreadyExists",
            )
        self.ensure_default_group(sg.project_id)
        staged = SecurityGroup(**{**sg.model_dump(), "security_group_rules": []})
        self.security_groups[sg.id] = staged
        try:
            if rules is None:
                for ethertype in ("IPv4", "IPv6"):
                    self._add_rule(staged, {"direction": "egress", "ethertype": ethertype})
            else:
                for i, rule in enumerate(rules):
                    try:
                        self._add_rule(staged, rule)
                    except PortwallError as e:
                        e.resource = f"security_group_rules[{i}]"
                        raise
        except PortwallError:
            del self.security_groups[sg.id]
            raise
        return staged

    def create_security_group_rule(self, body: Mapping[str, Any]) -> SecurityGroupRule:
        if "security_group_id" not in body:
            raise required("security_group_id", "security_group_rule")
        sg = self.get("security_group", body["security_group_id"], field="security_group_id")
        return self._add_rule(sg, body)

    def _add_rule(self, sg: SecurityGroup, body: Mapping[str, Any]) -> SecurityGroupRule:
        """Validate (shape, then Neutron's rule checks, then references, then duplicates, in
        Neutron's order) and append one rule to ``sg``."""
        data = dict(body)
        if "tenant_id" not in data:
            data.setdefault("project_id", sg.project_id)
        data.setdefault("id", self._new_id("security_group_rule",
                                           f"{sg.id}/{len(sg.security_group_rules)}"))
        data["security_group_id"] = sg.id
        rule = normalize_rule(parse(SecurityGroupRule, data, "security_group_rule"))
        if rule.remote_group_id is not None:
            rule.remote_group_id = self.get(
                "security_group", rule.remote_group_id, field="remote_group_id"
            ).id
        if rule.remote_address_group_id is not None:
            # portwall has no address groups (yet): a reference can only dangle, and
            # ignoring it would silently widen the rule to "from anywhere".
            raise NotFound(
                f"Address group {rule.remote_address_group_id} could not be found.",
                field="remote_address_group_id", resource="security_group_rule",
                neutron_type="AddressGroupNotFound",
            )
        key = rule.key()
        for existing in sg.security_group_rules:
            if existing.key() == key:
                raise Conflict(
                    f"Security group rule already exists. Rule id is {existing.id}.",
                    resource="security_group_rule", neutron_type="SecurityGroupRuleExists",
                    ref=existing.id,
                )
        sg.security_group_rules.append(rule)
        return rule

    def delete_security_group_rule(self, rule_id: str) -> None:
        rule = self.security_group_rule(rule_id)
        sg = self.security_groups[rule.security_group_id]
        sg.security_group_rules = [r for r in sg.security_group_rules if r.id != rule_id]

    def update_security_group(self, ref: str, changes: Mapping[str, Any]) -> SecurityGroup:
        sg = self.get("security_group", ref)
        allowed = {"name", "description", "stateful"}
        for k in changes:
            if k not in allowed:
                raise InvalidInput(f"Cannot update read-only attribute {k}", field=k,
                                   resource="security_group", neutron_type="HTTPBadRequest")
        if "stateful" in changes and bool(changes["stateful"]) != sg.stateful and self.ports_in_group(sg.id):
            raise Conflict(
                f"Security group {sg.label()} is in use: stateful cannot change while ports use it",
                field="stateful", resource="security_group", neutron_type="SecurityGroupInUse",
            )
        if sg.name == "default" and "name" in changes and changes["name"] != "default":
            raise Conflict("Updating default security group not allowed.", field="name",
                           resource="security_group",
                           neutron_type="SecurityGroupCannotUpdateDefault")
        if changes.get("name") == "default" and sg.name != "default":
            raise Conflict("Default security group already exists.", field="name",
                           resource="security_group",
                           neutron_type="SecurityGroupDefaultAlreadyExists")
        updated = parse(SecurityGroup, {**sg.model_dump(), **changes}, "security_group")
        self.security_groups[sg.id] = updated
        return updated

    def delete_security_group(self, ref: str) -> None:
        sg = self.get("security_group", ref)
        users = self.ports_in_group(sg.id)
        if users:
            raise Conflict(
                f"Security Group {sg.id} in use by port(s) {', '.join(p.label() for p in users)}.",
                resource="security_group", neutron_type="SecurityGroupInUse",
            )
        if sg.name == "default":
            raise Conflict("Removing the default security group is not allowed.",
                           resource="security_group",
                           neutron_type="SecurityGroupCannotRemoveDefault")
        referrers = [
            r for other in self.security_groups.values() if other.id != sg.id
            for r in other.security_group_rules if r.remote_group_id == sg.id
        ]
        for r in referrers:
            self.delete_security_group_rule(r.id)
        del self.security_groups[sg.id]

    # -------------------------------------------------------------------- ports
    def create_port(self, body: Mapping[str, Any]) -> Port:
        data = {"id": self._new_id("port", str(body.get("name", ""))), **body}
        if "network_id" not in data:
            raise required("network_id", "port")
        net = self.get("network", data["network_id"], field="network_id")
        data["network_id"] = net.id
        _precheck_pairs(data)
        port = parse(Port, data, "port")
        self._unique_id("port", port.id)
        if port.port_security_enabled is None:
            port.port_security_enabled = net.port_security_enabled
        if port.mac_address is None:
            port.mac_address = self._generate_mac(port.id)
        self._check_mac_free(port)
        port.fixed_ips = self._resolve_fixed_ips(port, explicit="fixed_ips" in body)
        port.allowed_address_pairs = self._check_pairs(port)
        port.security_groups = self._resolve_groups(
            port, body.get("security_groups"), creating=True
        )
        self.ports[port.id] = port
        self._index(port)
        return port

    def update_port(self, ref: str, changes: Mapping[str, Any]) -> Port:
        """Neutron's ``port-update``; the port is replaced only if every check passes."""
        old = self.get("port", ref)
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
        self._check_mac_free(port, exclude=old.id)
        if "fixed_ips" in changes:
            port.fixed_ips = self._resolve_fixed_ips(port, explicit=True, exclude=old.id)
        turning_off = old.port_security_enabled and port.port_security_enabled is False
        if turning_off and "security_groups" not in changes and old.security_groups:
            raise Conflict(
                f"Port {old.label()} has security groups: remove them before disabling port"
                " security.",
                field="port_security_enabled", resource="port",
                neutron_type="PortSecurityPortHasSecurityGroup",
            )
        port.allowed_address_pairs = self._check_pairs(port)
        if "security_groups" in changes:
            port.security_groups = self._resolve_groups(port, changes["security_groups"],
                                                        creating=False)
        else:
            port.security_groups = list(old.security_groups or [])
        self._unindex(old)
        self.ports[old.id] = port
        self._index(port)
        return port

    def delete_port(self, ref: str) -> None:
        port = self.get("port", ref)
        for fip in self.floating_ips.values():
            if fip.port_id == port.id:
                fip.port_id = fip.fixed_ip_address = fip.router_id = None
                fip.status = "DOWN"
        self._unindex(port)
        del self.ports[port.id]

    def _index(self, port: Port) -> None:
        self._mac_owner[(port.network_id, port.mac_address)] = port.id
        for f in port.fixed_ips:
            self._ip_owner[(f.subnet_id, f.ip_address)] = port.id

    def _unindex(self, port: Port) -> None:
        self._mac_owner.pop((port.network_id, port.mac_address), None)
        for f in port.fixed_ips:
            if self._ip_owner.get((f.subnet_id, f.ip_address)) == port.id:
                del self._ip_owner[(f.subnet_id, f.ip_address)]

    def _generate_mac(self, seed: str) -> str:
        # Neutron's base_mac is fa:16:3e:00:00:00 with random low bytes; ours are derived
        # from the port id so a topology file always gets the same MACs.
        used = {mac for (_, mac) in self._mac_owner}
        n = 0
        while True:
            digest = hashlib.sha256(f"{seed}/{n}".encode()).digest()
            mac = "fa:16:3e:" + ":".join(f"{b:02x}" for b in digest[:3])
            if mac not in used:
                return mac
            n += 1

    def _check_mac_free(self, port: Port, exclude: str | None = None) -> None:
        owner = self._mac_owner.get((port.network_id, port.mac_address))
        if owner is not None and owner != exclude:
            raise Conflict(
                f"Unable to complete operation for network {port.network_id}. The mac address"
                f" {port.mac_address} is in use.",
                field="mac_address", resource="port", neutron_type="MacAddressInUse",
            )

    def _resolve_fixed_ips(
        self, port: Port, *, explicit: bool, exclude: str | None = None
    ) -> list[FixedIP]:
        subnets = self.subnets_of(port.network_id)

        def in_use(subnet_id: str, ip: str) -> bool:
            owner = self._ip_owner.get((subnet_id, ip))
            return owner is not None and owner != exclude
        requested = port.fixed_ips if explicit else [
            FixedIP(subnet_id=s.id) for s in subnets if s.ip_version == 4
        ][:1]
        out: list[FixedIP] = []
        for i, fip in enumerate(requested):
            field = f"fixed_ips[{i}]"
            subnet: Subnet | None = None
            if fip.subnet_id is not None:
                subnet = self.get("subnet", fip.subnet_id, field=f"{field}.subnet_id")
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
                reserved = _reserved_address(subnet.network, addr, port.is_router_port)
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
                ip = self._allocate(subnet, _taken_by(subnet.id, out, in_use))
                out.append(FixedIP(subnet_id=subnet.id, ip_address=ip))
        return out

    def _allocate(self, subnet: Subnet, taken: Callable[[str], bool] | set[str | None]) -> str:
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
        hint = self._alloc_hint.get(subnet.id, pools[0][0])
        # Two passes: from the cursor to the end of the pools, then from the beginning.
        for lo_bound in (hint, None):
            for lo, hi in pools:
                a = lo if lo_bound is None else max(lo, lo_bound)
                stop = hi if lo_bound is None or lo_bound <= hi else lo - 1
                while a <= stop:
                    text = str(make(a))
                    if not is_taken(text) and text != subnet.gateway_ip:
                        self._alloc_hint[subnet.id] = a + 1
                        return text
                    a += 1
        raise Conflict(
            f"No more IP addresses available on subnet {subnet.label()}.",
            field="fixed_ips", resource="port", neutron_type="IpAddressGenerationFailure",
        )

    def _check_pairs(self, port: Port) -> list[AllowedAddressPair]:
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

    def _resolve_groups(self, port: Port, requested: Any, *, creating: bool) -> list[str]:
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
            return [self.ensure_default_group(port.project_id).id]
        ids: list[str] = []
        for i, ref in enumerate(requested):
            sg = self.get("security_group", ref, field=f"security_groups[{i}]")
            if sg.id not in ids:
                ids.append(sg.id)
        modes = {self.security_groups[g].stateful for g in ids}
        if len(modes) > 1:
            stateless = [self.security_groups[g].label() for g in ids
                         if not self.security_groups[g].stateful]
            raise Conflict(
                "Cannot apply both stateful and stateless security groups on the same port at"
                f" the same time (stateless: {', '.join(stateless)}).",
                field="security_groups", resource="port",
                neutron_type="SecurityGroupConflict",
            )
        return ids

    # ------------------------------------------------------------ routers & NAT
    # The operations live in portwall.model.l3 (one module per API area); these are the
    # public entry points, so callers only ever need a Model.
    def create_router(self, body: Mapping[str, Any]) -> Router:
        return l3.create_router(self, body)

    def router_gateway_port(self, router_id: str) -> Port | None:
        """The router's port on its external network (None without a gateway)."""
        return l3.router_gateway_port(self, router_id)

    def add_router_interface(self, ref: str, body: Mapping[str, Any]) -> Port:
        """``PUT /routers/{id}/add_router_interface`` with ``subnet_id`` or ``port_id``."""
        return l3.add_router_interface(self, ref, body)

    def create_floatingip(self, body: Mapping[str, Any]) -> FloatingIP:
        return l3.create_floatingip(self, body)

    def update_floatingip(self, ref: str, changes: Mapping[str, Any]) -> FloatingIP:
        return l3.update_floatingip(self, ref, changes)

    # ------------------------------------------------------------------- FWaaS
    def create_firewall_rule(self, body: Mapping[str, Any]) -> FirewallRule:
        return fwaas.create_firewall_rule(self, body)

    def create_firewall_policy(self, body: Mapping[str, Any]) -> FirewallPolicy:
        return fwaas.create_firewall_policy(self, body)

    def create_firewall_group(self, body: Mapping[str, Any]) -> FirewallGroup:
        return fwaas.create_firewall_group(self, body)

    # ------------------------------------------------------------------ helpers
    def _unique_id(self, kind: str, rid: str) -> None:
        if rid in self._table(kind):
            raise Conflict(f"{kind} {rid} already exists", field="id", resource=kind,
                           neutron_type="IdInUse")

    def all_resources(self) -> Iterable[Resource]:
        for kind in ("network", "subnet", "port", "security_group", "router", "floatingip",
                     "firewall_rule", "firewall_policy", "firewall_group"):
            yield from self._table(kind).values()
