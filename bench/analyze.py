#!/usr/bin/env python3
"""Benchmark the analysis stage: evaluator, ``trace`` and ``audit`` at 1,000 / 10,000 ports.

    .venv/bin/python bench/analyze.py [--sizes 1000,10000] [--traces 200] [--seed 1]

Workload (seeded): ports/5 application groups of ~25 rules each (port ranges, prefixes,
ICMP, IPv6, and remote-group rules pointing at other groups), every port in its own
application group plus one of 20 shared "tier" groups; every 10th port has an address pair
(a /32 VIP or a routed /24), 1 in 500 a 0.0.0.0/0 pair (the seed-001 pattern), 1 in 200 has
port security disabled. At 10,000 ports that is ~50,000 security-group rules. The model is
built through :class:`portwall.model.Model` and compiled; neither is timed.

Printed per size: single-packet evaluation (``evaluate_hop``, what the applier calls per
conntrack entry), a trace (``Tracer.trace``: path + both chains + explanation; first call
including index building, then the median and p99 of ``--traces`` random traces), and a
full ``audit`` (all checks, no matrix). Targets: a trace under 50 ms, an audit of 10,000
ports under 10 s.
"""

from __future__ import annotations

import argparse
import gc
import ipaddress
import random
import statistics
import sys
import time
from typing import Any

from portwall.analyze.audit import audit
from portwall.analyze.evaluate import Packet, evaluate_hop
from portwall.analyze.trace import Tracer
from portwall.ir import compile_plan
from portwall.ir.types import HostPlan
from portwall.model.store import Model, stable_ids

TIERS = 20


def _rule(direction: str, **kw: Any) -> dict[str, Any]:
    r: dict[str, Any] = {"direction": direction, "ethertype": kw.pop("ethertype", "IPv4")}
    r.update({k: v for k, v in kw.items() if v is not None})
    return r


def app_rules(rng: random.Random, k: int, n_groups: int) -> list[dict[str, Any]]:
    """~23 rules plus the 2 automatic egress rules."""
    rules: list[dict[str, Any]] = []
    seen: set[tuple[Any, ...]] = set()
    while len(rules) < 23:
        kind = rng.random()
        if kind < 0.45:
            lo = rng.randint(1, 60000)
            hi = lo + rng.choice([0, 0, 0, 10, 100])
            r = _rule("ingress", protocol=rng.choice(["tcp", "udp"]), port_range_min=lo,
                      port_range_max=hi,
                      remote_ip_prefix=rng.choice([None, "10.0.0.0/8", f"172.{rng.randint(16, 31)}"
                                                   f".0.0/16", f"192.168.{rng.randint(0, 255)}.0/24"]))
        elif kind < 0.75:
            lo = rng.randint(1, 60000)
            r = _rule("ingress", protocol="tcp", port_range_min=lo, port_range_max=lo,
                      remote_group_id=f"app{rng.randrange(n_groups)}")
        elif kind < 0.85:
            r = _rule("ingress", protocol="icmp", port_range_min=rng.choice([None, 8, 0]),
                      remote_ip_prefix=rng.choice([None, "10.0.0.0/8"]))
        elif kind < 0.95:
            lo = rng.randint(1, 60000)
            r = _rule("egress", protocol="tcp", port_range_min=lo, port_range_max=lo,
                      remote_ip_prefix=f"10.{rng.randint(0, 255)}.0.0/16")
        else:
            r = _rule("ingress", ethertype="IPv6", protocol="tcp",
                      port_range_min=443, port_range_max=443 + rng.randint(0, 5))
        key = tuple(sorted(r.items()))
        if key not in seen:
            seen.add(key)
            rules.append(r)
    return rules


def build(n_ports: int, seed: int) -> Model:
    rng = random.Random(seed)
    m = Model(stable_ids(f"bench-analyze-{n_ports}"))
    n_groups = max(1, n_ports // 5)
    nets = []
    for i in range(max(1, n_ports // 250)):
        net = m.create_network({"name": f"net{i}"})
        m.create_subnet({"network_id": net.id, "name": f"sub{i}",
                         "cidr": str(ipaddress.ip_network(f"10.{64 + i // 64}.{(i % 64) * 4}.0/22"))})
        nets.append(net)
    for t in range(TIERS):
        m.create_security_group({"name": f"tier{t}"})
    for k in range(n_groups):
        m.create_security_group({"name": f"app{k}"})
    # rules after all groups exist (remote groups may point forward)
    for k in range(n_groups):
        for r in app_rules(rng, k, n_groups):
            m.create_security_group_rule({**r, "security_group_id": f"app{k}"})
    for t in range(TIERS):
        m.create_security_group_rule(_rule("ingress", protocol="tcp", port_range_min=9100,
                                           port_range_max=9100, remote_group_id=f"tier{t}",
                                           security_group_id=f"tier{t}"))
    for i in range(n_ports):
        net = nets[i // 250 % len(nets)]
        body: dict[str, Any] = {"name": f"p{i}", "network_id": net.id}
        if i % 200 == 199:
            body["port_security_enabled"] = False
        else:
            body["security_groups"] = [f"app{i % n_groups}", f"tier{i % TIERS}"]
            if i % 500 == 7:
                body["allowed_address_pairs"] = [{"ip_address": "0.0.0.0/0"}]
            elif i % 10 == 3:
                body["allowed_address_pairs"] = [{"ip_address": f"192.168.{i % 250}.0/24"}]
        m.create_port(body)
    return m


def timed(fn: Any, *a: Any, **kw: Any) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn(*a, **kw)
    return out, time.perf_counter() - t0


def bench(n: int, traces: int, seed: int) -> dict[str, float]:
    model, t_build = timed(build, n, seed)
    plan, t_compile = timed(compile_plan, model)
    assert isinstance(plan, HostPlan)
    rules = sum(len(g.security_group_rules) for g in model.security_groups.values())
    print(f"\n== {n} ports: {rules} security-group rules, {plan.rule_count()} IR rules, "
          f"{plan.set_member_count()} set members (build {t_build:.1f} s, compile "
          f"{t_compile:.2f} s, not part of the figures below)")
    rng = random.Random(seed + 1)
    ports = [p for p in plan.ports if p.addresses]
    # evaluator: one hop, as the applier's conntrack check calls it
    pairs = [(rng.choice(ports), rng.choice(ports)) for _ in range(2000)]
    pkts = [Packet(4, a.addresses[0].network_address, b.addresses[0].network_address, 6,
                   40000, rng.choice([22, 80, 443, 5432, 9100, rng.randint(1, 65535)]),
                   src_mac=a.mac) for a, b in pairs]
    # A collection of the young plan's millions of objects would otherwise land in whichever
    # call happens to trigger it; a long-lived process (agent, API) has long since done it.
    gc.collect()
    t0 = time.perf_counter()
    evaluate_hop(plan, pkts[0], *pairs[0])
    t_cold = time.perf_counter() - t0
    t0 = time.perf_counter()
    allowed = sum(evaluate_hop(plan, pk, a, b).allowed for pk, (a, b) in zip(pkts, pairs,
                                                                             strict=True))
    t_hop = (time.perf_counter() - t0) / len(pkts)
    print(f"  evaluate_hop: first {t_cold * 1e3:.1f} ms (builds the plan's indexes), then "
          f"{t_hop * 1e6:.0f} us per packet ({allowed}/{len(pkts)} allowed)")
    # trace: a fresh Tracer (cold indexes), then warm traces
    gc.collect()
    (tracer, t_tracer) = timed(Tracer, model, plan)
    a, b = pairs[0]
    _, t_first = timed(tracer.trace, a.name, b.name, "tcp", dport=22)
    times = []
    for (a, b), pk in zip(pairs[:traces], pkts[:traces], strict=True):
        _, t = timed(tracer.trace, a.name, b.name, "tcp", dport=pk.dport)
        times.append(t)
    times.sort()
    p99 = times[min(len(times) - 1, int(len(times) * 0.99))]
    print(f"  trace: first {(t_tracer + t_first) * 1e3:.1f} ms (Tracer build "
          f"{t_tracer * 1e3:.1f} ms + trace {t_first * 1e3:.1f} ms); then median "
          f"{statistics.median(times) * 1e3:.2f} ms, p99 {p99 * 1e3:.2f} ms over {len(times)}")
    gc.collect()
    findings, t_audit = timed(audit, model, plan)
    by: dict[str, int] = {}
    for f in findings:
        by[f.code] = by.get(f.code, 0) + 1
    print(f"  audit: {t_audit:.2f} s, {len(findings)} findings "
          f"({', '.join(f'{k} {v}' for k, v in sorted(by.items()))})")
    return {"hop_us": t_hop * 1e6, "trace_first_ms": (t_tracer + t_first) * 1e3,
            "trace_median_ms": statistics.median(times) * 1e3, "trace_p99_ms": p99 * 1e3,
            "audit_s": t_audit}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1000,10000")
    ap.add_argument("--traces", type=int, default=200)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    ok = True
    for n in (int(x) for x in args.sizes.split(",")):
        r = bench(n, args.traces, args.seed)
        ok &= r["trace_p99_ms"] < 50 and (n < 10000 or r["audit_s"] < 10)
    print("\ntargets (trace < 50 ms, audit of 10,000 ports < 10 s):", "met" if ok else "MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
