"""Routers, floating IPs and FWaaS v2: references, external networks, router paths (§6)."""

from __future__ import annotations

from typing import Any

import pytest

from portwall.model import Model, PortwallError, stable_ids


def fails(fn: Any, *args: Any, status: int, neutron_type: str, field: str | None,
          **kwargs: Any) -> PortwallError:
    """Call ``fn``; it must raise this typed error naming this field."""
    with pytest.raises(PortwallError) as info:
        fn(*args, **kwargs)
    err = info.value
    assert (err.status, err.neutron_type, err.field) == (status, neutron_type, field), str(err)
    return err


@pytest.fixture
def model() -> Model:
    m = Model(stable_ids("t"))
    m.create_network({"name": "public", "router:external": True})
    m.create_subnet({"name": "public-sub", "network_id": "public", "cidr": "203.0.113.0/24"})
    m.create_network({"name": "net"})
    m.create_subnet({"name": "sub", "network_id": "net", "cidr": "10.0.0.0/24"})
    m.create_network({"name": "lonely"})
    m.create_subnet({"name": "lonely-sub", "network_id": "lonely", "cidr": "10.9.0.0/24"})
    m.create_port({"name": "vm", "network_id": "net", "fixed_ips": [{"ip_address": "10.0.0.5"}]})
    m.create_port({"name": "vm2", "network_id": "lonely"})
    return m


@pytest.fixture
def router(model: Model) -> Any:
    r = model.create_router({"name": "r1", "external_gateway_info": {"network_id": "public"}})
    model.add_router_interface("r1", {"subnet_id": "sub"})
    return r


# ------------------------------------------------------------------ routers
def test_router_gateway_port_gets_an_external_address(model: Model, router: Any) -> None:
    gw = model.router_gateway_port(router.id)
    assert gw is not None and gw.is_trusted and gw.security_groups == []
    info = router.external_gateway_info
    assert info.enable_snat is True
    assert [f.ip_address for f in info.external_fixed_ips] == [gw.fixed_ips[0].ip_address]
    assert gw.fixed_ips[0].ip_address.startswith("203.0.113.")


def test_router_gateway_fixed_ip_taken_is_409(model: Model) -> None:
    model.create_port({"network_id": "public", "fixed_ips": [{"ip_address": "203.0.113.9"}]})
    fails(model.create_router,
          {"name": "r", "external_gateway_info": {
              "network_id": "public", "external_fixed_ips": [{"ip_address": "203.0.113.9"}]}},
          status=409, neutron_type="IpAddressAlreadyAllocated",
          field="external_gateway_info.external_fixed_ips[0].ip_address")
    assert not model.routers


def test_router_gateway_on_internal_network_is_400(model: Model) -> None:
    fails(model.create_router, {"name": "r", "external_gateway_info": {"network_id": "net"}},
          status=400, neutron_type="BadRequest", field="external_gateway_info.network_id")


def test_router_gateway_unknown_network_is_404(model: Model) -> None:
    fails(model.create_router, {"name": "r", "external_gateway_info": {"network_id": "x"}},
          status=404, neutron_type="NetworkNotFound", field="external_gateway_info.network_id")


def test_router_unknown_field_is_400(model: Model) -> None:
    fails(model.create_router, {"name": "r", "ha": True}, status=400,
          neutron_type="HTTPBadRequest", field="ha")


def test_router_interface_takes_the_gateway_ip(model: Model, router: Any) -> None:
    [pid] = model.router_interfaces[router.id]
    port = model.ports[pid]
    assert port.is_router_port and port.is_trusted and port.security_groups == []
    assert port.fixed_ips[0].ip_address == "10.0.0.1"


def test_router_interface_needs_subnet_xor_port(model: Model, router: Any) -> None:
    fails(model.add_router_interface, "r1", {}, status=400, neutron_type="BadRequest",
          field="subnet_id")
    fails(model.add_router_interface, "r1", {"subnet_id": "sub", "port_id": "vm"}, status=400,
          neutron_type="BadRequest", field="subnet_id")


def test_router_interface_twice_on_a_subnet_is_400(model: Model, router: Any) -> None:
    fails(model.add_router_interface, "r1", {"subnet_id": "sub"}, status=400,
          neutron_type="BadRequest", field="subnet_id")
    fails(model.add_router_interface, "r1", {"port_id": "vm"}, status=400,
          neutron_type="BadRequest", field="port_id")


def test_router_interface_subnet_without_gateway_is_400(model: Model, router: Any) -> None:
    model.create_subnet({"name": "nogw", "network_id": "lonely", "cidr": "10.8.0.0/24",
                         "gateway_ip": None})
    fails(model.add_router_interface, "r1", {"subnet_id": "nogw"}, status=400,
          neutron_type="BadRequest", field="subnet_id")


def test_router_interface_port_in_use_is_409(model: Model, router: Any) -> None:
    model.create_port({"name": "used", "network_id": "lonely", "device_id": "some-vm"})
    fails(model.add_router_interface, "r1", {"port_id": "used"}, status=409,
          neutron_type="PortInUse", field="port_id")


def test_router_interface_by_port_drops_its_groups(model: Model, router: Any) -> None:
    port = model.add_router_interface("r1", {"port_id": "vm2"})
    assert port.is_router_port and port.security_groups == []


# ------------------------------------------------------------- floating IPs
def test_floating_network_required(model: Model) -> None:
    fails(model.create_floatingip, {}, status=400, neutron_type="HTTPBadRequest",
          field="floating_network_id")


def test_floating_network_must_be_external(model: Model) -> None:
    fails(model.create_floatingip, {"floating_network_id": "net"}, status=400,
          neutron_type="BadRequest", field="floating_network_id")


def test_floating_ip_allocated_and_associated(model: Model, router: Any) -> None:
    fip = model.create_floatingip({"floating_network_id": "public", "port_id": "vm"})
    assert fip.floating_ip_address and fip.floating_ip_address.startswith("203.0.113.")
    gw = model.router_gateway_port(router.id)
    assert gw is not None and fip.floating_ip_address != gw.fixed_ips[0].ip_address
    assert (fip.fixed_ip_address, fip.router_id, fip.status) == ("10.0.0.5", router.id, "ACTIVE")


def test_floating_ip_needs_a_router_path(model: Model, router: Any) -> None:
    fails(model.create_floatingip, {"floating_network_id": "public", "port_id": "vm2"},
          status=404, neutron_type="ExternalGatewayForFloatingIPNotFound", field="port_id")
    assert not model.floating_ips  # the failed create left nothing behind


def test_floating_ip_needs_router_gateway(model: Model) -> None:
    model.create_router({"name": "nogw"})
    model.add_router_interface("nogw", {"subnet_id": "sub"})
    fails(model.create_floatingip, {"floating_network_id": "public", "port_id": "vm"},
          status=404, neutron_type="ExternalGatewayForFloatingIPNotFound", field="port_id")


def test_floating_ip_second_association_is_409(model: Model, router: Any) -> None:
    model.create_floatingip({"floating_network_id": "public", "port_id": "vm"})
    fails(model.create_floatingip, {"floating_network_id": "public", "port_id": "vm"},
          status=409, neutron_type="FloatingIPPortAlreadyAssociated", field="port_id")


def test_floating_ip_fixed_ip_not_on_port_is_400(model: Model, router: Any) -> None:
    fails(model.create_floatingip, {"floating_network_id": "public", "port_id": "vm",
                                    "fixed_ip_address": "10.0.0.99"},
          status=400, neutron_type="BadRequest", field="fixed_ip_address")


def test_floating_ip_address_checked(model: Model, router: Any) -> None:
    fails(model.create_floatingip, {"floating_network_id": "public",
                                    "floating_ip_address": "198.51.100.1"},
          status=400, neutron_type="InvalidIpForNetwork", field="floating_ip_address")
    model.create_floatingip({"floating_network_id": "public", "floating_ip_address": "203.0.113.50"})
    fails(model.create_floatingip, {"floating_network_id": "public",
                                    "floating_ip_address": "203.0.113.50"},
          status=409, neutron_type="IpAddressAlreadyAllocated", field="floating_ip_address")


def test_floating_ip_disassociate_and_read_only(model: Model, router: Any) -> None:
    fip = model.create_floatingip({"floating_network_id": "public", "port_id": "vm"})
    model.update_floatingip(fip.id, {"port_id": None})
    assert (fip.port_id, fip.router_id, fip.status) == (None, None, "DOWN")
    fails(model.update_floatingip, fip.id, {"floating_ip_address": "203.0.113.77"}, status=400,
          neutron_type="HTTPBadRequest", field="floating_ip_address")


def test_floating_ip_unknown_is_404(model: Model) -> None:
    fails(model.update_floatingip, "nope", {"port_id": None}, status=404,
          neutron_type="FloatingIPNotFound", field=None)


# -------------------------------------------------------------------- FWaaS
@pytest.mark.parametrize(
    ("rule", "status", "neutron_type", "field"),
    [
        ({"destination_port": "80"}, 400, "FirewallRuleWithPortWithoutProtocolInvalid",
         "destination_port"),
        ({"source_port": "1000:2000"}, 400, "FirewallRuleWithPortWithoutProtocolInvalid",
         "source_port"),
        ({"protocol": "icmp", "destination_port": "80"}, 400, "FirewallRuleInvalidICMPParameter",
         "destination_port"),
        ({"ip_version": 6, "source_ip_address": "10.0.0.0/8"}, 400, "FirewallIpAddressConflict",
         "source_ip_address"),
        ({"destination_ip_address": "2001:db8::/32"}, 400, "FirewallIpAddressConflict",
         "destination_ip_address"),
        ({"protocol": "gre"}, 400, "FirewallRuleInvalidProtocol", "protocol"),
        ({"action": "maybe"}, 400, "FirewallRuleInvalidAction", "action"),
        ({"protocol": "tcp", "destination_port": "90:80"}, 400, "FirewallRuleInvalidPortValue",
         "destination_port"),
        ({"protocol": "tcp", "destination_port": "0"}, 400, "FirewallRuleInvalidPortValue",
         "destination_port"),
        ({"protocol": "tcp", "position": 1}, 400, "HTTPBadRequest", "position"),
    ],
)
def test_invalid_firewall_rule(model: Model, rule: dict[str, Any], status: int,
                               neutron_type: str, field: str) -> None:
    fails(model.create_firewall_rule, {"name": "r", **rule}, status=status,
          neutron_type=neutron_type, field=field)
    assert not model.firewall_rules


def test_firewall_rule_normalised(model: Model) -> None:
    r = model.create_firewall_rule({"protocol": "6", "destination_port": "80:90",
                                    "action": "ALLOW", "source_ip_address": "10.1.2.3/8"})
    assert (r.protocol, r.action, r.source_ip_address) == ("tcp", "allow", "10.0.0.0/8")


def test_policy_references(model: Model) -> None:
    r = model.create_firewall_rule({"name": "web", "protocol": "tcp", "destination_port": "80"})
    fails(model.create_firewall_policy, {"name": "p", "firewall_rules": ["web", "nope"]},
          status=404, neutron_type="FirewallRuleNotFound", field="firewall_rules[1]")
    fails(model.create_firewall_policy, {"name": "p", "firewall_rules": ["web", r.id]},
          status=409, neutron_type="FirewallRuleAlreadyAssociated", field="firewall_rules")
    assert model.create_firewall_policy({"name": "p", "firewall_rules": ["web"]}
                                        ).firewall_rules == [r.id]


def test_group_references(model: Model, router: Any) -> None:
    model.create_firewall_policy({"name": "p"})
    fails(model.create_firewall_group, {"name": "g", "ingress_firewall_policy_id": "nope"},
          status=404, neutron_type="FirewallPolicyNotFound", field="ingress_firewall_policy_id")
    [rport] = model.router_interfaces[router.id]
    g = model.create_firewall_group({"name": "g", "ingress_firewall_policy_id": "p",
                                     "egress_firewall_policy_id": "p", "ports": [rport]})
    assert g.ports == [rport]
    fails(model.create_firewall_group, {"name": "g2", "ports": [rport]}, status=409,
          neutron_type="FirewallGroupPortInUse", field="ports[0]")


def test_group_ports_must_be_router_ports(model: Model, router: Any) -> None:
    fails(model.create_firewall_group, {"name": "g", "ports": ["vm"]}, status=409,
          neutron_type="FirewallGroupPortInvalid", field="ports[0]")
    fails(model.create_firewall_group, {"name": "g", "ports": ["nope"]}, status=404,
          neutron_type="PortNotFound", field="ports[0]")


def test_group_named_default_is_409(model: Model) -> None:
    fails(model.create_firewall_group, {"name": "default"}, status=409,
          neutron_type="FirewallGroupDefaultAlreadyExists", field="name")
