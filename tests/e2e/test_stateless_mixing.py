"""Stateless next to stateful, with real connections (issue 7, item 5).

A stateful client talks to a server whose group is stateless: the client's connections are
tracked (a hop with a stateful end always is), so the server's replies reach the client as
ESTABLISHED although the client's group allows no ingress at all. Between two stateless
ports nothing is tracked, and both directions must be allowed by rules, as Neutron requires
for stateless groups. What conntrack holds is read from the host to prove which is which.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from portwall.analyze.evaluate import Packet, evaluate_hop
from portwall.ir import compile_plan
from portwall.ir.types import CtState
from portwall.lab.harness import Lab, LabBox
from portwall.lab.traffic import Server

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]

TOPOLOGY = """
project: mixing
networks:
  - name: net
    subnets: [{name: v4, cidr: 10.8.0.0/24}]
security_groups:
  - name: client
    description: stateful, Neutron's default egress-any rules and no ingress rule at all
    security_group_rules: []
  - name: server
    stateful: false
    default_egress_rules: false
    security_group_rules:
      - {direction: ingress, protocol: tcp, port_range_min: 80, port_range_max: 80}
      - {direction: ingress, protocol: udp, port_range_min: 5300, port_range_max: 5300}
      - {direction: ingress, protocol: icmp}
      - {direction: egress, protocol: tcp, remote_ip_prefix: 10.8.0.0/24}
      - {direction: egress, protocol: udp, remote_ip_prefix: 10.8.0.0/24}
      - {direction: egress, protocol: icmp, remote_ip_prefix: 10.8.0.0/24}
  - name: peer
    stateful: false
    default_egress_rules: false
    security_group_rules:
      - {direction: ingress, protocol: tcp, remote_ip_prefix: 10.8.0.0/24}
      - {direction: egress, protocol: tcp, port_range_min: 80, port_range_max: 80}
ports:
  - {name: client-port, network_id: net, fixed_ips: [10.8.0.10], security_groups: [client]}
  - {name: server-port, network_id: net, fixed_ips: [10.8.0.20], security_groups: [server]}
  - {name: peer-port, network_id: net, fixed_ips: [10.8.0.30], security_groups: [peer]}
lab:
  vms:
    client: {ports: [client-port]}
    server: {ports: [server-port]}
    peer: {ports: [peer-port]}
"""


@pytest.fixture
def box(backend_name: str) -> Iterator[LabBox]:
    with Lab("pwt-mix", backend=backend_name) as lab:
        yield lab.up(TOPOLOGY)


def tracked(box: LabBox, a: str, b: str) -> bool:
    """Does the host's conntrack table (the kernel's, or on Open vSwitch the userspace
    datapath's) hold an entry between ``a`` and ``b``?"""
    if box.box.ovs:
        from portwall.backends.ovs.ovsdb import vswitchd_ctl

        out = box.host(["ovs-appctl", "-t", vswitchd_ctl(box.host_ns), "dpctl/dump-conntrack"],
                       check=False)
    else:
        out = box.host(["conntrack", "-L"], check=False)
    return any(f"src={a},dst={b}" in ln.replace(" ", ",") or
               f"src={b},dst={a}" in ln.replace(" ", ",") for ln in out.splitlines())


def test_stateful_client_and_stateless_server_exchange_tcp_udp_icmp(box: LabBox) -> None:
    with Server(box.vm("server"), tcp=[80], udp=[5300]) as srv:
        assert box.reach("client", "server", "tcp", 80)
        assert box.reach("client", "server", "udp", 5300)
        assert box.reach("client", "server")  # ICMP echo and its reply
        seen = srv.stop()
    assert any(ln.startswith("tcp 80 10.8.0.10") for ln in seen), seen
    assert any(ln.startswith("udp 5300 10.8.0.10") for ln in seen), seen
    # the client's connections are tracked (that is how the replies get in) ...
    assert tracked(box, "10.8.0.10", "10.8.0.20")
    # ... and the stateless server opens nothing towards the client: its new connection
    # meets the client's ingress, which no rule allows
    with Server(box.vm("client"), tcp=[8080]):
        assert not box.reach("server", "client", "tcp", 8080, timeout=0.5)
    # nor does the server's group let in what it does not list
    with Server(box.vm("server"), tcp=[81]):
        assert not box.reach("client", "server", "tcp", 81, timeout=0.5)
    # the evaluator agrees: the reply is ESTABLISHED and the client's ingress accepts it
    plan = compile_plan(box.topo.model)
    cl, sv = plan.port("client-port"), plan.port("server-port")
    reply = Packet(4, "10.8.0.20", "10.8.0.10", 6, 80, 40000, ct=CtState.ESTABLISHED)
    res = evaluate_hop(plan, reply, sv, cl)
    assert res.allowed and res.packet.ct is CtState.ESTABLISHED


def test_two_stateless_ports_stay_untracked(box: LabBox) -> None:
    with Server(box.vm("server"), tcp=[80]) as srv:
        assert box.reach("peer", "server", "tcp", 80)
        seen = srv.stop()
    assert any(ln.startswith("tcp 80 10.8.0.30") for ln in seen), seen
    assert not tracked(box, "10.8.0.30", "10.8.0.20")
    # both directions are rules' business: without peer's ingress rule the replies are lost
    box.update(lambda m: m.delete_security_group_rule(next(
        r.id for r in m.security_groups[m.get("security_group", "peer").id].security_group_rules
        if r.direction == "ingress")))
    with Server(box.vm("server"), tcp=[80]):
        assert not box.reach("peer", "server", "tcp", 80, timeout=0.5)
