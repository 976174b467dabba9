"""Neutron's connectivity scenarios for plain security-group rules, with real packets:
ingress ICMP/TCP/UDP with the next port closed, destination port ranges, egress rules,
ARP, and the same over IPv6."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from portwall.lab import netns
from portwall.lab.harness import Lab, LabBox
from portwall.topology import Expect

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]

TOPOLOGY = """
project: rules
networks:
  - name: net
    subnets:
      - {name: v4, cidr: 10.5.0.0/24}
      - {name: v6, cidr: "fd00:5::/64", ip_version: 6}
security_groups:
  - name: srv
    security_group_rules:
      - {direction: ingress, protocol: icmp}
      - {direction: ingress, protocol: tcp, port_range_min: 80, port_range_max: 80}
      - {direction: ingress, protocol: udp, port_range_min: 53, port_range_max: 53}
      - {direction: ingress, protocol: tcp, port_range_min: 8000, port_range_max: 8002}
      - {direction: ingress, protocol: udp, port_range_min: 6000, port_range_max: 6001}
      - {direction: ingress, ethertype: IPv6, protocol: ipv6-icmp}
      - {direction: ingress, ethertype: IPv6, protocol: tcp, port_range_min: 80, port_range_max: 80}
      - {direction: ingress, ethertype: IPv6, protocol: udp, port_range_min: 53, port_range_max: 53}
  - name: cli
    security_group_rules: []
  - name: egr
    default_egress_rules: false
    security_group_rules:
      - {direction: egress, protocol: tcp, port_range_min: 80, port_range_max: 80}
      - {direction: egress, protocol: udp, port_range_min: 53, port_range_max: 53}
ports:
  - {name: srv-port, network_id: net, fixed_ips: [10.5.0.10, "fd00:5::10"], security_groups: [srv]}
  - {name: cli-port, network_id: net, fixed_ips: [10.5.0.20, "fd00:5::20"], security_groups: [cli]}
  - {name: egr-port, network_id: net, fixed_ips: [10.5.0.30], security_groups: [egr]}
lab:
  vms:
    srv: {ports: [srv-port]}
    cli: {ports: [cli-port]}
    egr: {ports: [egr-port]}
"""


@pytest.fixture(scope="module")
def box(backend_name: str) -> Iterator[LabBox]:
    """One sandbox for the read-only checks of this module (nothing here changes it)."""
    with Lab("pwt-rules", backend=backend_name) as lab:
        yield lab.up(TOPOLOGY)


def _check(box: LabBox, table: list[tuple[str, str, str, int | None, str]]) -> None:
    results = box.check([Expect(s, d, p, port, v) for s, d, p, port, v in table])
    bad = [f"{r.expect.describe()}: expected {r.expect.verdict}, saw {r.observed}"
           for r in results if not r.ok]
    assert not bad, bad


def test_ingress_icmp_tcp_udp_and_the_next_port_stays_closed(box: LabBox) -> None:
    _check(box, [
        ("cli", "srv", "icmp", None, "allow"),
        ("cli", "srv", "tcp", 80, "allow"),
        ("cli", "srv", "tcp", 81, "deny"),
        ("cli", "srv", "tcp", 79, "deny"),
        ("cli", "srv", "udp", 53, "allow"),
        ("cli", "srv", "udp", 54, "deny"),
        ("srv", "cli", "icmp", None, "deny"),  # cli has no ingress rule at all
        ("srv", "cli", "tcp", 80, "deny"),
    ])


def test_destination_port_ranges_are_inclusive(box: LabBox) -> None:
    _check(box, [
        ("cli", "srv", "tcp", 7999, "deny"),
        ("cli", "srv", "tcp", 8000, "allow"),
        ("cli", "srv", "tcp", 8001, "allow"),
        ("cli", "srv", "tcp", 8002, "allow"),
        ("cli", "srv", "tcp", 8003, "deny"),
        ("cli", "srv", "udp", 5999, "deny"),
        ("cli", "srv", "udp", 6000, "allow"),
        ("cli", "srv", "udp", 6001, "allow"),
        ("cli", "srv", "udp", 6002, "deny"),
    ])


def test_egress_rules_limit_what_a_vm_may_open(box: LabBox) -> None:
    _check(box, [
        ("egr", "srv", "tcp", 80, "allow"),
        ("egr", "srv", "udp", 53, "allow"),
        ("egr", "srv", "tcp", 8000, "deny"),  # srv would accept it; egr may not send it
        ("egr", "srv", "udp", 6000, "deny"),
        ("egr", "srv", "icmp", None, "deny"),
    ])


def test_ipv6_icmp_tcp_udp(box: LabBox) -> None:
    _check(box, [
        ("cli", "fd00:5::10", "icmp", None, "allow"),
        ("cli", "fd00:5::10", "tcp", 80, "allow"),
        ("cli", "fd00:5::10", "tcp", 81, "deny"),
        ("cli", "fd00:5::10", "udp", 53, "allow"),
        ("cli", "fd00:5::10", "udp", 54, "deny"),
        ("srv", "fd00:5::20", "icmp", None, "deny"),
        ("cli", "srv", "tcp", 8000, "allow"),  # an IPv4-only rule ...
    ])
    assert not box.reach("cli", "fd00:5::10", "tcp", 8000)  # ... does not open IPv6


def test_arp_passes_where_ip_is_dropped(box: LabBox) -> None:
    # cli accepts no IP at all, but answers ARP: security groups filter IP only
    assert not box.reach("srv", "cli")
    ns = box.vm("srv").netns
    netns.run(ns, ["ip", "neigh", "flush", "dev", "eth0"])
    proc = netns.run(ns, ["arping", "-c", "1", "-w", "2", "-I", "eth0", box.ip("cli")],
                     check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert box.mac("cli").lower() in proc.stdout.lower()
