"""The Neutron v2.0 resources portwall understands, with Neutron's field names and defaults.

These classes check *shape* (types, enums, address syntax) and apply per-resource
normalisation. Rules that need other resources (references, duplicates, "in use") live in
:mod:`portwall.model.store`, which is the only place resources are created or changed.
Unknown fields are rejected, as Neutron's API does.

A validator that knows Neutron's exception for a bad value raises
``PydanticCustomError(<NeutronExceptionName>, message)``; :func:`portwall.model.store.parse`
turns the error type into the :class:`InvalidInput`'s ``neutron_type``.
"""

from __future__ import annotations

import ipaddress
from typing import Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator
from pydantic_core import PydanticCustomError

from portwall.model.errors import InvalidInput
from portwall.model.protocols import (
    ANY,
    ICMP_PROTOCOLS,
    IPV6_ICMP_LEGACY,
    IPV6_ONLY,
    PORT_PROTOCOLS,
    PROTOCOL_NUMBERS,
    protocol_name,
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
    #: Neutron still accepts the pre-Keystone-v3 spelling ``tenant_id``.
    project_id: str = Field("default", validation_alias=AliasChoices("project_id", "tenant_id"))

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
            return str(int(text))  # "06" and "6" are the same protocol
        raise PydanticCustomError(
            "SecurityGroupRuleInvalidProtocol",
            "Security group rule protocol {value} not supported. Only protocol values {names}"
            " and their integer representation (0 to 255) are supported.",
            {"value": str(v), "names": ", ".join(sorted(PROTOCOL_NUMBERS))},
        )

    @field_validator("ethertype", mode="before")
    @classmethod
    def _ethertype(cls, v: object) -> object:
        # Neutron compares ethertypes case-insensitively ("ipv4" is IPv4).
        if isinstance(v, str):
            for name in ("IPv4", "IPv6"):
                if v.strip().lower() == name.lower():
                    return name
        return v

    @field_validator("port_range_min", "port_range_max", mode="before")
    @classmethod
    def _port_value(cls, v: object) -> int | None:
        # Neutron's converter: any integer 0-65535 (strings of digits too), before it looks
        # at the protocol; what the value means (port, ICMP type/code) is checked later.
        if v is None:
            return None
        try:
            value = int(str(v).strip()) if not isinstance(v, bool) else None
        except ValueError:
            value = None
        if value is None or not 0 <= value <= 65535:
            raise PydanticCustomError("SecurityGroupInvalidPortValue",
                                      "Invalid value for port {port}.", {"port": str(v)})
        return value

    @property
    def protocol_number(self) -> int | None:
        """The protocol to match, None for any. Neutron's API lists "any or 0" together and
        iptables reads ``-p 0`` as all protocols, so 0 ("ip", "hopopt") means any here too."""
        number = protocol_number(self.protocol)
        return None if number == 0 else number

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
    """Neutron's validation and normalisation of one rule, on its own, in Neutron's order
    (canonical protocol, canonical port range, port range, remote prefix, ethertype vs
    protocol, remotes), so the same bad rule gets the same error as from Neutron.

    Raises :class:`InvalidInput` naming the field. Returns a normalised copy.
    """
    r = rule.model_copy()
    # icmp under IPv6 means ipv6-icmp; protocol number 1 under IPv6 means 58.
    if r.ethertype == "IPv6" and r.protocol in IPV6_ICMP_LEGACY:
        r.protocol = "ipv6-icmp"
    elif r.ethertype == "IPv6" and r.protocol == "1":
        r.protocol = "58"
    proto = protocol_number(r.protocol)  # raw: 0 is a protocol here, "any" only when matching
    # The whole range is "any port": stored as null so backends emit no port match.
    # (Only for protocols with ports: on ICMP 1/65535 is an invalid type/code, not "any".)
    if proto in PORT_PROTOCOLS and (r.port_range_min, r.port_range_max) == (1, 65535):
        r.port_range_min = r.port_range_max = None
    _check_port_range(r, proto)
    if r.remote_ip_prefix is not None:
        r.remote_ip_prefix = _check_prefix(r.remote_ip_prefix, r.ethertype)
    if r.ethertype == "IPv4" and proto in IPV6_ONLY:
        raise _rule_error(
            f"Ethertype IPv4 is not supported for protocol {r.protocol}: it exists only in"
            " IPv6 (use ethertype IPv6).",
            "protocol", "SecurityGroupEthertypeConflictWithProtocol")
    remotes = [
        f for f in ("remote_ip_prefix", "remote_group_id", "remote_address_group_id")
        if getattr(r, f) is not None
    ]
    if len(remotes) > 1:
        raise _rule_error(
            "Only one of remote_ip_prefix, remote_group_id and remote_address_group_id may be"
            f" provided (got {' and '.join(remotes)}).",
            remotes[1], "SecurityGroupMultipleRemoteEntites")
    return r


def _rule_error(message: str, field: str, neutron_type: str) -> InvalidInput:
    return InvalidInput(message, field=field, resource="security_group_rule",
                        neutron_type=neutron_type)


def _check_port_range(r: SecurityGroupRule, proto: int | None) -> None:
    """Neutron's ``_validate_port_range``: what port_range_min/max may hold per protocol."""
    lo, hi = r.port_range_min, r.port_range_max
    if lo is None and hi is None:
        return
    if proto is None:
        raise _rule_error("Must also specify protocol if port range is given.",
                          "protocol", "SecurityGroupProtocolRequiredWithPorts")
    if proto in PORT_PROTOCOLS:
        if lo == 0 or hi == 0:
            raise _rule_error(
                f"Invalid value for port 0: {protocol_name(proto)} ports are 1-65535.",
                "port_range_min" if lo == 0 else "port_range_max",
                "SecurityGroupInvalidPortValue")
        if lo is None or hi is None:
            raise _rule_error(
                f"For {protocol_name(proto).upper()} rules port_range_min and port_range_max"
                " must both be given (the same value for a single port).",
                "port_range_min" if lo is None else "port_range_max",
                "SecurityGroupInvalidPortRange")
        if lo > hi:
            raise _rule_error(
                f"For TCP/UDP protocols, port_range_min must be <= port_range_max (got {lo} >"
                f" {hi}).", "port_range_min", "SecurityGroupInvalidPortRange")
    elif proto in ICMP_PROTOCOLS:
        for attr, what, value in (("port_range_min", "type", lo), ("port_range_max", "code", hi)):
            if value is not None and not 0 <= value <= 255:
                raise _rule_error(
                    f"Invalid value for ICMP {what} ({attr}) {value}. It must be 0 to 255.",
                    attr, "SecurityGroupInvalidIcmpValue")
        if lo is None:
            raise _rule_error(
                f"ICMP code (port_range_max) {hi} is provided but ICMP type (port_range_min) is"
                " missing.", "port_range_max", "SecurityGroupMissingIcmpType")
    else:
        raise _rule_error(
            f"Invalid protocol {r.protocol} for port range: port ranges are only supported for"
            " TCP, UDP, UDPLITE, SCTP and DCCP (and ICMP type/code for ICMP and IPV6-ICMP).",
            "port_range_min" if lo is not None else "port_range_max",
            "SecurityGroupInvalidProtocolForPort")


def _check_prefix(prefix: str, ethertype: str) -> str:
    """The prefix as a CIDR with its host bits zeroed; its family must be the ethertype's."""
    try:
        net = parse_ip_or_cidr(prefix)
    except ValueError:
        raise _rule_error(f"'{prefix}' is not a valid IP address or CIDR.", "remote_ip_prefix",
                          "InvalidCIDR") from None
    if ethertype != f"IPv{net.version}":
        raise _rule_error(
            f"Conflicting value ethertype {ethertype} for CIDR {prefix}: the prefix is IPv"
            f"{net.version}.", "remote_ip_prefix", "SecurityGroupRuleParameterConflict")
    return str(net)


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


class RouterRoute(BaseModel):
    """One extra route of a router (the ``extraroute`` extension)."""

    model_config = ConfigDict(extra="forbid")
    destination: str
    nexthop: str


class Router(Resource):
    admin_state_up: bool = True
    external_gateway_info: ExternalGatewayInfo | None = None
    description: str = ""
    #: extra routes; set with ``PUT`` after the interfaces exist (see ``model.l3.set_routes``)
    routes: list[RouterRoute] = Field(default_factory=list)


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
        if v is None or str(v).strip().lower() in ANY:
            return None
        text = str(v).strip().lower()
        text = {"6": "tcp", "17": "udp", "1": "icmp"}.get(text, text)
        if text not in ("tcp", "udp", "icmp"):
            raise PydanticCustomError(
                "FirewallRuleInvalidProtocol",
                "Protocol {value} is not supported. Only protocol values tcp, udp, icmp (or"
                " their numbers 6, 17, 1) and null are supported.", {"value": str(v)})
        return text

    @field_validator("action", mode="before")
    @classmethod
    def _action(cls, v: object) -> object:
        text = str(v).strip().lower()
        if text not in ("allow", "deny", "reject"):
            raise PydanticCustomError(
                "FirewallRuleInvalidAction",
                "Action {value} is not supported. Only action values allow, deny and reject are"
                " supported.", {"value": str(v)})
        return text

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
            nums = []
        if not 1 <= len(nums) <= 2 or not all(1 <= n <= 65535 for n in nums) \
                or nums != sorted(nums):
            raise PydanticCustomError(
                "FirewallRuleInvalidPortValue",
                "Invalid value for port {port}: use a port 1-65535 or a range 'min:max' with"
                " min <= max.", {"port": str(v)})
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
