"""The sandbox itself: wiring as the topology says, incremental re-apply that touches only
what changed, and teardown that leaves nothing, even after a crash half-way through."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from portwall.lab import netns
from portwall.lab import state as st
from portwall.lab.harness import Lab, LabBox
from portwall.lab.sandbox import Sandbox
from portwall.topology import loads_topology

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]

TOPOLOGY = """
project: wiring
networks:
  - name: a
    subnets:
      - {name: a-v4, cidr: 10.12.0.0/24}
      - {name: a-v6, cidr: "fd00:12::/64", ip_version: 6}
  - name: b
    subnets: [{name: b-v4, cidr: 10.13.0.0/16}]
security_groups:
  - name: open
    security_group_rules:
      - {direction: ingress, protocol: icmp}
      - {direction: ingress, ethertype: IPv6, protocol: ipv6-icmp}
ports:
  - {name: r-a, network_id: a, fixed_ips: [10.12.0.1, "fd00:12::1"], security_groups: [open],
     mac_address: "fa:16:3e:00:12:01", allowed_address_pairs: [{ip_address: 10.13.0.0/16}]}
  - {name: r-b, network_id: b, fixed_ips: [10.13.0.1], security_groups: [open],
     allowed_address_pairs: [{ip_address: 10.12.0.0/24}]}
  - {name: x, network_id: a, fixed_ips: [10.12.0.5, "fd00:12::5"], security_groups: [open]}
  - {name: y, network_id: b, fixed_ips: [10.13.7.9], security_groups: [open]}
  - {name: spare, network_id: a, fixed_ips: [10.12.0.99], security_groups: [open]}
lab:
  vms:
    r: {ports: [r-a, r-b], forward: true}
    x: {ports: [x], gateway: 10.12.0.1}
    y: {ports: [y], routes: [{destination: 10.12.0.0/24, via: 10.13.0.1}]}
"""


@pytest.fixture
def lab(backend_name: str) -> Iterator[Lab]:
    with Lab("pwt-sbx", backend=backend_name) as lab:
        yield lab


def _ns(box: LabBox, vm: str, *argv: str) -> str:
    return netns.run(box.vm(vm).netns, list(argv)).stdout


def _ifindex(box: LabBox, device: str) -> int:
    out = box.host(["ip", "-o", "link", "show", device])
    return int(out.split(":")[0])


def test_wiring_follows_the_topology(lab: Lab, backend_bridge: str) -> None:
    box = lab.up(TOPOLOGY)
    plan_dev = {p.name: p.device for vm in box.box.state.vms.values() for p in vm.ports}
    # host: a tap per plugged port
    links = box.host(["ip", "-o", "link", "show"])
    for dev in plan_dev.values():
        assert f" {dev}@" in links
    assert "spare" not in plan_dev  # a port no VM owns is not plugged
    if backend_bridge == "linux":  # one Linux bridge per network, bridge netfilter on
        assert "master brq" in links
        assert box.host(["sysctl", "-n", "net.bridge.bridge-nf-call-iptables"]).strip() == "1"
        assert box.host(["sysctl", "-n", "net.bridge.bridge-nf-call-ip6tables"]).strip() == "1"
    # VM r: two NICs in port order, the port's MAC, prefix length from the subnet, v6 nodad
    addrs = _ns(box, "r", "ip", "-o", "addr", "show")
    assert "eth0" in addrs and "10.12.0.1/24" in addrs and "fd00:12::1/64" in addrs
    assert "10.13.0.1/16" in addrs.split("eth1", 1)[1]
    assert "tentative" not in addrs
    assert "fa:16:3e:00:12:01" in _ns(box, "r", "ip", "link", "show", "eth0")
    assert _ns(box, "r", "sysctl", "-n", "net.ipv4.ip_forward").strip() == "1"
    assert _ns(box, "x", "sysctl", "-n", "net.ipv4.ip_forward").strip() == "0"
    assert "default via 10.12.0.1" in _ns(box, "x", "ip", "route")
    assert "10.12.0.0/24 via 10.13.0.1" in _ns(box, "y", "ip", "route")
    # and it carries traffic, v4 routed through r and v6 on-link
    assert box.reach("x", "y") and box.reach("y", "x")
    assert box.reach("x", "fd00:12::1")


def test_reapply_touches_only_what_changed(lab: Lab) -> None:
    box = lab.up(TOPOLOGY)
    taps = {p.name: p.device for vm in box.box.state.vms.values() for p in vm.ports}
    before = {name: _ifindex(box, dev) for name, dev in taps.items()}

    changed = TOPOLOGY.replace("fixed_ips: [10.12.0.5,", "fixed_ips: [10.12.0.6,")
    report = box.apply(changed)
    assert report.changes == ["x/eth0: removed 10.12.0.5/24", "x/eth0: added 10.12.0.6/24"]
    assert {n: _ifindex(box, d) for n, d in taps.items()} == before  # nothing re-plugged
    assert report.policy is not None and report.policy.changed  # x's anti-spoof chain
    assert box.reach("x", "y")

    # a new VM is plugged (only it), a removed VM's namespace goes
    grown = changed.replace("    y: {ports: [y]", "    s: {ports: [spare]}\n    y: {ports: [y]")
    report = box.apply(grown)
    assert [c for c in report.changes if "plugged" in c] == [
        c for c in report.changes if "plugged s/eth0" in c] != []
    assert {n: _ifindex(box, d) for n, d in taps.items()} == before
    s_ns = box.vm("s").netns
    assert netns.exists(s_ns)
    report = box.apply(changed)
    assert report.changes == [f"removed VM s (namespace {s_ns})"]
    assert not netns.exists(s_ns)


def test_failed_up_removes_everything(lab: Lab, monkeypatch: pytest.MonkeyPatch,
                                      backend_name: str) -> None:
    topo = loads_topology(TOPOLOGY, "<fail>")
    name = netns.unique_name("pwt-fail")
    made: list[str] = []
    spaces: list[str] = []
    original = Sandbox._plug

    def plug(self: Sandbox, vm: object, port: object, report: object) -> None:
        made.append(port.name)  # type: ignore[attr-defined]
        spaces[:] = [n for n in self.state.namespaces if netns.exists(n)]
        if len(made) == 3:  # two ports plugged, two VMs made: fail half-way
            raise RuntimeError("the kernel said no")
        original(self, vm, port, report)  # type: ignore[arg-type]

    monkeypatch.setattr(Sandbox, "_plug", plug)
    with pytest.raises(RuntimeError, match="the kernel said no"):
        Sandbox.up(topo, name, backend=backend_name)
    assert len(made) == 3 and len(spaces) == 3  # host, r and x existed at the failure
    assert not any(netns.exists(n) for n in spaces)
    assert name not in st.names()


def test_down_after_a_crash_half_way(lab: Lab, monkeypatch: pytest.MonkeyPatch,
                                     backend_name: str) -> None:
    """A process killed mid-way leaves a state file naming every namespace; down removes
    them all."""
    topo = loads_topology(TOPOLOGY, "<crash>")
    name = netns.unique_name("pwt-crash")
    calls = []

    def crash(self: Sandbox, vm: object, report: object) -> None:
        calls.append(vm)
        if len(calls) == 2:
            raise SystemExit("killed")  # no teardown: simulate the process dying here
        original(self, vm, report)

    original = Sandbox._add_vm
    monkeypatch.setattr(Sandbox, "_add_vm", crash)
    monkeypatch.setattr(Sandbox, "_teardown", lambda self: [])
    with pytest.raises(SystemExit):
        Sandbox.up(topo, name, backend=backend_name)
    monkeypatch.undo()
    state = st.load(name)
    assert state.backend == backend_name
    alive = [n for n in state.namespaces if netns.exists(n)]
    assert len(alive) == 2  # the host and the first VM were made before the "crash"
    assert len(state.namespaces) == 4  # ... but every planned one was recorded first
    removed = Sandbox.open(name).down()
    assert sorted(removed) == sorted(alive)
    assert not any(netns.exists(n) for n in state.namespaces)
    assert name not in st.names()
