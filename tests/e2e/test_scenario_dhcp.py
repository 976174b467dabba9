"""DHCP with real packets: a VM's DHCP client traffic passes even without egress rules
(Neutron's provider rules), while a DHCP server on a VM (udp 67 -> 68) is dropped; the
decision hangs on the *source* port, so the same packet from port 1067 passes."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest

from portwall.lab.harness import Lab, LabBox
from portwall.lab.traffic import Frame, Server, forge, probe

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]

# `dhcp` plays Neutron's DHCP port (network-owned, so unfiltered: port security off here).
TOPOLOGY = """
project: dhcp
networks:
  - name: net
    subnets: [{name: v4, cidr: 10.7.0.0/24}]
security_groups:
  - name: mute
    default_egress_rules: false
    security_group_rules: []
  - name: chatty
    security_group_rules: []
ports:
  - {name: client-port, network_id: net, fixed_ips: [10.7.0.10], security_groups: [mute]}
  - {name: rogue-port, network_id: net, fixed_ips: [10.7.0.20], security_groups: [chatty]}
  - {name: dhcp-port, network_id: net, fixed_ips: [10.7.0.2], port_security_enabled: false}
lab:
  vms:
    client: {ports: [client-port]}
    rogue: {ports: [rogue-port]}
    dhcp: {ports: [dhcp-port]}
"""
BROADCAST_MAC = "ff:ff:ff:ff:ff:ff"


@pytest.fixture(scope="module")
def box(backend_name: str) -> Iterator[LabBox]:
    with Lab("pwt-dhcp", backend=backend_name) as lab:
        yield lab.up(TOPOLOGY)


def _sources(lines: list[str], port: int) -> list[str]:
    return [ln.split()[2] for ln in lines if ln.startswith(f"udp {port} ")]


def test_dhcp_client_traffic_passes_without_egress_rules(box: LabBox) -> None:
    client = box.vm("client")
    with Server(box.vm("dhcp"), udp=[67]) as srv:
        # DHCPDISCOVER: from 0.0.0.0:68 to the broadcast address
        forge(client, [Frame("0.0.0.0", "255.255.255.255", box.mac("client"), BROADCAST_MAC,
                             sport=68, dport=67)])
        # a renewal from the VM's own address (a real socket bound to port 68)
        renew = probe(client, "udp", "10.7.0.2", 67, timeout=0.5, sport=68)
        # anything else from this VM: no egress rule, dropped
        other = probe(client, "udp", "10.7.0.2", 67, timeout=0.5, sport=40000)
        time.sleep(0.2)
        seen = srv.stop()
    assert sorted(_sources(seen, 67)) == ["0.0.0.0", "10.7.0.10"], seen
    # the server's answer (67 -> 68 to the VM's fixed IP) passes the VM's ingress too, though
    # the VM's group has no ingress rule: Neutron's DHCP reply rule
    assert renew[0] == "allow"
    assert other[0] == "deny"


def test_dhcp_server_on_a_vm_is_dropped(box: LabBox) -> None:
    rogue = box.vm("rogue")
    with Server(box.vm("dhcp"), udp=[68]) as srv:
        offer = probe(rogue, "udp", "10.7.0.2", 68, timeout=0.5, sport=67)
        control = probe(rogue, "udp", "10.7.0.2", 68, timeout=0.5, sport=1067)
        forge(rogue, [Frame("10.7.0.20", "255.255.255.255", box.mac("rogue"), BROADCAST_MAC,
                            sport=67, dport=68)])
        time.sleep(0.2)
        seen = srv.stop()
    assert offer[0] == "deny" and control[0] == "allow"
    assert _sources(seen, 68) == ["10.7.0.20"], seen  # only the sport-1067 control arrived
