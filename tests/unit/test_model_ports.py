"""Ports: port security, allowed address pairs, fixed IPs, MACs and security groups (§6)."""

from __future__ import annotations

from typing import Any

import pytest

from portwall.model import Model, PortwallError, stable_ids
from portwall.model.resources import Network


def fails(fn: Any, *args: Any, status: int, neutron_type: str, field: str | None,
          **kwargs: Any) -> PortwallError:
    """Call ``fn``; it must raise this typed error naming this field."""
    with pytest.raises(PortwallError) as info:
        fn(*args, **kwargs)
    err = info.value
    assert (err.status, err.neutron_type, err.field) == (status, neutron_type, field), str(err)
    assert err.to_neutron()["NeutronError"]["type"] == neutron_type
    return err


@pytest.fixture
def model() -> Model:
    m = Model(stable_ids("t"))
    net = m.create_network({"name": "net"})
    m.create_subnet({"name": "sub", "network_id": net.id, "cidr": "10.0.0.0/24"})
    m.create_subnet({"name": "sub6", "network_id": net.id, "cidr": "2001:db8::/64"})
    m.create_network({"name": "other"})
    m.create_security_group({"name": "web"})
    return m


@pytest.fixture
def net(model: Model) -> Network:
    return model.get("network", "net")


def port(model: Model, **body: Any) -> Any:
    return model.create_port({"network_id": "net", **body})


# ------------------------------------------------------------- port security
def test_port_security_off_with_address_pairs_is_409(model: Model) -> None:
    fails(port, model, port_security_enabled=False,
          allowed_address_pairs=[{"ip_address": "10.0.0.99"}],
          status=409, neutron_type="AddressPairAndPortSecurityRequired",
          field="allowed_address_pairs")
    assert not model.ports


def test_port_security_off_with_groups_is_400(model: Model) -> None:
    fails(port, model, port_security_enabled=False, security_groups=["web"], status=400,
          neutron_type="PortSecurityAndIPRequiredForSecurityGroups", field="security_groups")


def test_port_security_off_with_empty_groups_is_fine(model: Model) -> None:
    p = port(model, port_security_enabled=False, security_groups=[])
    assert p.security_groups == [] and p.port_security_enabled is False


def test_port_security_off_gets_no_default_group(model: Model) -> None:
    p = port(model, port_security_enabled=False)
    assert p.security_groups == []


def test_port_security_inherits_network(model: Model) -> None:
    model.create_network({"name": "open", "port_security_enabled": False})
    p = model.create_port({"network_id": "open"})
    assert p.port_security_enabled is False and p.security_groups == []
    q = model.create_port({"network_id": "open", "port_security_enabled": True})
    assert q.port_security_enabled is True
    assert q.security_groups == [model.default_group("default").id]  # type: ignore[union-attr]


def test_turning_port_security_off_while_groups_remain_is_409(model: Model) -> None:
    p = port(model, security_groups=["web"])
    fails(model.update_port, p.id, {"port_security_enabled": False}, status=409,
          neutron_type="PortSecurityPortHasSecurityGroup", field="port_security_enabled")
    assert model.ports[p.id].port_security_enabled is True  # unchanged


def test_turning_port_security_off_with_groups_removed(model: Model) -> None:
    p = port(model, security_groups=["web"])
    q = model.update_port(p.id, {"port_security_enabled": False, "security_groups": []})
    assert q.port_security_enabled is False and q.security_groups == []


def test_turning_port_security_off_and_naming_groups_is_400(model: Model) -> None:
    p = port(model, security_groups=["web"])
    fails(model.update_port, p.id, {"port_security_enabled": False, "security_groups": ["web"]},
          status=400, neutron_type="PortSecurityAndIPRequiredForSecurityGroups",
          field="security_groups")


def test_turning_port_security_off_while_pairs_remain_is_409(model: Model) -> None:
    p = port(model, security_groups=[], allowed_address_pairs=[{"ip_address": "10.0.0.99"}])
    fails(model.update_port, p.id, {"port_security_enabled": False}, status=409,
          neutron_type="AddressPairAndPortSecurityRequired", field="allowed_address_pairs")


def test_adding_pairs_to_unsecured_port_is_409(model: Model) -> None:
    p = port(model, port_security_enabled=False)
    fails(model.update_port, p.id, {"allowed_address_pairs": [{"ip_address": "10.0.0.0/24"}]},
          status=409, neutron_type="AddressPairAndPortSecurityRequired",
          field="allowed_address_pairs")


def test_adding_groups_to_unsecured_port_is_400(model: Model) -> None:
    p = port(model, port_security_enabled=False)
    fails(model.update_port, p.id, {"security_groups": ["web"]}, status=400,
          neutron_type="PortSecurityAndIPRequiredForSecurityGroups", field="security_groups")


# ---------------------------------------------------------- address pairs
def test_more_than_ten_pairs_is_400(model: Model) -> None:
    pairs = [{"ip_address": f"10.0.0.{i}"} for i in range(100, 111)]
    fails(port, model, allowed_address_pairs=pairs, status=400,
          neutron_type="AllowedAddressPairExhausted", field="allowed_address_pairs")
    assert len(port(model, allowed_address_pairs=pairs[:10]).allowed_address_pairs) == 10


def test_duplicate_pairs_is_400(model: Model) -> None:
    fails(port, model, allowed_address_pairs=[{"ip_address": "10.0.0.9"},
                                              {"ip_address": "10.0.0.9"}],
          status=400, neutron_type="DuplicateAddressPairInRequest",
          field="allowed_address_pairs[1]")


def test_duplicate_pair_after_mac_default_is_400(model: Model) -> None:
    mac = "fa:16:3e:aa:bb:cc"
    fails(port, model, mac_address=mac,
          allowed_address_pairs=[{"ip_address": "10.0.0.9"},
                                 {"ip_address": "10.0.0.9", "mac_address": mac.upper()}],
          status=400, neutron_type="DuplicateAddressPairInRequest",
          field="allowed_address_pairs[1]")


def test_same_ip_different_mac_is_not_duplicate(model: Model) -> None:
    p = port(model, allowed_address_pairs=[{"ip_address": "10.0.0.9"},
                                           {"ip_address": "10.0.0.9",
                                            "mac_address": "fa:16:3e:00:00:09"}])
    assert len(p.allowed_address_pairs) == 2


def test_pair_mac_defaults_to_port_mac(model: Model) -> None:
    p = port(model, mac_address="FA-16-3E-01-02-03",
             allowed_address_pairs=[{"ip_address": "10.0.0.9"},
                                    {"ip_address": "10.0.1.0/24",
                                     "mac_address": "fa:16:3e:0a:0b:0c"}])
    assert p.mac_address == "fa:16:3e:01:02:03"
    assert [(a.ip_address, a.mac_address) for a in p.allowed_address_pairs] == [
        ("10.0.0.9", "fa:16:3e:01:02:03"), ("10.0.1.0/24", "fa:16:3e:0a:0b:0c")]


def test_pair_mac_defaults_on_update(model: Model) -> None:
    p = port(model)
    q = model.update_port(p.id, {"allowed_address_pairs": [{"ip_address": "0.0.0.0/0"}]})
    assert q.allowed_address_pairs[0].mac_address == p.mac_address


def test_pair_cidr_normalised(model: Model) -> None:
    p = port(model, allowed_address_pairs=[{"ip_address": "10.0.2.7/24"},
                                           {"ip_address": "10.1.1.2/32"}])
    assert [a.ip_address for a in p.allowed_address_pairs] == ["10.0.2.0/24", "10.1.1.2"]


def test_pair_without_ip_is_400(model: Model) -> None:
    fails(port, model, allowed_address_pairs=[{"mac_address": "fa:16:3e:00:00:01"}],
          status=400, neutron_type="AllowedAddressPairsMissingIP",
          field="allowed_address_pairs[0].ip_address")


def test_pair_with_unknown_field_is_400(model: Model) -> None:
    fails(port, model, allowed_address_pairs=[{"ip_address": "10.0.0.9", "vip": True}],
          status=400, neutron_type="HTTPBadRequest", field="allowed_address_pairs[0].vip")


def test_pair_with_bad_ip_is_400(model: Model) -> None:
    fails(port, model, allowed_address_pairs=[{"ip_address": "10.0.0.999"}], status=400,
          neutron_type="InvalidInput", field="allowed_address_pairs[0].ip_address")


def test_pairs_cleared_by_empty_list(model: Model) -> None:
    p = port(model, allowed_address_pairs=[{"ip_address": "10.1.1.2"}])
    assert model.update_port(p.id, {"allowed_address_pairs": []}).allowed_address_pairs == []


# ------------------------------------------------------------- fixed IPs, MACs
def test_fixed_ip_outside_the_subnet_is_400(model: Model) -> None:
    fails(port, model, fixed_ips=[{"subnet_id": "sub", "ip_address": "10.9.9.9"}], status=400,
          neutron_type="InvalidIpForSubnet", field="fixed_ips[0].ip_address")


def test_fixed_ip_on_no_subnet_of_the_network_is_400(model: Model) -> None:
    fails(port, model, fixed_ips=[{"ip_address": "10.9.9.9"}], status=400,
          neutron_type="InvalidIpForNetwork", field="fixed_ips[0].ip_address")


def test_fixed_ip_subnet_of_another_network_is_400(model: Model) -> None:
    model.create_subnet({"name": "osub", "network_id": "other", "cidr": "10.5.0.0/24"})
    fails(port, model, fixed_ips=[{"subnet_id": "osub"}], status=400,
          neutron_type="InvalidInput", field="fixed_ips[0].subnet_id")


@pytest.mark.parametrize("addr", ["10.0.0.0", "10.0.0.255"])
def test_network_and_broadcast_addresses_are_400(model: Model, addr: str) -> None:
    fails(port, model, fixed_ips=[{"ip_address": addr}], status=400,
          neutron_type="InvalidIpForSubnet", field="fixed_ips[0].ip_address")


def test_ip_already_allocated_is_409(model: Model) -> None:
    port(model, fixed_ips=[{"ip_address": "10.0.0.5"}])
    fails(port, model, fixed_ips=[{"ip_address": "10.0.0.5"}], status=409,
          neutron_type="IpAddressAlreadyAllocated", field="fixed_ips[0].ip_address")
    fails(port, model, fixed_ips=[{"ip_address": "10.0.0.6"}, {"ip_address": "10.0.0.6"}],
          status=409, neutron_type="IpAddressAlreadyAllocated", field="fixed_ips[1].ip_address")


def test_ip_update_to_allocated_is_409(model: Model) -> None:
    port(model, fixed_ips=[{"ip_address": "10.0.0.5"}])
    p = port(model, fixed_ips=[{"ip_address": "10.0.0.6"}])
    fails(model.update_port, p.id, {"fixed_ips": [{"ip_address": "10.0.0.5"}]}, status=409,
          neutron_type="IpAddressAlreadyAllocated", field="fixed_ips[0].ip_address")
    # keeping its own address is not a conflict
    assert model.update_port(p.id, {"fixed_ips": [{"ip_address": "10.0.0.6"}]})


def test_mac_in_use_is_409(model: Model) -> None:
    port(model, mac_address="fa:16:3e:00:00:01")
    fails(port, model, mac_address="FA:16:3E:00:00:01", status=409,
          neutron_type="MacAddressInUse", field="mac_address")
    # another network may reuse it
    assert model.create_port({"network_id": "other", "mac_address": "fa:16:3e:00:00:01"})


@pytest.mark.parametrize("mac", ["01:00:5e:00:00:01", "00:00:00:00:00:00", "fa:16:3e:00:01",
                                 "zz:16:3e:00:00:01"])
def test_bad_mac_is_400(model: Model, mac: str) -> None:
    fails(port, model, mac_address=mac, status=400, neutron_type="InvalidInput",
          field="mac_address")


def test_auto_allocation_skips_gateway_and_taken(model: Model) -> None:
    port(model, fixed_ips=[{"ip_address": "10.0.0.2"}])
    p = port(model)
    assert [f.ip_address for f in p.fixed_ips] == ["10.0.0.3"]  # .1 is the gateway


def test_v6_address_on_dual_stack(model: Model) -> None:
    p = port(model, fixed_ips=[{"ip_address": "10.0.0.10"}, {"ip_address": "2001:db8::10"}])
    assert {f.subnet_id for f in p.fixed_ips} == {model.get("subnet", "sub").id,
                                                   model.get("subnet", "sub6").id}


# ------------------------------------------------------------ security groups
def test_default_group_assigned_when_none_given(model: Model) -> None:
    p = port(model)
    default = model.default_group("default")
    assert default is not None and p.security_groups == [default.id]


def test_default_group_is_per_project(model: Model) -> None:
    p = port(model, project_id="alice")
    default = model.default_group("alice")
    assert default is not None and p.security_groups == [default.id]
    assert default.id != model.default_group("default").id  # type: ignore[union-attr]


def test_explicit_empty_groups_means_none(model: Model) -> None:
    assert port(model, security_groups=[]).security_groups == []


def test_groups_by_name_or_id_deduplicated(model: Model) -> None:
    web = model.get("security_group", "web")
    assert port(model, security_groups=["web", web.id]).security_groups == [web.id]


def test_unknown_group_is_404(model: Model) -> None:
    fails(port, model, security_groups=["web", "nope"], status=404,
          neutron_type="SecurityGroupNotFound", field="security_groups[1]")


@pytest.mark.parametrize("owner", ["network:dhcp", "network:router_interface"])
def test_trusted_ports_get_no_group(model: Model, owner: str) -> None:
    assert port(model, device_owner=owner).security_groups == []
    assert port(model, device_owner=owner, security_groups=["web"]).security_groups == []


def test_mixing_stateful_and_stateless_is_409(model: Model) -> None:
    model.create_security_group({"name": "fast", "stateful": False})
    fails(port, model, security_groups=["web", "fast"], status=409,
          neutron_type="SecurityGroupConflict", field="security_groups")
    p = port(model, security_groups=["fast"])
    fails(model.update_port, p.id, {"security_groups": ["fast", "web"]}, status=409,
          neutron_type="SecurityGroupConflict", field="security_groups")


def test_groups_kept_on_unrelated_update(model: Model) -> None:
    p = port(model, security_groups=["web"])
    assert model.update_port(p.id, {"name": "renamed"}).security_groups == p.security_groups


def test_groups_null_on_update_removes_them(model: Model) -> None:
    p = port(model, security_groups=["web"])
    assert model.update_port(p.id, {"security_groups": None}).security_groups == []


# ------------------------------------------------------------------ shape
def test_unknown_port_field_is_400(model: Model) -> None:
    err = fails(port, model, colour="red", status=400, neutron_type="HTTPBadRequest",
                field="colour")
    assert "Unrecognized attribute" in err.message


def test_network_required(model: Model) -> None:
    fails(model.create_port, {"name": "x"}, status=400, neutron_type="HTTPBadRequest",
          field="network_id")


def test_unknown_network_is_404(model: Model) -> None:
    fails(model.create_port, {"network_id": "nope"}, status=404,
          neutron_type="NetworkNotFound", field="network_id")


def test_network_id_is_read_only(model: Model) -> None:
    p = port(model)
    fails(model.update_port, p.id, {"network_id": "other"}, status=400,
          neutron_type="HTTPBadRequest", field="network_id")


def test_binding_host_alias(model: Model) -> None:
    assert port(model, **{"binding:host_id": "compute1"}).binding_host_id == "compute1"


def test_failed_update_leaves_port_unchanged(model: Model) -> None:
    p = port(model, security_groups=["web"], fixed_ips=[{"ip_address": "10.0.0.7"}])
    before = model.ports[p.id].model_dump()
    with pytest.raises(PortwallError):
        model.update_port(p.id, {"name": "x", "allowed_address_pairs": [{"ip_address": "bad"}]})
    assert model.ports[p.id].model_dump() == before


def test_v6_subnet_router_anycast_only_for_router_ports(model: Model) -> None:
    fails(port, model, fixed_ips=[{"ip_address": "2001:db8::"}], status=400,
          neutron_type="InvalidIpForSubnet", field="fixed_ips[0].ip_address")
    assert port(model, fixed_ips=[{"ip_address": "2001:db8::"}],
                device_owner="network:router_interface")
