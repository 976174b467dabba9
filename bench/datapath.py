#!/usr/bin/env python3
"""New TCP connections per second between two VMs on a host that also carries other ports.

    .venv/bin/python bench/datapath.py [--others 0,1000,5000] [--backend NAME ...]
        [--no-peer] [--duration 3] [--reps 2]

Workload: the Neutron peer's own ``gen_ports.py N`` file (every port in ``sg-all`` and one
``sg-app-<k>``, ~10 rules each, a remote-group rule on ``sg-all``), loaded into portwall's
model with the file's own ids, plus two VM ports (client, server; in ``sg-all`` and
``sg-app-0``). Only the two VMs are plugged (a lab sandbox: host namespace, bridge, veth
pairs); the N other ports are in the plan bound to the host without interfaces, which is all
iptables and nftables rules need (a backend whose lab bridge is OVS gets veth pairs
plugged into its integration bridge).
The server accepts tcp/8080, allowed by ``sg-app-0`` for remote group ``sg-all``, so every
new connection crosses dispatch, anti-spoof, the group chains and a remote-group lookup.

Per backend (every registered one) and Neutron's IptablesFirewallDriver (the peer, loaded
with ``neutron_fw.py`` into the sandbox's host namespace from the same file): a client
process opens and closes (RST) connections in a loop for ``--duration`` seconds against a
listener in the server VM; the best of ``--reps`` runs is reported with its ratio to the
same enforcer's rate on an otherwise empty host. Needs root; nothing touches the root
namespace.
"""

from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _peer

from portwall import backends
from portwall.ir import compile_plan
from portwall.lab import netns
from portwall.lab.enforce import apply_policy
from portwall.lab.sandbox import Sandbox
from portwall.model import Model
from portwall.topology import Topology
from portwall.topology.spec import VM, LabSpec

PORT = 8080
CLIENT_IP, SERVER_IP = "10.99.0.1", "10.99.0.2"
PEER = "neutron (peer)"

SERVER = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.listen(4096)
print("ready", flush=True)
while True:
    c, _ = s.accept()
    c.close()
"""

CLIENT = r"""
import json, socket, struct, sys, time
host, port, duration = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
linger = struct.pack("ii", 1, 0)  # close with RST: no TIME_WAIT to run out of ports
ok = fail = 0
end = time.perf_counter() + duration
t0 = time.perf_counter()
while time.perf_counter() < end:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
    s.settimeout(1.0)
    try:
        s.connect((host, port))
        ok += 1
    except OSError:
        fail += 1
    finally:
        s.close()
print(json.dumps({"ok": ok, "fail": fail, "seconds": time.perf_counter() - t0}))
"""


def load_workload(doc: dict[str, Any]) -> tuple[Model, str]:
    """The peer's file as a portwall model (same ids), plus the two VM ports."""
    m = Model()
    net = doc["ports"][0]["network_id"] if doc["ports"] else "net-0000000"
    m.create_network({"id": net, "name": net})
    m.create_subnet({"network_id": net, "cidr": "10.0.0.0/8", "name": "v4"})
    m.create_subnet({"network_id": net, "cidr": "fd00::/64", "name": "v6"})
    for sg_id in doc["security_groups"]:
        m.create_security_group({"id": sg_id, "name": sg_id, "security_group_rules": []})
    for sg_id, sg in doc["security_groups"].items():
        for r in sg["rules"]:
            m.create_security_group_rule({**r, "security_group_id": sg_id})
    for p in doc["ports"]:
        m.create_port({
            "id": p["id"], "name": p["id"], "network_id": net, "mac_address": p["mac"],
            "fixed_ips": [{"ip_address": ip} for ip in p["fixed_ips"]],
            "allowed_address_pairs": p.get("allowed_address_pairs", []),
            "security_groups": p["security_groups"]})
    return m, net


def vm_ports(doc: dict[str, Any], net: str) -> list[dict[str, Any]]:
    """The client and server ports, in the peer's JSON shape."""
    out = []
    for i, (name, ip) in enumerate((("client", CLIENT_IP), ("server", SERVER_IP))):
        pid = f"ffffff{i:02d}-0000-4000-8000-00000000000{i}"
        out.append({"id": pid, "device": "tap" + pid[:11], "mac": f"fa:16:3e:ff:00:{i:02x}",
                    "network_id": net, "fixed_ips": [ip], "allowed_address_pairs": [],
                    "security_groups": ["sg-all", "sg-app-0"], "port_security_enabled": True,
                    "name": name})
    return out


def build(n: int, tmp: Path) -> tuple[Topology, dict[str, Any]]:
    doc = json.loads(_peer.gen_ports(n, tmp / f"ports-{n}.json").read_text()) if n else {
        "ports": [], "security_groups": json.loads(
            _peer.gen_ports(1, tmp / "ports-1.json").read_text())["security_groups"]}
    m, net = load_workload(doc)
    vms = vm_ports(doc, net)
    for p in vms:
        m.create_port({"id": p["id"], "name": p["name"], "network_id": net,
                       "mac_address": p["mac"],
                       "fixed_ips": [{"ip_address": ip} for ip in p["fixed_ips"]],
                       "security_groups": p["security_groups"]})
    doc = {"ports": [*doc["ports"], *({k: v for k, v in p.items() if k != "name"} for p in vms)],
           "security_groups": doc["security_groups"]}
    lab = LabSpec(vms={p["name"]: VM(p["name"], [p["id"]]) for p in vms})
    return Topology(m, lab, f"<datapath {n}>"), doc


def extra_interfaces(host_ns: str, topo: Topology) -> None:
    """Interfaces for the unplugged ports, for a backend that needs one per port (its lab
    bridge is OVS): veth pairs (this kernel may lack the dummy driver), plugged into the
    sandbox's integration bridge by the lab's own OVS helper."""
    plugged = {pid for vm in topo.lab.vms.values() for pid in vm.ports}
    devices = [p.device for p in compile_plan(topo.model).ports if p.id not in plugged]
    if not devices:
        return
    lines = [f"link add {d} type veth peer name pwx{i}" for i, d in enumerate(devices)]
    lines += [f"link set {d} up" for d in devices]
    netns.run(host_ns, ["ip", "-batch", "-"], input="\n".join(lines) + "\n")
    ovs_host = importlib.import_module("portwall.lab.ovs_host")
    for d in devices:
        ovs_host.plug(host_ns, d)


def load_peer(host_ns: str, doc: dict[str, Any], tmp: Path) -> float:
    py = _peer.peer_python()
    assert py is not None
    path = tmp / "peer-ports.json"
    path.write_text(json.dumps(doc))
    t = time.perf_counter()
    proc = subprocess.run(["ip", "netns", "exec", host_ns, str(py),
                           str(_peer.peer_dir() / "neutron_fw.py"), str(path)],
                          capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"peer failed: {proc.stderr.strip()[-500:]}")
    return time.perf_counter() - t


def measure(box: Sandbox, duration: float, reps: int) -> tuple[float, int]:
    """Best connections/s of ``reps`` runs, and failed connects summed."""
    server = subprocess.Popen(box.exec_argv("server", [sys.executable, "-c", SERVER, str(PORT)]),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        if server.stdout.readline().strip() != "ready":
            raise RuntimeError(f"server did not start: {server.stderr.read() if server.stderr else ''}")
        best, fails = 0.0, 0
        for _ in range(reps):
            out = subprocess.run(box.exec_argv("client", [
                sys.executable, "-c", CLIENT, SERVER_IP, str(PORT), str(duration)]),
                capture_output=True, text=True, timeout=duration + 60, check=True).stdout
            r = json.loads(out.strip().splitlines()[-1])
            best = max(best, r["ok"] / r["seconds"])
            fails += r["fail"]
        return best, fails
    finally:
        server.kill()
        server.wait()


def run_one(enforcer: str, n: int, topo: Topology, doc: dict[str, Any], tmp: Path,
            duration: float, reps: int) -> dict[str, Any]:
    backend = None if enforcer == PEER else enforcer
    box, _ = Sandbox.up(topo, netns.unique_name("pwdp"), apply=False, backend=backend)
    try:
        t = time.perf_counter()
        if enforcer == PEER:
            load_peer(box.host_ns, doc, tmp)
        else:
            if backends.get(enforcer).bridge == "ovs":
                extra_interfaces(box.host_ns, topo)
            apply_policy(box.host_ns, compile_plan(topo.model), enforcer)
        load_s = time.perf_counter() - t
        rate, fails = measure(box, duration, reps)
    finally:
        box.down()
    return {"enforcer": enforcer, "others": n, "rate": rate, "fails": fails, "load_s": load_s}


def _ratio(rate: float, base: float | None) -> str:
    if not base:
        return "-"
    r = rate / base
    return f"{r:.2f}x" if r >= 0.1 else f"{r:.4f}x"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--others", default="0,1000,5000", help="other ports on the host")
    ap.add_argument("--backend", action="append", choices=backends.names())
    ap.add_argument("--no-peer", action="store_true", help="skip Neutron's driver")
    ap.add_argument("--duration", type=float, default=3.0)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--json", help="also write the rows to this file")
    a = ap.parse_args(argv)
    enforcers = list(a.backend or backends.names())
    if not a.no_peer:
        if _peer.peer_python() is None:
            print(f"(skipping Neutron's driver: {_peer.missing_reason()})", file=sys.stderr)
        else:
            enforcers.append(PEER)
    sizes = [int(x) for x in a.others.split(",")]
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for n in sizes:
            topo, doc = build(n, tmp)
            for e in enforcers:  # interleaved per size, so drift of the machine spreads out
                row = run_one(e, n, topo, doc, tmp, a.duration, a.reps)
                rows.append(row)
                print(f"  {e} +{n} ports: {row['rate']:.0f} conn/s "
                      f"(policy loaded in {row['load_s']:.2f} s)", file=sys.stderr)
    base = {r["enforcer"]: r["rate"] for r in rows if r["others"] == min(sizes)}
    table = Table(title=f"new TCP connections/s between two VMs (best of {a.reps} x "
                        f"{a.duration:g} s), host with other ports", title_justify="left")
    for col in ("enforcer", *(f"+{n} ports" for n in sizes), *(
            f"ratio at +{n}" for n in sizes if n != min(sizes)), "failed connects"):
        table.add_column(col, justify="left" if col == "enforcer" else "right")
    for e in enforcers:
        mine = {r["others"]: r for r in rows if r["enforcer"] == e}
        table.add_row(e, *(f"{mine[n]['rate']:.0f}" for n in sizes),
                      *(_ratio(mine[n]["rate"], base.get(e)) for n in sizes if n != min(sizes)),
                      str(sum(r["fails"] for r in mine.values())))
    Console(highlight=False, width=200).print(table)
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
