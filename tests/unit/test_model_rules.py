"""Security-group rules: every validation error and normalisation of neutron-semantics.md §6.

Each failing case checks the HTTP status class, Neutron's exception name and the field, because
the API maps exactly these to ``{"NeutronError": {"type", "message", "detail"}}``.
"""

from __future__ import annotations

from typing import Any

import pytest

from portwall.model import Conflict, InvalidInput, Model, NotFound, PortwallError, stable_ids
from portwall.model.resources import SecurityGroup


@pytest.fixture
def model() -> Model:
    return Model(stable_ids("t"))


@pytest.fixture
def sg(model: Model) -> SecurityGroup:
    return model.create_security_group({"name": "web"})


def add(model: Model, sg: SecurityGroup, **rule: Any) -> Any:
    return model.create_security_group_rule({"security_group_id": sg.id, "direction": "ingress",
                                             **rule})


def fails(fn: Any, *args: Any, status: int, neutron_type: str, field: str | None,
          **kwargs: Any) -> PortwallError:
    """Call ``fn(*args, **kwargs)``; it must raise this typed error naming this field."""
    with pytest.raises(PortwallError) as info:
        fn(*args, **kwargs)
    err = info.value
    assert (err.status, err.neutron_type, err.field) == (status, neutron_type, field), str(err)
    body = err.to_neutron()["NeutronError"]
    assert body["type"] == neutron_type and body["message"] and body["detail"] == ""
    return err


# ------------------------------------------------------------------ errors (400)
@pytest.mark.parametrize(
    ("rule", "neutron_type", "field"),
    [
        # more than one remote
        ({"remote_ip_prefix": "10.0.0.0/8", "remote_group_id": "web"},
         "SecurityGroupMultipleRemoteEntites", "remote_group_id"),
        ({"remote_group_id": "web", "remote_address_group_id": "ag1"},
         "SecurityGroupMultipleRemoteEntites", "remote_address_group_id"),
        # ports without a protocol
        ({"port_range_min": 22, "port_range_max": 22}, "SecurityGroupProtocolRequiredWithPorts",
         "protocol"),
        ({"protocol": "any", "port_range_min": 22, "port_range_max": 22},
         "SecurityGroupProtocolRequiredWithPorts", "protocol"),
        # min > max
        ({"protocol": "tcp", "port_range_min": 90, "port_range_max": 80},
         "SecurityGroupInvalidPortRange", "port_range_min"),
        # port 0 for tcp/udp/dccp/sctp
        ({"protocol": "tcp", "port_range_min": 0, "port_range_max": 80},
         "SecurityGroupInvalidPortValue", "port_range_min"),
        ({"protocol": "udp", "port_range_min": 1, "port_range_max": 0},
         "SecurityGroupInvalidPortValue", "port_range_max"),
        ({"protocol": "dccp", "port_range_min": 0, "port_range_max": 0},
         "SecurityGroupInvalidPortValue", "port_range_min"),
        ({"protocol": "sctp", "port_range_min": 0, "port_range_max": 5},
         "SecurityGroupInvalidPortValue", "port_range_min"),
        # only one of min/max for tcp
        ({"protocol": "tcp", "port_range_min": 22}, "SecurityGroupInvalidPortRange",
         "port_range_max"),
        ({"protocol": "tcp", "port_range_max": 22}, "SecurityGroupInvalidPortRange",
         "port_range_min"),
        # out of any port's range, whatever the protocol (Neutron's converter)
        ({"protocol": "tcp", "port_range_min": 1, "port_range_max": 65536},
         "SecurityGroupInvalidPortValue", "port_range_max"),
        ({"protocol": "tcp", "port_range_min": -1, "port_range_max": 5},
         "SecurityGroupInvalidPortValue", "port_range_min"),
        ({"protocol": "tcp", "port_range_min": "http", "port_range_max": 80},
         "SecurityGroupInvalidPortValue", "port_range_min"),
        # ICMP type/code > 255, code without type
        ({"protocol": "icmp", "port_range_min": 256}, "SecurityGroupInvalidIcmpValue",
         "port_range_min"),
        ({"protocol": "icmp", "port_range_min": 8, "port_range_max": 300},
         "SecurityGroupInvalidIcmpValue", "port_range_max"),
        ({"protocol": "icmp", "port_range_max": 0}, "SecurityGroupMissingIcmpType",
         "port_range_max"),
        # ports on a protocol without ports
        ({"protocol": "gre", "port_range_min": 1, "port_range_max": 2},
         "SecurityGroupInvalidProtocolForPort", "port_range_min"),
        ({"protocol": "47", "port_range_max": 2}, "SecurityGroupInvalidProtocolForPort",
         "port_range_max"),
        # IPv6-only protocols with IPv4
        ({"protocol": "ipv6-icmp"}, "SecurityGroupEthertypeConflictWithProtocol", "protocol"),
        ({"protocol": "58"}, "SecurityGroupEthertypeConflictWithProtocol", "protocol"),
        ({"protocol": "icmpv6"}, "SecurityGroupEthertypeConflictWithProtocol", "protocol"),
        ({"protocol": "ipv6-frag"}, "SecurityGroupEthertypeConflictWithProtocol", "protocol"),
        # prefix of the other family
        ({"remote_ip_prefix": "2001:db8::/64"}, "SecurityGroupRuleParameterConflict",
         "remote_ip_prefix"),
        ({"ethertype": "IPv6", "remote_ip_prefix": "10.0.0.0/8"},
         "SecurityGroupRuleParameterConflict", "remote_ip_prefix"),
        ({"remote_ip_prefix": "10.0.0.300/8"}, "InvalidCIDR", "remote_ip_prefix"),
        # bad protocol / ethertype / direction
        ({"protocol": "tcpp"}, "SecurityGroupRuleInvalidProtocol", "protocol"),
        ({"protocol": "256"}, "SecurityGroupRuleInvalidProtocol", "protocol"),
        ({"ethertype": "IPv5"}, "InvalidInput", "ethertype"),
        ({"direction": "sideways"}, "InvalidInput", "direction"),
        # unknown fields
        ({"port": 22}, "HTTPBadRequest", "port"),
    ],
)
def test_invalid_rule(model: Model, sg: SecurityGroup, rule: dict[str, Any], neutron_type: str,
                      field: str) -> None:
    before = list(sg.security_group_rules)
    err = fails(add, model, sg, **rule, status=400, neutron_type=neutron_type, field=field)
    assert isinstance(err, InvalidInput)
    assert sg.security_group_rules == before  # a failed call changes nothing


def test_multiple_remotes_message_names_them(model: Model, sg: SecurityGroup) -> None:
    with pytest.raises(InvalidInput, match="remote_ip_prefix and remote_group_id"):
        add(model, sg, remote_ip_prefix="10.0.0.0/8", remote_group_id=sg.id)


def test_unknown_remote_group_is_404(model: Model, sg: SecurityGroup) -> None:
    err = fails(add, model, sg, remote_group_id="nope", status=404,
                neutron_type="SecurityGroupNotFound", field="remote_group_id")
    assert isinstance(err, NotFound)


def test_remote_address_group_is_404(model: Model, sg: SecurityGroup) -> None:
    # No address groups exist in portwall; ignoring the field would widen the rule.
    fails(add, model, sg, remote_address_group_id="ag1", status=404,
          neutron_type="AddressGroupNotFound", field="remote_address_group_id")


def test_missing_security_group_id(model: Model) -> None:
    fails(model.create_security_group_rule, {"direction": "ingress"}, status=400,
          neutron_type="HTTPBadRequest", field="security_group_id")


def test_rule_on_unknown_group(model: Model) -> None:
    fails(model.create_security_group_rule, {"security_group_id": "x", "direction": "ingress"},
          status=404, neutron_type="SecurityGroupNotFound", field="security_group_id")


def test_missing_direction(model: Model, sg: SecurityGroup) -> None:
    fails(model.create_security_group_rule, {"security_group_id": sg.id}, status=400,
          neutron_type="HTTPBadRequest", field="direction")


# ------------------------------------------------------------ duplicates (409)
@pytest.mark.parametrize(
    ("first", "second"),
    [
        ({"protocol": "tcp", "port_range_min": 22, "port_range_max": 22},
         {"protocol": "6", "port_range_min": 22, "port_range_max": 22}),
        ({"protocol": "udp"}, {"protocol": "UDP"}),
        ({"protocol": "tcp"}, {"protocol": "tcp", "remote_ip_prefix": "0.0.0.0/0"}),
        ({"ethertype": "IPv6", "protocol": "tcp", "remote_ip_prefix": "::/0"},
         {"ethertype": "IPv6", "protocol": "tcp"}),
        ({"protocol": "tcp", "port_range_min": 1, "port_range_max": 65535}, {"protocol": "tcp"}),
        ({"protocol": "icmp", "port_range_min": 8}, {"protocol": "1", "port_range_min": 8}),
        ({"ethertype": "IPv6", "protocol": "icmp"}, {"ethertype": "IPv6", "protocol": "58"}),
        ({"remote_ip_prefix": "10.1.2.3/8"}, {"remote_ip_prefix": "10.0.0.0/8"}),
        ({"ethertype": "ipv4", "protocol": "tcp"}, {"ethertype": "IPv4", "protocol": "tcp"}),
    ],
)
def test_duplicate_rule_is_409(model: Model, sg: SecurityGroup, first: dict[str, Any],
                               second: dict[str, Any]) -> None:
    existing = add(model, sg, **first)
    err = fails(add, model, sg, **second, status=409, neutron_type="SecurityGroupRuleExists",
                field=None)
    assert isinstance(err, Conflict)
    assert existing.id in err.message


def test_not_duplicates(model: Model, sg: SecurityGroup) -> None:
    add(model, sg, protocol="tcp", port_range_min=22, port_range_max=22)
    add(model, sg, protocol="tcp", port_range_min=22, port_range_max=23)
    add(model, sg, protocol="tcp", port_range_min=22, port_range_max=22, direction="egress")
    add(model, sg, protocol="tcp", port_range_min=22, port_range_max=22,
        remote_ip_prefix="10.0.0.0/8")
    add(model, sg, protocol="tcp", port_range_min=22, port_range_max=22, remote_group_id=sg.id)
    add(model, sg, protocol="udp", port_range_min=22, port_range_max=22)
    add(model, sg, ethertype="IPv6", protocol="tcp", port_range_min=22, port_range_max=22)


def test_default_egress_rule_restated_is_duplicate(model: Model, sg: SecurityGroup) -> None:
    fails(model.create_security_group_rule,
          {"security_group_id": sg.id, "direction": "egress", "remote_ip_prefix": "0.0.0.0/0"},
          status=409, neutron_type="SecurityGroupRuleExists", field=None)


# -------------------------------------------------------------- normalisation
def test_full_port_range_becomes_null(model: Model, sg: SecurityGroup) -> None:
    r = add(model, sg, protocol="tcp", port_range_min=1, port_range_max=65535)
    assert (r.port_range_min, r.port_range_max) == (None, None)
    r = add(model, sg, protocol="udp", port_range_min="1", port_range_max="65535")
    assert (r.port_range_min, r.port_range_max) == (None, None)


def test_partial_port_range_is_kept(model: Model, sg: SecurityGroup) -> None:
    r = add(model, sg, protocol="tcp", port_range_min=1, port_range_max=1024)
    assert (r.port_range_min, r.port_range_max) == (1, 1024)
    r = add(model, sg, protocol="tcp", port_range_min="8080", port_range_max="8080")
    assert (r.port_range_min, r.port_range_max) == (8080, 8080)


def test_icmp_under_ipv6_becomes_ipv6_icmp(model: Model, sg: SecurityGroup) -> None:
    assert add(model, sg, ethertype="IPv6", protocol="icmp").protocol == "ipv6-icmp"
    assert add(model, sg, ethertype="IPv6", protocol="icmpv6",
               port_range_min=128).protocol == "ipv6-icmp"


def test_protocol_1_under_ipv6_becomes_58(model: Model, sg: SecurityGroup) -> None:
    r = add(model, sg, ethertype="IPv6", protocol="1")
    assert (r.protocol, r.protocol_number) == ("58", 58)


def test_icmp_under_ipv4_is_kept(model: Model, sg: SecurityGroup) -> None:
    assert add(model, sg, protocol="icmp").protocol == "icmp"
    assert add(model, sg, protocol="1", port_range_min=8).protocol == "1"


def test_cidr_host_bits_zeroed(model: Model, sg: SecurityGroup) -> None:
    assert add(model, sg, remote_ip_prefix="10.1.2.3/8").remote_ip_prefix == "10.0.0.0/8"
    assert add(model, sg, remote_ip_prefix="192.168.1.7").remote_ip_prefix == "192.168.1.7/32"
    r = add(model, sg, ethertype="IPv6", remote_ip_prefix="2001:db8::1/64")
    assert r.remote_ip_prefix == "2001:db8::/64"


@pytest.mark.parametrize("spelling", ["any", "ANY", "", None])
def test_any_protocol_becomes_null(model: Model, spelling: str | None) -> None:
    sg = model.create_security_group({"name": f"g-{spelling}"})
    r = add(model, sg, protocol=spelling)
    assert r.protocol is None and r.protocol_number is None


def test_protocol_names_case_insensitive(model: Model, sg: SecurityGroup) -> None:
    r = add(model, sg, protocol="TCP", port_range_min=80, port_range_max=80)
    assert (r.protocol, r.protocol_number) == ("tcp", 6)


def test_ethertype_case_insensitive(model: Model, sg: SecurityGroup) -> None:
    assert add(model, sg, ethertype="ipv6").ethertype == "IPv6"


def test_icmp_type_and_code_kept(model: Model, sg: SecurityGroup) -> None:
    r = add(model, sg, protocol="icmp", port_range_min=3, port_range_max=4)
    assert (r.port_range_min, r.port_range_max) == (3, 4)
    r = add(model, sg, protocol="icmp", port_range_min=0, port_range_max=0)
    assert (r.port_range_min, r.port_range_max) == (0, 0)


def test_remote_group_by_name_resolves_to_id(model: Model, sg: SecurityGroup) -> None:
    other = model.create_security_group({"name": "db"})
    assert add(model, sg, remote_group_id="db").remote_group_id == other.id


def test_tenant_id_accepted_as_project_id(model: Model, sg: SecurityGroup) -> None:
    r = model.create_security_group_rule({"security_group_id": sg.id, "direction": "ingress",
                                          "tenant_id": "p1"})
    assert r.project_id == "p1"


@pytest.mark.parametrize("spelling", ["0", "ip", "hopopt"])
def test_protocol_zero_matches_any(model: Model, sg: SecurityGroup, spelling: str) -> None:
    r = add(model, sg, protocol=spelling)
    assert r.protocol_number is None
    fails(add, model, sg, protocol="any", status=409, neutron_type="SecurityGroupRuleExists",
          field=None)


def test_ports_on_protocol_zero_are_invalid(model: Model, sg: SecurityGroup) -> None:
    fails(add, model, sg, protocol="0", port_range_min=1, port_range_max=2, status=400,
          neutron_type="SecurityGroupInvalidProtocolForPort", field="port_range_min")
