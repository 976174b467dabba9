"""Tenancy: project B cannot read, change, attach or reference project A's resources;
tokens are required and there is no default one."""

from __future__ import annotations

from typing import Any

from apihelp import Api


def test_no_token_or_wrong_token_is_401(api: Api) -> None:
    for token in (None, "wrong"):
        r = api.as_(token).get("/v2.0/networks")
        assert r.status_code == 401
        assert r.json()["NeutronError"]["type"] == "HTTPUnauthorized"
        assert api.as_(token).post("/v2.0/networks", {"network": {}}).status_code == 401
    assert api.as_(None).get("/").status_code == 200  # the versions document is public


def test_project_b_cannot_see_or_change_a(api: Api, net: dict[str, Any]) -> None:
    a, b = api.as_("tok-a"), api.as_("tok-b")
    sg = a.make("security-groups", "security_group", name="a-web")
    port = a.make("ports", "port", network_id=net["id"], security_groups=[sg["id"]])
    assert b.get("/v2.0/networks").json()["networks"] == []
    assert b.get("/v2.0/ports").json()["ports"] == []
    assert all(g["project_id"] == "project-b"
               for g in b.get("/v2.0/security-groups").json()["security_groups"])
    b_rules = b.get("/v2.0/security-group-rules").json()["security_group_rules"]
    assert b_rules and all(r["project_id"] == "project-b" for r in b_rules)  # B's default
    for path in (f"/v2.0/networks/{net['id']}", f"/v2.0/ports/{port['id']}",
                 f"/v2.0/security-groups/{sg['id']}"):
        assert b.get(path).status_code == 404
    assert b.put(f"/v2.0/ports/{port['id']}", {"port": {"name": "mine"}}).status_code == 404
    assert b.delete(f"/v2.0/security-groups/{sg['id']}").status_code == 404
    rid = sg["security_group_rules"][0]["id"]
    assert b.delete(f"/v2.0/security-group-rules/{rid}").status_code == 404
    # ... and A still has everything, unchanged
    assert a.get(f"/v2.0/ports/{port['id']}").json()["port"]["name"] == ""
    assert len(a.get(f"/v2.0/security-groups/{sg['id']}").json()
               ["security_group"]["security_group_rules"]) == 2
    # A name lookup from B does not find A's group either
    assert b.get("/v2.0/security-groups?name=a-web").json()["security_groups"] == []


def test_b_cannot_attach_or_reference_a_group(api: Api, net: dict[str, Any]) -> None:
    a, b = api.as_("tok-a"), api.as_("tok-b")
    a_sg = a.make("security-groups", "security_group", name="a-web")
    bnet = b.make("networks", "network", name="bnet")
    b.make("subnets", "subnet", network_id=bnet["id"], cidr="10.5.0.0/24")
    r = b.post("/v2.0/ports", {"port": {"network_id": bnet["id"],
                                         "security_groups": [a_sg["id"]]}})
    assert r.status_code == 404, r.text
    assert r.json()["NeutronError"]["type"] == "SecurityGroupNotFound"
    b_sg = b.make("security-groups", "security_group", name="b-web")
    r = b.post("/v2.0/security-group-rules", {"security_group_rule": {
        "security_group_id": b_sg["id"], "direction": "ingress",
        "remote_group_id": a_sg["id"]}})
    assert r.status_code == 404, r.text
    r = b.post("/v2.0/security-group-rules", {"security_group_rule": {
        "security_group_id": a_sg["id"], "direction": "ingress"}})
    assert r.status_code == 404, r.text
    bport = b.make("ports", "port", network_id=bnet["id"])
    r = b.put(f"/v2.0/ports/{bport['id']}", {"port": {"security_groups": [a_sg["id"]]}})
    assert r.status_code == 404, r.text
    # B cannot put a port on A's (unshared) network, nor create resources for A
    r = b.post("/v2.0/ports", {"port": {"network_id": net["id"]}})
    assert r.status_code == 404, r.text
    r = b.post("/v2.0/networks", {"network": {"name": "x", "project_id": "project-a"}})
    assert r.status_code == 403, r.text


def test_shared_network_is_usable_not_changeable(api: Api) -> None:
    shared = api.make("networks", "network", name="public", shared=True)
    api.make("subnets", "subnet", network_id=shared["id"], cidr="10.9.0.0/24")
    b = api.as_("tok-b")
    assert [n["id"] for n in b.get("/v2.0/networks").json()["networks"]] == [shared["id"]]
    p = b.make("ports", "port", network_id=shared["id"])
    assert p["project_id"] == "project-b"
    r = b.put(f"/v2.0/networks/{shared['id']}", {"network": {"name": "hijacked"}})
    assert r.status_code == 403
    assert api.get(f"/v2.0/networks/{shared['id']}").json()["network"]["name"] == "public"


def test_admin_sees_every_project(api: Api, net: dict[str, Any]) -> None:
    api.as_("tok-b").make("networks", "network", name="bnet")
    names = {n["name"] for n in api.get("/v2.0/networks").json()["networks"]}
    assert names == {"net", "bnet"}
    only_b = api.get("/v2.0/networks?project_id=project-b").json()["networks"]
    assert [n["name"] for n in only_b] == ["bnet"]
