#!/usr/bin/env python3
"""Benchmark the iptables+ipset applier on one host namespace.

    .venv/bin/python bench/apply.py [--sizes 100,1000] [--reps 3] [--no-peer] [--legacy]
    .venv/bin/python bench/apply.py --backend nftables [...]   (any backend: bench/nft_apply.py)
    .venv/bin/python bench/apply.py --routers 100 [--fips 10] [--backend iptables,nftables]
        (routers: full sync of R routers x F floating IPs, then one floating IP associate /
        disassociate enforced, p50/p99: bench/l3.py)

For each size N (ports on the host; the workload of /work/shared/peer/neutron/gen_ports.py:
2 groups per port, ~10 rules per group, a remote-group rule on a group holding every port,
an address pair on every 10th port) it prints:

* full sync: ``IptablesApplier.apply`` into an empty namespace, against a *bare* load of the
  same final state (``ipset restore`` + ``iptables-restore`` + ``ip6tables-restore`` of the
  renderer's text, no reading, no diffing) — the overhead ratio;
* with N ports present, the time to enforce (a) one new port, (b) one new remote-group
  member (a port on another host joins the all-ports group), (c) one changed rule (a rule of
  one group replaced): ``apply`` time, model->IR->ruleset time (incremental: a long-lived
  :class:`PlanCompiler` + :class:`IptablesRenderer`, as a running agent would keep), and end
  to end, model change -> compile -> render -> apply (kernel updated); the incremental plan
  and ruleset are checked against a fresh compile + render after every change;
* optionally Neutron's own iptables driver on the same workload (full apply, +1 port), if
  the peer venv (/opt/neutron-peer-venv, see /work/shared/peer/neutron/README.md) exists.

Everything runs in namespaces made here and deleted at the end; nothing touches the root
namespace.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import workload  # bench/workload.py (bench/ is on sys.path when run as a script)
from _peer import peer_dir

from portwall.backends.iptables.apply import IptablesApplier
from portwall.backends.iptables.render import (
    IptablesRenderer,
    ipset_restore_text,
    render_iptables,
    restore_text,
)
from portwall.backends.iptables.types import IptablesRuleset
from portwall.ir.compile import PlanCompiler, compile_plan
from portwall.ir.types import HostPlan
from portwall.lab import netns

PEER_DIR = peer_dir()
PEER_VENV = Path(os.environ.get("NEUTRON_PEER_VENV", "/opt/neutron-peer-venv"))
HOST = "bench-host"
GROUPS = 10


# ------------------------------------------------------------------ workload
class Workload(workload.Workload):
    """The peer's workload on HOST (one address pair on every 10th port), plus the
    long-lived compiler and renderer a running agent would keep."""

    def __init__(self, n: int) -> None:
        super().__init__(n, groups=GROUPS, host=HOST)
        self.compiler = PlanCompiler(HOST)
        self.renderer = IptablesRenderer()

    def build(self) -> tuple[HostPlan, IptablesRuleset, float]:
        """One-shot compile + render (what a fresh process does)."""
        t = time.perf_counter()
        plan = compile_plan(self.m, host=HOST)
        rs = render_iptables(plan)
        return plan, rs, time.perf_counter() - t

    def build_incremental(self) -> tuple[HostPlan, IptablesRuleset, float]:
        """Compile + render through the long-lived caches (what a running agent does)."""
        t = time.perf_counter()
        plan = self.compiler.compile(self.m)
        rs = self.renderer.render(plan)
        return plan, rs, time.perf_counter() - t


# ------------------------------------------------------------------ helpers
def fresh_ns() -> str:
    name = netns.unique_name("pwbench")
    netns.create(name)
    return name


def bare_load(ns: str, rs: IptablesRuleset, legacy: bool) -> float:
    kind = "legacy" if legacy else "nft"
    t = time.perf_counter()
    for argv, text in ((["ipset", "restore"], ipset_restore_text(rs)),
                       ([f"iptables-{kind}-restore"], restore_text(rs, 4)),
                       ([f"ip6tables-{kind}-restore"], restore_text(rs, 6))):
        netns.run(ns, argv, input=text)
    return time.perf_counter() - t


def rules_in(rs: IptablesRuleset) -> int:
    return sum(len(c.rules) for fam in rs.tables.values() for t in fam.values()
               for c in t.chains.values())


def med(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def peer(n: int, legacy: bool) -> dict[str, Any] | None:
    """Neutron's iptables driver on gen_ports.py's file of the same size, or None."""
    py = PEER_VENV / "bin" / "python"
    if not py.exists():
        return None
    with tempfile.TemporaryDirectory() as d:
        ports, out = f"{d}/ports.json", f"{d}/out.json"
        subprocess.run([sys.executable, str(PEER_DIR / "gen_ports.py"), str(n), "-o", ports],
                       check=True, capture_output=True)
        ns = fresh_ns()
        try:
            env = dict(os.environ)
            if legacy:
                env["PATH"] = f"{PEER_DIR / 'legacy-shim'}:{env['PATH']}"
            proc = subprocess.run(
                ["ip", "netns", "exec", ns, str(py), str(PEER_DIR / "neutron_fw.py"), ports,
                 "--add-extra", "--json-out", out], capture_output=True, text=True, env=env,
                timeout=900)
            if proc.returncode != 0:
                print(f"  (peer failed: {proc.stderr.strip()[-300:]})", file=sys.stderr)
                return None
            return dict(json.loads(Path(out).read_text()))
        finally:
            netns.delete(ns)


# ------------------------------------------------------------------ main
def timed_apply(a: IptablesApplier, w: Workload,
                change: Callable[[], None]) -> tuple[float, float, float, float, str]:
    """(apply, incremental build, end to end, fresh build) seconds and the apply summary.
    End to end runs from the model call to the kernel holding the new rules."""
    t0 = time.perf_counter()
    change()
    plan, rs, build_s = w.build_incremental()
    rep = a.apply(rs, plan)
    e2e = time.perf_counter() - t0
    fresh_plan, fresh_rs, fresh_s = w.build()  # not timed in e2e: proves the caches right
    if plan != fresh_plan or rs != fresh_rs:
        raise SystemExit("incremental compile/render differs from a fresh one")
    return rep.seconds, build_s, e2e, fresh_s, rep.summary()


def bench_size(n: int, reps: int, legacy: bool, with_peer: bool) -> dict[str, Any]:
    w = Workload(n)
    plan, rs, build_s = w.build()
    res: dict[str, Any] = {"ports": n, "rules": rules_in(rs), "build_s": build_s,
                           "set_members": sum(len(s.members) for s in rs.ipsets.values())}
    bare, full, noop = [], [], []
    for _ in range(reps):
        ns = fresh_ns()
        try:
            bare.append(bare_load(ns, rs, legacy))
        finally:
            netns.delete(ns)
        ns = fresh_ns()
        try:
            with IptablesApplier(ns, legacy=legacy) as a:
                rep = a.apply(rs, plan)
                full.append(rep.seconds)
                again = a.apply(rs, plan)
                assert again.noop, again.summary()
                noop.append(again.seconds)
        finally:
            netns.delete(ns)
    res |= {"bare_s": med(bare), "full_s": med(full), "noop_s": med(noop)}

    ns = fresh_ns()
    try:
        with IptablesApplier(ns, legacy=legacy) as a:
            plan, rs, _ = w.build_incremental()  # warm the caches, as a running agent has
            a.apply(rs, plan)
            changes: list[tuple[str, Callable[[int], None]]] = [
                ("new_port", lambda i: w.add_port()),
                ("new_member", lambda i: w.add_port(host="elsewhere")),
                ("changed_rule", w.change_rule),
            ]
            for key, change in changes:
                times, builds, e2es, freshes = [], [], [], []
                for i in range(reps):
                    s, b, e, f, summary = timed_apply(a, w, functools.partial(change, i))
                    times.append(s)
                    builds.append(b)
                    e2es.append(e)
                    freshes.append(f)
                res[key + "_s"] = med(times)
                res[key + "_build_s"] = med(builds)
                res[key + "_e2e_s"] = med(e2es)
                res[key + "_fresh_build_s"] = med(freshes)
                res[key + "_summary"] = summary
            _, final_rs, _ = w.build()
            drift = a.drift(final_rs)
            res["drift_after"] = len(drift)
    finally:
        netns.delete(ns)

    if with_peer:
        p = peer(n, legacy)
        if p is not None:
            res["peer_full_s"] = p.get("full_apply_s")
            res["peer_new_port_s"] = p.get("incremental_apply_s")
    return res


def ms(x: float | None) -> str:
    return "-" if x is None else f"{x * 1000:.1f} ms"


def main() -> None:
    if "--routers" in sys.argv:  # routers, NAT and FWaaS: bench/l3.py takes the same flags
        import l3

        l3.main()
        return
    if "--backend" in sys.argv:  # the generic path: any backend through the interface
        import nft_apply

        nft_apply.main(sys.argv[1:])
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="100,1000")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--legacy", action="store_true", help="iptables-legacy instead of nft")
    ap.add_argument("--no-peer", action="store_true", help="skip Neutron's driver")
    ap.add_argument("--json", help="also write the raw figures here")
    a = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root (network namespaces)")
    results = [bench_size(int(n), a.reps, a.legacy, not a.no_peer) for n in a.sizes.split(",")]

    backend = "legacy" if a.legacy else "nft"
    print(f"\nportwall iptables applier, {backend} backend, median of {a.reps}"
          " (apply time; incremental model->IR->ruleset time in brackets;"
          " e2e = model change -> compile -> render -> apply)\n")
    head = ["ports", "rules", "bare restore", "full sync", "ratio", "no-op",
            "+1 port", "+1 member", "1 rule changed", "drift after",
            "e2e +1 port", "e2e +1 member", "e2e 1 rule"]
    peer_cols = any("peer_full_s" in r for r in results)
    if peer_cols:
        head += ["neutron full", "neutron +1 port"]
    rows = []
    for r in results:
        row = [str(r["ports"]), f"{r['rules']:,}", ms(r["bare_s"]), ms(r["full_s"]),
               f"{r['full_s'] / r['bare_s']:.2f}x", ms(r["noop_s"]),
               f"{ms(r['new_port_s'])} [{ms(r['new_port_build_s'])}]",
               f"{ms(r['new_member_s'])} [{ms(r['new_member_build_s'])}]",
               f"{ms(r['changed_rule_s'])} [{ms(r['changed_rule_build_s'])}]",
               str(r["drift_after"]),
               ms(r["new_port_e2e_s"]), ms(r["new_member_e2e_s"]), ms(r["changed_rule_e2e_s"])]
        if peer_cols:
            row += [ms(r.get("peer_full_s")), ms(r.get("peer_new_port_s"))]
        rows.append(row)
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(head)]
    print(" | ".join(h.ljust(wd) for h, wd in zip(head, widths, strict=True)))
    print("-|-".join("-" * wd for wd in widths))
    for row in rows:
        print(" | ".join(c.ljust(wd) for c, wd in zip(row, widths, strict=True)))
    print()
    for r in results:
        print(f"{r['ports']} ports, last changes: +port: {r['new_port_summary']}")
        print(f"{'':>{len(str(r['ports']))}}       +member: {r['new_member_summary']}")
        print(f"{'':>{len(str(r['ports']))}}       rule: {r['changed_rule_summary']}")
        print(f"{'':>{len(str(r['ports']))}}       fresh (one-shot) compile+render instead:"
              f" +port {ms(r['new_port_fresh_build_s'])}, +member"
              f" {ms(r['new_member_fresh_build_s'])}, rule {ms(r['changed_rule_fresh_build_s'])}")
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
