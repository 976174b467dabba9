"""Router extra routes: validation as Neutron words it, IR routes with Origins, the
evaluator and trace following them (examples/extraroute-nexthop.yaml)."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from portwall.analyze.evaluate import Packet
from portwall.analyze.l3eval import route_packet
from portwall.analyze.trace import Tracer
from portwall.ir import compile_plan
from portwall.ir.types import CtState
from portwall.model import InvalidInput
from portwall.model.l3 import set_routes
from portwall.topology import TopologyError, load_topology, loads_topology

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "extraroute-nexthop.yaml"


def _pkt(src: str, dst: str, dport: int = 80) -> Packet:
    return Packet(4, ipaddress.ip_address(src), ipaddress.ip_address(dst), 6, 40000, dport,
                  None, None, None, CtState.NEW)


def test_ir_route_has_an_origin_and_leaves_by_the_nexthops_interface() -> None:
    topo = load_topology(EXAMPLE)
    (r,) = compile_plan(topo.model).routers.values()
    (extra,) = [rt for rt in r.routes if rt.extra]
    assert str(extra.destination) == "10.63.0.0/24" and str(extra.via) == "10.61.0.50"
    itf = r.interface(extra.device)
    assert itf is not None and any(str(a.ip) == "10.61.0.1" for a in itf.addresses)
    assert extra.origin.resource_type == "router" and extra.origin.resource_id == r.id
    assert extra.origin.detail == "route 10.63.0.0/24 via 10.61.0.50 (router r1 extra route)"


def test_evaluator_forwards_to_the_nexthop_and_prefers_extra_at_equal_prefix() -> None:
    topo = load_topology(EXAMPLE)
    plan = compile_plan(topo.model)
    (r,) = plan.routers.values()
    inbound = next(i for i in r.interfaces if any(str(a.ip) == "10.62.0.1" for a in i.addresses))
    res = route_packet(plan, r, _pkt("10.62.0.10", "10.63.0.20"), inbound)
    assert res.verdict == "forward" and str(res.next_hop) == "10.61.0.50"
    assert not res.snat and res.packet == res.packet_in
    # an extra route for a connected subnet replaces it (ip route replace)
    set_routes(topo.model, r.id, [{"destination": "10.62.0.0/24", "nexthop": "10.61.0.50"}])
    (r2,) = compile_plan(topo.model).routers.values()
    res = route_packet(plan, r2, _pkt("10.61.0.50", "10.62.0.10"), r2.interfaces[0])
    assert str(res.next_hop) == "10.61.0.50"
    set_routes(topo.model, r.id, [])
    (r3,) = compile_plan(topo.model).routers.values()
    assert not any(rt.extra for rt in r3.routes)
    res = route_packet(plan, r3, _pkt("10.62.0.10", "10.63.0.20"), inbound)
    assert res.verdict == "unreachable"


def test_trace_names_the_extra_route_and_walks_through_the_nexthop() -> None:
    topo = load_topology(EXAMPLE)
    tr = Tracer.for_topology(topo, compile_plan(topo.model))
    t = tr.trace("client", "far", "tcp", dport=80)
    assert t.verdict == "allow"
    details = [s.detail for s in t.steps]
    assert any(d.startswith("route 10.63.0.0/24 via 10.61.0.50 (router r1 extra route)")
               for d in details), details
    assert any("VM hop forwards" in d for d in details)
    t = tr.trace("client", "far", "tcp", dport=8080)
    assert t.verdict == "deny" and "no-8080-out" in t.steps[-2].detail


def test_model_refuses_what_neutron_refuses() -> None:
    topo = load_topology(EXAMPLE)
    m = topo.model
    rid = next(iter(m.routers))
    cases = [
        ([{"destination": "10.9.0.0/24", "nexthop": "10.63.0.5"}],
         "Invalid format for routes: [{'destination': '10.9.0.0/24', 'nexthop': '10.63.0.5'}],"
         " the nexthop is not connected with router"),
        ([{"destination": "10.9.0.0/24", "nexthop": "10.61.0.1"}], "the nexthop is used by router"),
        ([{"destination": "10.9.0.0/33", "nexthop": "10.61.0.50"}], "is not a valid IP subnet"),
        ([{"destination": "10.9.0.0/24", "nexthop": "10.61.0.500"}], "is not a valid IP address"),
        ([{"destination": "fd00::/64", "nexthop": "10.61.0.50"}], "not the same IP version"),
    ]
    for routes, words in cases:
        with pytest.raises(InvalidInput) as e:
            set_routes(m, rid, routes)
        assert words in e.value.message, e.value.message
        assert e.value.field == "routes"
    with pytest.raises(InvalidInput, match="not allowed in POST"):
        m.create_router({"name": "r9", "routes": [{"destination": "10.9.0.0/24",
                                                   "nexthop": "10.61.0.50"}]})


def test_file_error_points_at_the_routers_routes() -> None:
    text = EXAMPLE.read_text().replace("nexthop: 10.61.0.50", "nexthop: 10.63.0.5")
    with pytest.raises(TopologyError) as e:
        loads_topology(text, "x.yaml")
    assert "routers[0].routes" in str(e.value) and "not connected with router" in str(e.value)
