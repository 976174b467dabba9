"""Two tenants behind two routers on one external network, with real packets: a VM reaches
the other tenant's floating IP through both routers (SNAT out of one, DNAT into the other),
as trace now walks it; the other tenant's fixed address is `unknown` to trace (it leaves by
the gateway), never "allowed because it left for the outside world"."""

from __future__ import annotations

import os

import pytest

from portwall.analyze.trace import trace
from portwall.ir import compile_plan
from portwall.lab.check import endpoint
from portwall.lab.harness import Lab
from portwall.lab.traffic import Server, probe

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]

TOPO = """
project: two
networks:
  - name: public
    router:external: true
    port_security_enabled: false
    subnets: [{name: public-v4, cidr: 203.0.113.0/24, gateway_ip: 203.0.113.1}]
  - name: a-net
    subnets: [{name: a-v4, cidr: 10.71.0.0/24, gateway_ip: 10.71.0.1}]
  - name: b-net
    subnets: [{name: b-v4, cidr: 10.72.0.0/24, gateway_ip: 10.72.0.1}]
security_groups:
  - name: web
    security_group_rules:
      - {direction: ingress, protocol: tcp, port_range_min: 80, port_range_max: 80}
ports:
  - {name: a1-port, network_id: a-net, fixed_ips: [10.71.0.10]}
  - {name: a2-port, network_id: a-net, fixed_ips: [10.71.0.11]}
  - {name: b1-port, network_id: b-net, fixed_ips: [10.72.0.10], security_groups: [web]}
routers:
  - name: ra
    external_gateway_info: {network_id: public, external_fixed_ips: [{ip_address: 203.0.113.2}]}
    interfaces: [a-v4]
  - name: rb
    external_gateway_info: {network_id: public, external_fixed_ips: [{ip_address: 203.0.113.3}]}
    interfaces: [b-v4]
floating_ips:
  - {floating_network_id: public, floating_ip_address: 203.0.113.21, port_id: a1-port}
  - {floating_network_id: public, floating_ip_address: 203.0.113.31, port_id: b1-port}
lab:
  outside: {network: public, address: 198.51.100.10}
  vms:
    a1: {ports: [a1-port], gateway: 10.71.0.1}
    a2: {ports: [a2-port], gateway: 10.71.0.1}
    b1: {ports: [b1-port], gateway: 10.72.0.1}
  expect:
    - {from: a1, to: 203.0.113.31, proto: tcp, port: 80, verdict: allow}
    - {from: a2, to: 203.0.113.31, proto: tcp, port: 80, verdict: allow}
    - {from: a1, to: 203.0.113.31, proto: tcp, port: 22, verdict: deny}
"""


def test_floating_ip_of_another_router_through_both() -> None:
    with Lab("pwt-2r") as lab:
        box = lab.up(TOPO)
        plan = compile_plan(box.topo.model)
        t = trace(box.topo, plan, "a1", "203.0.113.31", "tcp", dport=80)
        assert t.verdict == "allow" and t.translated is not None
        assert (str(t.translated.src), str(t.translated.dst)) == ("203.0.113.21", "10.72.0.10")
        t2 = trace(box.topo, plan, "a2", "203.0.113.31", "tcp", dport=80)
        assert t2.translated is not None and str(t2.translated.src) == "203.0.113.2"
        u = trace(box.topo, plan, "a1", "b1", "tcp", dport=80)
        assert u.verdict == "unknown" and "not modelled" in (u.unknown or "")
        results = box.check()
        bad = [(r.expect.describe(), r.observed, r.why) for r in results if not r.ok]
        assert not bad, bad
        with Server(box.vm("b1"), tcp=[80]) as srv:
            for vm in ("a1", "a2"):
                got = probe(endpoint(box.box, vm), "tcp", "203.0.113.31", 80, 2.0)[0]
                assert got == "allow", vm
            seen = [ln.split()[2] for ln in srv.stop() if ln.startswith("tcp 80 ")]
        assert seen == [str(t.translated.src), str(t2.translated.src)]
