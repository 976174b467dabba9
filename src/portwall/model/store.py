"""The model: every resource of one deployment, changed only through Neutron's operations.

Each ``create_*`` / ``update_*`` / ``delete_*`` method applies the same checks and defaults
as Neutron's API (see ``shared/reference/neutron-semantics.md`` section 6) and raises a typed
error naming the field. A failed call leaves the model unchanged: every method validates
fully before it writes anything.

The topology-file loader and the API server both drive this class, so a file and an API call
can never disagree about what is valid.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from portwall.model.errors import Conflict, InvalidInput, NotFound, PortwallError
from portwall.model.resources import (
    MAX_ADDRESS_PAIRS,
    AllowedAddressPair,
    FirewallGroup,
    FirewallPolicy,
    FirewallRule,
    FixedIP,
    FloatingIP,
    Network,
    Port,
    Resource,
    Router,
    SecurityGroup,
    SecurityGroupRule,
    Subnet,
    normalize_rule,
)

R = TypeVar("R", bound=BaseModel)

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


def parse(cls: type[R], data: Mapping[str, Any], resource: str) -> R:
    """Validate ``data`` as ``cls``; pydantic's errors become :class:`InvalidInput`
    naming the first offending field."""
    try:
        return cls.model_validate(dict(data))
    except ValidationError as e:
        err = e.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or None
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = f"Unrecognized attribute '{field}'"
        elif msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        raise InvalidInput(msg, field=field, resource=resource) from None


class Model:
    """All resources of one deployment, keyed by id, with Neutron's create/update rules."""

    def __init__(self, id_factory: IdFactory = random_ids):
        self._new_id = id_factory
        self.networks: dict[str, Network] = {}
        self.subnets: dict[str, Subnet] = {}
        self.ports: dict[str, Port] = {}
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
        nice = "".join(p.capitalize() for p in kind.split("_"))
        raise NotFound(
            f"{kind.replace('_', ' ')} '{ref}' could not be found",
            field=field, resource=kind, neutron_type=f"{nice}NotFound",
        )

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
        if sg.name == "default" and self.default_group(sg.project_id) is not None:
            raise Conflict(
                "Default security group already exists.", field="name",
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
            raise InvalidInput("security_group_id is required", field="security_group_id",
                               resource="security_group_rule")
        sg = self.get("security_group", body["security_group_id"], field="security_group_id")
        return self._add_rule(sg, body)

    def _add_rule(self, sg: SecurityGroup, body: Mapping[str, Any]) -> SecurityGroupRule:
        data = dict(body)
        data.setdefault("id", self._new_id("security_group_rule", f"{sg.id}/{len(sg.security_group_rules)}"))
        data["security_group_id"] = sg.id
        data.setdefault("project_id", sg.project_id)
        if data.get("remote_group_id") is not None:
            data["remote_group_id"] = self.get(
                "security_group", data["remote_group_id"], field="remote_group_id"
            ).id
        rule = normalize_rule(parse(SecurityGroupRule, data, "security_group_rule"))
        key = rule.key()
        for existing in sg.security_group_rules:
            if existing.key() == key:
                raise Conflict(
                    f"Security group rule already exists. Rule id is {existing.id}.",
                    resource="security_group_rule", neutron_type="SecurityGroupRuleExists",
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
                                   resource="security_group")
        if "stateful" in changes and bool(changes["stateful"]) != sg.stateful and self.ports_in_group(sg.id):
            raise Conflict(
                f"Security group {sg.label()} is in use: stateful cannot change while ports use it",
                field="stateful", resource="security_group", neutron_type="SecurityGroupInUse",
            )
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
            raise InvalidInput("network_id is required", field="network_id", resource="port")
        net = self.get("network", data["network_id"], field="network_id")
        data["network_id"] = net.id
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
        return port

    def update_port(self, ref: str, changes: Mapping[str, Any]) -> Port:
        """Neutron's ``port-update``; the port is replaced only if every check passes."""
        old = self.get("port", ref)
        for k in ("id", "network_id", "project_id"):
            if k in changes and changes[k] != getattr(old, k):
                raise InvalidInput(f"Cannot update read-only attribute {k}", field=k,
                                   resource="port")
        data = {**old.model_dump(by_alias=True), **changes}
        port = parse(Port, data, "port")
        if port.port_security_enabled is None:
            port.port_security_enabled = old.port_security_enabled
        if port.mac_address is None:
            port.mac_address = old.mac_address
        others = {k: v for k, v in self.ports.items() if k != old.id}
        self._check_mac_free(port, others)
        if "fixed_ips" in changes:
            port.fixed_ips = self._resolve_fixed_ips(port, explicit=True, others=others)
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
        self.ports[old.id] = port
        return port

    def delete_port(self, ref: str) -> None:
        port = self.get("port", ref)
        for fip in self.floating_ips.values():
            if fip.port_id == port.id:
                fip.port_id = fip.fixed_ip_address = fip.router_id = None
                fip.status = "DOWN"
        del self.ports[port.id]

    def _generate_mac(self, seed: str) -> str:
        # Neutron's base_mac is fa:16:3e:00:00:00 with random low bytes; ours are derived
        # from the port id so a topology file always gets the same MACs.
        used = {p.mac_address for p in self.ports.values()}
        n = 0
        while True:
            digest = hashlib.sha256(f"{seed}/{n}".encode()).digest()
            mac = "fa:16:3e:" + ":".join(f"{b:02x}" for b in digest[:3])
            if mac not in used:
                return mac
            n += 1

    def _check_mac_free(self, port: Port, others: Mapping[str, Port] | None = None) -> None:
        for p in (self.ports if others is None else others).values():
            if p.network_id == port.network_id and p.mac_address == port.mac_address:
                raise Conflict(
                    f"Unable to complete operation for network {port.network_id}. The mac address"
                    f" {port.mac_address} is in use.",
                    field="mac_address", resource="port", neutron_type="MacAddressInUse",
                )

    def _resolve_fixed_ips(
        self, port: Port, *, explicit: bool, others: Mapping[str, Port] | None = None
    ) -> list[FixedIP]:
        others = self.ports if others is None else others
        subnets = self.subnets_of(port.network_id)
        used = {
            (f.subnet_id, f.ip_address)
            for p in others.values() for f in p.fixed_ips
        }
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
                if (subnet.id, str(addr)) in used or any(
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
                taken = {ip for (sid, ip) in used if sid == subnet.id} | {
                    o.ip_address for o in out
                }
                out.append(FixedIP(subnet_id=subnet.id, ip_address=self._allocate(subnet, taken)))
        return out

    @staticmethod
    def _allocate(subnet: Subnet, taken: set[str | None]) -> str:
        net = subnet.network
        pools: Iterable[tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...]]
        if subnet.allocation_pools:
            pools = [
                (ipaddress.ip_address(p.start), ipaddress.ip_address(p.end))
                for p in subnet.allocation_pools
            ]
        else:
            first = net.network_address + 1
            last = net.broadcast_address - (1 if net.version == 4 else 0)
            pools = [(first, last)]
        for start, end in pools:
            addr = start
            while addr <= end:  # type: ignore[operator]
                text = str(addr)
                if text not in taken and text != subnet.gateway_ip:
                    return text
                addr += 1
        raise Conflict(
            f"No more IP addresses available on subnet {subnet.label()}.",
            field="fixed_ips", resource="port", neutron_type="IpAddressGenerationFailure",
        )

    def _check_pairs(self, port: Port) -> list[AllowedAddressPair]:
        pairs = port.allowed_address_pairs
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
            key = (pair.ip_address, pair.mac_address or port.mac_address)
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
            if not creating or port.is_trusted:
                return []
            return [self.ensure_default_group(port.project_id).id]
        ids: list[str] = []
        for i, ref in enumerate(requested):
            sg = self.get("security_group", ref, field=f"security_groups[{i}]")
            if sg.id not in ids:
                ids.append(sg.id)
        modes = {self.security_groups[g].stateful for g in ids}
        if len(modes) > 1:
            raise InvalidInput(
                "Cannot apply both stateful and stateless security groups on the same port at"
                " the same time.",
                field="security_groups", resource="port",
                neutron_type="StatefulAndStatelessSecurityGroupsMixed",
            )
        return ids

    # ------------------------------------------------------------ routers & NAT
    def create_router(self, body: Mapping[str, Any]) -> Router:
        data = {"id": self._new_id("router", str(body.get("name", ""))), **body}
        gw = data.get("external_gateway_info")
        if gw and "network_id" in gw:
            net = self.get("network", gw["network_id"], field="external_gateway_info.network_id")
            if not net.router_external:
                raise InvalidInput(
                    f"network {net.label()} is not an external network",
                    field="external_gateway_info.network_id", resource="router",
                )
            data["external_gateway_info"] = {**gw, "network_id": net.id}
        router = parse(Router, data, "router")
        self._unique_id("router", router.id)
        self.routers[router.id] = router
        self.router_interfaces[router.id] = []
        return router

    def add_router_interface(self, ref: str, body: Mapping[str, Any]) -> Port:
        """``PUT /routers/{id}/add_router_interface`` with ``subnet_id`` or ``port_id``."""
        router = self.get("router", ref)
        if ("subnet_id" in body) == ("port_id" in body):
            raise InvalidInput("Either subnet_id or port_id must be specified",
                               field="subnet_id", resource="router")
        if "subnet_id" in body:
            subnet = self.get("subnet", body["subnet_id"], field="subnet_id")
            for pid in self.router_interfaces[router.id]:
                if any(f.subnet_id == subnet.id for f in self.ports[pid].fixed_ips):
                    raise InvalidInput(
                        f"Router already has a port on subnet {subnet.label()}",
                        field="subnet_id", resource="router",
                    )
            if subnet.gateway_ip is None:
                raise InvalidInput(f"subnet {subnet.label()} has no gateway_ip",
                                   field="subnet_id", resource="router")
            port = self.create_port({
                "name": f"{router.label()}-{subnet.label()}",
                "network_id": subnet.network_id,
                "fixed_ips": [{"subnet_id": subnet.id, "ip_address": subnet.gateway_ip}],
                "device_owner": "network:router_interface",
                "device_id": router.id,
            })
        else:
            port = self.get("port", body["port_id"], field="port_id")
            if port.device_id and port.device_id != router.id:
                raise Conflict(f"port {port.label()} is in use by {port.device_id}",
                               field="port_id", resource="router", neutron_type="PortInUse")
            port.device_owner, port.device_id = "network:router_interface", router.id
        self.router_interfaces[router.id].append(port.id)
        return port

    def create_floatingip(self, body: Mapping[str, Any]) -> FloatingIP:
        data = {"id": self._new_id("floatingip", str(body.get("floating_ip_address", "")
                                                     or body.get("name", ""))), **body}
        if "floating_network_id" not in data:
            raise InvalidInput("floating_network_id is required", field="floating_network_id",
                               resource="floatingip")
        net = self.get("network", data["floating_network_id"], field="floating_network_id")
        if not net.router_external:
            raise InvalidInput(f"network {net.label()} is not an external network",
                               field="floating_network_id", resource="floatingip")
        data["floating_network_id"] = net.id
        fip = parse(FloatingIP, data, "floatingip")
        self._unique_id("floatingip", fip.id)
        if fip.floating_ip_address is None:
            ext = [s for s in self.subnets_of(net.id) if s.ip_version == 4]
            if not ext:
                raise InvalidInput(f"external network {net.label()} has no IPv4 subnet",
                                   field="floating_network_id", resource="floatingip")
            taken = {f.floating_ip_address for f in self.floating_ips.values()} | {
                f.ip_address for p in self.ports.values() for f in p.fixed_ips
            }
            fip.floating_ip_address = self._allocate(ext[0], taken)
        self.floating_ips[fip.id] = fip
        if fip.port_id:
            self._associate(fip, fip.port_id, fip.fixed_ip_address)
        return fip

    def update_floatingip(self, ref: str, changes: Mapping[str, Any]) -> FloatingIP:
        fip = self.get("floatingip", ref)
        unknown = set(changes) - {"port_id", "fixed_ip_address", "description"}
        if unknown:
            field = sorted(unknown)[0]
            raise InvalidInput(f"Cannot update attribute {field}", field=field,
                               resource="floatingip")
        if changes.get("port_id"):
            self._associate(fip, changes["port_id"], changes.get("fixed_ip_address"))
        elif "port_id" in changes:
            fip.port_id = fip.fixed_ip_address = fip.router_id = None
            fip.status = "DOWN"
        return fip

    def _associate(self, fip: FloatingIP, port_ref: str, fixed_ip: str | None) -> None:
        port = self.get("port", port_ref, field="port_id")
        addrs = [f for f in port.fixed_ips if f.ip_address and
                 ipaddress.ip_address(f.ip_address).version == 4]
        if fixed_ip is not None:
            addrs = [f for f in addrs if f.ip_address == fixed_ip]
        if not addrs:
            raise InvalidInput(f"port {port.label()} has no IPv4 fixed IP"
                               + (f" {fixed_ip}" if fixed_ip else ""),
                               field="fixed_ip_address", resource="floatingip")
        chosen = addrs[0]
        router_id = None
        for rid, pids in self.router_interfaces.items():
            gw = self.routers[rid].external_gateway_info
            if gw is None or gw.network_id != fip.floating_network_id:
                continue
            if any(f.subnet_id == chosen.subnet_id for pid in pids
                   for f in self.ports[pid].fixed_ips):
                router_id = rid
                break
        if router_id is None:
            raise NotFound(
                f"External network {fip.floating_network_id} is not reachable from subnet"
                f" {chosen.subnet_id}: no router connects them.",
                field="port_id", resource="floatingip",
                neutron_type="ExternalGatewayForFloatingIPNotFound",
            )
        for other in self.floating_ips.values():
            if other.id != fip.id and other.port_id == port.id and \
                    other.fixed_ip_address == chosen.ip_address:
                raise Conflict(
                    f"fixed IP {chosen.ip_address} of port {port.label()} already has floating IP"
                    f" {other.floating_ip_address}",
                    field="port_id", resource="floatingip", neutron_type="FloatingIPPortAlreadyAssociated",
                )
        fip.port_id, fip.fixed_ip_address, fip.router_id = port.id, chosen.ip_address, router_id
        fip.status = "ACTIVE"

    # ------------------------------------------------------------------- FWaaS
    def create_firewall_rule(self, body: Mapping[str, Any]) -> FirewallRule:
        data = {"id": self._new_id("firewall_rule", str(body.get("name", ""))), **body}
        rule = parse(FirewallRule, data, "firewall_rule")
        self._unique_id("firewall_rule", rule.id)
        for f in ("source_ip_address", "destination_ip_address"):
            v = getattr(rule, f)
            if v is not None and ipaddress.ip_network(v).version != rule.ip_version:
                raise InvalidInput(f"{v} is not an IPv{rule.ip_version} address",
                                   field=f, resource="firewall_rule",
                                   neutron_type="FirewallIpAddressConflict")
        if rule.protocol in (None, "icmp") and (rule.source_port or rule.destination_port):
            field = "source_port" if rule.source_port else "destination_port"
            raise InvalidInput(
                "Source/destination port requires a protocol of tcp or udp",
                field=field, resource="firewall_rule",
                neutron_type="FirewallRuleInvalidICMPParameter"
                if rule.protocol == "icmp" else "FirewallRuleWithPortWithoutProtocolInvalid",
            )
        self.firewall_rules[rule.id] = rule
        return rule

    def create_firewall_policy(self, body: Mapping[str, Any]) -> FirewallPolicy:
        data = {"id": self._new_id("firewall_policy", str(body.get("name", ""))), **body}
        refs = data.get("firewall_rules") or []
        data["firewall_rules"] = [
            self.get("firewall_rule", r, field=f"firewall_rules[{i}]").id
            for i, r in enumerate(refs)
        ]
        if len(set(data["firewall_rules"])) != len(data["firewall_rules"]):
            raise InvalidInput("a firewall rule may appear only once in a policy",
                               field="firewall_rules", resource="firewall_policy")
        policy = parse(FirewallPolicy, data, "firewall_policy")
        self._unique_id("firewall_policy", policy.id)
        self.firewall_policies[policy.id] = policy
        return policy

    def create_firewall_group(self, body: Mapping[str, Any]) -> FirewallGroup:
        data = {"id": self._new_id("firewall_group", str(body.get("name", ""))), **body}
        for f in ("ingress_firewall_policy_id", "egress_firewall_policy_id"):
            if data.get(f) is not None:
                data[f] = self.get("firewall_policy", data[f], field=f).id
        ports = []
        for i, ref in enumerate(data.get("ports") or []):
            port = self.get("port", ref, field=f"ports[{i}]")
            if not port.is_router_port:
                raise InvalidInput(
                    f"port {port.label()} is not a router port", field=f"ports[{i}]",
                    resource="firewall_group", neutron_type="FirewallGroupPortInvalid",
                )
            for other in self.firewall_groups.values():
                if port.id in other.ports:
                    raise Conflict(
                        f"port {port.label()} is already in firewall group {other.label()}",
                        field=f"ports[{i}]", resource="firewall_group",
                        neutron_type="FirewallGroupPortInUse",
                    )
            ports.append(port.id)
        data["ports"] = ports
        group = parse(FirewallGroup, data, "firewall_group")
        self._unique_id("firewall_group", group.id)
        self.firewall_groups[group.id] = group
        return group

    # ------------------------------------------------------------------ helpers
    def _unique_id(self, kind: str, rid: str) -> None:
        if rid in self._table(kind):
            raise Conflict(f"{kind} {rid} already exists", field="id", resource=kind)

    def all_resources(self) -> Iterable[Resource]:
        for kind in ("network", "subnet", "port", "security_group", "router", "floatingip",
                     "firewall_rule", "firewall_policy", "firewall_group"):
            yield from self._table(kind).values()
