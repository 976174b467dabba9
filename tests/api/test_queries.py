"""Lists as the openstack client reads them: filters, fields, sorting, pagination links,
revision_number with If-Match, the versions and extensions documents, OpenAPI."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from apihelp import Api


def test_filters_fields_and_sorting(api: Api, net: dict[str, Any]) -> None:
    a = api.as_("tok-a")
    for name in ("c", "a", "b"):
        a.make("ports", "port", network_id=net["id"], name=name, device_owner="compute:nova")
    a.make("ports", "port", network_id=net["id"], name="dhcp", device_owner="network:dhcp")
    r = a.get("/v2.0/ports?device_owner=compute:nova&sort_key=name&sort_dir=desc&fields=name")
    assert r.json()["ports"] == [{"name": "c"}, {"name": "b"}, {"name": "a"}]
    assert [p["name"] for p in a.get("/v2.0/ports?name=b&name=dhcp&sort_key=name")
            .json()["ports"]] == ["b", "dhcp"]
    one = a.get("/v2.0/ports?name=a").json()["ports"][0]
    ip = one["fixed_ips"][0]["ip_address"]
    found = a.get(f"/v2.0/ports?fixed_ips=ip_address={ip}").json()["ports"]
    assert [p["id"] for p in found] == [one["id"]]
    assert a.get("/v2.0/ports?sort_key=name&sort_dir=up").status_code == 400


def test_pagination_follows_next_links(api: Api, net: dict[str, Any]) -> None:
    a = api.as_("tok-a")
    made = {a.make("ports", "port", network_id=net["id"], name=f"p{i:02d}")["id"]
            for i in range(7)}
    seen: list[str] = []
    url: str | None = "/v2.0/ports?limit=3&sort_key=name"
    pages = 0
    while url:
        body = a.get(url).json()
        seen += [p["name"] for p in body["ports"]]
        nxt = [link["href"] for link in body.get("ports_links", []) if link["rel"] == "next"]
        url = None
        if nxt:
            u = urlsplit(nxt[0])
            url = f"{u.path}?{u.query}"
        pages += 1
    assert seen == [f"p{i:02d}" for i in range(7)]
    assert pages == 3
    assert len(made) == 7


def test_revision_number_and_if_match(api: Api, net: dict[str, Any]) -> None:
    a = api.as_("tok-a")
    p = a.make("ports", "port", network_id=net["id"])
    assert p["revision_number"] == 1
    r = a.put(f"/v2.0/ports/{p['id']}", {"port": {"name": "x"}},
              headers={"If-Match": "revision_number=1"})
    assert r.status_code == 200 and r.json()["port"]["revision_number"] == 2
    r = a.put(f"/v2.0/ports/{p['id']}", {"port": {"name": "y"}},
              headers={"If-Match": "revision_number=1"})
    assert r.status_code == 412
    assert r.json()["NeutronError"]["type"] == "RevisionNumberConstraintFailed"
    assert a.get(f"/v2.0/ports/{p['id']}").json()["port"]["name"] == "x"
    r = a.delete(f"/v2.0/ports/{p['id']}", headers={"If-Match": "revision_number=7"})
    assert r.status_code == 412
    assert a.delete(f"/v2.0/ports/{p['id']}",
                    headers={"If-Match": "revision_number=2"}).status_code == 204


def test_versions_extensions_openapi(api: Api) -> None:
    v = api.as_(None).get("/").json()["versions"][0]
    assert v["id"] == "v2.0" and v["status"] == "CURRENT"
    assert v["links"][0]["href"].endswith("/v2.0/")
    aliases = {e["alias"] for e in api.get("/v2.0/extensions").json()["extensions"]}
    assert {"security-group", "allowed-address-pairs", "port-security", "binding",
            "router", "fwaas_v2", "standard-attr-revisions"} <= aliases
    assert api.get("/v2.0/extensions/allowed-address-pairs").status_code == 200
    r = api.get("/v2.0/extensions/tag-ports-during-bulk-creation")
    assert r.status_code == 404
    paths = api.get("/openapi.json").json()["paths"]
    assert "/v2.0/ports/{rid}" in paths and "/v2.0/fwaas/firewall_groups" in paths


def test_routers_interfaces_and_floating_ips(api: Api) -> None:
    ext = api.make("networks", "network", name="ext", **{"router:external": True})
    api.make("subnets", "subnet", network_id=ext["id"], cidr="192.0.2.0/24")
    a = api.as_("tok-a")
    n = a.make("networks", "network", name="n")
    s = a.make("subnets", "subnet", network_id=n["id"], cidr="10.1.0.0/24")
    r = a.make("routers", "router", name="r",
               external_gateway_info={"network_id": ext["id"]})
    assert r["external_gateway_info"]["external_fixed_ips"]
    resp = a.put(f"/v2.0/routers/{r['id']}/add_router_interface", {"subnet_id": s["id"]})
    assert resp.status_code == 200, resp.text
    vm = a.make("ports", "port", network_id=n["id"])
    fip = a.make("floatingips", "floatingip", floating_network_id=ext["id"], port_id=vm["id"])
    assert fip["router_id"] == r["id"] and fip["status"] == "ACTIVE"
    resp = a.put(f"/v2.0/routers/{r['id']}/remove_router_interface", {"subnet_id": s["id"]})
    assert resp.status_code == 409  # the floating IP needs it
    assert a.put(f"/v2.0/floatingips/{fip['id']}", {"floatingip": {"port_id": None}}
                 ).json()["floatingip"]["status"] == "DOWN"
    resp = a.put(f"/v2.0/routers/{r['id']}/remove_router_interface", {"subnet_id": s["id"]})
    assert resp.status_code == 200, resp.text
    assert a.delete(f"/v2.0/floatingips/{fip['id']}").status_code == 204
    assert a.delete(f"/v2.0/routers/{r['id']}").status_code == 204


def test_fwaas(api: Api) -> None:
    a = api.as_("tok-a")
    fr = a.make("fwaas/firewall_rules", "firewall_rule", protocol="tcp",
                destination_port="22", action="allow")
    bad = a.post("/v2.0/fwaas/firewall_rules", {"firewall_rule": {
        "protocol": "icmp", "destination_port": "22"}})
    assert bad.status_code == 400
    assert bad.json()["NeutronError"]["type"] == "FirewallRuleInvalidICMPParameter"
    pol = a.make("fwaas/firewall_policies", "firewall_policy", firewall_rules=[fr["id"]])
    g = a.make("fwaas/firewall_groups", "firewall_group", ingress_firewall_policy_id=pol["id"])
    assert a.delete(f"/v2.0/fwaas/firewall_policies/{pol['id']}").status_code == 409
    r = a.put(f"/v2.0/fwaas/firewall_rules/{fr['id']}", {"firewall_rule": {"action": "deny"}})
    assert r.status_code == 200 and r.json()["firewall_rule"]["action"] == "deny"
    r = a.put(f"/v2.0/fwaas/firewall_rules/{fr['id']}", {"firewall_rule": {"action": "maybe"}})
    assert r.status_code == 400
    assert a.get(f"/v2.0/fwaas/firewall_rules/{fr['id']}").json()[
        "firewall_rule"]["action"] == "deny"
    assert a.delete(f"/v2.0/fwaas/firewall_groups/{g['id']}").status_code == 204


def test_state_survives_restart_and_feed(store_url: str) -> None:
    from fastapi.testclient import TestClient

    from portwall.api.app import create_app
    from portwall.api.config import Config
    from portwall.store import open_store

    cfg = Config(db=store_url, admin_token="t")
    app = create_app(cfg)
    with TestClient(app) as c:
        n = c.post("/v2.0/networks", json={"network": {"name": "keep"}},
                   headers={"X-Auth-Token": "t"}).json()["network"]
    app.state.server.close()
    store = open_store(store_url)
    try:
        cs = store.changes(0)
        assert [(ch.kind, ch.id) for ch in cs.changes] == [("network", n["id"])]
        assert store.changes(cs.head).changes == []
    finally:
        store.close()
    app2 = create_app(cfg)
    with TestClient(app2) as c:
        got = c.get(f"/v2.0/networks/{n['id']}", headers={"X-Auth-Token": "t"}).json()
    app2.state.server.close()
    assert got["network"]["name"] == "keep"
