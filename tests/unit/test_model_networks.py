"""Networks and subnets: shapes, CIDR checks, gateways, and the error body shape."""

from __future__ import annotations

from typing import Any

import pytest

from portwall.model import InvalidInput, Model, PortwallError, stable_ids


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
    m.create_network({"name": "net"})
    return m


def sub(model: Model, **body: Any) -> Any:
    return model.create_subnet({"network_id": "net", **body})


def test_error_body_is_neutrons_shape() -> None:
    err = InvalidInput("bad", field="cidr", resource="subnet", neutron_type="InvalidInput")
    assert err.to_neutron() == {"NeutronError": {"type": "InvalidInput",
                                                 "message": "subnet.cidr: bad", "detail": ""}}


def test_subnet_defaults(model: Model) -> None:
    s = sub(model, cidr="10.0.0.7/24")
    assert (s.cidr, s.ip_version, s.gateway_ip) == ("10.0.0.0/24", 4, "10.0.0.1")
    s6 = sub(model, cidr="2001:db8::/64")
    assert (s6.ip_version, s6.gateway_ip) == (6, "2001:db8::1")


def test_subnet_without_gateway(model: Model) -> None:
    assert sub(model, cidr="10.0.0.0/24", gateway_ip=None).gateway_ip is None


@pytest.mark.parametrize(
    ("body", "neutron_type", "field"),
    [
        ({"cidr": "10.0.0.0/33"}, "InvalidInput", "cidr"),
        ({"cidr": "10.0.0.0/24", "ip_version": 6}, "InvalidInput", "cidr"),
        ({"cidr": "10.0.0.0/24", "gateway_ip": "10.0.1.1"}, "InvalidInput", "gateway_ip"),
        ({"cidr": "10.0.0.0/24", "gateway_ip": "nope"}, "InvalidInput", "gateway_ip"),
        ({"cidr": "10.0.0.0/24", "dhcp": True}, "HTTPBadRequest", "dhcp"),
        ({}, "HTTPBadRequest", "cidr"),
    ],
)
def test_invalid_subnet(model: Model, body: dict[str, Any], neutron_type: str, field: str) -> None:
    fails(sub, model, **body, status=400, neutron_type=neutron_type, field=field)
    assert not model.subnets


def test_overlapping_subnets_on_a_network(model: Model) -> None:
    sub(model, cidr="10.0.0.0/16")
    fails(sub, model, cidr="10.0.5.0/24", status=400, neutron_type="InvalidInput", field="cidr")
    model.create_network({"name": "other"})
    assert model.create_subnet({"network_id": "other", "cidr": "10.0.5.0/24"})


def test_subnet_on_unknown_network(model: Model) -> None:
    fails(model.create_subnet, {"network_id": "x", "cidr": "10.0.0.0/24"}, status=404,
          neutron_type="NetworkNotFound", field="network_id")


def test_network_fields(model: Model) -> None:
    n = model.create_network({"name": "ext", "router:external": True, "tenant_id": "p"})
    assert n.router_external and n.project_id == "p"
    fails(model.create_network, {"name": "x", "mtu": "big"}, status=400,
          neutron_type="InvalidInput", field="mtu")
    fails(model.create_network, {"name": "x", "segments": []}, status=400,
          neutron_type="HTTPBadRequest", field="segments")
