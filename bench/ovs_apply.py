#!/usr/bin/env python3
"""Benchmark the Open vSwitch backend on a private ovs-vswitchd (userspace datapath).

    .venv/bin/python bench/ovs_apply.py [--sizes 100,1000] [--reps 20]

For each size N (the shared workload of bench/workload.py: every port in sg-all, which has a
remote-group rule on itself, and in one of ten sg-app groups; an address pair on every 10th
port) it builds a namespace with its own ovsdb-server + ovs-vswitchd and N veth ports on the
integration bridge, then prints:

* flows rendered (and how many are remote-group member flows / conjunctions), render time,
  full sync (a fresh applier: a flow dump compared with the rendered flows + one bundle);
* with N ports present, for (a) one new port, (b) one new remote-group member (a port on
  another host joins sg-all), (c) one changed rule: model change -> flows in the bridge
  (incremental compile + render + resolving port numbers + diff by cookie + the bundle
  committed by the switch; p50 and p99 over the repetitions), split into compute (compile +
  render) and apply (resolve + diff + bundle), and the flows touched (added + deleted).
  The new ports' devices are on the bridge, and known to the applier, before the clock
  runs: the OVSDB side of plugging a port (and the applier's update of its port numbers
  when a device appears, ~1 ms at 1,000 ports) is not in the figures.
  Wall-clock figures depend on what else the machine runs; the CPU columns much less:
  the applying thread's CPU time per change (compile to commit) and ovs-vswitchd's CPU time
  per change (its /proc counters over the repetitions less its idle rate, a mean: they tick
  in 10 ms).

As the agent does after its full sync (agent/runner.py), the long-lived objects are frozen
out of the cyclic GC (``gc.freeze()``) before the changes are measured. The transport is
the persistent OpenFlow connection unless ``PORTWALL_OVS_TRANSPORT=ofctl`` (one ovs-ofctl
process per bundle, the fallback) is set; ``--transport`` sets it for one run.

Everything runs in a namespace made here and removed at the end (daemons stopped).
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import workload

from portwall.backends.ovs.apply import OvsApplier
from portwall.backends.ovs.ovsdb import BRIDGE, Ovsdb, run_dir
from portwall.backends.ovs.render import OvsRenderer
from portwall.ir import PlanCompiler, compile_plan
from portwall.ir.compile import tap_name
from portwall.lab import netns, ovs_host


def p99(xs: list[float]) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, round(0.99 * (len(s) - 1)))]


def switch_cpu(ns: str) -> float:
    """CPU milliseconds ovs-vswitchd has used so far (user + system, from /proc)."""
    pid = (run_dir(ns) / "ovs-vswitchd.pid").read_text().strip()
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * 1000 / os.sysconf("SC_CLK_TCK")


def add_devices(ns: str, devices: list[str]) -> None:
    """The ports' devices on the bridge, in one OVSDB transaction: as patch ports (an
    OpenFlow port number each, nothing for the userspace datapath to poll: a thousand
    polled veths would measure the datapath's main loop, not portwall). Their peers are
    not created: a second bridge of a thousand peer ports is no port a real host has, and
    ovs-vswitchd's CPU per change grows with the ports of all its bridges (it refreshes
    per-port translation state after flow-table changes): with the peers, ~1.5-2.5 ms
    more per change at 1,000 ports."""
    with Ovsdb(ns, timeout=600) as db:  # ovs-vswitchd confirms a thousand ports slowly
        with db.api.transaction(check_error=True) as txn:
            for dev in devices:
                txn.add(db.api.add_port(BRIDGE, dev, type="patch",
                                        options={"peer": f"peer-{dev}"}))
        deadline = time.monotonic() + 120
        while len(set(devices) - set(db.ofports())) and time.monotonic() < deadline:
            time.sleep(0.1)


def bench_size(n: int, reps: int) -> dict[str, Any]:
    w = workload.Workload(n)
    ns = netns.unique_name("pwbench-ovs")
    netns.create(ns)
    try:
        ovs_host.start(ns)
        plan = compile_plan(w.m, w.host)
        # devices for the N ports and for the ports the "+1 port" runs will add
        future = [w.next + i for i in range(reps)]
        add_devices(ns, [p.device for p in plan.ports])
        t = time.perf_counter()
        rs = OvsRenderer().render(plan)
        render_s = time.perf_counter() - t
        counts = rs.counts()
        with OvsApplier(ns) as a:
            t = time.perf_counter()
            full = a.apply(rs, plan)
            full_s = time.perf_counter() - t
            print(f"{n} ports: full sync phases {full.timings}", file=sys.stderr)
        on_bridge = len([ln for ln in a.dump().splitlines() if "cookie=" in ln])
        comp, rend = PlanCompiler(w.host), OvsRenderer()
        applier = OvsApplier(ns)
        applier.apply(rend.render(comp.compile(w.m)), None)  # warm: knows the bridge
        # pre-create the devices of the ports to come (ids are deterministic)
        ids_before = set(w.m.ports)
        probe = workload.Workload(n)
        new_ids = [probe.add_port() for _ in future]
        assert not set(new_ids) & ids_before
        add_devices(ns, [tap_name(pid) for pid in new_ids])
        # the applier's own OVSDB view has the new devices' port numbers before the clock
        # runs (it lags the connection that added them; else one measured change pays the
        # port-number update a device's arrival costs)
        while not {tap_name(pid) for pid in new_ids} <= set(applier.db.ofports()):
            time.sleep(0.05)
        applier.apply(rend.render(comp.compile(w.m)), None)  # the new devices' port numbers
        res: dict[str, Any] = {"n": n, "flows": counts["flows"], "member_flows": counts["member_flows"],
                               "conjunctions": counts["conjunctions"], "on_bridge": on_bridge,
                               "render_s": render_s, "full_s": full_s,
                               "transport": type(applier.transport).__name__}
        gc.collect()
        gc.freeze()  # what the agent does after its full sync
        # ovs-vswitchd's own background CPU (per second, idle), subtracted from the changes'
        sw0, w0 = switch_cpu(ns), time.perf_counter()
        time.sleep(3)
        idle = (switch_cpu(ns) - sw0) / (time.perf_counter() - w0)
        res["switch_idle"] = idle
        cases = {"+1 port": lambda i: w.add_port(),
                 "+1 member": lambda i: w.add_port(host="elsewhere"),
                 "1 changed rule": lambda i: w.change_rule(i)}
        for name, change in cases.items():
            total, compute, apply_ms, touched, owners, cpu = [], [], [], [], [], []
            sw0, w0 = switch_cpu(ns), time.perf_counter()
            for i in range(reps):
                change(i)
                c0 = time.thread_time()
                t0 = time.perf_counter()
                new = rend.render(comp.compile(w.m))
                t1 = time.perf_counter()
                rep = applier.apply(new, None)
                t2 = time.perf_counter()
                cpu.append((time.thread_time() - c0) * 1000)
                total.append((t2 - t0) * 1000)
                compute.append((t1 - t0) * 1000)
                apply_ms.append((t2 - t1) * 1000)
                if os.environ.get("OVSB_DEBUG"):
                    print(name, {k: round(v * 1000, 2) for k, v in rep.timings.items()},
                          round(rep.seconds * 1000, 2), round(apply_ms[-1], 2), file=sys.stderr)
                touched.append(rep.changes.get("flows_added", 0) + rep.changes.get("flows_deleted", 0))
                owners.append(rep.changes.get("owners_changed", 0))
            res[name] = {"total_med": statistics.median(total), "total_p99": p99(total),
                         "compute_med": statistics.median(compute), "compute_p99": p99(compute),
                         "apply_med": statistics.median(apply_ms), "apply_p99": p99(apply_ms),
                         "touched": statistics.median(touched),
                         "owners": statistics.median(owners),
                         "cpu_med": statistics.median(cpu), "cpu_p99": p99(cpu),
                         "switch_cpu": (switch_cpu(ns) - sw0
                                        - idle * (time.perf_counter() - w0)) / reps}
        gc.unfreeze()
        # the incremental result equals a fresh render, and the bridge has no drift
        assert not applier.drift(OvsRenderer().render(compile_plan(w.m, w.host)))
        applier.close()
        return res
    finally:
        ovs_host.stop(ns)
        netns.delete(ns)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="100,1000")
    ap.add_argument("--reps", type=int, default=100)
    ap.add_argument("--transport", choices=("openflow", "ofctl"), default=None)
    args = ap.parse_args()
    if args.transport:
        os.environ["PORTWALL_OVS_TRANSPORT"] = args.transport
    rows = [bench_size(int(s), args.reps) for s in args.sizes.split(",")]
    load = os.getloadavg()
    print(f"transport: {rows[0]['transport']}; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print()
    print("| ports | flows | member flows | conj ids | render | full sync (dump + diff + bundle) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['n']} | {r['flows']} ({r['flows'] / r['n']:.0f}/port) | {r['member_flows']} "
              f"| {r['conjunctions']} | {r['render_s'] * 1000:.0f} ms | {r['full_s'] * 1000:.0f} ms |")
    print()
    idle = ", ".join(f"{r['switch_idle']:.1f} ms/s at {r['n']} ports" for r in rows)
    print(f"ovs-vswitchd idle CPU: {idle}")
    print(f"single changes ({args.reps} each), ms: model change -> flows in the bridge "
          "= compute (compile + render) + apply (resolve + diff + bundle)")
    print("| ports | change | change->bridge p50 | p99 | compute p50 | p99 | apply p50 | p99 "
          "| portwall CPU p50 | p99 | ovs-vswitchd CPU mean | owners | flows touched |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        for name in ("+1 port", "+1 member", "1 changed rule"):
            c = r[name]
            print(f"| {r['n']} | {name} | {c['total_med']:.1f} | {c['total_p99']:.1f} | "
                  f"{c['compute_med']:.1f} | {c['compute_p99']:.1f} | "
                  f"{c['apply_med']:.1f} | {c['apply_p99']:.1f} | {c['cpu_med']:.1f} | "
                  f"{c['cpu_p99']:.1f} | {c['switch_cpu']:.1f} | {c['owners']:.0f} | "
                  f"{c['touched']:.0f} |")


if __name__ == "__main__":
    main()
