"""``lab check`` never passes a deny for the wrong reason (the issue's measured defect):
a probe that fails with "Network is unreachable" is reported unreachable, not a deny; with
a router modelled the same flow is a deny by policy, with the rule that counted it."""

from __future__ import annotations

import os

import pytest

from portwall.lab.harness import Lab

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]

TOPO = """
project: defect
networks:
  - name: out-net
    subnets: [{name: out-v4, cidr: 10.50.0.0/24, gateway_ip: 10.50.0.1}]
  - name: app-net
    subnets: [{name: app-v4, cidr: 10.60.0.0/24, gateway_ip: 10.60.0.1}]
security_groups:
  - name: app-sg
    security_group_rules:
      - {direction: ingress, protocol: tcp, port_range_min: 8080, port_range_max: 8080,
         remote_group_id: app-sg}
ports:
  - {name: outside-port, network_id: out-net, fixed_ips: [10.50.0.10]}
  - {name: app1-port, network_id: app-net, fixed_ips: [10.60.0.11], security_groups: [app-sg]}
ROUTERS
lab:
  vms:
    outside: {ports: [outside-port]GW}
    app1: {ports: [app1-port], gateway: 10.60.0.1}
  expect:
    - {from: outside, to: app1, proto: tcp, port: 8080, verdict: deny}
"""
ROUTER = "routers:\n  - {name: r1, interfaces: [out-v4, app-v4]}\n"


def test_unreachable_is_not_a_deny(l3_backend_name: str) -> None:
    with Lab("pwt-l3c", backend=l3_backend_name) as lab:
        box = lab.up(TOPO.replace("ROUTERS", "").replace("GW", ""))
        (r,) = box.check()
        assert not r.ok and r.observed == "unreachable", (r.observed, r.why)
        assert "not a policy drop" in r.why and "unknown" in r.why


def test_with_a_router_the_deny_is_by_policy_and_counted(l3_backend_name: str) -> None:
    """The drop is app1-port's ingress fallback: counted by the host's port filter (on
    nftables in the port's shared group-combination chain, read through libnftables)."""
    with Lab("pwt-l3c", backend=l3_backend_name) as lab:
        box = lab.up(TOPO.replace("ROUTERS", ROUTER).replace("GW", ", gateway: 10.50.0.1"))
        (r,) = box.check()
        assert r.ok and r.observed == "deny", (r.observed, r.why)
        assert r.why.startswith("dropped by policy") and "app1-port" in r.why
        assert "counted" in r.why and "fallback-v4" in r.why, r.why
