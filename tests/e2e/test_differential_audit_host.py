"""Audit's host checks (seed 003) against a live "compute host" namespace with docker's rules.

The namespace gets what docker would create (a docker0 bridge with 172.17.0.1/16 and the
``POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE`` rule). Reading it live
(``--host-netns``) and from an ``iptables-save`` dump of the same namespace
(``--host-rules``) must give the same NAT findings.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from portwall.cli import main
from portwall.lab import netns

pytestmark = pytest.mark.e2e

TOPO = """
project: d
networks:
  - name: tenant
    subnets: [{name: tenant-sub, cidr: 172.17.0.0/16}]
  - name: other
    subnets: [{name: other-sub, cidr: 10.70.0.0/24}]
ports:
  - {name: vm1, network_id: tenant, fixed_ips: [172.17.0.10]}
  - {name: vm2, network_id: other, fixed_ips: [10.70.0.10]}
"""


def test_host_nat_overlap_live_and_from_dump(make_netns: Callable[[str], str],
                                             tmp_path: Path) -> None:
    ns = make_netns("pwt-aud")
    netns.run(ns, ["ip", "link", "add", "docker0", "type", "bridge"])
    netns.run(ns, ["ip", "addr", "add", "172.17.0.1/16", "dev", "docker0"])
    netns.run(ns, ["iptables", "-t", "nat", "-A", "POSTROUTING", "-s", "172.17.0.0/16", "!",
                   "-o", "docker0", "-j", "MASQUERADE"])
    topo = tmp_path / "t.yaml"
    topo.write_text(TOPO)
    dump = tmp_path / "save.txt"
    dump.write_text(netns.run(ns, ["iptables-save"]).stdout)

    runner = CliRunner()
    live = runner.invoke(main, ["audit", str(topo), "--json", "--host-netns", ns,
                                "--fail-on", "critical"])
    assert live.exit_code == 1, live.output
    live_pw8 = [f for f in json.loads(live.output)["findings"] if f["code"] == "PW008"]
    nat = [f for f in live_pw8 if "MASQUERADE" in f["title"]]
    assert len(nat) == 1 and nat[0]["severity"] == "critical"
    assert "tenant-sub" in nat[0]["title"]
    assert any("docker0" in f["title"] for f in live_pw8)  # the host network itself
    assert not any("other-sub" in f["title"] for f in live_pw8)

    saved = runner.invoke(main, ["audit", str(topo), "--json", "--host-rules", str(dump),
                                 "--fail-on", "none"])
    assert saved.exit_code == 0, saved.output
    dump_nat = [f for f in json.loads(saved.output)["findings"]
                if f["code"] == "PW008" and "MASQUERADE" in f["title"]]
    assert [f["title"] for f in dump_nat] == [f["title"] for f in nat]
