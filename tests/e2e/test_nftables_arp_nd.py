"""ARP and IPv6 neighbour-advertisement anti-spoofing on the nftables backend, real frames.

A VM sends hand-made frames through a raw socket (what a compromised VM can do); another VM
on the same bridge listens with a raw socket and reports what arrived.
"""

from __future__ import annotations

import ipaddress
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from portwall.lab.harness import Lab, LabBox

TOPO = """
project: arpnd
networks:
  - name: net
    subnets:
      - {name: v4, cidr: 10.7.0.0/24}
      - {name: v6, cidr: "2001:db8:7::/64", ip_version: 6}
security_groups:
  - name: open
    security_group_rules:
      - {direction: ingress, ethertype: IPv4}
      - {direction: ingress, ethertype: IPv6}
ports:
  - {name: a-port, network_id: net, fixed_ips: [10.7.0.10, "2001:db8:7::10"],
     security_groups: [open], allowed_address_pairs: [{ip_address: 10.7.0.100}]}
  - {name: b-port, network_id: net, fixed_ips: [10.7.0.20, "2001:db8:7::20"],
     security_groups: [open]}
  - {name: c-port, network_id: net, fixed_ips: [10.7.0.30, "2001:db8:7::30"],
     security_groups: [open]}
lab:
  vms:
    a: {ports: [a-port]}
    b: {ports: [b-port]}
    c: {ports: [c-port]}
"""

# Sender: argv = kind ("arp" | "na"), ether src, arp/ip sender MAC, sender/target address.
SEND = r"""
import socket, struct, sys, ipaddress
kind, esrc, smac, addr = sys.argv[1:5]
mac = lambda m: bytes.fromhex(m.replace(":", ""))
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind(("eth0", 0))
if kind == "arp":
    ip = ipaddress.IPv4Address(addr).packed
    body = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 2, mac(smac), ip, b"\xff" * 6, ip)
    frame = b"\xff" * 6 + mac(esrc) + b"\x08\x06" + body
else:
    src = ipaddress.IPv6Address(sys.argv[5]).packed
    dst = ipaddress.IPv6Address("ff02::1").packed
    tgt = ipaddress.IPv6Address(addr).packed
    opt = struct.pack("!BB6s", 2, 1, mac(smac))
    icmp = struct.pack("!BBHI16s", 136, 0, 0, 0x20000000, tgt) + opt
    pseudo = src + dst + struct.pack("!I3xB", len(icmp), 58)
    data = pseudo + icmp
    total = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    icmp = icmp[:2] + struct.pack("!H", ~total & 0xFFFF) + icmp[4:]
    ip6 = struct.pack("!IHBB16s16s", 0x60000000, len(icmp), 58, 255, src, dst)
    frame = b"\x33\x33\x00\x00\x00\x01" + mac(esrc) + b"\x86\xdd" + ip6 + icmp
for _ in range(3):
    s.send(frame)
"""

# Listener: prints "arp <sender ip>" / "na <target>" for every such frame seen.
LISTEN = r"""
import socket, sys, time, ipaddress
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
s.bind(("eth0", 0))
s.settimeout(0.2)
end = time.time() + float(sys.argv[1])
print("ready", flush=True)
while time.time() < end:
    try:
        f = s.recv(2048)
    except socket.timeout:
        continue
    if f[12:14] == b"\x08\x06":
        print("arp", ipaddress.IPv4Address(f[28:32]), f[22:28].hex(":"), flush=True)
    elif f[12:14] == b"\x86\xdd" and f[20] == 58 and f[54] == 136:
        print("na", ipaddress.IPv6Address(f[62:78]), flush=True)
"""


@pytest.fixture
def box() -> Iterator[LabBox]:
    with Lab("pwt-nfarp", backend="nftables") as lab:
        yield lab.up(TOPO)


def _exchange(box: LabBox, sender: str, listener: str, *frames: list[str]) -> list[str]:
    """Start a listener in ``listener``, send ``frames`` from ``sender``; lines heard."""
    lst = subprocess.Popen(["ip", "netns", "exec", box.vm(listener).netns, sys.executable,
                            "-c", LISTEN, "60"], stdout=subprocess.PIPE, text=True)
    try:
        assert lst.stdout is not None and lst.stdout.readline().strip() == "ready"
        for argv in frames:
            subprocess.run(["ip", "netns", "exec", box.vm(sender).netns, sys.executable, "-c",
                            SEND, *argv], check=True, timeout=10)
        time.sleep(0.5)
        lst.terminate()  # everything heard is already printed (and flushed)
        out, _ = lst.communicate(timeout=10)
    finally:
        if lst.poll() is None:
            lst.kill()
    return out.splitlines()


def _ll(mac: str) -> str:
    b = bytes.fromhex(mac.replace(":", ""))
    eui = bytes([b[0] ^ 2, *b[1:3], 0xFF, 0xFE, *b[3:]])
    return str(ipaddress.IPv6Address(b"\xfe\x80" + b"\x00" * 6 + eui))


def test_arp_sender_must_be_an_allowed_pair(box: LabBox) -> None:
    a = box.mac("a")
    heard = _exchange(box, "a", "c",
                      ["arp", a, a, "10.7.0.10"],    # its fixed IP: passes
                      ["arp", a, a, "10.7.0.100"],   # its address pair (a VIP): passes
                      ["arp", a, a, "10.7.0.20"],    # b's address: a takeover, dropped
                      ["arp", a, "02:00:00:00:00:99", "10.7.0.10"])  # forged sender MAC
    ips = {ln.split()[1] for ln in heard if ln.startswith("arp")}
    assert {"10.7.0.10", "10.7.0.100"} <= ips, heard
    assert "10.7.0.20" not in ips, heard
    assert not any("02:00:00:00:00:99" in ln for ln in heard), heard


def test_vip_takeover_follows_the_pair(box: LabBox) -> None:
    b = box.mac("b")
    assert not any("10.7.0.100" in ln for ln in _exchange(box, "b", "c", ["arp", b, b, "10.7.0.100"]))
    box.update(lambda m: m.update_port("b-port", {"allowed_address_pairs": [
        {"ip_address": "10.7.0.100"}]}))
    assert any("10.7.0.100" in ln for ln in _exchange(box, "b", "c", ["arp", b, b, "10.7.0.100"]))


def test_neighbour_advertisement_only_for_own_addresses(box: LabBox) -> None:
    a = box.mac("a")
    ll = _ll(a)
    heard = _exchange(box, "a", "c",
                      ["na", a, a, "2001:db8:7::10", ll],   # its own address
                      ["na", a, a, ll, ll],                 # its link-local
                      ["na", a, a, "2001:db8:7::20", ll])   # b's address: dropped
    targets = {ln.split()[1] for ln in heard if ln.startswith("na")}
    assert {"2001:db8:7::10", ll} <= targets, heard
    assert "2001:db8:7::20" not in targets, heard
