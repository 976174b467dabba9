#!/usr/bin/env python3
"""Benchmark routers on iptables and nftables: full sync of R routers x F floating IPs,
then one floating IP associated / disassociated and enforced, end to end.

    .venv/bin/python bench/l3.py [--backend iptables,nftables] [--routers 100] [--fips 10]
                                 [--ops 200] [--workers 8] [--ct netlink|tool]

Each router gets a namespace of its own (made here, deleted at the end), an internal /24
with F ports and F floating IPs from one external /16, SNAT, metadata and a firewall group
on its interface; every floating IP gets one tracked connection (``conntrack -I``, DNATed
to its port and carrying the floating IP's ct mark, as the router's rules would give it),
so cutting a disassociated floating IP's connections deletes a real entry. Printed per
backend:

* compile (model -> IR, all routers) and render (IR -> per-router rules);
* full sync: every router's rules applied into its fresh namespace (``--workers`` routers
  at a time; iptables: one atomic ``iptables-restore`` per family; nftables: one
  libnftables transaction, in-process);
* one floating IP change (alternately disassociate / associate), end to end: model
  change -> compile -> render (only the changed router) -> apply (only that router's
  namespace; iptables: the nat table's restore; nftables: the three NAT chains in one
  transaction) -> conntrack clean-up of the moved address (``--ct netlink``: one
  in-process ctnetlink flush by the floating IP's ct mark; ``--ct tool``: ``conntrack -D``
  processes, the path before); p50 / p99 / max over ``--ops`` changes. Neutron's L3 agent
  resyncs routers in chunks of 256 and rewrites a router's whole iptables state per change.

Besides wall-clock latency, each change's CPU time (this process's threads, user + system,
plus the child processes it waited for) is printed: on a shared, loaded machine latency
mostly measures the wait for a core, CPU time the work. Like the agent after its full
sync, the bench freezes the long-lived objects out of the cyclic GC (``gc.freeze()``)
before the changes. Not included: the /32 of the floating IP on the qg- interface (one
netlink call in the lab). Nothing touches the root namespace.
"""

from __future__ import annotations

import argparse
import gc
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from _progress import step  # bench/ is on sys.path when run as a script

from portwall.backends.iptables.l3 import L3Applier, L3Renderer, reconcile_router
from portwall.backends.nftables.l3 import NftL3Renderer
from portwall.backends.nftables.l3apply import NftL3Applier
from portwall.ir.compile import PlanCompiler
from portwall.ir.l3 import RouterPlan
from portwall.kernel.conntrack import fip_ct_marks
from portwall.lab import netns
from portwall.model.store import Model, stable_ids


def build(routers: int, fips: int) -> Model:
    m = Model(stable_ids("bench-l3"))
    m.create_network({"name": "ext", "router:external": True, "port_security_enabled": False})
    m.create_subnet({"name": "ext-v4", "network_id": "ext", "cidr": "100.64.0.0/16",
                     "gateway_ip": "100.64.0.1"})
    rule = m.create_firewall_rule({"name": "web", "protocol": "tcp",
                                   "destination_port": "80", "action": "allow"})
    pol = m.create_firewall_policy({"name": "in", "firewall_rules": [rule.id]})
    for i in range(routers):
        net = m.create_network({"name": f"n{i}"})
        sub = m.create_subnet({"name": f"s{i}", "network_id": net.id,
                               "cidr": f"10.{i // 256}.{i % 256}.0/24",
                               "gateway_ip": f"10.{i // 256}.{i % 256}.1"})
        r = m.create_router({"name": f"r{i}", "external_gateway_info": {"network_id": "ext"}})
        itf = m.add_router_interface(r.id, {"subnet_id": sub.id})
        m.create_firewall_group({"name": f"fw{i}", "ingress_firewall_policy_id": pol.id,
                                 "ports": [itf.id]})
        for j in range(fips):
            p = m.create_port({"name": f"p{i}-{j}", "network_id": net.id})
            m.create_floatingip({"floating_network_id": "ext", "port_id": p.id,
                                 "name": f"f{i}-{j}"})
    return m


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


def _cpu() -> float:
    """CPU seconds used so far by this process (all threads, user + system) and by its
    waited-for children (iptables-restore, conntrack): on a shared, loaded machine the wall
    clock measures the queue for a core; this measures the work."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(
        resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _seed_conntrack(ns: str, r: RouterPlan) -> None:
    """One tracked connection per floating IP: outside -> F:80, DNATed to the port."""
    marks = fip_ct_marks(f.floating for f in r.floating_ips)
    cmds = [f"conntrack -I -p tcp -s 198.51.100.7 -d {f.floating} --sport {40000 + i} "
            f"--dport 80 -r {f.fixed} -q 198.51.100.7 --reply-port-src 80 "
            f"--reply-port-dst {40000 + i} --state ESTABLISHED -u SEEN_REPLY,ASSURED -t 600 "
            f"-m {marks.get(str(f.floating), 0) << 16} >/dev/null 2>&1"
            for i, f in enumerate(r.floating_ips)]
    subprocess.run(["ip", "netns", "exec", ns, "sh", "-c", "; ".join(cmds) + "; true"],
                   check=True)


def run(backend: str, a: argparse.Namespace) -> dict[str, Any]:
    step(f"{backend}: building {a.routers} routers x {a.fips} floating IPs")
    t0 = time.perf_counter()
    m = build(a.routers, a.fips)
    t_model = time.perf_counter() - t0
    comp = PlanCompiler()
    t0 = time.perf_counter()
    plan = comp.compile(m)
    t_compile = time.perf_counter() - t0
    nft = backend == "nftables"
    renderer: Any = NftL3Renderer() if nft else L3Renderer()
    t0 = time.perf_counter()
    rulesets = renderer.render(plan.routers.values())
    t_render = time.perf_counter() - t0
    if nft:
        rules = sum(len(c.rules) for r in rulesets.values() for c in r.chains.values())
    else:
        rules = sum(r.restore_input(f).count("\n-A ") for r in rulesets.values()
                    for f in (4, 6))

    names = {rid: netns.unique_name("pwb-l3") for rid in plan.routers}
    appliers: dict[str, Any] = {}
    cut_total = 0
    try:
        step(f"{backend}: creating {len(names)} router namespaces, then the full sync")
        t0 = time.perf_counter()
        for ns in names.values():
            netns.create(ns)
        t_ns = time.perf_counter() - t0
        appliers = {rid: (NftL3Applier(ns) if nft else L3Applier(ns))
                    for rid, ns in names.items()}
        t0 = time.perf_counter()
        with ThreadPoolExecutor(a.workers) as pool:
            list(pool.map(lambda rid: appliers[rid].apply(rulesets[rid]), list(rulesets)))
        t_sync = time.perf_counter() - t0
        step(f"{backend}: one tracked connection per floating IP (conntrack -I)")
        with ThreadPoolExecutor(a.workers) as pool:
            list(pool.map(lambda rid: _seed_conntrack(names[rid], plan.routers[rid]),
                          list(names)))
        if a.ct == "netlink":
            for ap in appliers.values():
                ap.ct.count()  # open the sockets before timing (once per router, at start)
        # what the agent does after its full sync (agent/runner.py Agent.resync): its
        # long-lived state leaves the cyclic GC, so no change pays for promoting it
        gc.collect()
        gc.freeze()

        step(f"{backend}: {a.ops} floating IP changes, one at a time")
        fip_ids = sorted(m.floating_ips)
        prev: dict[str, RouterPlan] = dict(plan.routers)
        lat: list[float] = []
        cpu: list[float] = []
        phases: dict[str, list[float]] = {"compile": [], "render": [], "apply": [],
                                          "conntrack": []}
        for k in range(a.ops):
            fid = fip_ids[(k // 2) % len(fip_ids)]
            f = m.floating_ips[fid]
            c0 = _cpu()
            t0 = time.perf_counter()
            if k % 2 == 0:
                port = f.port_id
                m.update_floatingip(fid, {"port_id": None})
                f.description = port or ""  # remember where it goes back (bench only)
            else:
                m.update_floatingip(fid, {"port_id": f.description})
            t1 = time.perf_counter()
            plan = comp.compile(m)
            t2 = time.perf_counter()
            new = renderer.render(plan.routers.values())
            t3 = time.perf_counter()
            changed = [rid for rid in new if new[rid] is not rulesets[rid]]
            for rid in changed:
                appliers[rid].apply(new[rid])
            t4 = time.perf_counter()
            for rid in changed:
                ct = appliers[rid].ct if a.ct == "netlink" else None
                cut_total += reconcile_router(appliers[rid].runner, prev[rid],
                                              plan.routers[rid], lambda e: True, ct)
            t5 = time.perf_counter()
            cpu.append(_cpu() - c0)
            rulesets, prev = new, dict(plan.routers)
            lat.append(t5 - t0)
            for key, dt in (("compile", t2 - t1), ("render", t3 - t2), ("apply", t4 - t3),
                            ("conntrack", t5 - t4)):
                phases[key].append(dt)
            assert len(changed) == 1, changed
    finally:
        gc.unfreeze()
        for ap in appliers.values():
            close: Callable[[], None] | None = getattr(ap, "close", None)
            if close is not None:
                close()
        for ns in names.values():
            if netns.exists(ns):
                netns.delete(ns)
    return {"rules": rules, "model": t_model, "compile": t_compile, "render": t_render,
            "ns": t_ns, "sync": t_sync, "lat": lat, "cpu": cpu, "phases": phases, "cut": cut_total}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backend", default="iptables,nftables")
    ap.add_argument("--routers", type=int, default=100)
    ap.add_argument("--fips", type=int, default=10)
    ap.add_argument("--ops", type=int, default=200)
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--ct", choices=("netlink", "tool"), default="netlink")
    a = ap.parse_args()
    for backend in [b.strip() for b in a.backend.split(",") if b.strip()]:
        r = run(backend, a)
        lat, phases = r["lat"], r["phases"]
        print(f"\nportwall routers on {backend}: {a.routers} routers x {a.fips} floating IPs "
              f"({r['rules']} rules, v4+v6), {a.ops} FIP changes, conntrack clean-up by "
              f"{a.ct} ({r['cut']} connections cut); load average "
              f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}\n")
        print("what | time")
        print("-|-")
        print(f"build the model (API calls) | {r['model'] * 1000:.0f} ms")
        print(f"compile (model -> IR, all routers) | {r['compile'] * 1000:.1f} ms")
        print(f"render (IR -> rules, all routers) | {r['render'] * 1000:.1f} ms")
        print(f"create {a.routers} namespaces (not part of the sync) | {r['ns'] * 1000:.0f} ms")
        print(f"full sync ({a.workers} routers at a time) | {r['sync'] * 1000:.0f} ms "
              f"({r['sync'] / a.routers * 1000:.1f} ms per router)")
        print(f"one FIP change end to end, p50 | {statistics.median(lat) * 1000:.1f} ms")
        print(f"one FIP change end to end, p99 | {pct(lat, 0.99) * 1000:.1f} ms")
        print(f"one FIP change end to end, max | {max(lat) * 1000:.1f} ms")
        cpu = r["cpu"]
        print(f"one FIP change, CPU used (this process + child processes), p50 / p99 | "
              f"{statistics.median(cpu) * 1000:.1f} / {pct(cpu, 0.99) * 1000:.1f} ms")
        for key, xs in phases.items():
            print(f"  of which {key}, p50 / p99 | {statistics.median(xs) * 1000:.2f} / "
                  f"{pct(xs, 0.99) * 1000:.2f} ms")


if __name__ == "__main__":
    sys.exit(main())
