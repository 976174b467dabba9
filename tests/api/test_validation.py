"""Every validation error of neutron-semantics.md section 6, through the HTTP API:
status code and NeutronError type, and that a refused request changed nothing."""

from __future__ import annotations

from typing import Any

import pytest
from apihelp import Api


def err(r: Any, status: int, typ: str) -> None:
    assert r.status_code == status, r.text
    body = r.json()["NeutronError"]
    assert body["type"] == typ, body
    assert body["message"]


def group(api: Api, name: str = "web") -> dict[str, Any]:
    return api.as_("tok-a").make("security-groups", "security_group", name=name)


def rule(api: Api, sg: str, **kw: Any) -> Any:
    return api.as_("tok-a").post("/v2.0/security-group-rules",
                                 {"security_group_rule": {"security_group_id": sg, **kw}})


def test_unknown_field_in_body_is_400(api: Api) -> None:
    err(api.post("/v2.0/networks", {"network": {"name": "x", "colour": "red"}}), 400,
        "HTTPBadRequest")
    assert api.get("/v2.0/networks").json()["networks"] == []


def test_not_json_and_wrong_envelope_are_400(api: Api) -> None:
    r = api.client.post("/v2.0/networks", content=b"{", headers={"X-Auth-Token": "admin-secret"})
    err(r, 400, "HTTPBadRequest")
    err(api.post("/v2.0/networks", {"name": "x"}), 400, "HTTPBadRequest")


def test_missing_resource_is_404(api: Api) -> None:
    err(api.get("/v2.0/ports/nope"), 404, "PortNotFound")
    err(api.put("/v2.0/networks/nope", {"network": {"name": "y"}}), 404, "NetworkNotFound")
    err(api.delete("/v2.0/security-groups/nope"), 404, "SecurityGroupNotFound")


def test_port_security_off_with_address_pairs_is_409(api: Api, net: dict[str, Any]) -> None:
    r = api.as_("tok-a").post("/v2.0/ports", {"port": {
        "network_id": net["id"], "port_security_enabled": False, "security_groups": [],
        "allowed_address_pairs": [{"ip_address": "10.0.0.50"}]}})
    err(r, 409, "AddressPairAndPortSecurityRequired")


def test_port_security_off_with_groups_is_400(api: Api, net: dict[str, Any]) -> None:
    sg = group(api)
    r = api.as_("tok-a").post("/v2.0/ports", {"port": {
        "network_id": net["id"], "port_security_enabled": False, "security_groups": [sg["id"]]}})
    err(r, 400, "PortSecurityAndIPRequiredForSecurityGroups")


def test_turning_port_security_off_while_groups_remain_is_409(api: Api,
                                                                net: dict[str, Any]) -> None:
    a = api.as_("tok-a")
    p = a.make("ports", "port", network_id=net["id"])
    assert p["security_groups"]
    r = a.put(f"/v2.0/ports/{p['id']}", {"port": {"port_security_enabled": False}})
    err(r, 409, "PortSecurityPortHasSecurityGroup")
    assert a.get(f"/v2.0/ports/{p['id']}").json()["port"]["port_security_enabled"] is True
    # Removing the groups in the same request is allowed, as in Neutron.
    r = a.put(f"/v2.0/ports/{p['id']}", {"port": {"port_security_enabled": False,
                                                 "security_groups": []}})
    assert r.status_code == 200, r.text


def test_address_pairs_limit_and_duplicates(api: Api, net: dict[str, Any]) -> None:
    a = api.as_("tok-a")
    pairs = [{"ip_address": f"10.0.0.{i}"} for i in range(100, 111)]
    err(a.post("/v2.0/ports", {"port": {"network_id": net["id"],
                                         "allowed_address_pairs": pairs}}),
        400, "AllowedAddressPairExhausted")
    dup = [{"ip_address": "10.0.2.0/24"}, {"ip_address": "10.0.2.0/24"}]
    err(a.post("/v2.0/ports", {"port": {"network_id": net["id"],
                                         "allowed_address_pairs": dup}}),
        400, "DuplicateAddressPairInRequest")
    assert a.get("/v2.0/ports").json()["ports"] == []


def test_address_pair_cidr_accepted_and_mac_defaults(api: Api, net: dict[str, Any]) -> None:
    a = api.as_("tok-a")
    p = a.make("ports", "port", network_id=net["id"])
    r = a.put(f"/v2.0/ports/{p['id']}", {"port": {"allowed_address_pairs": [
        {"ip_address": "10.0.2.7/24"}]}})
    assert r.status_code == 200, r.text
    pair = r.json()["port"]["allowed_address_pairs"][0]
    assert pair == {"ip_address": "10.0.2.0/24", "mac_address": p["mac_address"]}


def test_second_default_group_is_409(api: Api) -> None:
    err(api.as_("tok-a").post("/v2.0/security-groups", {"security_group": {"name": "default"}}),
        409, "SecurityGroupDefaultAlreadyExists")


def test_new_group_gets_egress_rules(api: Api) -> None:
    sg = group(api)
    rules = {(r["direction"], r["ethertype"]) for r in sg["security_group_rules"]}
    assert rules == {("egress", "IPv4"), ("egress", "IPv6")}


@pytest.mark.parametrize(("kw", "status", "typ"), [
    ({"remote_ip_prefix": "10.0.0.0/8", "remote_group_id": "SELF"}, 400,
     "SecurityGroupMultipleRemoteEntites"),
    ({"port_range_min": 22, "port_range_max": 22}, 400,
     "SecurityGroupProtocolRequiredWithPorts"),
    ({"protocol": "tcp", "port_range_min": 90, "port_range_max": 80}, 400,
     "SecurityGroupInvalidPortRange"),
    ({"protocol": "tcp", "port_range_min": 0, "port_range_max": 80}, 400,
     "SecurityGroupInvalidPortValue"),
    ({"protocol": "udp", "port_range_min": 70000, "port_range_max": 70000}, 400,
     "SecurityGroupInvalidPortValue"),
    ({"protocol": "icmp", "port_range_min": 256}, 400, "SecurityGroupInvalidIcmpValue"),
    ({"protocol": "icmp", "port_range_min": 8, "port_range_max": 256}, 400,
     "SecurityGroupInvalidIcmpValue"),
    ({"protocol": "icmp", "port_range_max": 0}, 400, "SecurityGroupMissingIcmpType"),
    ({"protocol": "gre", "port_range_min": 1, "port_range_max": 2}, 400,
     "SecurityGroupInvalidProtocolForPort"),
    ({"protocol": "ipv6-icmp", "ethertype": "IPv4"}, 400,
     "SecurityGroupEthertypeConflictWithProtocol"),
    ({"ethertype": "IPv6", "remote_ip_prefix": "10.0.0.0/8"}, 400,
     "SecurityGroupRuleParameterConflict"),
    ({"protocol": "bogus"}, 400, "SecurityGroupRuleInvalidProtocol"),
    ({"direction": "sideways"}, 400, "InvalidInput"),
    ({"remote_group_id": "no-such-group"}, 404, "SecurityGroupNotFound"),
])
def test_rule_errors(api: Api, kw: dict[str, Any], status: int, typ: str) -> None:
    sg = group(api)
    if kw.get("remote_group_id") == "SELF":
        kw = {**kw, "remote_group_id": sg["id"]}
    before = api.get(f"/v2.0/security-groups/{sg['id']}").json()["security_group"]
    err(rule(api, sg["id"], **{"direction": "ingress", **kw}), status, typ)
    after = api.get(f"/v2.0/security-groups/{sg['id']}").json()["security_group"]
    assert after == before  # nothing changed, not even the revision


def test_duplicate_rule_is_409_name_and_number_alike(api: Api) -> None:
    sg = group(api)
    r = rule(api, sg["id"], direction="ingress", protocol="tcp", port_range_min=22,
             port_range_max=22)
    assert r.status_code == 201, r.text
    first = r.json()["security_group_rule"]["id"]
    r = rule(api, sg["id"], direction="ingress", protocol="6", port_range_min=22,
             port_range_max=22)
    err(r, 409, "SecurityGroupRuleExists")
    assert first in r.json()["NeutronError"]["message"]


def test_rule_normalisation(api: Api) -> None:
    sg = group(api)
    r = rule(api, sg["id"], direction="ingress", protocol="tcp", port_range_min=1,
             port_range_max=65535).json()["security_group_rule"]
    assert (r["port_range_min"], r["port_range_max"]) == (None, None)
    r = rule(api, sg["id"], direction="ingress", ethertype="IPv6",
             protocol="icmp").json()["security_group_rule"]
    assert r["protocol"] == "ipv6-icmp"
    r = rule(api, sg["id"], direction="ingress",
             remote_ip_prefix="10.1.2.3/16").json()["security_group_rule"]
    assert r["remote_ip_prefix"] == "10.1.0.0/16"


def test_group_in_use_cannot_be_deleted(api: Api, net: dict[str, Any]) -> None:
    a = api.as_("tok-a")
    sg = group(api)
    a.make("ports", "port", network_id=net["id"], security_groups=[sg["id"]])
    err(a.delete(f"/v2.0/security-groups/{sg['id']}"), 409, "SecurityGroupInUse")


def test_ip_address_conflicts(api: Api, net: dict[str, Any]) -> None:
    a = api.as_("tok-a")
    a.make("ports", "port", network_id=net["id"], fixed_ips=[{"ip_address": "10.0.0.9"}])
    err(a.post("/v2.0/ports", {"port": {"network_id": net["id"],
                                         "fixed_ips": [{"ip_address": "10.0.0.9"}]}}),
        409, "IpAddressAlreadyAllocated")
    err(a.post("/v2.0/ports", {"port": {"network_id": net["id"],
                                         "fixed_ips": [{"ip_address": "10.9.9.9"}]}}),
        400, "InvalidIpForNetwork")


def test_floatingip_requires_network(api: Api) -> None:
    err(api.post("/v2.0/floatingips", {"floatingip": {}}), 400, "HTTPBadRequest")


def test_bulk_create_is_all_or_nothing(api: Api, net: dict[str, Any]) -> None:
    a = api.as_("tok-a")
    r = a.post("/v2.0/ports", {"ports": [
        {"network_id": net["id"], "name": "ok"},
        {"network_id": net["id"], "name": "bad", "nonsense": 1}]})
    err(r, 400, "HTTPBadRequest")
    assert a.get("/v2.0/ports").json()["ports"] == []
    r = a.post("/v2.0/ports", {"ports": [{"network_id": net["id"], "name": f"p{i}"}
                                         for i in range(3)]})
    assert r.status_code == 201 and len(r.json()["ports"]) == 3


def test_delete_network_in_use_is_409(api: Api, net: dict[str, Any]) -> None:
    a = api.as_("tok-a")
    a.make("ports", "port", network_id=net["id"])
    err(a.delete(f"/v2.0/networks/{net['id']}"), 409, "NetworkInUse")
