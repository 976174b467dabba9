"""Differential test: the evaluator against the kernel, packet by packet.

A seeded generator builds a random topology (several stateful groups with remote-group and
prefix rules, restricted egress, a stateless group, address pairs with CIDRs, a VIP, a
0.0.0.0/0 pair, a port without groups, a port without port security); the lab brings it up
in namespaces with the real applier. Then well over a thousand random IPv4 packets — TCP
SYNs, UDP, ICMP echo/timestamp, with genuine and forged source addresses and MACs, to the
destination's address or to other addresses — are sent from the source VMs (scapy, one
process per VM, all frames in one batch) and sniffed on every destination VM. Each packet's
fate (seen at the destination's interface or not) must equal ``evaluate_hop`` on the same
plan. Any disagreement fails the test and is listed with the evaluator's reasoning.

Every packet is a new flow (unique source port or ICMP id), so conntrack sees it as NEW,
which is what the evaluator is asked. Forged MACs are random locally administered ones,
never another VM's, so bridge learning never redirects later frames.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import random
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from portwall.analyze.evaluate import Packet, evaluate_hop
from portwall.ir import compile_plan
from portwall.ir.types import HostPlan, PortPlan, SpoofCheck
from portwall.topology import Topology, load_topology

pytestmark = pytest.mark.e2e

NET = ipaddress.ip_network("10.60.0.0/24")
PORTS = [22, 53, 80, 443, 5000, 5001, 5005, 8080]
OUTSIDE = ["203.0.113.0/24", "198.51.100.0/24"]
N_PACKETS = 1200
TCP, UDP, ICMP, ICMPV6 = 6, 17, 1, 58

SNIFFER = r"""
import json, sys, time
from scapy.all import AsyncSniffer, conf
conf.sniff_promisc = False
mac = sys.argv[1]
got = set()
def seen(p):
    raw = bytes(p)
    if raw[0:6].hex(":") != mac:
        return
    i = raw.find(b"pwdiff:")
    if i >= 0:
        got.add(int(raw[i + 7:i + 15]))
s = AsyncSniffer(iface="eth0", prn=seen, store=False, filter="ip or ip6")
s.start()
while not getattr(s, "running", False):
    time.sleep(0.02)
time.sleep(0.2)
print("ready", flush=True)
sys.stdin.read()
time.sleep(0.3)
s.stop()
print(json.dumps(sorted(got)), flush=True)
"""

SENDER = r"""
import json, sys
from scapy.all import Ether, IP, IPv6, TCP, UDP, ICMP, ICMPv6EchoRequest, Raw, conf
frames = []
for p in json.load(sys.stdin):
    ip = IP(src=p["sip"], dst=p["dip"], ttl=64) if p["family"] == 4 else \
        IPv6(src=p["sip"], dst=p["dip"], hlim=64)
    l2 = Ether(src=p["smac"], dst=p["dmac"]) / ip
    if p["proto"] == 6:
        l4 = TCP(sport=p["sport"], dport=p["dport"], flags="S", seq=1000)
    elif p["proto"] == 17:
        l4 = UDP(sport=p["sport"], dport=p["dport"])
    elif p["proto"] == 58:
        l4 = ICMPv6EchoRequest(id=p["icmp_id"], seq=1)
    else:
        l4 = ICMP(type=p["itype"], code=0, id=p["icmp_id"], seq=1)
    frames.append(bytes(l2 / l4 / Raw(b"pwdiff:%08d" % p["marker"])))
sock = conf.L2socket(iface="eth0")
for f in frames:
    sock.send(f)
sock.close()
print(len(frames), flush=True)
"""


# ------------------------------------------------------------------ topology generator
@dataclass(frozen=True)
class Fam:
    """Address pools of one family: the tenant subnet, "outside" ranges, the /0."""

    v: int
    net: str
    outside: tuple[str, ...]
    anywhere: str
    icmp_types: tuple[int, ...]  # types rules name; the first two are what probes send
    pair_cidrs: tuple[str, ...]

    def host(self, i: int) -> str:
        return str(ipaddress.ip_network(self.net).network_address + 10 + i)


V4 = Fam(4, str(NET), tuple(OUTSIDE), "0.0.0.0/0", (8, 13, 0),
         ("10.60.0.128/27", "10.60.0.64/28", *OUTSIDE))
V6 = Fam(6, "fd60::/64", ("2001:db8:1::/48", "2001:db8:2::/48"), "::/0", (128, 129, 1),
         ("fd60::80/122", "fd60::40/124", "2001:db8:1::/48"))


def _rand_prefix(rng: random.Random, f: Fam) -> str:
    roll = rng.random()
    if roll < 0.15:
        return f.anywhere
    if roll < 0.3:
        return rng.choice(f.outside)
    base = ipaddress.ip_network(f.net)
    plen = base.prefixlen + rng.choice([0, 1, 2, 3, 4])
    addr = base.network_address + rng.randrange(0, 256)
    return str(ipaddress.ip_network(f"{addr}/{plen}", strict=False))


def _rule(rng: random.Random, direction: str, groups: list[str], fams: list[Fam]
          ) -> dict[str, Any]:
    f = rng.choice(fams)
    r: dict[str, Any] = {"direction": direction, "ethertype": f"IPv{f.v}"}
    proto = rng.choice(["tcp", "tcp", "udp", "icmp", None])
    if proto is not None:
        r["protocol"] = proto
    if proto in ("tcp", "udp") and rng.random() < 0.85:
        lo = rng.choice(PORTS)
        r["port_range_min"] = lo
        r["port_range_max"] = lo + rng.choice([0, 0, 0, 5])
    if proto == "icmp" and rng.random() < 0.5:
        r["port_range_min"] = rng.choice(f.icmp_types)
    roll = rng.random()
    if roll < 0.35:
        r["remote_group_id"] = rng.choice(groups)
    elif roll < 0.8:
        r["remote_ip_prefix"] = _rand_prefix(rng, f)
    return r


def _unique(rules: list[dict[str, Any]]) -> list[dict[str, Any]]:
    seen, out = set(), []
    for r in rules:
        key = json.dumps(r, sort_keys=True)
        if key not in seen:
            seen.add(key)
            out.append(r)
    return out


def generate(seed: int, dual: bool = False) -> dict[str, Any]:
    rng = random.Random(seed)
    fams = [V4, V6] if dual else [V4]
    groups = ["g0", "g1", "g2", "g3"]
    sgs: list[dict[str, Any]] = []
    for g in groups:
        restrict = rng.random() < 0.5
        rules = [_rule(rng, "ingress", groups, fams) for _ in range(rng.randint(2, 5) * len(fams))]
        if restrict:
            rules += [_rule(rng, "egress", groups, fams) for _ in range(rng.randint(1, 3))]
        sgs.append({"name": g, "default_egress_rules": not restrict,
                    "security_group_rules": _unique(rules)})
    sl_rules = [_rule(rng, "ingress", ["gs"], fams) for _ in range(3)] + [
        _rule(rng, "egress", ["gs"], fams) for _ in range(2)]
    sgs.append({"name": "gs", "stateful": False, "default_egress_rules": False,
                "security_group_rules": _unique(sl_rules)})
    ports: list[dict[str, Any]] = []
    vms: dict[str, Any] = {}
    n = 7
    for i in range(n):
        port: dict[str, Any] = {"name": f"p{i}", "network_id": "net",
                                "fixed_ips": [f.host(i) for f in fams],
                                "mac_address": f"fa:16:3e:60:00:{i + 1:02x}"}
        if i == n - 1:
            port["port_security_enabled"] = False
        elif i == n - 2:
            port["security_groups"] = []
        elif i == n - 3:
            port["security_groups"] = ["gs"]
        else:
            port["security_groups"] = rng.sample(groups, rng.choice([1, 1, 2]))
        if port.get("port_security_enabled", True):
            pairs: list[dict[str, Any]] = []
            if i == 0:
                pairs.append({"ip_address": "0.0.0.0/0"})
            if i == 1:
                pairs.append({"ip_address": "10.60.0.200"})  # a VIP
            for f in fams:
                if rng.random() < 0.5:
                    pair: dict[str, Any] = {"ip_address": rng.choice(f.pair_cidrs)}
                    if rng.random() < 0.4:
                        pair["mac_address"] = f"fa:16:3e:6{f.v}:00:{i + 1:02x}"
                    pairs.append(pair)
            if pairs:
                port["allowed_address_pairs"] = pairs
        ports.append(port)
        vms[f"vm{i}"] = {"ports": [f"p{i}"]}
    subnets = [{"name": f"sub{f.v}", "cidr": f.net} for f in fams]
    return {"project": f"diff{seed}", "networks": [{"name": "net", "subnets": subnets}],
            "security_groups": sgs, "ports": ports, "lab": {"vms": vms}}


# ------------------------------------------------------------------ packets
@dataclass
class Probe:
    marker: int
    src_vm: str
    dst_vm: str
    family: int
    smac: str
    dmac: str
    sip: str
    dip: str
    proto: int
    sport: int | None
    dport: int | None
    itype: int | None

    def to_json(self) -> dict[str, Any]:
        return {"marker": self.marker, "smac": self.smac, "dmac": self.dmac, "sip": self.sip,
                "dip": self.dip, "family": self.family, "proto": self.proto,
                "sport": self.sport, "dport": self.dport, "itype": self.itype,
                "icmp_id": self.marker % 65536}

    def packet(self) -> Packet:
        return Packet(self.family, self.sip, self.dip, self.proto,  # type: ignore[arg-type]
                      self.sport, self.dport, self.itype,
                      0 if self.itype is not None else None, self.smac)


def _addr_in(rng: random.Random, cidr: str) -> str:
    net = ipaddress.ip_network(cidr)
    if net.prefixlen == 0 and net.version == 4:
        return f"{rng.randint(1, 223)}.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randint(1, 254)}"
    if net.prefixlen == 0:
        return str(ipaddress.IPv6Address(0x2001_0db8 << 96 | rng.getrandbits(96)))
    if net.num_addresses <= 2:
        return str(net.network_address)
    return str(net.network_address + rng.randrange(1, min(net.num_addresses - 1, 2**32)))


def make_probes(topo: Topology, plan: HostPlan, seed: int, n: int) -> list[Probe]:
    rng = random.Random(seed * 7919 + 1)
    by_vm: dict[str, PortPlan] = {vm: plan.port(topo.lab.vms[vm].ports[0])
                                  for vm in topo.lab.vms}
    model_ports = {vm: topo.model.ports[topo.lab.vms[vm].ports[0]] for vm in topo.lab.vms}
    names = sorted(by_vm)
    out = []
    for i in range(n):
        src, dst = rng.sample(names, 2)
        sp, dp, mp = by_vm[src], by_vm[dst], model_ports[src]
        f = rng.choice([V4, V6] if len(sp.addresses) > 1 else [V4])
        own = next(a for a in sp.addresses if a.version == f.v)
        smac, sip = sp.mac, str(own.network_address)
        pairs = [p for p in mp.allowed_address_pairs if p.network.version == f.v]
        roll = rng.random()
        if roll < 0.25 and pairs:
            pair = rng.choice(pairs)
            sip = _addr_in(rng, str(pair.network))
            if pair.mac_address and rng.random() < 0.7:
                smac = pair.mac_address
        elif roll < 0.45:  # forged: someone else's address, or anywhere
            sip = _addr_in(rng, rng.choice([f.net, *f.outside, f.anywhere]))
        if rng.random() < 0.08:
            smac = "02:00:5e:" + ":".join(f"{rng.randrange(256):02x}" for _ in range(3))
        dip = str(next(a for a in dp.addresses if a.version == f.v).network_address)
        if rng.random() < 0.2:
            dip = _addr_in(rng, rng.choice([f.net, *f.outside]))
        icmp = ICMP if f.v == 4 else ICMPV6
        proto = rng.choice([TCP, TCP, UDP, UDP, icmp])
        sport = dport = itype = None
        if proto in (TCP, UDP):
            sport = 20000 + i
            dport = rng.choice(PORTS) if rng.random() < 0.8 else rng.randint(1, 65535)
            if dport in (67, 68, 546, 547):
                dport = 69
        else:
            itype = rng.choice(f.icmp_types[:2] if f.v == 4 else f.icmp_types[:1])
        out.append(Probe(i, src, dst, f.v, smac, dp.mac, sip, dip, proto, sport, dport,
                         itype))
    return out


# ------------------------------------------------------------------ the test
def _vm_python(ns: str, code: str, *args: str) -> list[str]:
    return ["ip", "netns", "exec", ns, sys.executable, "-c", code, *args]


def _run_batch(box: Any, probes: list[Probe]) -> set[int]:
    """Send every probe from its source VM; return the markers seen at their destination."""
    sniffers: dict[str, subprocess.Popen[str]] = {}
    try:
        for name, vm in box.state.vms.items():
            mac = vm.ports[0].mac.lower()
            sniffers[name] = subprocess.Popen(_vm_python(vm.netns, SNIFFER, mac), text=True,
                                              stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                              stderr=subprocess.PIPE)
        for name, proc in sniffers.items():
            assert proc.stdout is not None
            line = proc.stdout.readline().strip()
            assert line == "ready", f"sniffer in {name}: {line} {proc.stderr.read() if proc.stderr else ''}"
        senders = []
        for name, vm in box.state.vms.items():
            mine = [p.to_json() for p in probes if p.src_vm == name]
            if not mine:
                continue
            proc = subprocess.Popen(_vm_python(vm.netns, SENDER), text=True,
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE)
            senders.append((name, proc, json.dumps(mine)))
        for name, proc, payload in senders:
            out, err = proc.communicate(payload, timeout=120)
            assert proc.returncode == 0, f"sender in {name} failed: {err}"
        time.sleep(0.5)
        seen: dict[str, set[int]] = {}
        for name, proc in sniffers.items():
            out, err = proc.communicate("", timeout=30)
            assert proc.returncode == 0, f"sniffer in {name} failed: {err}"
            seen[name] = set(json.loads(out.strip().splitlines()[-1]))
    finally:
        for proc in sniffers.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    by_marker = {p.marker: p for p in probes}
    # a marker only counts at the VM it was addressed to
    return {m for name, ms in seen.items() for m in ms if by_marker[m].dst_vm == name}


@pytest.mark.parametrize(("seed", "dual", "count"), [(1, False, N_PACKETS), (2, True, 800)],
                         ids=["ipv4", "dual-stack"])
def test_evaluator_matches_kernel(seed: int, dual: bool, count: int, tmp_path: Path) -> None:
    from portwall.lab.sandbox import sandbox

    path = tmp_path / f"diff{seed}.yaml"
    path.write_text(yaml.safe_dump(generate(seed, dual), sort_keys=False))
    topo = load_topology(path)
    plan = compile_plan(topo.model)
    probes = make_probes(topo, plan, seed, count)
    ports = {vm: plan.port(topo.lab.vms[vm].ports[0]) for vm in topo.lab.vms}
    expected = {p.marker: evaluate_hop(plan, p.packet(), ports[p.src_vm], ports[p.dst_vm])
                for p in probes}
    allowed = sum(h.allowed for h in expected.values())
    # the sample must exercise both verdicts and both kinds of source
    assert 0.1 * len(probes) < allowed < 0.9 * len(probes), allowed
    spoof_drops = sum(1 for h in expected.values() if h.egress and not h.egress.allowed
                      and h.egress.spoof_checked and h.egress.spoof_entry is None)
    assert spoof_drops > 20

    with sandbox(topo, name=f"pwdiff{seed}-{random.randrange(16**6):06x}") as box:
        seen = _run_batch(box, probes)

    wrong = []
    for p in probes:
        hop = expected[p.marker]
        if hop.allowed != (p.marker in seen):
            why = hop.denied_by.origin if hop.denied_by else (
                hop.ingress.origin if hop.ingress else None)
            wrong.append(f"#{p.marker} {p.src_vm}->{p.dst_vm} {p.packet().describe()} mac "
                         f"{p.smac}: evaluator {'allow' if hop.allowed else 'deny'} "
                         f"({why.kind if why else '-'} {why.detail if why else ''}), kernel "
                         f"{'delivered' if p.marker in seen else 'dropped'}")
    assert not wrong, f"{len(wrong)}/{len(probes)} verdicts differ:\n" + "\n".join(wrong[:40])

    # Control: the same observations must contradict an evaluator that forgets the
    # anti-spoof check, so agreement above is not something any evaluator would get.
    blind = _without_spoof_check(plan)
    bports = {vm: blind.port(p.id) for vm, p in ports.items()}
    contradicted = sum(
        evaluate_hop(blind, p.packet(), bports[p.src_vm], bports[p.dst_vm]).allowed
        != (p.marker in seen) for p in probes)
    assert contradicted > 10


def _without_spoof_check(plan: HostPlan) -> HostPlan:
    ports = tuple(dataclasses.replace(
        p, egress=tuple(s for s in p.egress if not isinstance(s, SpoofCheck)))
        for p in plan.ports)
    return HostPlan(plan.host, ports, plan.rulesets, plan.address_sets)
