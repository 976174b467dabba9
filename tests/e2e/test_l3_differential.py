"""Differential test through routers: the evaluator (trace) against the kernel.

A seeded generator builds random tenants behind a router (SNAT on or off, floating IPs on
some VMs, a firewall group with random ordered allow/deny/reject rules on some router
interfaces, random security groups) next to the lab's outside host. Thousands of random
new flows (TCP SYN, UDP, ICMP echo; genuine sources) are sent as raw frames: VM to VM
across the router, VM to floating IPs (hairpin), VM to the outside, outside to floating
IPs and to tenant addresses. Every destination sniffs. For each packet, ``trace`` says
allow or deny and, when allowed, the addresses it arrives with (after SNAT/DNAT); the
kernel must deliver exactly the allowed ones, to the right host, with those addresses.
"""

from __future__ import annotations

import ipaddress
import json
import os
import random
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from portwall.analyze.trace import Tracer
from portwall.ir import compile_plan
from portwall.lab import netns
from portwall.lab.harness import Lab
from portwall.topology import Topology, load_topology

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]
PORTS = [22, 53, 80, 443, 5432, 8080]
OUTSIDE = "198.51.100.10"
TCP, UDP, ICMP = 6, 17, 1

SNIFFER = r"""
import json, sys, time
from scapy.all import AsyncSniffer, Ether, IP, ICMP, conf, get_if_hwaddr
conf.sniff_promisc = False
me = get_if_hwaddr("eth0").lower()
got = {}
def seen(p):
    raw = bytes(p)
    i = raw.find(b"pwl3d:")
    if IP in p and ICMP in p and p[ICMP].type != 8:
        return  # echo replies and ICMP errors quote a probe: they are not the probe
    if i >= 0 and IP in p and p[Ether].src.lower() != me:  # arriving, not our replies
        got.setdefault(int(raw[i + 6:i + 14]), [p[IP].src, p[IP].dst])
s = AsyncSniffer(iface="eth0", prn=seen, store=False, filter="ip")
s.start()
while not getattr(s, "running", False):
    time.sleep(0.02)
time.sleep(0.2)
print("ready", flush=True)
sys.stdin.read()
time.sleep(0.5)
s.stop()
print(json.dumps(got), flush=True)
"""

SENDER = r"""
import json, sys, time
from scapy.all import Ether, IP, TCP, UDP, ICMP, Raw, conf
sock = conf.L2socket(iface="eth0")
n = 0
for p in json.load(sys.stdin):
    l3 = Ether(src=p["smac"], dst=p["dmac"]) / IP(src=p["sip"], dst=p["dip"], ttl=64)
    if p["proto"] == 6:
        l4 = TCP(sport=p["sport"], dport=p["dport"], flags="S", seq=1000)
    elif p["proto"] == 17:
        l4 = UDP(sport=p["sport"], dport=p["dport"])
    else:
        l4 = ICMP(type=8, code=0, id=p["marker"] % 65536, seq=1)
    sock.send(bytes(l3 / l4 / Raw(b"pwl3d:%08d" % p["marker"])))
    n += 1
    if n % 50 == 0:
        time.sleep(0.01)
sock.close()
print(n, flush=True)
"""


def generate(seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    nets, ports, vms, fips = [], [], {}, []
    n_nets = 3
    for i in range(n_nets):
        nets.append({"name": f"t{i}", "subnets": [
            {"name": f"t{i}-v4", "cidr": f"10.9{i}.0.0/24", "gateway_ip": f"10.9{i}.0.1"}]})
    nets.append({"name": "public", "router:external": True, "port_security_enabled": False,
                 "subnets": [{"name": "public-v4", "cidr": "203.0.113.0/24",
                              "gateway_ip": "203.0.113.1"}]})
    groups = []
    for g in range(3):
        rules, keys = [], set()
        for _ in range(rng.randint(3, 7)):
            proto = rng.choice(["tcp", "udp", "icmp"])
            r: dict[str, Any] = {"direction": "ingress", "protocol": proto}
            if proto != "icmp":
                lo = rng.choice(PORTS)
                r |= {"port_range_min": lo, "port_range_max": lo}
            r["remote_ip_prefix"] = rng.choice(["0.0.0.0/0", "0.0.0.0/0", "10.90.0.0/16",
                                                "203.0.113.0/24", "198.51.100.0/24",
                                                f"10.9{rng.randrange(n_nets)}.0.0/24"])
            key = tuple(sorted(r.items()))
            if key not in keys:
                keys.add(key)
                rules.append(r)
        groups.append({"name": f"g{g}", "security_group_rules": rules})
    vm_i = 0
    for i in range(n_nets):
        for j in range(2):
            name = f"v{vm_i}"
            ports.append({"name": f"{name}-port", "network_id": f"t{i}",
                          "fixed_ips": [f"10.9{i}.0.{10 + j}"],
                          "security_groups": [f"g{rng.randrange(3)}"]})
            vms[name] = {"ports": [f"{name}-port"], "gateway": f"10.9{i}.0.1"}
            if rng.random() < 0.6:
                fips.append({"floating_network_id": "public",
                             "floating_ip_address": f"203.0.113.{20 + vm_i}",
                             "port_id": f"{name}-port"})
            vm_i += 1
    fw_rules, names = [], []
    for k in range(rng.randint(3, 7)):
        proto = rng.choice(["tcp", "udp", "icmp", None])
        r = {"name": f"fr{k}", "action": rng.choice(["allow", "allow", "deny", "reject"])}
        if proto:
            r["protocol"] = proto
        if proto in ("tcp", "udp") and rng.random() < 0.7:
            r["destination_port"] = str(rng.choice(PORTS))
        if rng.random() < 0.5:
            r["source_ip_address"] = rng.choice(["10.90.0.0/24", "10.91.0.0/24",
                                                 "10.92.0.0/24", "198.51.100.0/24"])
        fw_rules.append(r)
        names.append(r["name"])
    rng.shuffle(names)
    fw_rules.append({"name": "any", "action": "allow"})
    tail = ["any"] if rng.random() < 0.5 else []  # else the default deny ends the policy
    policies = [{"name": "pin", "firewall_rules": names + tail},
                {"name": "pout", "firewall_rules": [n for n in names if rng.random() < 0.7]
                 + ["any"] * (rng.random() < 0.7)}]
    guarded = [f"r1-t{i}-v4" for i in range(n_nets) if rng.random() < 0.6] or ["r1-t0-v4"]
    group = {"name": "fw", "ingress_firewall_policy_id": "pin", "ports": guarded}
    if rng.random() < 0.7:
        group["egress_firewall_policy_id"] = "pout"
    return {
        "project": f"l3diff{seed}", "networks": nets, "security_groups": groups,
        "ports": ports,
        "routers": [{"name": "r1", "external_gateway_info": {
            "network_id": "public", "enable_snat": rng.random() < 0.75,
            "external_fixed_ips": [{"ip_address": "203.0.113.2"}]},
            "interfaces": [f"t{i}-v4" for i in range(n_nets)]}],
        "floating_ips": fips, "firewall_rules": fw_rules, "firewall_policies": policies,
        "firewall_groups": [group],
        "lab": {"outside": {"network": "public", "address": OUTSIDE}, "vms": vms},
    }


@dataclass
class Probe:
    marker: int
    src: str  # VM name or "outside"
    dst_ip: str
    proto: int
    sport: int | None
    dport: int | None
    smac: str = ""
    dmac: str = ""
    sip: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"marker": self.marker, "smac": self.smac, "dmac": self.dmac, "sip": self.sip,
                "dip": self.dst_ip, "proto": self.proto, "sport": self.sport,
                "dport": self.dport}


def make_probes(topo: Topology, rng: random.Random, n: int) -> list[Probe]:
    m = topo.model
    vm_port = {v: m.ports[s.ports[0]] for v, s in topo.lab.vms.items()}
    fips = [f.floating_ip_address for f in m.floating_ips.values() if f.floating_ip_address]
    fixed = [str(p.addresses()[0]) for p in vm_port.values()]
    out = []
    for i in range(n):
        src = "outside" if rng.random() < 0.25 else rng.choice(sorted(vm_port))
        if src == "outside":
            dst = rng.choice(fips + fips + fixed) if fips else rng.choice(fixed)
        else:
            dst = rng.choice([*fixed, *fips, OUTSIDE, OUTSIDE])
            if dst == str(vm_port[src].addresses()[0]):  # its own floating IP stays in
                dst = OUTSIDE
        proto = rng.choice([TCP, TCP, UDP, ICMP])
        sport = 30000 + i if proto != ICMP else None
        dport = (rng.choice(PORTS) if rng.random() < 0.85 else rng.randint(1, 65535)) \
            if proto != ICMP else None
        out.append(Probe(i, src, dst, proto, sport, dport))
    return out


def _py(ns: str, code: str) -> list[str]:
    return ["ip", "netns", "exec", ns, sys.executable, "-c", code]


def test_router_differential(l3_backend_name: str) -> None:
    """2,400 packets per backend with an L3 renderer (iptables, nftables)."""
    rng = random.Random(20261202)
    total = 0
    with Lab("pwt-l3d", backend=l3_backend_name) as lab:
        for seed in (12, 15, 17):
            doc = generate(seed)
            path = Path(f"/tmp/pw-l3diff-{os.getpid()}-{seed}.yaml")
            path.write_text(yaml.safe_dump(doc, sort_keys=False))
            try:
                topo = load_topology(path)
            finally:
                path.unlink()
            total += _run(lab, topo, rng, 800)
    assert total >= 2000


def _run(lab: Lab, topo: Topology, rng: random.Random, n: int) -> int:
    box = lab.up(topo)
    m = topo.model
    plan = compile_plan(m)
    tracer = Tracer.for_topology(topo, plan)
    (router,) = plan.routers.values()
    assert router.gateway is not None
    probes = make_probes(topo, rng, n)
    st = box.box.state
    qr_mac = {i.network_id: i.mac for i in router.interfaces}
    for p in probes:  # raw frames: the sender's own addresses, the next hop's MAC
        if p.src == "outside":
            p.sip, p.smac, p.dmac = OUTSIDE, "02:00:00:00:00:99", router.gateway.mac
            continue
        port = m.ports[topo.lab.vms[p.src].ports[0]]
        p.sip, p.smac = str(port.addresses()[0]), port.mac_address or ""
        dst_port = next((q for q in m.ports.values() if not q.is_trusted and any(
            str(a) == p.dst_ip for a in q.addresses())), None)
        same = dst_port is not None and dst_port.network_id == port.network_id
        p.dmac = (dst_port.mac_address or "") if same and dst_port else qr_mac[port.network_id]
    # warm the neighbour tables (the router's and the outside's), as traffic would
    (rns,) = st.routers
    for vm in st.vms.values():
        ip = vm.ports[0].addresses[0].split("/")[0]
        netns.run(rns, ["ping", "-c1", "-W1", ip], check=False)
    netns.run(rns, ["ping", "-c1", "-W1", "203.0.113.1"], check=False)
    assert st.outside is not None
    netns.run(st.outside, ["ip", "link", "set", "eth0", "address", "02:00:00:00:00:99"])
    netns.run(st.outside, ["ping", "-c1", "-W1", "203.0.113.2"], check=False)

    expected: dict[int, tuple[str, str, str] | None] = {}
    owner = {str(m.ports[s.ports[0]].addresses()[0]): v for v, s in topo.lab.vms.items()}
    owner[OUTSIDE] = "outside"
    for p in probes:
        res = tracer.trace(p.src, p.dst_ip, p.proto, sport=p.sport, dport=p.dport)
        if not res.allowed:
            expected[p.marker] = None
            continue
        pk = res.translated or res.packet
        expected[p.marker] = (owner[str(pk.dst)], str(pk.src), str(pk.dst))
    allowed = sum(v is not None for v in expected.values())
    assert 0.1 * n < allowed < 0.9 * n, allowed

    namespaces = {v: s.netns for v, s in st.vms.items()} | {"outside": st.outside}
    sniffers = {v: subprocess.Popen(_py(ns, SNIFFER), text=True, stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                for v, ns in namespaces.items()}
    seen: dict[int, tuple[str, str, str]] = {}
    try:
        for v, proc in sniffers.items():
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "ready", v
        for v, ns in namespaces.items():
            mine = [p.to_json() for p in probes if p.src == v]
            out = subprocess.run(_py(ns, SENDER), input=json.dumps(mine), text=True,
                                 capture_output=True, timeout=300)
            assert out.returncode == 0, out.stderr
        time.sleep(1.0)
        for v, proc in sniffers.items():
            out, _ = proc.communicate("", timeout=60)
            # the sniffer keeps arriving frames only (not its own), so a VM that reaches
            # its own floating IP (hairpin to itself) counts as a delivery too
            for k, (s, d) in json.loads(out.strip().splitlines()[-1]).items():
                assert int(k) not in seen, f"#{k} arrived twice"
                seen[int(k)] = (v, s, d)
    finally:
        for proc in sniffers.values():
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    wrong = []
    for p in probes:
        want, got = expected[p.marker], seen.get(p.marker)
        if want != got:
            wrong.append(f"#{p.marker} {p.src}->{p.dst_ip} proto {p.proto} dport {p.dport}:"
                         f" evaluator {want}, kernel {got}")
    assert not wrong, f"{len(wrong)}/{len(probes)} differ:\n" + "\n".join(wrong[:30])
    return len(probes)


def test_generator_covers_nat_and_firewall() -> None:
    doc = generate(11)
    assert doc["floating_ips"] and doc["firewall_groups"] and doc["firewall_rules"]
    assert any(r["action"] == "reject" for d in (generate(s) for s in (12, 15, 17))
               for r in d["firewall_rules"] if "action" in r)
    assert ipaddress.ip_address(OUTSIDE) not in ipaddress.ip_network("203.0.113.0/24")
