#!/usr/bin/env python3
"""Benchmark routers on iptables: full sync of R routers x F floating IPs, then one floating
IP associated / disassociated and enforced, end to end.

    .venv/bin/python bench/l3.py [--routers 100] [--fips 10] [--ops 200] [--workers 8]

Each router gets a namespace of its own (made here, deleted at the end), an internal /24
with F ports and F floating IPs from one external /16, SNAT, metadata and a firewall group
on its interface. Printed:

* compile (model -> IR, all routers) and render (IR -> per-router restore text);
* full sync: every router's rules applied into its fresh namespace (``--workers`` routers
  at a time, one atomic ``iptables-restore`` per family each);
* one floating IP change (alternately disassociate / associate), end to end: model
  change -> compile -> render (only the changed router is re-rendered) -> apply (only that
  router's namespace, only the IPv4 text changed) -> conntrack clean-up of the moved
  address; p50 / p99 / max over ``--ops`` changes. Neutron's L3 agent resyncs routers in
  chunks of 256 and rewrites a router's whole iptables state per change.

Nothing touches the root namespace.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from _progress import step  # bench/ is on sys.path when run as a script

from portwall.backends.iptables.l3 import L3Applier, L3Renderer, reconcile_router
from portwall.ir.compile import PlanCompiler
from portwall.ir.l3 import RouterPlan
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--routers", type=int, default=100)
    ap.add_argument("--fips", type=int, default=10)
    ap.add_argument("--ops", type=int, default=200)
    ap.add_argument("--workers", type=int, default=8)
    a = ap.parse_args()
    step(f"building {a.routers} routers x {a.fips} floating IPs")
    t0 = time.perf_counter()
    m = build(a.routers, a.fips)
    t_model = time.perf_counter() - t0
    comp = PlanCompiler()
    t0 = time.perf_counter()
    plan = comp.compile(m)
    t_compile = time.perf_counter() - t0
    renderer = L3Renderer()
    t0 = time.perf_counter()
    rulesets = renderer.render(plan.routers.values())
    t_render = time.perf_counter() - t0
    rules = sum(r.restore_input(f).count("\n-A ") for r in rulesets.values() for f in (4, 6))

    names = {rid: netns.unique_name("pwb-l3") for rid in plan.routers}
    appliers: dict[str, L3Applier] = {}
    try:
        step(f"creating {len(names)} router namespaces, then the full sync")
        t0 = time.perf_counter()
        for ns in names.values():
            netns.create(ns)
        t_ns = time.perf_counter() - t0
        appliers = {rid: L3Applier(ns) for rid, ns in names.items()}
        t0 = time.perf_counter()
        with ThreadPoolExecutor(a.workers) as pool:
            list(pool.map(lambda rid: appliers[rid].apply(rulesets[rid]), list(rulesets)))
        t_sync = time.perf_counter() - t0

        step(f"{a.ops} floating IP changes, one at a time")
        # one floating IP at a time: disassociate, then associate again
        fip_ids = sorted(m.floating_ips)
        prev: dict[str, RouterPlan] = dict(plan.routers)
        lat: list[float] = []
        phases: dict[str, list[float]] = {"compile": [], "render": [], "apply": [],
                                          "conntrack": []}
        for k in range(a.ops):
            fid = fip_ids[(k // 2) % len(fip_ids)]
            f = m.floating_ips[fid]
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
                reconcile_router(appliers[rid].runner, prev[rid], plan.routers[rid],
                                 lambda e: True)
            t5 = time.perf_counter()
            rulesets, prev = new, dict(plan.routers)
            lat.append(t5 - t0)
            for key, dt in (("compile", t2 - t1), ("render", t3 - t2), ("apply", t4 - t3),
                            ("conntrack", t5 - t4)):
                phases[key].append(dt)
            assert len(changed) == 1, changed
    finally:
        for ns in names.values():
            if netns.exists(ns):
                netns.delete(ns)

    print(f"\nportwall routers on iptables: {a.routers} routers x {a.fips} floating IPs "
          f"({rules} iptables rules, v4+v6), {a.ops} FIP changes\n")
    print("what | time")
    print("-|-")
    print(f"build the model (API calls) | {t_model * 1000:.0f} ms")
    print(f"compile (model -> IR, all routers) | {t_compile * 1000:.1f} ms")
    print(f"render (IR -> restore text, all routers) | {t_render * 1000:.1f} ms")
    print(f"create {a.routers} namespaces (not part of the sync) | {t_ns * 1000:.0f} ms")
    print(f"full sync ({a.workers} routers at a time) | {t_sync * 1000:.0f} ms "
          f"({t_sync / a.routers * 1000:.1f} ms per router)")
    print(f"one FIP change end to end, p50 | {statistics.median(lat) * 1000:.1f} ms")
    print(f"one FIP change end to end, p99 | {pct(lat, 0.99) * 1000:.1f} ms")
    print(f"one FIP change end to end, max | {max(lat) * 1000:.1f} ms")
    for key, xs in phases.items():
        print(f"  of which {key}, p50 / p99 | {statistics.median(xs) * 1000:.2f} / "
              f"{pct(xs, 0.99) * 1000:.2f} ms")


if __name__ == "__main__":
    sys.exit(main())
