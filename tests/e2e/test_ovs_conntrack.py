"""Connection tracking on Open vSwitch (the userspace datapath's own conntrack): removing a
rule or a remote-group member cuts exactly the connections it allowed; stateless ports are
never committed, and a stateful client sees a stateless server's replies as established."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from portwall.backends.ovs.apply import OvsApplier
from portwall.lab.harness import Lab
from portwall.lab.traffic import Server, Session
from portwall.model.store import Model

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]

CUT = """
project: cut
networks:
  - name: net
    subnets: [{name: v4, cidr: 10.8.0.0/24}]
security_groups:
  - name: clients
  - name: others
  - name: srv
    security_group_rules:
      - {direction: ingress, protocol: tcp, port_range_min: 80, port_range_max: 80}
      - {direction: ingress, protocol: tcp, port_range_min: 81, port_range_max: 81}
      - {direction: ingress, protocol: tcp, port_range_min: 82, port_range_max: 82,
         remote_group_id: clients}
ports:
  - {name: srv-port, network_id: net, fixed_ips: [10.8.0.10], security_groups: [srv]}
  - {name: cli-port, network_id: net, fixed_ips: [10.8.0.20], security_groups: [clients]}
lab:
  vms:
    srv: {ports: [srv-port]}
    cli: {ports: [cli-port]}
"""

MIXED = """
project: mixed
networks:
  - name: net
    subnets: [{name: v4, cidr: 10.9.0.0/24}]
security_groups:
  - name: sl
    stateful: false
    default_egress_rules: false
    security_group_rules:
      - {direction: ingress, protocol: tcp, port_range_min: 80, port_range_max: 80}
      - {direction: egress, protocol: tcp}
  - name: sf
    default_egress_rules: false
    security_group_rules:
      - {direction: egress, protocol: tcp, port_range_min: 80, port_range_max: 80}
ports:
  - {name: sl-srv-port, network_id: net, fixed_ips: [10.9.0.10], security_groups: [sl]}
  - {name: sl-cli-port, network_id: net, fixed_ips: [10.9.0.20], security_groups: [sl]}
  - {name: sf-cli-port, network_id: net, fixed_ips: [10.9.0.40], security_groups: [sf]}
lab:
  vms:
    sl-srv: {ports: [sl-srv-port]}
    sl-cli: {ports: [sl-cli-port]}
    sf-cli: {ports: [sf-cli-port]}
"""


@pytest.fixture
def lab() -> Iterator[Lab]:
    with Lab("pwt-ovsct", backend="ovs") as lab:
        yield lab


def _rule_id(m: Model, group: str, port: int) -> str:
    sg = m.get("security_group", group)
    return next(r.id for r in sg.security_group_rules if r.port_range_min == port)


def _tcp_entries(box: object) -> list[int]:
    with OvsApplier(box.host_ns) as a:  # type: ignore[attr-defined]
        return sorted(e.dport or 0 for e in a.conntrack() if e.protocol == 6)


def test_removed_rule_cuts_its_established_connection_only(lab: Lab) -> None:
    box = lab.up(CUT)
    srv = box.ip("srv")
    with Server(box.vm("srv"), tcp=[80, 81]), \
            Session(box.vm("cli"), srv, 80) as s80, Session(box.vm("cli"), srv, 81) as s81:
        assert s80.connected and s81.connected
        assert s80.send() and s81.send()
        assert {80, 81} <= set(_tcp_entries(box))
        report = box.update(lambda m: m.delete_security_group_rule(_rule_id(m, "srv", 80)))
        assert report.policy is not None and report.policy.detail.conntrack_deleted >= 1
        assert 80 not in _tcp_entries(box) and 81 in _tcp_entries(box)
        assert not s80.send(), "the connection on port 80 survived the removal of its rule"
        assert s81.send(), "the connection on port 81 is still allowed and must survive"
    assert not box.reach("cli", "srv", "tcp", 80, timeout=0.5)


def test_removed_member_cuts_its_connection(lab: Lab) -> None:
    box = lab.up(CUT)
    srv = box.ip("srv")
    with Server(box.vm("srv"), tcp=[81, 82]), \
            Session(box.vm("cli"), srv, 82) as s82, Session(box.vm("cli"), srv, 81) as s81:
        assert s82.connected and s82.send() and s81.send()
        # the client moves from "clients" to "others" (both allow any egress): the
        # remote-group rule no longer covers it, port 81 (open to all) still does
        others = box.topo.model.get("security_group", "others").id
        report = box.update(lambda m: m.update_port("cli-port", {"security_groups": [others]}))
        assert report.policy is not None and report.policy.detail.conntrack_deleted >= 1
        assert not s82.send(), "the member's connection survived its removal from the group"
        assert s81.send()


def test_stateless_is_untracked_and_stateful_client_sees_replies(lab: Lab) -> None:
    box = lab.up(MIXED)
    with Server(box.vm("sl-srv"), tcp=[80]):
        # stateful client -> stateless server: tracked (one end is stateful), so the
        # server's untracked replies are established for the client and get in
        assert box.reach("sf-cli", "sl-srv", "tcp", 80)
        with OvsApplier(box.host_ns) as a:
            srcs = {e.src for e in a.conntrack() if e.protocol == 6}
        assert "10.9.0.40" in srcs
        # stateless client -> stateless server: the replies need a rule (there is none)
        assert not box.reach("sl-cli", "sl-srv", "tcp", 80, timeout=0.5)
        with OvsApplier(box.host_ns) as a:
            srcs = {e.src for e in a.conntrack() if e.protocol == 6}
        assert "10.9.0.20" not in srcs, "a stateless pair's packets were committed"
