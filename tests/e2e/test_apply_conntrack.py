"""Established sessions the new policy no longer allows are cut; allowed ones survive.

A server VM and a client VM in a lab sandbox on each backend, real TCP sessions through the
applied policy, then a removed rule and a removed remote-group member. The applier's report
must say how many connections it checked and cut, and the sessions must behave accordingly.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest

from portwall.backends.base import ApplyReport
from portwall.kernel.conntrack import list_entries
from portwall.kernel.runner import Runner
from portwall.lab.harness import Lab, LabBox
from portwall.lab.sandbox import LabReport
from portwall.lab.traffic import Server, Session
from portwall.model.store import Model

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(os.geteuid() != 0 or shutil.which("conntrack") is None,
                       reason="needs root and conntrack"),
]

CLIENT, SERVER = "10.70.0.11", "10.70.0.12"

# Server group srv: 5001 from remote group "clients", 5002 from anywhere; the client port
# is in "clients" (default egress anywhere).
TOPOLOGY = f"""
project: apply-ct
networks:
  - name: n
    subnets: [{{name: n-v4, cidr: 10.70.0.0/24}}]
security_groups:
  - name: clients
  - name: other
  - name: srv
    security_group_rules:
      - {{direction: ingress, protocol: tcp, port_range_min: 5001, port_range_max: 5001,
         remote_group_id: clients}}
      - {{direction: ingress, protocol: tcp, port_range_min: 5002, port_range_max: 5002}}
ports:
  - {{name: client, network_id: n, fixed_ips: [{CLIENT}], security_groups: [clients]}}
  - {{name: server, network_id: n, fixed_ips: [{SERVER}], security_groups: [srv]}}
lab:
  vms:
    cli: {{ports: [client]}}
    srv: {{ports: [server]}}
"""


@pytest.fixture
def box(backend_name: str) -> Iterator[LabBox]:
    with Lab("pwt-ctx", backend=backend_name) as lab:
        yield lab.up(TOPOLOGY)


def _policy(report: LabReport) -> ApplyReport:
    assert report.policy is not None
    return report.policy.detail


def tracked(box: LabBox, port: int) -> bool | None:
    """Whether the kernel's conntrack table holds the session (None: not a kernel table)."""
    if _bridge(box) != "linux":
        return None
    return any(e.protocol == 6 and e.dport == port and e.dst == SERVER
               for e in list_entries(Runner(box.host_ns)))


def _bridge(box: LabBox) -> str:
    from portwall import backends

    return backends.get(box.box.state.backend).bridge


def _rule_5002(m: Model) -> str:
    sg = m.get("security_group", "srv")
    return next(r.id for r in sg.security_group_rules if r.port_range_min == 5002)


def test_removed_rule_and_member_cut_only_the_sessions_they_allowed(box: LabBox) -> None:
    with Server(box.vm("srv"), tcp=[5001, 5002]), \
            Session(box.vm("cli"), SERVER, 5001) as s1, Session(box.vm("cli"), SERVER, 5002) as s2:
        assert s1.connected and s2.connected
        assert s1.send("hello-1") and s2.send("hello-2")
        assert tracked(box, 5001) in (True, None) and tracked(box, 5002) in (True, None)

        # 1. The rule allowing 5002 goes: only that session is cut.
        r = _policy(box.update(lambda m: m.delete_security_group_rule(_rule_5002(m))))
        assert r.conntrack_deleted == 1 and r.conntrack_checked >= 2, r
        assert tracked(box, 5001) in (True, None) and not tracked(box, 5002)
        assert s1.send("again-1")
        assert not s2.send("again-2"), "mid-stream packet of a cut session: NEW, no rule"

        # 2. The client leaves the remote group that allowed 5001: that session goes too.
        r = _policy(box.update(lambda m: m.update_port("client", {"security_groups": ["other"]})))
        assert r.changes.get("set_elements_removed", 1) >= 1, r.changes  # the member (and map elements)
        assert r.conntrack_deleted == 1, r
        assert not tracked(box, 5001)
        assert not s1.send("third-1")

        # 3. Nothing changes: nothing is listed, nothing is cut.
        r = _policy(box.apply())
        assert r.noop and r.conntrack_checked == 0 and r.conntrack_deleted == 0
