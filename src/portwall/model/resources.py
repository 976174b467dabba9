"""The Neutron v2.0 resources portwall understands, with Neutron's field names and defaults.

These classes check *shape* (types, enums, address syntax) and apply per-resource
normalisation. Rules that need other resources (references, duplicates, "in use") live in
:mod:`portwall.model.store`, which is the only place resources are created or changed.
Unknown fields are rejected, as Neutron's API does.
"""

from __future__ import annotations

import ipaddress
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from portwall.model.errors import InvalidInput
from portwall.model.protocols import (
    ANY,
    ICMP_PROTOCOLS,
    IPV6_ICMP_LEGACY,
    IPV6_ONLY,
    PORT_PROTOCOLS,
    PROTOCOL_NUMBERS,
    protocol_number,
)

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Ethertype = Literal["IPv4", "IPv6"]
Direction = Literal["ingress", "egress"]

MAX_ADDRESS_PAIRS = 10


class Resource(BaseModel):
    """Common base: unknown fields are an error, aliases (``binding:host_id``) accepted."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, validate_assignment=False)

    id: str
    name: str = ""
    project_id: str = "default"

    def label(self) -> str:
        """Name if set, else id: what a person should read in messages."""
        return self.name or self.id


def parse_mac(value: str) -> str:
    """Canonical lower-case colon MAC, or ValueError."""
    text = value.strip().lower().replace("-", ":")
    parts = text.split(":")
    if len(parts) != 6 or not all(len(p) == 2 for p in parts):
        raise ValueError(f"'{value}' is not a valid MAC address")
    try:
        octets = [int(p, 16) for p in parts]
    except ValueError:
        raise ValueError(f"'{value}' is not a valid MAC address") from None
    if octets[0] & 1:
        raise ValueError(f"'{value}' is a multicast MAC address")
    if octets == [0] * 6:
        raise ValueError(f"'{value}' is not a valid MAC address")
    return text


def parse_ip_or_cidr(value: str) -> IPNetwork:
    """An address or CIDR; host bits are zeroed (Neutron's normalisation)."""
    try:
        return ipaddress.ip_network(str(value).strip(), strict=False)
    except ValueError:
        raise ValueError(f"'{value}' is not a valid IP address or CIDR") from None


class Network(Resource):
    admin_state_up: bool = True
    shared: bool = False
    mtu: int = 1500
    port_security_enabled: bool = True
    router_external: bool = Field(False, alias="router:external")
    description: str = ""


class AllocationPool(BaseModel):
    model_config = ConfigDict(extra="forbid")
    start: str
    end: str


class Subnet(Resource):
    network_id: str
    cidr: str
    ip_version: Literal[4, 6] = 4
    gateway_ip: str | None = None
    enable_dhcp: bool = True
    allocation_pools: list[AllocationPool] = Field(default_factory=list)
    dns_nameservers: list[str] = Field(default_factory=list)
    host_routes: list[dict[str, str]] = Field(default_factory=list)
    ipv6_address_mode: str | None = None
    ipv6_ra_mode: str | None = None
    description: str = ""

    @field_validator("cidr")
    @classmethod
    def _cidr(cls, v: str) -> str:
        return str(parse_ip_or_cidr(v))

    @property
    def network(self) -> IPNetwork:
        return ipaddress.ip_network(self.cidr)


class FixedIP(BaseModel):
    model_config = ConfigDict(extra="forbid")
    subnet_id: str | None = None
    ip_address: str | None = None

    @field_validator("ip_address")
    @classmethod
    def _ip(cls, v: str | None) -> str | None:
        if v is None:
            return None
        try:
            return str(ipaddress.ip_address(v.strip()))
        except ValueError:
            raise ValueError(f"'{v}' is not a valid IP address") from None


class AllowedAddressPair(BaseModel):
    """An extra source address (IP or CIDR, even 0.0.0.0/0) a port may use, with a MAC."""

    model_config = ConfigDict(extra="forbid")
    ip_address: str
    mac_address: str | None = None

    @field_validator("ip_address")
    @classmethod
    def _ip(cls, v: str) -> str:
        net = parse_ip_or_cidr(v)
        # Neutron keeps a bare address as given ("10.1.1.2"), a CIDR normalised.
        return str(net.network_address) if net.prefixlen == net.max_prefixlen else str(net)

    @field_validator("mac_address")
    @classmethod
    def _mac(cls, v: str | None) -> str | None:
        return None if v is None else parse_mac(v)

    @property
    def network(self) -> IPNetwork:
        return ipaddress.ip_network(self.ip_address)


class Port(Resource):
    network_id: str
    admin_state_up: bool = True
    mac_address: str | None = None
    fixed_ips: list[FixedIP] = Field(default_factory=list)
    allowed_address_pairs: list[AllowedAddressPair] = Field(default_factory=list)
    #: None = inherit the network's setting (Neutron's behaviour at create time).
    port_security_enabled: bool | None = None
    security_groups: list[str] | None = None
    device_owner: str = ""
    device_id: str = ""
    binding_host_id: str = Field("", alias="binding:host_id")
    description: str = ""

    @field_validator("mac_address")
    @classmethod
    def _mac(cls, v: str | None) -> str | None:
        return None if v is None else parse_mac(v)

    def addresses(self) -> list[IPAddress]:
        """The port's fixed IP addresses."""
        return [ipaddress.ip_address(f.ip_address) for f in self.fixed_ips if f.ip_address]

    @property
    def is_router_port(self) -> bool:
        return self.device_owner.startswith("network:router")

    @property
    def is_trusted(self) -> bool:
        """Neutron never filters network-owned ports (DHCP, router interfaces)."""
        return self.device_owner.startswith("network:")


class SecurityGroupRule(Resource):
    security_group_id: str
    direction: Direction
    ethertype: Ethertype = "IPv4"
    protocol: str | None = None
    port_range_min: int | None = None
    port_range_max: int | None = None
    remote_ip_prefix: str | None = None
    remote_group_id: str | None = None
    remote_address_group_id: str | None = None
    description: str = ""

    @field_validator("protocol", mode="before")
    @classmethod
    def _protocol(cls, v: object) -> str | None:
        if v is None:
            return None
        text = str(v).strip().lower()
        if text in ANY:
            return None
        if text in PROTOCOL_NUMBERS or text == "icmpv6":
            return text
        if text.isdigit() and 0 <= int(text) <= 255:
            return text
        raise ValueError(
            f"protocol '{v}' is not supported: use a name ({', '.join(sorted(PROTOCOL_NUMBERS))}),"
            " a number 0-255, or 'any'"
        )

    @property
    def protocol_number(self) -> int | None:
        return protocol_number(self.protocol)

    @property
    def remote_network(self) -> IPNetwork | None:
        return None if self.remote_ip_prefix is None else ipaddress.ip_network(self.remote_ip_prefix)

    def key(self) -> tuple[object, ...]:
        """What makes two rules the same rule (Neutron's duplicate check)."""
        prefix = self.remote_ip_prefix
        if prefix in ("0.0.0.0/0", "::/0"):
            prefix = None
        return (
            self.security_group_id,
            self.direction,
            self.ethertype,
            self.protocol_number,
            self.port_range_min,
            self.port_range_max,
            prefix,
            self.remote_group_id,
            self.remote_address_group_id,
        )


def normalize_rule(rule: SecurityGroupRule) -> SecurityGroupRule:
    """Neutron's validation and normalisation of one rule, on its own.

    Raises :class:`InvalidInput` naming the field. Returns a normalised copy.
    """
    r = rule.model_copy()
    where = "security_group_rule"
    # icmp under IPv6 means ipv6-icmp; protocol number 1 under IPv6 means 58.
    if r.ethertype == "IPv6" and r.protocol in IPV6_ICMP_LEGACY:
        r.protocol = "ipv6-icmp"
    elif r.ethertype == "IPv6" and r.protocol == "1":
        r.protocol = "58"
    proto = r.protocol_number
    if r.port_range_min is not None or r.port_range_max is not None:
        if proto is None:
            raise InvalidInput(
                "Must also specify protocol if port range is given.",
                field="protocol", resource=where,
                neutron_type="SecurityGroupProtocolRequiredWithPorts",
            )
        if proto in PORT_PROTOCOLS:
            if r.port_range_min == 0 or r.port_range_max == 0:
                raise InvalidInput(
                    "Invalid value for port 0.",
                    field="port_range_min" if r.port_range_min == 0 else "port_range_max",
                    resource=where, neutron_type="SecurityGroupInvalidPortValue",
                )
            for attr in ("port_range_min", "port_range_max"):
                value = getattr(r, attr)
                if value is not None and not 1 <= value <= 65535:
                    raise InvalidInput(
                        f"Invalid value for port {value}: ports are 1-65535.",
                        field=attr, resource=where,
                        neutron_type="SecurityGroupInvalidPortValue",
                    )
            if r.port_range_min is None or r.port_range_max is None:
                raise InvalidInput(
                    "For TCP/UDP protocols, port_range_min and port_range_max must both be"
                    " given.",
                    field="port_range_max" if r.port_range_max is None else "port_range_min",
                    resource=where, neutron_type="SecurityGroupInvalidPortRange",
                )
            if r.port_range_min > r.port_range_max:
                raise InvalidInput(
                    "For TCP/UDP protocols, port_range_min must be <= port_range_max.",
                    field="port_range_min", resource=where,
                    neutron_type="SecurityGroupInvalidPortRange",
                )
            if (r.port_range_min, r.port_range_max) == (1, 65535):
                r.port_range_min = r.port_range_max = None
        elif proto in ICMP_PROTOCOLS:
            for attr, what in (("port_range_min", "type"), ("port_range_max", "code")):
                value = getattr(r, attr)
                if value is not None and not 0 <= value <= 255:
                    raise InvalidInput(
                        f"Invalid value for ICMP {what} ({attr}) {value}: it must be 0 to 255.",
                        field=attr, resource=where, neutron_type="SecurityGroupInvalidIcmpValue",
                    )
            if r.port_range_min is None and r.port_range_max is not None:
                raise InvalidInput(
                    f"ICMP code (port_range_max) {r.port_range_max} is provided but ICMP type"
                    " (port_range_min) is missing.",
                    field="port_range_max", resource=where,
                    neutron_type="SecurityGroupMissingIcmpType",
                )
        else:
            raise InvalidInput(
                f"Invalid protocol {r.protocol} for port range, only supported for TCP, UDP,"
                " UDPLITE, SCTP, DCCP, ICMP and IPV6-ICMP protocols.",
                field="port_range_min" if r.port_range_min is not None else "port_range_max",
                resource=where, neutron_type="SecurityGroupInvalidProtocolForPort",
            )
    if r.ethertype == "IPv4" and proto in IPV6_ONLY:
        raise InvalidInput(
            f"Ethertype IPv4 is not supported for protocol {r.protocol}.",
            field="protocol", resource=where,
            neutron_type="SecurityGroupEthertypeConflictWithProtocol",
        )
    if r.remote_ip_prefix is not None:
        try:
            net = parse_ip_or_cidr(r.remote_ip_prefix)
        except ValueError as e:
            raise InvalidInput(str(e), field="remote_ip_prefix", resource=where) from None
        if r.ethertype != f"IPv{net.version}":
            raise InvalidInput(
                f"Conflicting value ethertype {r.ethertype} for CIDR {r.remote_ip_prefix}.",
                field="remote_ip_prefix", resource=where,
                neutron_type="SecurityGroupRuleParameterConflict",
            )
        r.remote_ip_prefix = str(net)
    remotes = [
        f for f in ("remote_ip_prefix", "remote_group_id", "remote_address_group_id")
        if getattr(r, f) is not None
    ]
    if len(remotes) > 1:
        raise InvalidInput(
            f"Only one of remote_ip_prefix, remote_group_id and remote_address_group_id may be"
            f" provided (got {', '.join(remotes)}).",
            field=remotes[1], resource=where,
            neutron_type="SecurityGroupRemoteGroupAndRemoteIpPrefix",
        )
    return r


class SecurityGroup(Resource):
    description: str = ""
    stateful: bool = True
    security_group_rules: list[SecurityGroupRule] = Field(default_factory=list)


class ExternalFixedIP(BaseModel):
    model_config = ConfigDict(extra="forbid")
    subnet_id: str | None = None
    ip_address: str | None = None


class ExternalGatewayInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")
    network_id: str
    enable_snat: bool = True
    external_fixed_ips: list[ExternalFixedIP] = Field(default_factory=list)


class Router(Resource):
    admin_state_up: bool = True
    external_gateway_info: ExternalGatewayInfo | None = None
    description: str = ""


class FloatingIP(Resource):
    floating_network_id: str
    floating_ip_address: str | None = None
    port_id: str | None = None
    fixed_ip_address: str | None = None
    router_id: str | None = None
    status: str = "DOWN"
    description: str = ""


FirewallAction = Literal["allow", "deny", "reject"]


class FirewallRule(Resource):
    description: str = ""
    protocol: Literal["tcp", "udp", "icmp"] | None = None
    ip_version: Literal[4, 6] = 4
    source_ip_address: str | None = None
    destination_ip_address: str | None = None
    source_port: str | None = None
    destination_port: str | None = None
    action: FirewallAction = "deny"
    enabled: bool = True
    shared: bool = False

    @field_validator("protocol", mode="before")
    @classmethod
    def _protocol(cls, v: object) -> object:
        return None if v is None or str(v).lower() in ANY else str(v).lower()

    @field_validator("source_ip_address", "destination_ip_address")
    @classmethod
    def _addr(cls, v: str | None) -> str | None:
        return None if v is None else str(parse_ip_or_cidr(v))

    @field_validator("source_port", "destination_port", mode="before")
    @classmethod
    def _port(cls, v: object) -> str | None:
        if v is None:
            return None
        text = str(v).strip()
        parts = text.split(":")
        try:
            nums = [int(p) for p in parts]
        except ValueError:
            raise ValueError(f"'{v}' is not a port or a range 'min:max'") from None
        if len(nums) > 2 or not all(1 <= n <= 65535 for n in nums) or nums != sorted(nums):
            raise ValueError(f"'{v}' is not a port 1-65535 or a range 'min:max' with min <= max")
        return text


class FirewallPolicy(Resource):
    description: str = ""
    firewall_rules: list[str] = Field(default_factory=list)
    audited: bool = False
    shared: bool = False


class FirewallGroup(Resource):
    description: str = ""
    ingress_firewall_policy_id: str | None = None
    egress_firewall_policy_id: str | None = None
    ports: list[str] = Field(default_factory=list)
    admin_state_up: bool = True
    shared: bool = False
