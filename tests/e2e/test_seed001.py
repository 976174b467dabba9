"""Seed 001 with real packets: a keepalived VIP that follows its address pair from one VM to
the other, and the remote-group leak of a 0.0.0.0/0 pair (and its fix)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from portwall.lab import netns
from portwall.lab.harness import Lab
from portwall.lab.traffic import Server
from portwall.model.store import Model

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
VIP = "10.1.1.2"
pytestmark = [pytest.mark.e2e, pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]

# The VIP part of seed 001 on its own: two keepalived peers and a client.
VIP_TOPOLOGY = """
project: vip
networks:
  - name: tenant
    subnets: [{name: tenant-v4, cidr: 10.1.1.0/24}]
security_groups:
  - name: vip
    security_group_rules:
      - {direction: ingress, protocol: tcp, port_range_min: 80, port_range_max: 80}
      - {direction: ingress, protocol: icmp}
ports:
  - {name: vip-a-port, network_id: tenant, fixed_ips: [10.1.1.11], security_groups: [vip],
     allowed_address_pairs: [{ip_address: 10.1.1.2}]}
  - {name: vip-b-port, network_id: tenant, fixed_ips: [10.1.1.12], security_groups: [vip]}
  - {name: client-port, network_id: tenant, fixed_ips: [10.1.1.30]}
lab:
  vms:
    vip-a: {ports: [vip-a-port]}
    vip-b: {ports: [vip-b-port]}
    client: {ports: [client-port]}
"""


@pytest.fixture
def lab(backend_name: str) -> Iterator[Lab]:
    with Lab("pwt-s1", backend=backend_name) as lab:
        yield lab


def _answered_by(servers: dict[str, Server]) -> list[str]:
    return [vm for vm, srv in servers.items() if any(ln.startswith("tcp 80") for ln in srv.stop())]


def _has_addr(ns: str, addr: str) -> bool:
    return f" {addr}/" in netns.run(ns, ["ip", "-4", "-o", "addr"]).stdout


def test_vip_follows_its_address_pair(lab: Lab) -> None:
    box = lab.up(VIP_TOPOLOGY)
    assert _has_addr(box.vm("vip-a").netns, VIP) and not _has_addr(box.vm("vip-b").netns, VIP)
    servers = {vm: Server(box.vm(vm), tcp=[80]) for vm in ("vip-a", "vip-b")}
    assert box.reach("client", VIP)
    assert box.reach("client", VIP, "tcp", 80)
    assert _answered_by(servers) == ["vip-a"]

    def failover(m: Model) -> None:
        m.update_port("vip-a-port", {"allowed_address_pairs": []})
        m.update_port("vip-b-port", {"allowed_address_pairs": [{"ip_address": VIP}]})

    report = box.update(failover)
    assert any("removed 10.1.1.2/32" in c for c in report.changes), report.changes
    assert any("added 10.1.1.2/32" in c for c in report.changes), report.changes
    assert not any("plugged" in c for c in report.changes), "no port may be re-plugged"
    assert _has_addr(box.vm("vip-b").netns, VIP) and not _has_addr(box.vm("vip-a").netns, VIP)

    servers = {vm: Server(box.vm(vm), tcp=[80]) for vm in ("vip-a", "vip-b")}
    assert box.reach("client", VIP)
    assert box.reach("client", VIP, "tcp", 80)
    assert _answered_by(servers) == ["vip-b"]


def test_vip_without_pair_is_dropped_by_anti_spoofing(lab: Lab) -> None:
    """The address alone is not enough: the owner's replies come from the VIP, which only
    the address pair lets through."""
    box = lab.up(VIP_TOPOLOGY)
    netns.run(box.vm("vip-b").netns, ["ip", "addr", "add", "10.1.1.3/32", "dev", "eth0"])
    assert box.reach("client", "10.1.1.12")
    assert not box.reach("client", "10.1.1.3")  # vip-b's reply from 10.1.1.3 is spoofed
    box.update(lambda m: m.update_port(
        "vip-b-port", {"allowed_address_pairs": [{"ip_address": "10.1.1.3"}]}))
    assert box.reach("client", "10.1.1.3")


def test_remote_group_leak_through_a_catch_all_pair(lab: Lab, backend_name: str) -> None:
    box = lab.up(EXAMPLES / "seed001-vip-nat.yaml")
    with Server(box.vm("proxy-a"), tcp=[22, 80]) as srv:
        # outside is no member of ssh; it gets in only because nat-int carries 0.0.0.0/0
        assert box.reach("outside", "proxy-a", "tcp", 80)
        assert not box.reach("outside", "proxy-a", "tcp", 22)
        seen = srv.stop()
    assert "tcp 80 203.0.113.10" in seen, seen  # the internet address itself arrived
    assert not any(ln.startswith("tcp 22") for ln in seen)
    if backend_name == "iptables":
        # the kernel's set for remote group ssh holds the catch-all pair as two /1 halves
        sets = box.host(["ipset", "list"])
        assert "0.0.0.0/1" in sets and "128.0.0.0/1" in sets
    bad = [r for r in box.check() if not r.ok]
    assert not bad, [(r.expect.describe(), r.observed) for r in bad]


def test_leak_closed_when_the_nat_server_leaves_the_remote_group(lab: Lab) -> None:
    box = lab.up(EXAMPLES / "seed001-vip-nat-fixed.yaml")
    bad = [r for r in box.check() if not r.ok]
    assert not bad, [(r.expect.describe(), r.observed) for r in bad]
    assert not box.reach("outside", "proxy-a", "tcp", 80, timeout=0.5)
