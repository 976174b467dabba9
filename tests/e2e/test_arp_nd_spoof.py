"""ARP and IPv6 neighbour-advertisement anti-spoofing with real frames (scapy in the VMs),
judged by what the receivers make of them: their neighbour tables and what arrives.

Seed 001's keepalived scenario: a VM without the VIP's address pair cannot take the VIP over
with a gratuitous ARP (the client's neighbour entry keeps pointing at the master), a VM with
the pair can (failover works); forged ARP sender IPs and sender MACs are dropped; a forged
neighbour advertisement (a target the port does not own) is dropped, the port's own passes.
"""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from portwall.analyze.evaluate import ArpPacket, Packet, evaluate_arp, evaluate_direction
from portwall.ir import compile_plan
from portwall.lab import netns
from portwall.lab.harness import Lab, LabBox
from portwall.model.store import Model

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]

VIP = "10.1.1.2"
FAKE_MAC = "02:00:00:00:00:99"
VIP_TOPOLOGY = """
project: garp
networks:
  - name: tenant
    subnets: [{name: tenant-v4, cidr: 10.1.1.0/24}]
security_groups:
  - name: vip
    security_group_rules:
      - {direction: ingress, protocol: icmp}
ports:
  - {name: vip-a-port, network_id: tenant, fixed_ips: [10.1.1.11], security_groups: [vip],
     allowed_address_pairs: [{ip_address: 10.1.1.2}]}
  - {name: vip-b-port, network_id: tenant, fixed_ips: [10.1.1.12], security_groups: [vip]}
  - {name: client-port, network_id: tenant, fixed_ips: [10.1.1.30], security_groups: [vip]}
lab:
  vms:
    vip-a: {ports: [vip-a-port]}
    vip-b: {ports: [vip-b-port]}
    client: {ports: [client-port]}
"""
ND_TOPOLOGY = """
project: nd
networks:
  - name: net
    subnets:
      - {name: v4, cidr: 10.7.0.0/24}
      - {name: v6, cidr: "fd00:7::/64", ip_version: 6}
security_groups:
  - name: open
    security_group_rules:
      - {direction: ingress, ethertype: IPv6, protocol: ipv6-icmp}
ports:
  - {name: a-port, network_id: net, fixed_ips: [10.7.0.10, "fd00:7::10"], security_groups: [open]}
  - {name: b-port, network_id: net, fixed_ips: [10.7.0.20, "fd00:7::20"], security_groups: [open]}
  - {name: c-port, network_id: net, fixed_ips: [10.7.0.30, "fd00:7::30"], security_groups: [open]}
lab:
  vms:
    a: {ports: [a-port]}
    b: {ports: [b-port]}
    c: {ports: [c-port]}
"""


@pytest.fixture
def lab(backend_name: str) -> Iterator[Lab]:
    with Lab("pwt-arp", backend=backend_name) as lab:
        yield lab


def _scapy(ns: str, code: str) -> str:
    """Run scapy code inside a VM's namespace (a fresh interpreter: scapy binds to the
    namespace it starts in)."""
    head = ("from scapy.layers.l2 import ARP, Ether\n"
            "from scapy.layers.inet6 import IPv6, ICMPv6ND_NA, ICMPv6NDOptDstLLAddr\n"
            "from scapy.sendrecv import sendp, sniff\n")
    return netns.run(ns, [sys.executable, "-c", head + code], timeout=60).stdout


def garp(box: LabBox, vm: str, claim: str, *, arp_mac: str | None = None) -> None:
    """A gratuitous ARP from ``vm``'s eth0 claiming ``claim`` (ARP sender MAC ``arp_mac``,
    default the frame's source MAC = the VM's MAC), three times."""
    mac = box.mac(vm)
    sha = arp_mac or mac
    _scapy(box.vm(vm).netns,
           f"f = Ether(src='{mac}', dst='ff:ff:ff:ff:ff:ff') / ARP(op=1, hwsrc='{sha}', "
           f"psrc='{claim}', hwdst='00:00:00:00:00:00', pdst='{claim}')\n"
           "sendp(f, iface='eth0', count=3, inter=0.05, verbose=False)\n")
    time.sleep(0.3)


def neigh(box: LabBox, vm: str, addr: str) -> str | None:
    """The MAC ``vm`` has for ``addr`` (None if none)."""
    fam = "-6" if ":" in addr else "-4"
    out = netns.run(box.vm(vm).netns, ["ip", fam, "neigh", "show", addr, "dev", "eth0"]).stdout
    parts = out.split()
    return parts[parts.index("lladdr") + 1].lower() if "lladdr" in parts else None


def takes_over(box: LabBox, vm: str, claim: str, want: str, *, arp_mac: str | None = None,
               tries: int = 3) -> bool:
    """For allowed ARP (a positive control): send the gratuitous ARP until ``client`` has
    ``want`` for ``claim`` (the neighbour code may ignore one under load)."""
    for _ in range(tries):
        garp(box, vm, claim, arp_mac=arp_mac)
        if neigh(box, "client", claim) == want:
            return True
        settle()
    return False


def settle() -> None:
    time.sleep(1.1)  # past the neighbour "locktime": a later ARP may override the entry


# ------------------------------------------------------------------ ARP
def test_gratuitous_arp_takes_the_vip_only_with_its_address_pair(lab: Lab) -> None:
    box = lab.up(VIP_TOPOLOGY)
    a_mac, b_mac = box.mac("vip-a"), box.mac("vip-b")
    assert box.reach("client", VIP)
    assert neigh(box, "client", VIP) == a_mac
    settle()
    # vip-b has no pair for the VIP: its takeover is dropped at the bridge
    garp(box, "vip-b", VIP)
    assert neigh(box, "client", VIP) == a_mac
    assert box.reach("client", VIP)  # the master still answers
    # the evaluator says the same, in the user's terms
    plan = compile_plan(box.topo.model)
    res = evaluate_arp(plan.port("vip-b-port"), ArpPacket(b_mac, b_mac, VIP))
    assert not res.allowed and f"claims {VIP}" in res.reason

    # failover: the pair moves to vip-b (the lab moves the address too); its GARP is allowed
    def failover(m: Model) -> None:
        m.update_port("vip-a-port", {"allowed_address_pairs": []})
        m.update_port("vip-b-port", {"allowed_address_pairs": [{"ip_address": VIP}]})

    box.update(failover)
    # the client still believes the old master (what a real client's cache says right after
    # the failover, before keepalived's gratuitous ARP)
    netns.run(box.vm("client").netns, ["ip", "-4", "neigh", "replace", VIP, "lladdr", a_mac,
                                       "dev", "eth0", "nud", "stale"])
    settle()
    assert takes_over(box, "vip-b", VIP, b_mac)
    assert box.reach("client", VIP)
    # and now vip-a (no pair any more) cannot take it back
    settle()
    garp(box, "vip-a", VIP)
    assert neigh(box, "client", VIP) == b_mac


def test_forged_arp_sender_ip_and_sender_mac_are_dropped(lab: Lab) -> None:
    box = lab.up(VIP_TOPOLOGY)
    a_mac, b_mac = box.mac("vip-a"), box.mac("vip-b")
    assert box.reach("client", "10.1.1.11") and box.reach("client", "10.1.1.12")
    assert neigh(box, "client", "10.1.1.11") == a_mac
    assert neigh(box, "client", "10.1.1.12") == b_mac
    settle()
    garp(box, "vip-b", "10.1.1.11")  # another VM's address
    garp(box, "vip-b", "10.1.1.12", arp_mac=FAKE_MAC)  # own IP, ARP sender MAC != frame MAC
    assert neigh(box, "client", "10.1.1.11") == a_mac
    assert neigh(box, "client", "10.1.1.12") == b_mac
    # control: the same forged MAC from a port without port security does get through
    box.update(lambda m: m.update_port("vip-b-port", {"security_groups": [],
                                                       "port_security_enabled": False}))
    settle()
    assert takes_over(box, "vip-b", "10.1.1.12", FAKE_MAC, arp_mac=FAKE_MAC)


# ------------------------------------------------------------------ ND
def _na_frames(box: LabBox, sender: str, targets: list[str], dst_mac: str) -> None:
    """Unsolicited neighbour advertisements (override flag) from ``sender``'s own MAC and own
    global address, for each target, to ``dst_mac``."""
    mac, src = box.mac(sender), box.ip(sender, 6)
    lines = [f"sendp(Ether(src='{mac}', dst='{dst_mac}') / IPv6(src='{src}', dst='ff02::1') / "
             f"ICMPv6ND_NA(tgt='{t}', R=0, S=0, O=1) / ICMPv6NDOptDstLLAddr(lladdr='{mac}'), "
             "iface='eth0', count=2, inter=0.05, verbose=False)" for t in targets]
    # last, an allowed NA (own address) to ff02::2: the sniffer's end marker
    lines.append(f"sendp(Ether(src='{mac}', dst='{dst_mac}') / IPv6(src='{src}', dst='ff02::2')"
                 f" / ICMPv6ND_NA(tgt='{src}', O=0), iface='eth0', verbose=False)")
    _scapy(box.vm(sender).netns, "\n".join(lines) + "\n")


def _sniff_na(box: LabBox, vm: str) -> subprocess.Popen[str]:
    code = ("from scapy.layers.inet6 import IPv6, ICMPv6ND_NA\nfrom scapy.sendrecv import sniff\n"
            "import sys\nprint('ready', flush=True)\n"
            "end = lambda p: IPv6 in p and p[IPv6].dst == 'ff02::2'\n"
            "for p in sniff(iface='eth0', timeout=60, stop_filter=end,\n"
            "               filter='icmp6 and ip6[40] == 136'):\n"
            "    if p[IPv6].dst != 'ff02::2': print(p[ICMPv6ND_NA].tgt, flush=True)\n")
    proc = subprocess.Popen(["ip", "netns", "exec", box.vm(vm).netns, sys.executable, "-c", code],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    time.sleep(0.3)  # the capture socket is open once sniff() runs
    return proc


def test_forged_neighbour_advertisement_is_dropped_own_passes(lab: Lab) -> None:
    box = lab.up(ND_TOPOLOGY)
    a6, b6 = box.ip("a", 6), box.ip("b", 6)
    assert box.reach("c", a6) and box.reach("c", b6)
    assert neigh(box, "c", a6) == box.mac("a")
    plan = compile_plan(box.topo.model)
    b_plan = plan.port("b-port")
    from portwall.ir.compile import link_local
    b_ll = str(link_local(b_plan.mac).network_address)
    settle()
    sniffer = _sniff_na(box, "c")
    try:
        _na_frames(box, "b", [a6, b6, b_ll, "fd00:7::99"], box.mac("c"))
    finally:
        out, _err = sniffer.communicate(timeout=30)
    seen = {str(ipaddress.ip_address(t)) for t in out.split()}
    # b's own address and link-local pass; another VM's address and an unknown one do not
    assert b6 in seen and b_ll in seen, out
    assert a6 not in seen and "fd00:7::99" not in seen, out
    # c's entry for a's address was not poisoned
    assert neigh(box, "c", a6) == box.mac("a")
    # the evaluator agrees
    for target, ok in ((a6, False), (b6, True), (b_ll, True)):
        pkt = Packet(6, b6, "ff02::1", 58, icmp_type=136, icmp_code=0, src_mac=b_plan.mac,
                     nd_target=target)
        assert evaluate_direction(plan, b_plan, "egress", pkt).allowed is ok


# ------------------------------------------------------------------ differential
DIFF_TOPOLOGY = """
project: l2diff
networks:
  - name: net
    subnets:
      - {name: v4, cidr: 10.9.0.0/16}
      - {name: v6, cidr: "fd00:9::/64", ip_version: 6}
security_groups:
  - name: open
    security_group_rules:
      - {direction: ingress, ethertype: IPv6, protocol: ipv6-icmp}
ports:
  - name: a-port
    network_id: net
    fixed_ips: [10.9.0.10, "fd00:9::10"]
    security_groups: [open]
    allowed_address_pairs:
      - {ip_address: 10.9.5.0/24}
      - {ip_address: 10.9.0.100, mac_address: "fa:16:3e:aa:aa:aa"}
      - {ip_address: "fd00:9::100"}
  - {name: b-port, network_id: net, fixed_ips: [10.9.0.20, "fd00:9::20"], security_groups: [open]}
  - {name: u-port, network_id: net, fixed_ips: [10.9.0.40, "fd00:9::40"],
     port_security_enabled: false}
  - {name: c-port, network_id: net, fixed_ips: [10.9.0.30, "fd00:9::30"], security_groups: [open]}
lab:
  vms:
    a: {ports: [a-port]}
    b: {ports: [b-port]}
    u: {ports: [u-port]}
    c: {ports: [c-port]}
"""


def test_evaluator_matches_kernel_for_random_arp_and_na(lab: Lab) -> None:
    """Random ARP and NA frames (claimed IP/target, ARP sender MAC, frame MAC) from filtered
    and unfiltered ports; what reaches the observer ``c`` must be exactly what
    ``evaluate_arp`` / the evaluator's NA check allow. Each frame carries a unique marker
    (ARP target IP / IPv6 destination)."""
    import random

    from portwall.ir.compile import link_local

    box = lab.up(DIFF_TOPOLOGY)
    plan = compile_plan(box.topo.model)
    rng = random.Random(7)
    senders = {"a": plan.port("a-port"), "b": plan.port("b-port"), "u": plan.port("u-port")}
    c_mac = box.mac("c")
    claims4 = ["10.9.0.10", "10.9.0.20", "10.9.0.40", "10.9.5.77", "10.9.0.100", "10.9.6.1"]
    claims6 = ["fd00:9::10", "fd00:9::20", "fd00:9::100", "fd00:9::99",
               *(str(link_local(p.mac).network_address) for p in senders.values())]
    macs = [*(p.mac for p in senders.values()), "fa:16:3e:aa:aa:aa", FAKE_MAC]
    arp_want: dict[str, set[str]] = {}
    na_want: dict[str, set[str]] = {}
    code: dict[str, list[str]] = {vm: [] for vm in senders}
    for i in range(60):
        vm = rng.choice(list(senders))
        p = senders[vm]
        frame_mac = rng.choice([p.mac, p.mac, rng.choice(macs)])
        if i % 2 == 0:
            sha, claim = rng.choice([frame_mac, frame_mac, rng.choice(macs)]), rng.choice(claims4)
            marker = f"10.9.200.{i}"
            code[vm].append(f"sendp(Ether(src='{frame_mac}', dst='{c_mac}') / ARP(op=1, "
                            f"hwsrc='{sha}', psrc='{claim}', pdst='{marker}'), iface='eth0', "
                            "verbose=False)")
            ok = evaluate_arp(p, ArpPacket(frame_mac, sha, claim)).allowed
            arp_want.setdefault(vm, set()).update({marker} if ok else set())
            arp_want.setdefault("all", set()).add(marker)
        else:
            target, marker = rng.choice(claims6), f"fd00:9::200:{i}"
            src = box.ip(vm, 6)
            code[vm].append(f"sendp(Ether(src='{frame_mac}', dst='{c_mac}') / IPv6(src='{src}',"
                            f" dst='{marker}') / ICMPv6ND_NA(tgt='{target}', O=0), "
                            "iface='eth0', verbose=False)")
            pkt = Packet(6, src, marker, 58, icmp_type=136, icmp_code=0, src_mac=frame_mac,
                         nd_target=target)
            ok = evaluate_direction(plan, p, "egress", pkt).allowed
            na_want.setdefault(vm, set()).update({marker} if ok else set())
            na_want.setdefault("all", set()).add(marker)
    sniff_code = (
        "from scapy.layers.l2 import ARP\nfrom scapy.layers.inet6 import IPv6, ICMPv6ND_NA\n"
        "from scapy.sendrecv import sniff\nprint('ready', flush=True)\n"
        "end = lambda p: ARP in p and p[ARP].pdst == '10.9.255.254'\n"
        "for p in sniff(iface='eth0', timeout=90, stop_filter=end,\n"
        "               filter='arp or (icmp6 and ip6[40] == 136)'):\n"
        "    if ARP in p: print('arp', p[ARP].pdst, flush=True)\n"
        "    elif ICMPv6ND_NA in p: print('na', p[IPv6].dst, flush=True)\n")
    proc = subprocess.Popen(["ip", "netns", "exec", box.vm("c").netns, sys.executable, "-c",
                             sniff_code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        time.sleep(0.3)
        for vm, lines in code.items():
            if lines:
                _scapy(box.vm(vm).netns, "\n".join(lines) + "\n")
        # the end marker, from the unfiltered port (never checked), after everything else
        u_mac = box.mac("u")
        _scapy(box.vm("u").netns, f"sendp(Ether(src='{u_mac}', dst='{c_mac}') / ARP(op=1, "
               f"hwsrc='{u_mac}', psrc='10.9.0.40', pdst='10.9.255.254'), iface='eth0', "
               "verbose=False)\n")
    finally:
        out, _err = proc.communicate(timeout=60)
    got_arp = {ln.split()[1] for ln in out.splitlines() if ln.startswith("arp ")}
    got_na = {str(ipaddress.ip_address(ln.split()[1])) for ln in out.splitlines()
              if ln.startswith("na ")}
    got_arp &= arp_want["all"]
    got_na &= {str(ipaddress.ip_address(m)) for m in na_want["all"]}
    want_arp = set().union(*(v for k, v in arp_want.items() if k != "all"))
    want_na = {str(ipaddress.ip_address(m)) for k, v in na_want.items() if k != "all"
               for m in v}
    assert got_arp == want_arp, (sorted(got_arp - want_arp), sorted(want_arp - got_arp))
    assert got_na == want_na, (sorted(got_na - want_na), sorted(want_na - got_na))
    # not vacuous: both verdicts occur for both kinds
    assert want_arp and arp_want["all"] - want_arp
    assert want_na and {str(ipaddress.ip_address(m)) for m in na_want["all"]} - want_na
