"""Seed 004 on Open vSwitch: VM1 may open connections to VM2, VM2 may not open to VM1;
ICMP, TCP and UDP with real packets through a private ovs-vswitchd (userspace datapath),
flow counters and conntrack entries shown with portwall's names, and the connections the
stateful flows committed; plus convergence (second apply sends nothing) and drift repair."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from portwall.backends.ovs.apply import OvsApplier
from portwall.backends.ovs.ovsdb import run_dir
from portwall.ir import compile_plan
from portwall.lab import netns
from portwall.lab.enforce import apply_policy
from portwall.lab.harness import Lab

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]

ROOT = Path(__file__).resolve().parent.parent.parent
SEED = ROOT / "examples" / "seed004-ovs-stateful.yaml"


@pytest.fixture
def lab() -> Iterator[Lab]:
    with Lab("pwt-ovs4", backend="ovs") as lab:
        yield lab


def test_seed004_with_icmp_tcp_udp(lab: Lab) -> None:
    box = lab.up(SEED)
    results = box.check()
    assert len(results) == 6
    assert all(r.ok for r in results), [(r.expect, r.observed, r.detail) for r in results]
    # no Linux bridge: the taps are ports of the private OVS bridge
    links = box.host(["ip", "-o", "link", "show"])
    assert "master brq" not in links
    with OvsApplier(box.host_ns) as a:
        rs_text = a.dump()
        entries = a.conntrack()
    plan = compile_plan(box.topo.model)
    vm1 = plan.port("tap2")
    # the stateful flows committed VM1's connections (ICMP, TCP, UDP) in the network's zone
    protos = {e.protocol for e in entries if e.src == "192.168.0.1" and e.zone == vm1.zone}
    assert {1, 6, 17} <= protos, entries
    assert not [e for e in entries if e.src == "192.168.0.2"], "VM2 opened a connection"
    # counters: the commit flow and the established flows saw packets, VM2's new ones died
    commit = [ln for ln in rs_text.splitlines() if "ct(commit" in ln and "n_packets=0," not in ln]
    assert commit
    fallback_hits = [ln for ln in rs_text.splitlines() if "table=11" in ln and
                     ln.rstrip().endswith("actions=drop") and "n_packets=0," not in ln]
    assert fallback_hits, "VM2's new connections should hit its egress drop"


def test_lab_flows_names_cookies_and_shows_conntrack(lab: Lab) -> None:
    box = lab.up(SEED)
    assert box.reach("vm1", "vm2", "icmp")
    env = {**os.environ}
    proc = subprocess.run([sys.executable, "-c", "from portwall.cli import main; main()", "lab",
                           "flows", "--name", box.box.name, "--hit"], capture_output=True,
                          text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "security group vm2-responder ingress" in out  # the conjunction on vm1's group
    assert "port tap2" in out and "n_packets=" in out
    assert "icmp,orig=(src=192.168.0.1,dst=192.168.0.2" in out and "# network" in out


def test_second_apply_sends_nothing_and_drift_is_repaired(lab: Lab) -> None:
    box = lab.up(SEED)
    plan = compile_plan(box.topo.model)
    again = apply_policy(box.host_ns, plan, "ovs")
    assert not again.changed and again.detail.noop and not again.detail.write_commands
    assert box.drift() == []
    # someone deletes VM2's flows: drift names the port, apply puts them back in one bundle
    vm2 = plan.port("tap4")
    ofport = netns.run(None, ["ovs-ofctl", "show", f"unix:{run_dir(box.host_ns)}/br-int.mgmt"]
                       ).stdout
    assert vm2.device in ofport
    netns.run(None, ["ovs-ofctl", "del-flows", f"unix:{run_dir(box.host_ns)}/br-int.mgmt",
                     "table=42"])
    drift = box.drift()
    assert drift and any("port tap4" in d for d in drift) and any("port tap2" in d for d in drift)
    assert not box.reach("vm1", "vm2", "icmp", timeout=0.5)
    fixed = apply_policy(box.host_ns, plan, "ovs")
    assert fixed.changed and len(fixed.detail.write_commands) == 1
    assert "bundle" in fixed.detail.write_commands[0]  # one (OpenFlow or ovs-ofctl) bundle
    assert box.drift() == []
    # the failed probe above left vm1's neighbour entry for vm2 resolving (ARP retries once
    # a second): one probe that may wait out one retry
    assert box.reach("vm1", "vm2", "icmp", timeout=2.5)


def test_down_stops_the_private_daemons(lab: Lab) -> None:
    box = lab.up(SEED)
    d = run_dir(box.host_ns)
    pids = [int((d / f"{n}.pid").read_text()) for n in ("ovsdb-server", "ovs-vswitchd")]
    assert all(Path(f"/proc/{p}").exists() for p in pids)
    box.box.down()
    lab.boxes.clear()
    assert not d.exists()
    assert not any(Path(f"/proc/{p}").exists() and str(d) in
                   Path(f"/proc/{p}/cmdline").read_bytes().decode(errors="replace") for p in pids)
