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
full ``audit`` (all checks, no matrix) and, up to ``--matrix-max`` ports, the reachability
matrix: in-process and as the whole ``portwall audit FILE --matrix`` command on the same
workload written to a topology file. Targets: a trace under 50 ms, an audit of 10,000 ports
under 10 s, ``audit --matrix`` of 1,000 ports under 5 s.
"""

from __future__ import annotations

import argparse
import gc
import ipaddress
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from portwall.analyze.audit import audit, reachability_matrix
from portwall.analyze.evaluate import Packet, evaluate_hop
from portwall.analyze.trace import Tracer
from portwall.cli.common import progress
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


def spec(n_ports: int, seed: int) -> dict[str, Any]:
    """The seeded workload as a topology document (names for references), which
    :func:`build` turns into a model and ``--matrix`` writes to a file for the CLI."""
    rng = random.Random(seed)
    n_groups = max(1, n_ports // 5)
    nets = [{"name": f"net{i}", "subnets": [{"name": f"sub{i}", "cidr": str(ipaddress.ip_network(
        f"10.{64 + i // 64}.{(i % 64) * 4}.0/22"))}]} for i in range(max(1, n_ports // 250))]
    groups: list[dict[str, Any]] = [{"name": f"tier{t}", "security_group_rules": []}
                                    for t in range(TIERS)]
    groups += [{"name": f"app{k}", "security_group_rules": []} for k in range(n_groups)]
    # rules after all groups exist (remote groups may point forward)
    for k in range(n_groups):
        groups[TIERS + k]["security_group_rules"] = app_rules(rng, k, n_groups)
    for t in range(TIERS):
        groups[t]["security_group_rules"] = [_rule(
            "ingress", protocol="tcp", port_range_min=9100, port_range_max=9100,
            remote_group_id=f"tier{t}")]
    ports = []
    for i in range(n_ports):
        body: dict[str, Any] = {"name": f"p{i}", "network_id": nets[i // 250 % len(nets)]["name"]}
        if i % 200 == 199:
            body["port_security_enabled"] = False
        else:
            body["security_groups"] = [f"app{i % n_groups}", f"tier{i % TIERS}"]
            if i % 500 == 7:
                body["allowed_address_pairs"] = [{"ip_address": "0.0.0.0/0"}]
            elif i % 10 == 3:
                body["allowed_address_pairs"] = [{"ip_address": f"192.168.{i % 250}.0/24"}]
        ports.append(body)
    return {"project": "bench", "networks": nets, "security_groups": groups, "ports": ports}


def build(n_ports: int, seed: int) -> Model:
    """:func:`spec` through :class:`Model`, the way the API would create it."""
    doc = spec(n_ports, seed)
    m = Model(stable_ids(f"bench-analyze-{n_ports}"))
    net_ids = {}
    for net in doc["networks"]:
        created = m.create_network({"name": net["name"]})
        net_ids[net["name"]] = created.id
        for sub in net["subnets"]:
            m.create_subnet({"network_id": created.id, **sub})
    for g in doc["security_groups"]:
        m.create_security_group({"name": g["name"]})
    for g in doc["security_groups"]:
        for r in g["security_group_rules"]:
            m.create_security_group_rule({**r, "security_group_id": g["name"]})
    for body in doc["ports"]:
        m.create_port({**body, "network_id": net_ids[body["network_id"]]})
    return m


def timed(fn: Any, *a: Any, **kw: Any) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn(*a, **kw)
    return out, time.perf_counter() - t0


def bench(n: int, traces: int, seed: int, matrix_max: int) -> dict[str, float]:
    with progress(f"{n} ports: building the model and compiling (not timed)"):
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
    out = {"hop_us": t_hop * 1e6, "trace_first_ms": (t_tracer + t_first) * 1e3,
           "trace_median_ms": statistics.median(times) * 1e3, "trace_p99_ms": p99 * 1e3,
           "audit_s": t_audit}
    if n <= matrix_max:
        out.update(bench_matrix(n, seed, model, plan))
    return out


def bench_matrix(n: int, seed: int, model: Model, plan: HostPlan) -> dict[str, float]:
    """``--matrix``: in-process, then the whole CLI (load, compile, audit, matrix, print)
    on the same workload written as a topology file."""
    gc.collect()
    rows, t_mx = timed(reachability_matrix, model, plan)
    pairs = sum(len(r.src_ports) * len(r.dst_ports) - len(set(r.src_ports) & set(r.dst_ports))
                for r in rows)
    print(f"  matrix: {t_mx:.2f} s in-process, {len(rows)} rows covering {pairs} ordered "
          "pairs (every protocol and port)")
    with tempfile.TemporaryDirectory() as d:
        f = Path(d) / f"bench-{n}.json"
        f.write_text(json.dumps(spec(n, seed)))
        exe = Path(sys.executable).with_name("portwall")
        t0 = time.perf_counter()
        r = subprocess.run([str(exe), "audit", str(f), "--matrix"], capture_output=True,
                           text=True, check=False)
        t_cli = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"portwall audit --matrix failed: {r.stderr[-2000:]}")
    print(f"  `portwall audit FILE --matrix`: {t_cli:.2f} s wall, "
          f"{r.stdout.count(chr(10))} lines of output")
    return {"matrix_s": t_mx, "matrix_cli_s": t_cli}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1000,10000")
    ap.add_argument("--traces", type=int, default=200)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--matrix-max", type=int, default=1000,
                    help="also time --matrix for sizes up to this many ports")
    args = ap.parse_args()
    ok = True
    for n in (int(x) for x in args.sizes.split(",")):
        r = bench(n, args.traces, args.seed, args.matrix_max)
        ok &= r["trace_p99_ms"] < 50 and (n < 10000 or r["audit_s"] < 10)
        ok &= n > 1000 or r.get("matrix_cli_s", 0) < 5
    print("\ntargets (trace < 50 ms, audit of 10,000 ports < 10 s, `audit --matrix` of 1,000 "
          "ports < 5 s):", "met" if ok else "MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
