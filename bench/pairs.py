#!/usr/bin/env python3
"""One allowed-address-pair change on a port of a big remote group: compile and render cost.

    .venv/bin/python bench/pairs.py [--sizes 1000,10000] [--changes 200] [--backend nftables]

The workload of ``bench/api.py``, in process: every port is in group ``web`` (a remote-group
rule on itself, so its address set holds every port), each with one host address pair; 50
ports are on this host. Each round changes one of them to a /24 pair (or back to a host
address), then times one incremental compile (``PlanCompiler``) and one render of the
backend. Then the store case: the model is rebuilt from records (new objects for every
resource, same revisions, as ``ModelCache.reload`` does) and one compile is timed -- by
(id, revision) nothing is compiled again.

Both must stay flat from 1,000 to 10,000 members: the compiler hands the renderer the set's
member delta, and finds the changed port from the model's change journal.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import time

from _progress import step

from portwall import backends
from portwall.ir.compile import PlanCompiler
from portwall.model import Model, stable_ids
from portwall.store import codec

HOST = "bench-host"


def build(n: int) -> tuple[Model, list[str]]:
    m = Model(stable_ids("pairs"))
    net = m.create_network({"name": "bench", "project_id": "p"})
    for i in range(3):
        m.create_subnet({"network_id": net.id, "cidr": f"10.{i}.0.0/16", "project_id": "p"})
    sg = m.create_security_group({"name": "web", "project_id": "p"})
    for port in (22, 80, 443):
        m.create_security_group_rule({"security_group_id": sg.id, "direction": "ingress",
                                      "protocol": "tcp", "port_range_min": port,
                                      "port_range_max": port})
    m.create_security_group_rule({"security_group_id": sg.id, "direction": "ingress",
                                  "remote_group_id": sg.id})
    mine = []
    for i in range(n):
        p = m.create_port({"network_id": net.id, "name": f"p{i}", "project_id": "p",
                           "security_groups": [sg.id],
                           "binding:host_id": HOST if i < 50 else f"other-{i % 50}",
                           "allowed_address_pairs": [
                               {"ip_address": f"172.16.{i // 250}.{i % 250}"}]})
        if i < 50:
            mine.append(p.id)
    return m, mine


def reload(m: Model) -> Model:
    """A new Model from records, every resource a new object with revision 1."""
    out = Model()
    for kind in codec.KINDS:
        for obj in list(codec.table(m, kind).values()):
            codec.put(out, kind, codec.to_body(m, kind, obj), 1)
    return out


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(p / 100 * (len(xs) - 1)))] * 1000


def run(n: int, changes: int, backend: str) -> dict[str, float]:
    m, mine = build(n)
    comp, rend = PlanCompiler(HOST), backends.get(backend).renderer()
    rend.render(comp.compile(m))
    gc.collect()
    gc.freeze()  # as the agent does after a full build
    compile_t, render_t = [], []
    for k in range(changes + 10):
        pair = f"192.168.{k % 250}.0/24" if k % 2 else f"172.31.{k % 250}.1"
        m.update_port(mine[k % len(mine)], {"allowed_address_pairs": [{"ip_address": pair}]})
        t0 = time.perf_counter()
        plan = comp.compile(m)
        t1 = time.perf_counter()
        rend.render(plan)
        t2 = time.perf_counter()
        if k >= 10:
            compile_t.append(t1 - t0)
            render_t.append(t2 - t1)
    # the store case: everything a new object with its revision; tag the current ones
    r1 = reload(m)
    comp2 = PlanCompiler(HOST)
    comp2.compile(r1)
    r2 = reload(r1)
    t0 = time.perf_counter()
    comp2.compile(r2)
    reload_t = time.perf_counter() - t0
    gc.unfreeze()
    return {"compile p50": pct(compile_t, 50), "compile p99": pct(compile_t, 99),
            "render p50": pct(render_t, 50), "render p99": pct(render_t, 99),
            "compile mean": statistics.mean(compile_t) * 1000, "reload": reload_t * 1000}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="1000,10000")
    ap.add_argument("--changes", type=int, default=200)
    ap.add_argument("--backend", default="nftables")
    args = ap.parse_args()
    rows = []
    for n in (int(x) for x in args.sizes.split(",")):
        step(f"{n} ports: build, then {args.changes} address-pair changes")
        rows.append((n, run(n, args.changes, args.backend)))
    print(f"load average {os.getloadavg()[0]:.2f} / {os.getloadavg()[1]:.2f}; backend "
          f"{args.backend}; {args.changes} changes")
    print("| members | compile p50 ms | compile p99 ms | render p50 ms | render p99 ms |"
          " compile after reload ms |")
    print("|---|---|---|---|---|---|")
    for n, r in rows:
        print(f"| {n:,} | {r['compile p50']:.2f} | {r['compile p99']:.2f} | "
              f"{r['render p50']:.2f} | {r['render p99']:.2f} | {r['reload']:.1f} |")


if __name__ == "__main__":
    main()
