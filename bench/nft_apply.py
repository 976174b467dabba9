#!/usr/bin/env python3
"""Any registered backend, model -> kernel, on the Neutron peer's own ``gen_ports.py`` file,
with Neutron's IptablesFirewallDriver on the same file in the same run.

    .venv/bin/python bench/apply.py --backend nftables [--sizes 1000,10000] [--reps 3]
        [--inc-reps 50] [--peer-sizes 1000] [--no-peer]

Per size N: the peer's file (``gen_ports.py N``) loaded into portwall's model (same ids,
so the same tap names); a full sync into an empty namespace, split compile / render /
apply (the cyclic GC paused over it, as the agent's resync does), next to a bare
``nft -f`` of the same ruleset text (nftables only); then, with a long-lived compiler,
renderer and applier (what a running agent keeps; like the agent after its resync, the
full build's objects are then frozen out of the cyclic GC), ``--inc-reps`` times each:
one new port, one new remote-group member (a port on another host joins ``sg-all``), one
changed rule; p50 and p99 of model change -> kernel and of each part.
Everything runs in namespaces made here and deleted at the end.
"""

from __future__ import annotations

import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _peer import peer_dir

from portwall import backends
from portwall.bulk import gc_paused
from portwall.ir.compile import PlanCompiler
from portwall.lab import netns
from portwall.model import Model, stable_ids

HOST = "bench-host"
PEER_VENV = Path(os.environ.get("NEUTRON_PEER_VENV", "/opt/neutron-peer-venv"))


class PeerFile:
    """gen_ports.py's JSON as a portwall model on HOST, plus more ports on demand."""

    def __init__(self, n: int, path: str) -> None:
        self.data = json.loads(Path(path).read_text())
        self.m = Model(stable_ids(f"peer-{n}"))
        self.net = "net-0000000"
        self.m.create_network({"id": self.net, "name": "net"})
        self.m.create_subnet({"network_id": self.net, "cidr": "10.0.0.0/8", "name": "v4"})
        self.m.create_subnet({"network_id": self.net, "cidr": "fd00::/64", "name": "v6"})
        for gid in self.data["security_groups"]:
            self.m.create_security_group({"id": gid, "name": gid, "security_group_rules": []})
        for gid, sg in self.data["security_groups"].items():
            for r in sg["rules"]:
                self.m.create_security_group_rule({**r, "security_group_id": gid})
        for p in self.data["ports"]:
            self.add(p)
        self.next = n + 1

    def add(self, p: dict[str, Any], host: str = HOST) -> None:
        self.m.create_port({
            "id": p["id"], "name": p["id"], "network_id": self.net, "mac_address": p["mac"],
            "fixed_ips": [{"ip_address": ip} for ip in p["fixed_ips"]],
            "allowed_address_pairs": p["allowed_address_pairs"],
            "security_groups": p["security_groups"], "binding:host_id": host,
            "port_security_enabled": p.get("port_security_enabled", True)})

    def new_port(self, host: str = HOST) -> None:
        i = self.next
        self.next += 1
        pid = f"{i:08x}-{i % 65536:04x}-4{i % 4096:03x}-8000-{i:012x}"
        mac = f"fa:16:3e:{(i >> 16) & 255:02x}:{(i >> 8) & 255:02x}:{i & 255:02x}"
        ip = f"10.{100 + (i >> 16) % 100}.{(i >> 8) & 255}.{i & 255}"
        self.add({"id": pid, "mac": mac, "fixed_ips": [ip], "allowed_address_pairs": [],
                  "security_groups": ["sg-all", f"sg-app-{i % 10}"]}, host)

    def change_rule(self, step: int) -> None:
        sg = self.m.security_groups[f"sg-app-{step % 10}"]
        victim = next(r for r in sg.security_group_rules if r.protocol == "udp")
        self.m.delete_security_group_rule(victim.id)
        lo = 5000 + 7 * (step + 1) % 20000
        self.m.create_security_group_rule({
            "security_group_id": sg.id, "direction": "ingress", "ethertype": "IPv4",
            "protocol": "udp", "port_range_min": lo, "port_range_max": lo + 100})


def gen(n: int, out: str) -> None:
    subprocess.run([sys.executable, str(peer_dir() / "gen_ports.py"), str(n), "-o", out],
                   check=True, capture_output=True)


def fresh_ns() -> str:
    name = netns.unique_name("pwbench")
    netns.create(name)
    return name


def pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


def ms(x: float | None) -> str:
    return "-" if x is None else f"{x * 1000:.1f} ms"


def run_peer(path: str) -> dict[str, Any] | None:
    py = PEER_VENV / "bin" / "python"
    if not py.exists():
        print("  (Neutron peer venv missing: run shared/peer/neutron/setup.sh)", file=sys.stderr)
        return None
    ns = fresh_ns()
    try:
        with tempfile.TemporaryDirectory() as d:
            out = f"{d}/out.json"
            proc = subprocess.run(
                ["ip", "netns", "exec", ns, str(py), str(peer_dir() / "neutron_fw.py"), path,
                 "--add-extra", "--json-out", out], capture_output=True, text=True,
                timeout=3600)
            if proc.returncode != 0:
                print(f"  (peer failed: {proc.stderr.strip()[-300:]})", file=sys.stderr)
                return None
            return dict(json.loads(Path(out).read_text()))
    finally:
        netns.delete(ns)


def bare_nft(ns: str, text: str) -> float:
    with tempfile.NamedTemporaryFile("w", suffix=".nft") as f:
        f.write(text)
        f.flush()
        t = time.perf_counter()
        netns.run(ns, ["nft", "-f", f.name])
        return time.perf_counter() - t


def bench_size(name: str, n: int, reps: int, inc_reps: int, with_peer: bool) -> dict[str, Any]:
    b = backends.get(name)
    res: dict[str, Any] = {"ports": n}
    with tempfile.TemporaryDirectory() as d:
        path = f"{d}/ports-{n}.json"
        gen(n, path)
        full: list[tuple[float, float, float]] = []
        bare: list[float] = []
        for _ in range(reps):
            w = PeerFile(n, path)
            ns = fresh_ns()
            try:
                with b.applier(ns) as a, gc_paused():  # as the agent's resync
                    t0 = time.perf_counter()
                    plan = PlanCompiler(HOST).compile(w.m)
                    t1 = time.perf_counter()
                    rs = b.renderer().render(plan)
                    t2 = time.perf_counter()
                    t3 = time.perf_counter()
                    rep = a.apply(rs, plan)
                    t4 = time.perf_counter()
                    assert a.apply(rs, plan).noop
                full.append((t1 - t0, t2 - t1, t4 - t3))
                res["counts"] = rs.counts()
                res["full_summary"] = rep.summary()
            finally:
                netns.delete(ns)
            if name == "nftables":
                from portwall.backends.nftables.text import full_text

                ns = fresh_ns()
                try:
                    bare.append(bare_nft(ns, full_text(rs, replace=False)))
                finally:
                    netns.delete(ns)
        res["full"] = [statistics.median(x) for x in zip(*full, strict=True)]
        res["bare"] = statistics.median(bare) if bare else None
        res["inc"] = incremental(b, n, path, inc_reps)
        if with_peer:
            res["peer"] = run_peer(path)
    return res


def incremental(b: backends.Backend, n: int, path: str, reps: int) -> dict[str, Any]:
    w = PeerFile(n, path)
    compiler, renderer = PlanCompiler(HOST), b.renderer()
    ns = fresh_ns()
    out: dict[str, Any] = {}
    try:
        with b.applier(ns) as a:
            plan = compiler.compile(w.m)
            a.apply(renderer.render(plan), plan)
            # what the agent does after its full sync (agent/runner.py Agent.resync): its
            # long-lived state leaves the cyclic GC, so no change pays for promoting it
            gc.freeze()
            changes = {"new_port": lambda i: w.new_port(),
                       "new_member": lambda i: w.new_port(host="elsewhere"),
                       "changed_rule": w.change_rule}
            for key, change in changes.items():
                parts: list[tuple[float, float, float, float]] = []
                summary = ""
                for i in range(reps):
                    t0 = time.perf_counter()
                    change(i)
                    t1 = time.perf_counter()
                    plan = compiler.compile(w.m)
                    t2 = time.perf_counter()
                    rs = renderer.render(plan)
                    t3 = time.perf_counter()
                    rep = a.apply(rs, plan)
                    t4 = time.perf_counter()
                    parts.append((t4 - t0, t2 - t1, t3 - t2, t4 - t3))
                    summary = rep.summary()
                out[key] = {"e2e": [p[0] for p in parts], "compile": [p[1] for p in parts],
                            "render": [p[2] for p in parts], "apply": [p[3] for p in parts],
                            "summary": summary}
            out["drift_after"] = len(a.drift(renderer.render(compiler.compile(w.m))))
    finally:
        gc.unfreeze()
        netns.delete(ns)
    return out


def table(head: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    print("| " + " | ".join(h.ljust(wd) for h, wd in zip(head, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (wd + 2) for wd in widths) + "|")
    for r in rows:
        print("| " + " | ".join(c.ljust(wd) for c, wd in zip(r, widths, strict=True)) + " |")


def report(name: str, results: list[dict[str, Any]], reps: int, inc_reps: int) -> None:
    print(f"\nportwall {name} backend on the peer's gen_ports.py file; full sync median of "
          f"{reps}, changes p50/p99 of {inc_reps}\n")
    rows = []
    for r in results:
        c = r["counts"]
        comp, rend, app = r["full"]
        peer = r.get("peer") or {}
        pf = peer.get("full_apply_s")
        rows.append([str(r["ports"]), f"{c.get('rules', 0):,}", str(c.get("chains", 0)),
                     str(c.get("sets", 0) + c.get("maps", 0)),
                     f"{c.get('set_elements', 0) + c.get('map_elements', 0):,}",
                     ms(comp + rend + app), f"{ms(comp)} / {ms(rend)} / {ms(app)}",
                     ms(r["bare"]), f"{app / r['bare']:.2f}x" if r["bare"] else "-",
                     ms(pf), f"{pf / (comp + rend + app):.0f}x" if pf else "-"])
    table(["ports", "rules", "chains", "sets+maps", "elements", "full sync model->kernel",
           "compile / render / apply", "bare nft -f", "apply / bare", "neutron full",
           "neutron / portwall"], rows)
    print()
    rows = []
    for r in results:
        inc = r["inc"]
        for key in ("new_port", "new_member", "changed_rule"):
            d = inc[key]
            rows.append([str(r["ports"]), key.replace("_", " "),
                         f"{ms(pct(d['e2e'], .5))} / {ms(pct(d['e2e'], .99))}",
                         f"{ms(pct(d['compile'], .5))} / {ms(pct(d['compile'], .99))}",
                         f"{ms(pct(d['render'], .5))} / {ms(pct(d['render'], .99))}",
                         f"{ms(pct(d['apply'], .5))} / {ms(pct(d['apply'], .99))}",
                         d["summary"]])
    table(["ports", "change", "model->kernel p50/p99", "compile p50/p99", "render p50/p99",
           "apply p50/p99", "last apply"], rows)
    for r in results:
        peer = r.get("peer")
        if peer:
            after = peer.get("after_full", {})
            theirs = (after.get("rules_v4") or 0) + (after.get("rules_v6") or 0)
            ours = r["counts"].get("rules", 0)
            print(f"\nneutron at {r['ports']}: full {ms(peer.get('full_apply_s'))}, +1 port "
                  f"{ms(peer.get('incremental_apply_s'))}, rules v4+v6 {theirs:,}; portwall "
                  f"rules {ours:,} ({ours / max(1, theirs):.4f}x) + "
                  f"{r['counts'].get('set_elements', 0) + r['counts'].get('map_elements', 0):,}"
                  " set/map elements")
        print(f"drift after the changes at {r['ports']}: {r['inc']['drift_after']}")


def main(argv: list[str] | None = None) -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backend", default="nftables", choices=backends.names())
    ap.add_argument("--sizes", default="1000,10000")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--inc-reps", type=int, default=50)
    ap.add_argument("--peer-sizes", default="1000", help="sizes to run Neutron's driver on")
    ap.add_argument("--no-peer", action="store_true")
    ap.add_argument("--json", help="also write the raw figures here")
    a = ap.parse_args(argv)
    if os.geteuid() != 0:
        sys.exit("needs root (network namespaces)")
    peer_sizes = set() if a.no_peer else {int(x) for x in a.peer_sizes.split(",") if x}
    results = [bench_size(a.backend, int(n), a.reps, a.inc_reps, int(n) in peer_sizes)
               for n in a.sizes.split(",")]
    report(a.backend, results, a.reps, a.inc_reps)
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()
