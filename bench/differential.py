#!/usr/bin/env python3
"""Evaluator against kernel, larger random rounds on demand (the CI test sends 2,200).

    .venv/bin/python bench/differential.py --packets 10000 [--backend NAME ...] [--seed S]
        [--per-round 2000] [--dual-every 2]

The packets are split into rounds of at most ``--per-round`` packets; every round is a new
random topology (seed, seed+1, ...; every ``--dual-every``-th one dual-stack) brought up in
a lab sandbox on the backend, so many topologies are covered, not one. Prints one table row
per backend (packets, agreements, disagreements, how many the evaluator allowed, spoof
drops, and a control: how many observations contradict an evaluator without anti-spoofing),
then every disagreement with the evaluator's reasoning. Exit status 1 on any disagreement.
Needs root (namespaces); nothing touches the root namespace.
"""

from __future__ import annotations

import argparse
import sys
import time

from rich.console import Console
from rich.table import Table

from portwall import backends
from portwall.lab.differential import Disagreement, run_round


def rounds(total: int, per_round: int) -> list[int]:
    full, rest = divmod(total, per_round)
    return [per_round] * full + ([rest] if rest else [])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--packets", type=int, default=10000)
    ap.add_argument("--backend", action="append", choices=backends.names(),
                    help="repeatable; default: every registered backend")
    ap.add_argument("--seed", type=int, default=100)
    ap.add_argument("--per-round", type=int, default=2000)
    ap.add_argument("--dual-every", type=int, default=2,
                    help="every Nth round is dual-stack (0: never)")
    a = ap.parse_args(argv)
    out = Console(highlight=False, width=200)
    table = Table(title=f"evaluator vs kernel, {a.packets} random packets per backend",
                  title_justify="left")
    for col in ("backend", "rounds", "packets", "agreements", "disagreements",
                "evaluator allowed", "spoof drops", "control (no anti-spoof) contradicted",
                "seconds"):
        table.add_column(col, justify="left" if col == "backend" else "right")
    failures: list[tuple[str, Disagreement]] = []
    for name in a.backend or backends.names():
        t0 = time.perf_counter()
        sent = agree = allowed = spoof = blind = 0
        sizes = rounds(a.packets, a.per_round)
        for i, n in enumerate(sizes):
            dual = a.dual_every > 0 and i % a.dual_every == a.dual_every - 1
            rnd = run_round(name, a.seed + i, n, dual)
            bad = rnd.disagreements
            failures += [(f"{name} seed {rnd.seed}{' dual' if dual else ''}", d) for d in bad]
            sent += n
            agree += n - len(bad)
            allowed += rnd.allowed
            spoof += rnd.spoof_drops
            blind += rnd.blind_contradictions()
            print(f"  {name}: round {i + 1}/{len(sizes)} seed {rnd.seed}"
                  f"{' (dual-stack)' if dual else ''}: {n} packets, {len(bad)} disagreements, "
                  f"{rnd.seconds['packets']:.1f} s sending", file=sys.stderr)
        table.add_row(name, str(len(sizes)), str(sent), str(agree), str(sent - agree),
                      str(allowed), str(spoof), str(blind), f"{time.perf_counter() - t0:.1f}")
    out.print(table)
    if failures:
        out.print(f"[bold red]{len(failures)} disagreements[/bold red]")
        for where, d in failures:
            out.print(f"  {where}: {d.describe()}")
    else:
        out.print("no disagreements")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
