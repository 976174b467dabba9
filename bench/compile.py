#!/usr/bin/env python3
"""Benchmark: model -> IR (compile) -> iptables + ipset (render), at 100 / 1,000 / 10,000 ports.

    .venv/bin/python bench/compile.py [--sizes 100,1000,10000] [--repeat 3] [--dual-stack]
    .venv/bin/python bench/compile.py --peer-json /tmp/ports-1000.json
    .venv/bin/python bench/compile.py --incremental [--sizes 100,1000,10000]

The synthetic workload has the shape of the Neutron peer's ``gen_ports.py``: every port is in
``sg-all`` (which holds every port and has a remote-group rule on itself) and in one of
``--groups`` ``sg-app-<k>`` groups (~10 rules each, one with remote group ``sg-all``); every
port has 2 allowed address pairs. The model is built through :class:`portwall.model.Model`
(Neutron's checks) and is not timed; compile and render are (best of ``--repeat``).
``--peer-json`` reads the peer's JSON instead, so both tools can be compared on one input.

``--incremental`` times a long-running :class:`portwall.ir.PlanCompiler` instead: one
change, then one compile, for +1 port (on this host), +1 member (a port on another host joins
the all-ports remote group) and 1 changed rule; median and p99 of ``--changes`` rounds.
The incremental compile must be O(change): these figures stay flat as ports grow.

Targets (2-core machine): 1,000 ports under 0.5 s, 10,000 under 5 s; rules linear in ports.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import workload  # bench/workload.py (bench/ is on sys.path when run as a script)

from portwall.backends.iptables.render import render_iptables
from portwall.backends.iptables.types import IptablesRuleset
from portwall.ir import compile_plan
from portwall.ir.types import HostPlan
from portwall.model.store import Model, stable_ids

T = TypeVar("T")


def build_model(n_ports: int, groups: int = 10, dual_stack: bool = False) -> Model:
    """The synthetic deployment (bench/workload.py) with 2 address pairs on every port."""
    return workload.Workload(n_ports, groups=groups, pairs=2, dual_stack=dual_stack).m


def model_from_peer_json(path: str) -> Model:
    """The Neutron peer's workload file (``gen_ports.py`` output) as a portwall model."""
    doc = json.loads(Path(path).read_text())
    m = Model(stable_ids("peer"))
    net_ids: dict[str, str] = {}
    for p in doc["ports"]:
        nid = p["network_id"]
        if nid not in net_ids:
            net = m.create_network({"id": nid, "name": nid})
            net_ids[nid] = net.id
            m.create_subnet({"network_id": net.id, "cidr": "10.0.0.0/8"})
            m.create_subnet({"network_id": net.id, "cidr": "fd00::/16"})
    for gid, g in doc["security_groups"].items():
        m.create_security_group({"id": gid, "name": gid, "stateful": g.get("stateful", True),
                                 "security_group_rules": []})
        m.security_groups[gid].security_group_rules.clear()  # the file lists every rule
    for gid, g in doc["security_groups"].items():
        for r in g["rules"]:
            m.create_security_group_rule({**r, "security_group_id": gid})
    for p in doc["ports"]:
        m.create_port({
            "id": p["id"], "name": p["device"], "network_id": p["network_id"],
            "mac_address": p["mac"], "fixed_ips": [{"ip_address": a} for a in p["fixed_ips"]],
            "allowed_address_pairs": p["allowed_address_pairs"],
            "port_security_enabled": p.get("port_security_enabled", True),
            "security_groups": p["security_groups"] if p.get("port_security_enabled", True)
            else [],
        })
    return m


def _compile_and_render(model: Model) -> IptablesRuleset:
    return render_iptables(compile_plan(model))


def best_of(n: int, fn: Callable[[], T]) -> tuple[float, T]:
    best, out = float("inf"), None
    for _ in range(n):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    assert out is not None
    return best, out


def rendered_rules(rs: IptablesRuleset) -> int:
    return sum(len(c.rules) for tables in rs.tables.values() for t in tables.values()
               for c in t.chains.values())


def measure(model: Model, repeat: int) -> dict[str, float]:
    t_compile, plan = best_of(repeat, lambda: compile_plan(model))
    assert isinstance(plan, HostPlan)
    t_render, rs = best_of(repeat, lambda: render_iptables(plan))
    return {
        "ports": len(plan.ports), "compile": t_compile, "render": t_render,
        "total": t_compile + t_render, "ir_rules": plan.rule_count(),
        "rules": rendered_rules(rs), "members": sum(len(s.members) for s in rs.ipsets.values()),
    }


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def measure_incremental(n: int, groups: int, changes: int,
                        freeze: bool = True) -> dict[str, float]:
    """Median / p99 of one compile after each kind of change, with a warm PlanCompiler."""
    from portwall.ir.compile import PlanCompiler

    w = workload.Workload(n, groups=groups, pairs=2)
    pc = PlanCompiler(w.host)
    pc.compile(w.m)
    pc.compile(w.m)
    if freeze:
        # What a long-running agent does once its model is loaded: move the loaded objects
        # out of the collector's sight, so a full collection of the benchmark's own heap
        # (a second at 10,000 ports) does not land inside one timed compile.
        gc.collect()
        gc.freeze()
    row: dict[str, float] = {"ports": n}
    kinds: list[tuple[str, Callable[[int], object]]] = [
        ("nothing", lambda i: None),
        ("port", lambda i: w.add_port()),
        ("member", lambda i: w.add_port(host="elsewhere")),
        ("rule", w.change_rule),
    ]
    for name, change in kinds:
        times = []
        for i in range(changes):
            change(i)
            t0 = time.perf_counter()
            pc.compile(w.m)
            times.append(time.perf_counter() - t0)
        row[f"{name}_med"], row[f"{name}_p99"] = _pct(times, 0.5), _pct(times, 0.99)
    if freeze:
        gc.unfreeze()
    return row


def print_incremental(rows: Sequence[dict[str, float]]) -> None:
    head = ("ports", "no change", "+1 port", "+1 member", "1 rule changed")
    print("incremental compile (PlanCompiler), ms median / p99")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        cells = [f"{r[f'{k}_med'] * 1000:.2f} / {r[f'{k}_p99'] * 1000:.2f}"
                 for k in ("nothing", "port", "member", "rule")]
        print(f"| {int(r['ports']):,} | " + " | ".join(cells) + " |")


def print_table(rows: Sequence[dict[str, float]]) -> None:
    head = ("ports", "compile s", "render s", "total s", "IR rules", "iptables rules v4+v6",
            "rules/port", "ipset members")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        print(f"| {r['ports']:,} | {r['compile']:.3f} | {r['render']:.3f} | {r['total']:.3f} | "
              f"{r['ir_rules']:,} | {r['rules']:,} | {r['rules'] / max(r['ports'], 1):.1f} | "
              f"{r['members']:,} |")


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="100,1000,10000", help="comma-separated port counts")
    ap.add_argument("--groups", type=int, default=10, help="number of sg-app-<k> groups")
    ap.add_argument("--dual-stack", action="store_true", help="give every port an IPv6 fixed IP")
    ap.add_argument("--repeat", type=int, default=3, help="best of N timings")
    ap.add_argument("--peer-json", help="measure the Neutron peer's workload file instead")
    ap.add_argument("--profile", action="store_true", help="cProfile the largest size")
    ap.add_argument("--incremental", action="store_true",
                    help="time a PlanCompiler after +1 port / +1 member / 1 changed rule")
    ap.add_argument("--changes", type=int, default=50, help="rounds per change kind")
    ap.add_argument("--no-freeze", action="store_true",
                    help="leave the loaded model to the garbage collector (see measure_incremental)")
    a = ap.parse_args(argv)
    if a.incremental:
        print_incremental([measure_incremental(int(n), a.groups, a.changes, not a.no_freeze)
                           for n in a.sizes.split(",")])
        return 0
    if a.peer_json:
        t0 = time.perf_counter()
        model = model_from_peer_json(a.peer_json)
        print(f"# {a.peer_json}: model built in {time.perf_counter() - t0:.1f} s (not counted)")
        print_table([measure(model, a.repeat)])
        return 0
    rows = []
    sizes = [int(s) for s in a.sizes.split(",")]
    for n in sizes:
        t0 = time.perf_counter()
        model = build_model(n, a.groups, a.dual_stack)
        print(f"# {n} ports: model built in {time.perf_counter() - t0:.1f} s (not counted)",
              file=sys.stderr)
        if a.profile and n == max(sizes):
            import cProfile
            import pstats
            prof = cProfile.Profile()
            prof.runcall(_compile_and_render, model)
            pstats.Stats(prof, stream=sys.stderr).sort_stats("cumulative").print_stats(25)
        rows.append(measure(model, a.repeat))
    print_table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
