#!/usr/bin/env python3
"""Benchmark the router audit and the routed ``audit --matrix`` (no kernel involved).

    .venv/bin/python bench/l3_audit.py [--routers 5,20,100] [--fips 10]

The topology is ``bench/l3.py``'s: R routers on one external network, each with an
internal /24 of F ports, each port with a floating IP, and a firewall group on the
router's interface. Printed per size: ports, matrix rows, seconds for the router findings
(PW010-PW015 with the rest of ``audit``) and for the matrix, where every pair of ports on
different networks is answered along trace's path (shared between equivalent pairs,
:mod:`portwall.analyze.l3matrix`). Report the load average beside the figures.
"""

from __future__ import annotations

import argparse
import os
import time

from l3 import build  # bench/ is on sys.path when run as a script

from portwall.analyze.audit import audit
from portwall.analyze.matrix import reachability_matrix
from portwall.ir import compile_plan


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--routers", default="5,20,100")
    ap.add_argument("--fips", type=int, default=10)
    args = ap.parse_args()
    print(f"load average {os.getloadavg()[0]:.1f}")
    print("| routers | ports | findings | audit s | matrix rows | matrix s |")
    print("|---|---|---|---|---|---|")
    for r in (int(x) for x in args.routers.split(",")):
        m = build(r, args.fips)
        plan = compile_plan(m)
        t0 = time.perf_counter()
        found = audit(m, plan)
        t1 = time.perf_counter()
        rows = reachability_matrix(m, plan)
        t2 = time.perf_counter()
        print(f"| {r} | {len(plan.ports)} | {len(found)} | {t1 - t0:.2f} | {len(rows)} |"
              f" {t2 - t1:.2f} |", flush=True)


if __name__ == "__main__":
    main()
