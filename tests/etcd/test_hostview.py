"""Host-scoped views (no etcd needed): what a host's agent compiles from its view alone is
what it would compile from the whole cloud, and a change elsewhere leaves the view alone."""

from __future__ import annotations

from typing import Any

from portwall import backends
from portwall.ir.compile import compile_plan
from portwall.model import Model
from portwall.store import Record, codec
from portwall.store.etcd_hosts import HostIndex, decode

HOSTS = ("h1", "h2", "h3")


def records(m: Model) -> list[Record]:
    return [Record(kind, obj.id, obj.project_id, codec.to_body(m, kind, obj), 1)
            for kind in codec.KINDS for obj in codec.table(m, kind).values()]


def view_model(index: HostIndex, host: str) -> Model:
    m = Model()
    view = index.view(host)
    for kind in codec.KINDS:
        for (k, rid), value in view.items():
            if k == kind:
                codec.put(m, kind, decode(k, rid, value).body)
    return m


def cloud() -> tuple[Model, dict[str, Any]]:
    """Three hosts; 'web' on h1 admits 'app' members (on h2) by remote group; 'db' on h3
    admits 'web'; a router joins two networks with a floating IP on h1's VM."""
    m = Model()
    ext = m.create_network({"name": "ext", "router:external": True})
    m.create_subnet({"network_id": ext.id, "cidr": "203.0.113.0/24"})
    n1, n2 = m.create_network({"name": "n1"}), m.create_network({"name": "n2"})
    s1 = m.create_subnet({"network_id": n1.id, "cidr": "10.1.0.0/24"})
    m.create_subnet({"network_id": n2.id, "cidr": "10.2.0.0/24"})
    web, app, db = (m.create_security_group({"name": n}) for n in ("web", "app", "db"))
    m.create_security_group_rule({"security_group_id": web.id, "direction": "ingress",
                                  "protocol": "tcp", "port_range_min": 80,
                                  "port_range_max": 80, "remote_group_id": app.id})
    m.create_security_group_rule({"security_group_id": db.id, "direction": "ingress",
                                  "protocol": "tcp", "port_range_min": 5432,
                                  "port_range_max": 5432, "remote_group_id": web.id})
    ports: dict[str, Any] = {}
    for name, net, host, grp in (("w1", n1, "h1", web), ("w2", n1, "h1", web),
                                 ("a1", n1, "h2", app), ("a2", n2, "h2", app),
                                 ("d1", n2, "h3", db), ("x1", n2, "h3", app)):
        ports[name] = m.create_port({"name": name, "network_id": net.id,
                                     "binding:host_id": host, "security_groups": [grp.id]})
    r = m.create_router({"name": "r", "external_gateway_info": {"network_id": ext.id}})
    m.add_router_interface(r.id, {"subnet_id": s1.id})
    m.create_floatingip({"floating_network_id": ext.id, "port_id": ports["w1"].id})
    return m, {"ports": ports, "web": web, "app": app, "db": db, "n2": n2}


def rendered(m: Model, host: str) -> list[tuple[str, str]]:
    return list(backends.get("nftables").render(compile_plan(m, host)).sections())


def test_view_compiles_like_the_whole_cloud() -> None:
    m, _ = cloud()
    index = HostIndex()
    index.load(records(m))
    for host in HOSTS:
        assert rendered(view_model(index, host), host) == rendered(m, host), host


def test_view_holds_only_what_the_host_needs() -> None:
    m, x = cloud()
    index = HostIndex()
    index.load(records(m))
    h3 = {k for k in index.view("h3")}
    assert ("port", x["ports"]["w1"].id) in h3  # a web member: db admits web
    assert ("port", x["ports"]["a1"].id) not in h3  # app members matter to web's host only
    assert not any(k[0] == "router" for k in h3)  # no port on the router's networks
    h1 = index.view("h1")
    assert any(k[0] == "router" for k in h1) and any(k[0] == "floatingip" for k in h1)


def test_change_elsewhere_sends_nothing() -> None:
    m, x = cloud()
    index = HostIndex()
    index.load(records(m))

    def change(kind: str, obj: Any) -> dict[str, Any]:
        return index.apply([(kind, obj.id, Record(kind, obj.id, obj.project_id,
                                                  codec.to_body(m, kind, obj), 2))])

    # renaming d1 (db, on h3): only h3 hears of it (nobody admits db by remote group)
    d1 = m.update_port(x["ports"]["d1"].id, {"name": "d1-renamed"})
    assert set(change("port", d1)) == {"h3"}
    # a new address pair on a1 (app, h2): h2 and web's host h1 (web admits app)
    a1 = m.update_port(x["ports"]["a1"].id,
                       {"allowed_address_pairs": [{"ip_address": "10.1.0.99"}]})
    diff = change("port", a1)
    assert set(diff) == {"h1", "h2"}
    assert diff["h1"][0] and not diff["h1"][1]
    # a description on a1 changes nothing a member projection holds: h2 only
    a1 = m.update_port(a1.id, {"description": "now described"})
    assert set(change("port", a1)) == {"h2"}
    # a rule on db (h3's group) concerns h3 alone
    m.create_security_group_rule({"security_group_id": x["db"].id, "direction": "ingress",
                                  "protocol": "icmp"})
    assert set(change("security_group", m.security_groups[x["db"].id])) == {"h3"}


def test_incremental_views_equal_fresh_ones() -> None:
    """After each change, applied incrementally, every host's view equals the view a
    fresh index computes from all resources (no host missed, nothing left behind)."""
    m, x = cloud()
    index = HostIndex()
    index.load(records(m))
    ports = x["ports"]
    ext = next(n for n in m.networks.values() if n.name == "ext")
    fip = next(iter(m.floating_ips.values()))
    router = next(iter(m.routers.values()))
    steps = [
        lambda: m.update_port(ports["a1"].id, {"allowed_address_pairs": [
            {"ip_address": "10.1.0.77"}]}),
        lambda: m.update_port(ports["x1"].id, {"security_groups": [x["web"].id]}),
        lambda: m.create_security_group_rule({
            "security_group_id": x["app"].id, "direction": "ingress",
            "remote_group_id": x["db"].id}),
        lambda: m.create_port({"name": "d2", "network_id": x["n2"].id,
                               "binding:host_id": "h1", "security_groups": [x["db"].id]}),
        lambda: m.update_floatingip(fip.id, {"port_id": None}),
        lambda: m.update_floatingip(fip.id, {"port_id": ports["w2"].id}),
        lambda: m.add_router_interface(router.id, {"subnet_id": m.subnets_of(
            x["n2"].id)[0].id}),
        lambda: m.update_security_group(x["app"].id, {"name": "app2"}),
        lambda: m.create_subnet({"network_id": ext.id, "cidr": "198.51.100.0/24"}),
        lambda: m.delete_port(ports["w1"].id),
        lambda: m.delete_port(ports["a2"].id),
    ]
    before = {(r.kind, r.id): r for r in records(m)}
    for step in steps:
        step()
        now = {(r.kind, r.id): r for r in records(m)}
        changes = [(k[0], k[1], now.get(k)) for k in sorted(set(before) | set(now))
                   if (now.get(k) and now[k].body) != (before.get(k) and before[k].body)]
        assert changes
        index.apply(changes)
        fresh = HostIndex()
        fresh.load(list(now.values()))
        for host in HOSTS:
            assert index.views.get(host, {}) == fresh.views.get(host, {}), (step, host)
            assert index.view(host) == fresh.view(host)
        before = now
