"""Established sessions the new policy no longer allows are cut; allowed ones survive.

Two VM namespaces on a bridge in a "compute host" namespace, real TCP sessions through the
applied rules, then a removed rule and a removed remote-group member.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from portwall.backends.iptables.apply import IptablesApplier
from portwall.backends.iptables.render import render_iptables
from portwall.ir import compile_plan
from portwall.ir.types import HostPlan
from portwall.kernel.conntrack import list_entries
from portwall.kernel.runner import Runner
from portwall.lab import netns
from portwall.model import Model, stable_ids

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(os.geteuid() != 0 or shutil.which("conntrack") is None
                       or shutil.which("nc") is None, reason="needs root, conntrack and nc"),
]

CLIENT, SERVER = "10.70.0.11", "10.70.0.12"


@dataclass
class Lab:
    m: Model
    host: str
    vms: dict[str, str]  # port id -> VM namespace
    client: str  # port ids
    server: str
    rule_5002: str
    clients_group: str
    other_group: str

    def plan(self) -> HostPlan:
        return compile_plan(self.m)


@pytest.fixture
def lab(make_netns: Callable[[str], str]) -> Iterator[Lab]:
    """Server port (group srv: 5001 from remote group "clients", 5002 from anywhere) and a
    client port in group "clients"; VMs wired to the host's bridge by veth pairs."""
    m = Model(stable_ids("apply-ct-e2e"))
    net = m.create_network({"name": "n"})
    m.create_subnet({"network_id": net.id, "cidr": "10.70.0.0/24"})
    clients = m.create_security_group({"name": "clients"}).id  # default: egress anywhere
    other = m.create_security_group({"name": "other"}).id
    srv = m.create_security_group({"name": "srv", "security_group_rules": [
        {"direction": "ingress", "protocol": "tcp", "port_range_min": 5001,
         "port_range_max": 5001, "remote_group_id": clients},
        {"direction": "ingress", "protocol": "tcp", "port_range_min": 5002,
         "port_range_max": 5002},
        {"direction": "egress"},
    ]}).id
    rule_5002 = next(r.id for r in m.security_groups[srv].security_group_rules
                     if r.port_range_min == 5002)
    client = m.create_port({"network_id": net.id, "name": "client", "security_groups": [clients],
                            "fixed_ips": [{"ip_address": CLIENT}]}).id
    server = m.create_port({"network_id": net.id, "name": "server", "security_groups": [srv],
                            "fixed_ips": [{"ip_address": SERVER}]}).id
    plan = compile_plan(m)
    host = make_netns("pwt-cth")
    bridge = plan.ports[0].bridge
    netns.run(host, ["ip", "link", "add", bridge, "type", "bridge"])
    netns.run(host, ["ip", "link", "set", bridge, "up"])
    vms = {}
    for p in plan.ports:
        vm = make_netns("pwt-ctv")
        vms[p.id] = vm
        netns.run(host, ["ip", "link", "add", p.device, "type", "veth", "peer", "name", "eth0",
                         "netns", vm])
        netns.run(host, ["ip", "link", "set", p.device, "master", bridge, "up"])
        netns.run(vm, ["ip", "link", "set", "eth0", "address", p.mac, "up"])
        netns.run(vm, ["ip", "addr", "add", f"{p.addresses[0].network_address}/24", "dev", "eth0"])
    netns.run(host, ["sysctl", "-w", "net.bridge.bridge-nf-call-iptables=1"], check=False)
    netns.run(host, ["iptables", "-P", "FORWARD", "DROP"])
    yield Lab(m, host, vms, client, server, rule_5002, clients, other)


class Session:
    """One long-lived TCP session client -> server:port; the server writes what it reads to
    a file, so we can tell whether bytes still get through."""

    def __init__(self, lab: Lab, port: int, tmp: Path) -> None:
        self.out = tmp / f"server-{port}.txt"
        self._out_f = self.out.open("w")
        self.server = subprocess.Popen(
            ["ip", "netns", "exec", lab.vms[lab.server], "nc", "-l", "-k", str(port)],
            stdout=self._out_f, stderr=subprocess.DEVNULL)
        for _ in range(100):
            if f":{port} " in netns.run(lab.vms[lab.server], ["ss", "-ltnH"]).stdout:
                break
            time.sleep(0.02)
        self.client = subprocess.Popen(
            ["ip", "netns", "exec", lab.vms[lab.client], "nc", SERVER, str(port)],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            text=True)
        self.port = port

    def send(self, text: str) -> None:
        assert self.client.stdin is not None
        self.client.stdin.write(text + "\n")
        self.client.stdin.flush()

    def received(self, text: str, wait: float = 2.0) -> bool:
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if text in self.out.read_text():
                return True
            time.sleep(0.05)
        return False

    def close(self) -> None:
        for proc in (self.client, self.server):
            proc.kill()
            proc.wait()
        self._out_f.close()


def tracked(lab: Lab, port: int) -> bool:
    return any(e.protocol == 6 and e.dport == port and e.dst == SERVER
               for e in list_entries(Runner(lab.host)))


def test_removed_rule_and_member_cut_only_the_sessions_they_allowed(lab: Lab) -> None:
    plan = lab.plan()
    with IptablesApplier(lab.host) as a, tempfile.TemporaryDirectory() as d:
        a.apply(render_iptables(plan), plan)
        s1, s2 = Session(lab, 5001, Path(d)), Session(lab, 5002, Path(d))
        try:
            s1.send("hello-1")
            s2.send("hello-2")
            assert s1.received("hello-1") and s2.received("hello-2")
            assert tracked(lab, 5001) and tracked(lab, 5002)

            # 1. The rule allowing 5002 goes: only that session is cut.
            lab.m.delete_security_group_rule(lab.rule_5002)
            plan = lab.plan()
            r = a.apply(render_iptables(plan), plan)
            assert r.conntrack_deleted == 1 and r.conntrack_checked >= 2
            assert tracked(lab, 5001) and not tracked(lab, 5002)
            s1.send("again-1")
            s2.send("again-2")
            assert s1.received("again-1")
            assert not s2.received("again-2", wait=1.0)  # mid-stream packet: NEW, no rule

            # 2. The client leaves the remote group that allowed 5001: that session goes too.
            lab.m.update_port(lab.client, {"security_groups": [lab.other_group]})
            plan = lab.plan()
            r = a.apply(render_iptables(plan), plan)
            assert r.set_entries_removed == 1 and r.conntrack_deleted == 1
            assert not tracked(lab, 5001)
            s1.send("third-1")
            assert not s1.received("third-1", wait=1.0)

            # 3. Nothing changes: nothing is listed, nothing is cut.
            r = a.apply(render_iptables(plan), plan)
            assert r.noop and r.conntrack_checked == 0
        finally:
            s1.close()
            s2.close()
