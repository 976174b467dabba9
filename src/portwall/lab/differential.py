"""The evaluator against a backend's kernel state, packet by packet (tests and bench).

:func:`generate` builds a seeded random topology (stateful groups with remote-group and
prefix rules, restricted egress, a stateless group, address pairs with CIDRs and MACs, a
VIP, a 0.0.0.0/0 pair, a port without groups, a port without port security);
:func:`make_probes` draws random packets -- TCP SYNs, UDP, ICMP echo/timestamp, with
genuine and forged source addresses and MACs, to the destination's address or elsewhere.
:func:`run_round` brings the topology up in a lab sandbox on a backend, sends every frame
from its source VM and records which ones reach their destination VM's interface, then
compares each fate with :func:`~portwall.analyze.evaluate.evaluate_hop` on the same plan.

Frames are built here with :mod:`struct` and sent/sniffed by one small stdlib-only agent
per VM on an ``AF_PACKET`` socket (no scapy: its import cost seconds per VM). Sends are
paced in bursts so the receive backlog never overflows: a lost frame would look like a
drop. Every packet is a new flow (unique source port or ICMP id), so conntrack sees it as
NEW, which is what the evaluator is asked. Forged MACs are random locally administered
ones, never another VM's, so bridge learning never redirects later frames.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import random
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from portwall.analyze.evaluate import HopResult, Packet, evaluate_hop
from portwall.ir import compile_plan
from portwall.ir.types import HostPlan, PortPlan, SpoofCheck
from portwall.lab import netns
from portwall.lab.sandbox import Sandbox, sandbox
from portwall.topology import Topology, load_topology

PORTS = [22, 53, 80, 443, 5000, 5001, 5005, 8080]
TCP, UDP, ICMP, ICMPV6 = 6, 17, 1, 58
MARK = b"pwdiff:"

#: One agent per VM: sniffs eth0 (frames addressed to the VM's MAC that carry a marker),
#: sends the frames it is given in paced bursts, reports the markers it saw.
AGENT = r"""
import json, socket, sys, threading, time
mac = bytes.fromhex(sys.argv[1].replace(":", ""))
rx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
rx.setsockopt(socket.SOL_SOCKET, 33, 8 << 20)  # SO_RCVBUFFORCE
rx.bind(("eth0", 0))
rx.settimeout(0.05)
got, stop = set(), threading.Event()
def sniff():
    while not stop.is_set():
        try:
            raw, addr = rx.recvfrom(65535)
        except socket.timeout:
            continue
        if addr[2] == 4 or raw[0:6] != mac:  # our own outgoing frames, or not for us
            continue
        i = raw.find(b"pwdiff:")
        if i >= 0:
            got.add(int(raw[i + 7:i + 15]))
t = threading.Thread(target=sniff, daemon=True)
t.start()
print("ready", flush=True)
frames = [bytes.fromhex(h) for h in json.loads(sys.stdin.readline())]
tx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
tx.bind(("eth0", 0))
for i, f in enumerate(frames):
    tx.send(f)
    if i % 4 == 3:  # gentle: an OVS userspace datapath upcalls every new flow
        time.sleep(0.002)
print("sent", flush=True)
sys.stdin.readline()
time.sleep(0.3)
stop.set()
t.join()
print(json.dumps(sorted(got)), flush=True)
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


V4 = Fam(4, "10.60.0.0/24", ("203.0.113.0/24", "198.51.100.0/24"), "0.0.0.0/0", (8, 13, 0),
         ("10.60.0.128/27", "10.60.0.64/28", "203.0.113.0/24", "198.51.100.0/24"))
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
    """A random topology document (7 VMs on one network) for ``seed``."""
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


def load_generated(seed: int, dual: bool, directory: Path) -> Topology:
    path = directory / f"diff{seed}{'-dual' if dual else ''}.yaml"
    path.write_text(yaml.safe_dump(generate(seed, dual), sort_keys=False))
    return load_topology(path)


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

    def packet(self) -> Packet:
        return Packet(self.family, self.sip, self.dip, self.proto,  # type: ignore[arg-type]
                      self.sport, self.dport, self.itype,
                      0 if self.itype is not None else None, self.smac)

    def frame(self) -> bytes:
        return build_frame(self)


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
    """``n`` random packets between the VMs of ``topo`` (markers 0..n-1)."""
    if n > 45000:
        raise ValueError("at most 45,000 packets per round (source ports must stay unique)")
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


# ------------------------------------------------------------------ frames
def _csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def build_frame(p: Probe) -> bytes:
    """The Ethernet frame of ``p`` with correct IP and L4 checksums (conntrack checks them)."""
    payload = MARK + b"%08d" % p.marker
    src, dst = ipaddress.ip_address(p.sip).packed, ipaddress.ip_address(p.dip).packed
    if p.proto == TCP:
        assert p.sport is not None and p.dport is not None
        l4 = struct.pack("!HHIIBBHHH", p.sport, p.dport, 1000, 0, 5 << 4, 0x02, 64240, 0, 0)
        l4 += payload
    elif p.proto == UDP:
        assert p.sport is not None and p.dport is not None
        l4 = struct.pack("!HHHH", p.sport, p.dport, 8 + len(payload), 0) + payload
    else:
        body = b"\0" * 12 if p.itype == 13 else b""  # timestamp request: 3 timestamps
        l4 = struct.pack("!BBHHH", p.itype or 0, 0, 0, p.marker % 65536, 1) + body + payload
    if p.family == 4:
        pseudo = src + dst + struct.pack("!BBH", 0, p.proto, len(l4))
    else:
        pseudo = src + dst + struct.pack("!IxxxB", len(l4), p.proto)
    ck_at = {TCP: 16, UDP: 6}.get(p.proto, 2)
    ck = _csum((pseudo if p.proto != ICMP else b"") + l4)
    if p.proto == UDP and ck == 0:
        ck = 0xFFFF
    l4 = l4[:ck_at] + struct.pack("!H", ck) + l4[ck_at + 2:]
    if p.family == 4:
        hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), p.marker % 65536, 0, 64,
                          p.proto, 0, src, dst)
        hdr = hdr[:10] + struct.pack("!H", _csum(hdr)) + hdr[12:]
        ethertype = 0x0800
    else:
        hdr = struct.pack("!IHBB16s16s", 6 << 28, len(l4), p.proto, 64, src, dst)
        ethertype = 0x86DD
    mac = bytes.fromhex
    return (mac(p.dmac.replace(":", "")) + mac(p.smac.replace(":", ""))
            + struct.pack("!H", ethertype) + hdr + l4)


# ------------------------------------------------------------------ running
def send_and_sniff(box: Sandbox, probes: list[Probe], timeout: float = 120) -> set[int]:
    """Send every probe from its source VM; return the markers seen at their destination."""
    agents: dict[str, subprocess.Popen[str]] = {}
    try:
        for name, vm in box.state.vms.items():
            argv = ["ip", "netns", "exec", vm.netns, sys.executable, "-c", AGENT,
                    vm.ports[0].mac.lower()]
            agents[name] = subprocess.Popen(argv, text=True, stdin=subprocess.PIPE,
                                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for name, proc in agents.items():
            _expect(proc, name, "ready")
        for name, proc in agents.items():  # every agent listens before anyone sends
            frames = [p.frame().hex() for p in probes if p.src_vm == name]
            assert proc.stdin is not None
            proc.stdin.write(json.dumps(frames) + "\n")
            proc.stdin.flush()
        for name, proc in agents.items():
            _expect(proc, name, "sent")
        seen: dict[str, set[int]] = {}
        for name, proc in agents.items():
            out, err = proc.communicate("stop\n", timeout=timeout)
            if proc.returncode != 0:
                raise RuntimeError(f"agent in {name} failed: {err.strip()}")
            seen[name] = set(json.loads(out.strip().splitlines()[-1]))
    finally:
        for proc in agents.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    by_marker = {p.marker: p for p in probes}
    # a marker only counts at the VM it was addressed to
    return {m for name, ms in seen.items() for m in ms
            if m in by_marker and by_marker[m].dst_vm == name}


def _expect(proc: subprocess.Popen[str], name: str, word: str) -> None:
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    if line != word:
        err = proc.stderr.read() if proc.stderr and proc.poll() is not None else ""
        raise RuntimeError(f"agent in {name}: expected {word!r}, got {line!r} {err}")


@dataclass
class Disagreement:
    probe: Probe
    expected: HopResult
    delivered: bool

    def describe(self) -> str:
        p, hop = self.probe, self.expected
        why = hop.denied_by.origin if hop.denied_by else (
            hop.ingress.origin if hop.ingress else None)
        return (f"#{p.marker} {p.src_vm}->{p.dst_vm} {p.packet().describe()} mac {p.smac}: "
                f"evaluator {'allow' if hop.allowed else 'deny'} "
                f"({why.kind if why else '-'} {why.detail if why else ''}), kernel "
                f"{'delivered' if self.delivered else 'dropped'}")


@dataclass
class Round:
    """One topology on one backend: what was sent, expected and seen."""

    backend: str
    seed: int
    dual: bool
    probes: list[Probe]
    expected: dict[int, HopResult]
    seen: set[int]
    plan: HostPlan
    ports: dict[str, PortPlan]  # VM name -> its port
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def disagreements(self) -> list[Disagreement]:
        return [Disagreement(p, self.expected[p.marker], p.marker in self.seen)
                for p in self.probes
                if self.expected[p.marker].allowed != (p.marker in self.seen)]

    @property
    def allowed(self) -> int:
        return sum(h.allowed for h in self.expected.values())

    @property
    def spoof_drops(self) -> int:
        return sum(1 for h in self.expected.values() if h.egress and not h.egress.allowed
                   and h.egress.spoof_checked and h.egress.spoof_entry is None)

    def blind_contradictions(self) -> int:
        """How often the observations contradict an evaluator that forgets anti-spoofing:
        the control that agreement is not something any evaluator would get."""
        blind = without_spoof_check(self.plan)
        bports = {vm: blind.port(p.id) for vm, p in self.ports.items()}
        return sum(evaluate_hop(blind, p.packet(), bports[p.src_vm], bports[p.dst_vm]).allowed
                   != (p.marker in self.seen) for p in self.probes)


def without_spoof_check(plan: HostPlan) -> HostPlan:
    ports = tuple(dataclasses.replace(
        p, egress=tuple(s for s in p.egress if not isinstance(s, SpoofCheck)))
        for p in plan.ports)
    return HostPlan(plan.host, ports, plan.rulesets, plan.address_sets)


def run_round(backend: str | None, seed: int, count: int, dual: bool = False,
              workdir: Path | None = None) -> Round:
    """Bring up the seed's topology on ``backend``, send ``count`` probes, compare."""
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        topo = load_generated(seed, dual, workdir or Path(tmp))
    plan = compile_plan(topo.model)
    probes = make_probes(topo, plan, seed, count)
    ports = {vm: plan.port(topo.lab.vms[vm].ports[0]) for vm in topo.lab.vms}
    expected = {p.marker: evaluate_hop(plan, p.packet(), ports[p.src_vm], ports[p.dst_vm])
                for p in probes}
    t1 = time.perf_counter()
    with sandbox(topo, name=netns.unique_name(f"pwdiff{seed}"), backend=backend) as box:
        t2 = time.perf_counter()
        seen = send_and_sniff(box, probes)
        t3 = time.perf_counter()
        name = box.state.backend
    return Round(name, seed, dual, probes, expected, seen, plan, ports,
                 {"prepare": t1 - t0, "up": t2 - t1, "packets": t3 - t2,
                  "down": time.perf_counter() - t3})
