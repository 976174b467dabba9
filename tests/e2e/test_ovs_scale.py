"""On a real bridge: remote-group flows grow with members + rules (conjunctions), never
members x rules, and one member more is one flow more, written as one small bundle."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pytest
import yaml

from portwall.backends.ovs import daemon
from portwall.backends.ovs import flows as F
from portwall.backends.ovs.apply import OvsApplier
from portwall.backends.ovs.render import OvsRenderer
from portwall.ir import PlanCompiler
from portwall.model import Model
from portwall.topology import loads_topology

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]


def model(members: int, rules: int) -> Model:
    rs = [{"direction": "ingress", "ethertype": "IPv4", "protocol": "tcp",
           "port_range_min": 1000 + i, "port_range_max": 1000 + i, "remote_group_id": "web"}
          for i in range(rules)]
    doc = {"project": "p", "networks": [{"name": "n", "subnets": [{"name": "s",
                                                                     "cidr": "10.8.0.0/16"}]}],
           "security_groups": [{"name": "web", "security_group_rules": rs}],
           "ports": [{"name": f"p{i}", "network_id": "n", "security_groups": ["web"],
                      "fixed_ips": [f"10.8.{i // 250}.{i % 250 + 2}"]} for i in range(members)]}
    return loads_topology(yaml.safe_dump(doc), "<scale>").model


@pytest.fixture
def ovs_ns(make_netns: Callable[[str], str]) -> Iterator[str]:
    ns = make_netns("pwt-ovsscale")
    try:
        yield ns
    finally:
        daemon.stop(ns)


def _rule_flows(a: OvsApplier) -> int:
    return sum(1 for ln in a.dump().splitlines()
               if f"table={F.T_INGRESS_RULES}," in ln or f"table={F.T_EGRESS_RULES}," in ln)


def test_flows_grow_with_members_plus_rules(ovs_ns: str) -> None:
    counts = {}
    with OvsApplier(ovs_ns) as a:
        for m, r in ((20, 5), (200, 5), (20, 50), (200, 50)):
            rend = OvsRenderer()
            a.apply(rend.render(PlanCompiler().compile(model(m, r))))
            counts[(m, r)] = _rule_flows(a)
    base = counts[(20, 5)]
    assert counts[(200, 5)] - base == 180  # one flow per member
    assert counts[(20, 50)] - base == 45  # one flow per rule
    assert counts[(200, 50)] - base == 180 + 45  # additive, not 10 x 10


def test_one_member_is_one_flow_in_one_bundle(ovs_ns: str) -> None:
    m = model(300, 20)
    comp, rend = PlanCompiler(), OvsRenderer()
    with OvsApplier(ovs_ns) as a:
        a.apply(rend.render(comp.compile(m)))
        before = _rule_flows(a)
        m.create_port({"name": "late", "network_id": m.get("network", "n").id,
                       "fixed_ips": [{"ip_address": "10.8.9.9"}],
                       "security_groups": [m.get("security_group", "web").id],
                       "binding:host_id": "elsewhere"})
        rep = a.apply(rend.render(comp.compile(m)))
        assert _rule_flows(a) == before + 1
        assert rep.changes == {"flows_added": 1, "flows_deleted": 0, "owners_changed": 1}
        assert len(rep.write_commands) == 1 and "bundle" in rep.write_commands[0]
