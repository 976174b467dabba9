"""Remote groups with real packets: a port joining the remote group gets in, and the kernel
update is the ipset plus the joining port's own chains: the rules that reference the group
(db's chains) are not rewritten (checked by name on iptables; every backend must show the
member as one set element). Leaving the group cuts its established connection."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from portwall.backends.base import ApplyReport
from portwall.backends.iptables.render import egress_chain, group_chain, ingress_chain, spoof_chain
from portwall.ir import compile_plan
from portwall.ir.types import HostPlan
from portwall.lab.harness import Lab
from portwall.lab.sandbox import LabReport
from portwall.lab.traffic import Server, Session

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]

TOPOLOGY = """
project: remote
networks:
  - name: net
    subnets: [{name: v4, cidr: 10.10.0.0/24}]
security_groups:
  - name: web
    security_group_rules:
      - {direction: ingress, protocol: tcp, port_range_min: 80, port_range_max: 80}
  - name: db
    security_group_rules:
      - {direction: ingress, protocol: tcp, port_range_min: 5432, port_range_max: 5432,
         remote_group_id: web}
  - name: plain
    security_group_rules: []
ports:
  - {name: web1-port, network_id: net, fixed_ips: [10.10.0.11], security_groups: [web]}
  - {name: db1-port, network_id: net, fixed_ips: [10.10.0.21], security_groups: [db]}
  - {name: c1-port, network_id: net, fixed_ips: [10.10.0.31], security_groups: [plain]}
lab:
  vms:
    web1: {ports: [web1-port]}
    db1: {ports: [db1-port]}
    c1: {ports: [c1-port]}
"""


@pytest.fixture
def lab(backend_name: str) -> Iterator[Lab]:
    with Lab("pwt-rg", backend=backend_name) as lab:
        yield lab


def _iptables_chains(plan: HostPlan) -> tuple[set[str], set[str]]:
    """(db's chains, c1's own chains) in the iptables layout."""
    c1, db1 = plan.port("c1-port"), plan.port("db1-port")
    db_chains = {ingress_chain(db1), egress_chain(db1), spoof_chain(db1)} | {
        group_chain(rs) for rs in plan.rulesets.values() if rs.group_name == "db"}
    return db_chains, {ingress_chain(c1), egress_chain(c1), spoof_chain(c1)}


def _changed(report: LabReport) -> ApplyReport:
    assert report.policy is not None and not report.policy.detail.noop
    return report.policy.detail


def test_membership_change_rewrites_the_set_not_the_rules(lab: Lab, backend_name: str) -> None:
    box = lab.up(TOPOLOGY)
    db_chains, own_chains = _iptables_chains(compile_plan(box.topo.model))

    with Server(box.vm("db1"), tcp=[5432]) as srv:
        assert box.reach("web1", "db1", "tcp", 5432)
        assert not box.reach("c1", "db1", "tcp", 5432)

        rep = _changed(box.update(
            lambda m: m.update_port("c1-port", {"security_groups": ["plain", "web"]})))
        # backends with address sets count the new member under the shared name
        assert rep.changes.get("set_elements_added", 1) >= 1, rep.changes
        if backend_name == "iptables":
            assert rep.native.set_entries_added == 1  # exactly the member's address
            written = {chain for _, _, chain in rep.native.written}
            assert written <= own_chains, f"rewrote more than c1's own chains: {written - own_chains}"
            assert not written & db_chains
        assert box.reach("c1", "db1", "tcp", 5432)

        with Session(box.vm("c1"), box.ip("db1"), 5432) as s:
            assert s.connected and s.send()
            rep = _changed(box.update(
                lambda m: m.update_port("c1-port", {"security_groups": ["plain"]})))
            assert rep.changes.get("set_elements_removed", 1) >= 1, rep.changes
            if backend_name == "iptables":
                assert rep.native.set_entries_removed == 1
            assert rep.conntrack_deleted >= 1
            assert not s.send(), "leaving the remote group must cut the open connection"
        assert not box.reach("c1", "db1", "tcp", 5432)
        seen = srv.stop()
    assert any(ln.startswith("tcp 5432 10.10.0.31") for ln in seen)
