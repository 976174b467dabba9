"""The extraroute extension through the HTTP API: PUT routes on a router, Neutron's
validation errors, the alias listed, and an interface a route needs cannot be removed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from apihelp import Api
from serverproc import VENV_BIN, ServerProcess, openstack


def _router(api: Api, net: dict[str, Any]) -> tuple[Api, dict[str, Any], str]:
    a = api.as_("tok-a")
    r = a.make("routers", "router", name="r1")
    sub = next(s for s in a.get("/v2.0/subnets").json()["subnets"] if s["ip_version"] == 4)
    resp = a.put(f"/v2.0/routers/{r['id']}/add_router_interface", {"subnet_id": sub["id"]})
    assert resp.status_code == 200, resp.text
    return a, r, sub["id"]


def test_extraroute_is_listed(api: Api) -> None:
    aliases = {e["alias"] for e in api.get("/v2.0/extensions").json()["extensions"]}
    assert "extraroute" in aliases


def test_put_routes_then_read_them_back(api: Api, net: dict[str, Any]) -> None:
    a, r, _ = _router(api, net)
    routes = [{"destination": "10.9.0.0/24", "nexthop": "10.0.0.50"}]
    resp = a.put(f"/v2.0/routers/{r['id']}", {"router": {"routes": routes}})
    assert resp.status_code == 200, resp.text
    assert resp.json()["router"]["routes"] == routes
    assert a.get(f"/v2.0/routers/{r['id']}").json()["router"]["routes"] == routes
    # a later rename keeps them
    resp = a.put(f"/v2.0/routers/{r['id']}", {"router": {"name": "r2"}})
    assert resp.json()["router"]["routes"] == routes


def _refused(a: Api, rid: str, routes: Any, status: int, typ: str, words: str) -> None:
    resp = a.put(f"/v2.0/routers/{rid}", {"router": {"routes": routes}})
    assert resp.status_code == status, resp.text
    body = resp.json()["NeutronError"]
    assert body["type"] == typ and words in body["message"], body
    assert a.get(f"/v2.0/routers/{rid}").json()["router"]["routes"] == []


def test_neutron_errors(api: Api, net: dict[str, Any]) -> None:
    a, r, _ = _router(api, net)
    rid = r["id"]
    _refused(a, rid, [{"destination": "10.9.0.0/24", "nexthop": "192.0.2.1"}], 400,
             "InvalidRoutes", "the nexthop is not connected with router")
    _refused(a, rid, [{"destination": "10.9.0.0/24", "nexthop": "10.0.0.1"}], 400,
             "InvalidRoutes", "the nexthop is used by router")
    _refused(a, rid, [{"destination": "10.9.0.300/24", "nexthop": "10.0.0.50"}], 400,
             "HTTPBadRequest", "'10.9.0.300/24' is not a valid IP subnet")
    _refused(a, rid, [{"destination": "10.9.0.1/24", "nexthop": "10.0.0.50"}], 400,
             "HTTPBadRequest", "is recommended")
    _refused(a, rid, [{"destination": "10.9.0.0/24", "nexthop": "nope"}], 400,
             "HTTPBadRequest", "'nope' is not a valid IP address")
    _refused(a, rid, [{"destination": "10.9.0.0/24"}], 400, "HTTPBadRequest",
             "Expected keys")
    dup = {"destination": "10.9.0.0/24", "nexthop": "10.0.0.50"}
    _refused(a, rid, [dup, dup], 400, "HTTPBadRequest", "Duplicate hostroute")
    many = [{"destination": f"10.{i}.0.0/24", "nexthop": "10.0.0.50"} for i in range(31)]
    _refused(a, rid, many, 400, "RoutesExhausted", "exceeds the maximum 30")


def test_routes_not_allowed_in_post(api: Api) -> None:
    resp = api.as_("tok-a").post("/v2.0/routers", {"router": {"name": "x", "routes": [
        {"destination": "10.9.0.0/24", "nexthop": "10.0.0.50"}]}})
    assert resp.status_code == 400, resp.text
    assert "not allowed in POST" in resp.json()["NeutronError"]["message"]


def test_interface_needed_by_a_route_stays(api: Api, net: dict[str, Any]) -> None:
    a, r, sub = _router(api, net)
    routes = [{"destination": "10.9.0.0/24", "nexthop": "10.0.0.50"}]
    assert a.put(f"/v2.0/routers/{r['id']}", {"router": {"routes": routes}}).status_code == 200
    resp = a.put(f"/v2.0/routers/{r['id']}/remove_router_interface", {"subnet_id": sub})
    assert resp.status_code == 409, resp.text
    assert resp.json()["NeutronError"]["type"] == "RouterInterfaceInUseByRoute"
    assert a.put(f"/v2.0/routers/{r['id']}", {"router": {"routes": []}}).status_code == 200
    resp = a.put(f"/v2.0/routers/{r['id']}/remove_router_interface", {"subnet_id": sub})
    assert resp.status_code == 200, resp.text


def test_extraroute_atomic_add_and_remove(api: Api, net: dict[str, Any]) -> None:
    a, r, _ = _router(api, net)
    one = {"destination": "10.9.0.0/24", "nexthop": "10.0.0.50"}
    two = {"destination": "10.8.0.0/24", "nexthop": "10.0.0.51"}
    url = f"/v2.0/routers/{r['id']}"
    resp = a.put(url + "/add_extraroutes", {"router": {"routes": [one]}})
    assert resp.status_code == 200, resp.text
    assert resp.json()["router"]["routes"] == [one]
    resp = a.put(url + "/add_extraroutes", {"router": {"routes": [one, two]}})
    assert resp.json()["router"]["routes"] == [one, two]  # a present route: no error
    resp = a.put(url + "/remove_extraroutes", {"router": {"routes": [one]}})
    assert resp.json()["router"]["routes"] == [two]
    bad = {"destination": "10.7.0.0/24", "nexthop": "192.0.2.9"}
    resp = a.put(url + "/add_extraroutes", {"router": {"routes": [bad]}})
    assert resp.status_code == 400 and resp.json()["NeutronError"]["type"] == "InvalidRoutes"
    assert a.get(url).json()["router"]["routes"] == [two]
    assert a.put(url + "/add_extraroutes", {"routes": [one]}).status_code == 400
    aliases = {e["alias"] for e in api.get("/v2.0/extensions").json()["extensions"]}
    assert "extraroute-atomic" in aliases


@pytest.mark.slow
@pytest.mark.skipif(not (VENV_BIN / "openstack").exists(),
                    reason="python-openstackclient is not installed in the venv")
def test_openstack_cli_router_routes(tmp_path: Path) -> None:
    """The real client: `router add route` (extraroute-atomic), `router set --route`
    (PUT routes), `router remove route`, and Neutron's refusal shown to the user."""
    srv = ServerProcess(f"sqlite:///{tmp_path}/pw.db").start(tmp_path)
    try:
        url = srv.url

        def routes() -> list[dict[str, str]]:
            out = json.loads(openstack(url, "router", "show", "r1", "-f", "json"))["routes"]
            return sorted(({"destination": r["destination"], "nexthop": r["nexthop"]}
                           for r in out), key=lambda r: r["destination"])

        openstack(url, "network", "create", "n1")
        openstack(url, "subnet", "create", "--network", "n1", "--subnet-range",
                  "10.0.0.0/24", "s1")
        openstack(url, "router", "create", "r1")
        openstack(url, "router", "add", "subnet", "r1", "s1")
        openstack(url, "router", "add", "route", "--route",
                  "destination=10.9.0.0/24,gateway=10.0.0.50", "r1")
        assert routes() == [{"destination": "10.9.0.0/24", "nexthop": "10.0.0.50"}]
        openstack(url, "router", "set", "--route",
                  "destination=10.8.0.0/24,gateway=10.0.0.51", "r1")
        assert len(routes()) == 2
        openstack(url, "router", "remove", "route", "--route",
                  "destination=10.9.0.0/24,gateway=10.0.0.50", "r1")
        assert routes() == [{"destination": "10.8.0.0/24", "nexthop": "10.0.0.51"}]
        with pytest.raises(AssertionError, match="the nexthop is not connected with router"):
            openstack(url, "router", "add", "route", "--route",
                      "destination=10.7.0.0/24,gateway=192.0.2.1", "r1")
    finally:
        srv.stop()
