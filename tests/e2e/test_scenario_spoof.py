"""Anti-spoofing with forged frames (scapy, sent from inside the VM's namespace) counted at
the receiver: IP and MAC spoofing dropped for IPv4 and IPv6, a port without port security
passes everything, spoofed traffic included."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest

from portwall.lab.harness import Lab, LabBox
from portwall.lab.traffic import Frame, Server, forge

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]

TOPOLOGY = """
project: spoof
networks:
  - name: net
    subnets:
      - {name: v4, cidr: 10.6.0.0/24}
      - {name: v6, cidr: "fd00:6::/64", ip_version: 6}
security_groups:
  - name: open
    security_group_rules:
      - {direction: ingress, protocol: udp}
      - {direction: ingress, ethertype: IPv6, protocol: udp}
ports:
  - {name: a-port, network_id: net, fixed_ips: [10.6.0.10, "fd00:6::10"], security_groups: [open]}
  - {name: b-port, network_id: net, fixed_ips: [10.6.0.20, "fd00:6::20"], security_groups: [open]}
  - {name: u1-port, network_id: net, fixed_ips: [10.6.0.30], port_security_enabled: false}
  - {name: u2-port, network_id: net, fixed_ips: [10.6.0.40], port_security_enabled: false}
lab:
  vms:
    a: {ports: [a-port]}
    b: {ports: [b-port]}
    u1: {ports: [u1-port]}
    u2: {ports: [u2-port]}
"""
FAKE_MAC = "02:00:00:00:00:99"


@pytest.fixture(scope="module")
def box(backend_name: str) -> Iterator[LabBox]:
    with Lab("pwt-spoof", backend=backend_name) as lab:
        yield lab.up(TOPOLOGY)


def _arrived(box: LabBox, sender: str, receiver: str, frames: dict[int, Frame]) -> set[int]:
    """Send each frame (one UDP port per case) and return the ports that reached
    ``receiver``'s socket."""
    with Server(box.vm(receiver), udp=list(frames)) as srv:
        forge(box.vm(sender), frames.values())
        time.sleep(0.3)  # frames are sent synchronously; leave the receiver time to log
        seen = srv.stop()
    return {int(ln.split()[1]) for ln in seen if ln.startswith("udp ")}


def test_ip_and_mac_spoofing_are_dropped_v4(box: LabBox) -> None:
    a_mac, b_mac = box.mac("a"), box.mac("b")
    frames = {
        7001: Frame("10.6.0.10", "10.6.0.20", a_mac, b_mac, dport=7001),  # honest: control
        7002: Frame("10.6.0.99", "10.6.0.20", a_mac, b_mac, dport=7002),  # unknown source IP
        7003: Frame("10.6.0.30", "10.6.0.20", a_mac, b_mac, dport=7003),  # another VM's IP
        7004: Frame("10.6.0.10", "10.6.0.20", FAKE_MAC, b_mac, dport=7004),  # forged MAC
    }
    assert _arrived(box, "a", "b", frames) == {7001}


def test_ip_and_mac_spoofing_are_dropped_v6(box: LabBox) -> None:
    a_mac, b_mac = box.mac("a"), box.mac("b")
    frames = {
        7101: Frame("fd00:6::10", "fd00:6::20", a_mac, b_mac, dport=7101),  # control
        7102: Frame("fd00:6::99", "fd00:6::20", a_mac, b_mac, dport=7102),
        7103: Frame("fd00:6::10", "fd00:6::20", FAKE_MAC, b_mac, dport=7103),
    }
    assert _arrived(box, "a", "b", frames) == {7101}


def test_port_security_disabled_passes_everything(box: LabBox) -> None:
    u2_mac = box.mac("u2")
    frames = {
        7201: Frame("10.6.0.30", "10.6.0.40", box.mac("u1"), u2_mac, dport=7201),
        7202: Frame("198.51.100.7", "10.6.0.40", FAKE_MAC, u2_mac, dport=7202),
    }
    assert _arrived(box, "u1", "u2", frames) == {7201, 7202}
    # and no group filters it: any protocol and port, both ways
    with Server(box.vm("u2"), tcp=[4444]):
        assert box.reach("u1", "u2", "tcp", 4444)
    assert box.reach("u2", "u1")
