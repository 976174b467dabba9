"""Router extra routes with real packets: a VM behind router r1 reaches far-net, which only
exists behind the VM ``hop`` on r1's transit subnet, through r1's extra route
(examples/extraroute-nexthop.yaml). Removing the route makes far-net unreachable (and the
kernel route goes away); putting it back restores it."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from portwall.analyze.trace import trace
from portwall.ir import compile_plan
from portwall.lab import netns
from portwall.lab.check import endpoint
from portwall.lab.harness import Lab, LabBox
from portwall.lab.traffic import Server, probe
from portwall.model.l3 import set_routes

SEED = Path(__file__).resolve().parents[2] / "examples" / "extraroute-nexthop.yaml"
pytestmark = [pytest.mark.e2e, pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]
ROUTE = [{"destination": "10.63.0.0/24", "nexthop": "10.61.0.50"}]


@pytest.fixture
def box() -> Iterator[LabBox]:
    with Lab("pwt-xr") as lab:
        yield lab.up(SEED)


def _send(box: LabBox, src: str, dst: str, port: int) -> str:
    return probe(endpoint(box.box, src), "tcp", dst, port, 2.0)[0]


def _kernel_routes(box: LabBox) -> str:
    (ns,) = box.box.state.routers
    return netns.run(ns, ["ip", "-4", "route", "show"]).stdout


def test_every_expectation_holds_for_the_right_reason(box: LabBox) -> None:
    results = box.check()
    bad = [(r.expect.describe(), r.observed, r.why) for r in results if not r.ok]
    assert not bad, bad
    assert [r.observed for r in results] == [r.expect.verdict for r in results]
    denies = [r for r in results if r.expect.verdict == "deny"]
    assert denies and all("by policy" in r.why for r in denies)


def test_extra_route_forwards_to_the_nexthop_and_follows_changes(box: LabBox) -> None:
    assert "10.63.0.0/24 via 10.61.0.50" in _kernel_routes(box)
    with Server(box.vm("far"), tcp=[80]) as srv:
        assert _send(box, "client", "10.63.0.20", 80) == "allow"
        seen = [ln.split()[2] for ln in srv.stop() if ln.startswith("tcp 80 ")]
    assert seen == ["10.62.0.10"]  # routed east-west: never SNATed
    rid = next(iter(box.topo.model.routers))
    box.update(lambda m: set_routes(m, rid, []))
    assert "10.63.0.0/24" not in _kernel_routes(box)
    t = trace(box.topo, compile_plan(box.topo.model), "client", "far", "tcp", dport=80)
    assert t.verdict == "deny" and any("has no route to 10.63.0.20" in s.detail
                                       for s in t.steps)
    with Server(box.vm("far"), tcp=[80]) as srv:
        assert _send(box, "client", "10.63.0.20", 80) != "allow"
        assert srv.stop() == []
    box.update(lambda m: set_routes(m, rid, ROUTE))
    assert "10.63.0.0/24 via 10.61.0.50" in _kernel_routes(box)
    with Server(box.vm("far"), tcp=[80]):
        assert _send(box, "client", "10.63.0.20", 80) == "allow"
