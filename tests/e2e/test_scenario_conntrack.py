"""Connection tracking with real TCP sessions: removing a rule cuts the connections it
allowed (the applier deletes their conntrack entries) while other allowed ones survive;
a stateless group needs explicit rules for replies."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

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
  - name: srv
    security_group_rules:
      - {direction: ingress, protocol: tcp, port_range_min: 80, port_range_max: 80}
      - {direction: ingress, protocol: tcp, port_range_min: 81, port_range_max: 81}
ports:
  - {name: srv-port, network_id: net, fixed_ips: [10.8.0.10], security_groups: [srv]}
  - {name: cli-port, network_id: net, fixed_ips: [10.8.0.20]}
lab:
  vms:
    srv: {ports: [srv-port]}
    cli: {ports: [cli-port]}
"""

STATELESS = """
project: stateless
networks:
  - name: net
    subnets: [{name: v4, cidr: 10.9.0.0/24}]
security_groups:
  - name: sl
    stateful: false
    default_egress_rules: false
    security_group_rules:
      - {direction: ingress, protocol: tcp, port_range_min: 80, port_range_max: 80}
      - {direction: egress, protocol: tcp, port_range_min: 80, port_range_max: 80}
  - name: sf
    default_egress_rules: false
    security_group_rules:
      - {direction: ingress, protocol: tcp, port_range_min: 80, port_range_max: 80}
      - {direction: egress, protocol: tcp, port_range_min: 80, port_range_max: 80}
ports:
  - {name: sl-srv-port, network_id: net, fixed_ips: [10.9.0.10], security_groups: [sl]}
  - {name: sl-cli-port, network_id: net, fixed_ips: [10.9.0.20], security_groups: [sl]}
  - {name: sf-srv-port, network_id: net, fixed_ips: [10.9.0.30], security_groups: [sf]}
  - {name: sf-cli-port, network_id: net, fixed_ips: [10.9.0.40], security_groups: [sf]}
lab:
  vms:
    sl-srv: {ports: [sl-srv-port]}
    sl-cli: {ports: [sl-cli-port]}
    sf-srv: {ports: [sf-srv-port]}
    sf-cli: {ports: [sf-cli-port]}
"""


@pytest.fixture
def lab(backend_name: str) -> Iterator[Lab]:
    with Lab("pwt-ct", backend=backend_name) as lab:
        yield lab


def _rule_id(m: Model, group: str, port: int) -> str:
    sg = m.get("security_group", group)
    return next(r.id for r in sg.security_group_rules if r.port_range_min == port)


def test_removed_rule_cuts_its_established_connection_only(lab: Lab, backend_bridge: str) -> None:
    box = lab.up(CUT)
    srv = box.ip("srv")
    with Server(box.vm("srv"), tcp=[80, 81]), \
            Session(box.vm("cli"), srv, 80) as s80, Session(box.vm("cli"), srv, 81) as s81:
        assert s80.connected and s81.connected
        assert s80.send() and s81.send()
        if backend_bridge == "linux":  # the kernel's table (OVS userspace keeps its own)
            flows = box.host(["conntrack", "-L", "-p", "tcp"], check=False)
            assert "dport=80" in flows and "dport=81" in flows

        report = box.update(lambda m: m.delete_security_group_rule(_rule_id(m, "srv", 80)))
        assert report.policy is not None and report.policy.detail.conntrack_deleted >= 1

        assert not s80.send(), "the connection on port 80 survived the removal of its rule"
        assert s81.send(), "the connection on port 81 is still allowed and must survive"
        assert s81.send()
    assert not box.reach("cli", "srv", "tcp", 80, timeout=0.5)


def test_stateless_group_needs_rules_for_replies(lab: Lab, backend_bridge: str) -> None:
    box = lab.up(STATELESS)
    with Server(box.vm("sl-srv"), tcp=[80]) as srv, Server(box.vm("sf-srv"), tcp=[80]):
        # same rules; the stateful pair's replies ride on conntrack, the stateless' do not
        assert box.reach("sf-cli", "sf-srv", "tcp", 80)
        assert not box.reach("sl-cli", "sl-srv", "tcp", 80)
        lo, hi = 32768, 60999  # Linux's default ephemeral ports: where replies go

        def replies(m: Model) -> None:
            for direction in ("ingress", "egress"):
                m.create_security_group_rule({
                    "security_group_id": "sl", "direction": direction, "protocol": "tcp",
                    "port_range_min": lo, "port_range_max": hi})

        box.update(replies)
        assert box.reach("sl-cli", "sl-srv", "tcp", 80)
        assert any(ln.startswith("tcp 80 10.9.0.20") for ln in srv.stop())
    if backend_bridge == "linux":
        # untracked: no conntrack entry for the stateless pair, one for the stateful pair
        flows = box.host(["conntrack", "-L", "-p", "tcp"], check=False)
        assert "10.9.0.40" in flows and "10.9.0.20" not in flows
