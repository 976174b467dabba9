"""``portwall demo``: the seed scenarios with real packets, in a throw-away sandbox.

Part 1 (seed 000): vm0 routes between two subnets; its anti-spoof check drops what it
forwards until its ports get CIDR allowed-address-pairs. Part 2 (seed 001): a NAT server
carrying a 0.0.0.0/0 address pair sits in remote group ``ssh``, so ``proxy``'s "port 80 from
group ssh" rule admits the whole internet. Every table is measured traffic, not a model's
prediction; the explanation underneath comes from ``portwall.analyze.trace`` over the same
plan the kernel enforces. Sandboxes are always removed, also on failure or Ctrl-C.
"""

from __future__ import annotations

import io
import json
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.text import Text

from portwall.cli.common import fail, wrap
from portwall.cli.lab import check_json, check_table, console, require_root
from portwall.ir import compile_plan
from portwall.lab import state as st
from portwall.lab.check import CheckResult, run_checks
from portwall.lab.sandbox import Sandbox, sandbox
from portwall.lab.state import LabError
from portwall.model.errors import PortwallError
from portwall.topology import Expect, Topology, load_topology


def _examples_dir(given: str | None) -> Path:
    if given:
        return Path(given)
    for base in (Path.cwd(), Path(__file__).resolve().parents[3]):
        if (base / "examples" / "seed000-router-vm.yaml").exists():
            return base / "examples"
    fail("cannot find examples/seed000-router-vm.yaml: run from the repository or pass "
         "--examples DIR")


def _explain(out: Console, topo: Topology, src: str, dst: str, proto: str,
             dport: int | None = None, hint: bool = True) -> None:
    """Which rule decides src -> dst, from the evaluator (skipped if trace is absent)."""
    try:
        from portwall.analyze.trace import trace
    except ImportError:
        return
    try:
        res = trace(topo, compile_plan(topo.model), src, dst, proto, dport=dport)
    except (ValueError, PortwallError) as e:
        out.print(f"  [dim](trace unavailable: {e})[/dim]")
        return
    colour = "green" if res.allowed else "red"
    what = proto + (f"/{dport}" if dport else "")
    out.print(f"  why {src} -> {dst} {what} is [{colour}]{res.verdict}[/{colour}] "
              "(portwall trace):")
    for s in res.steps:
        if s.outcome == "info" and s.stage not in ("route", "forward"):
            continue
        mark, style = {"allow": ("✓", "green"), "deny": ("✗", "red")}.get(s.outcome, ("·", ""))
        pad = " " * 17
        line = Text(f"    {mark} ", style=style)
        line.append(f"{s.stage:<10} ", style="bold")
        line.append(wrap(s.detail, pad, pad)[len(pad):])
        out.print(line)
    if res.hint and hint:
        out.print(Text(wrap(f"hint: {res.hint}", "          ", "    "), style="yellow"))


def _announce(out: Console, box: Sandbox) -> None:
    out.print(f"sandbox {box.name}: host namespace {box.host_ns}, "
              f"{len(box.state.vms)} VM namespaces (removed at the end)\n")


def _table(out: Console, box: Sandbox, expects: Sequence[Expect], title: str) -> list[CheckResult]:
    results = run_checks(box, expects)
    out.print(check_table(results, title))
    return results


def _fixed_seed000(examples: Path, broken: Topology) -> Topology:
    """The fixed file when present; otherwise the same fix made through the model API."""
    fixed = examples / "seed000-router-vm-fixed.yaml"
    if fixed.exists():
        return load_topology(fixed)
    topo = load_topology(broken.path)
    m = topo.model
    m.update_port("vm0-net1", {"allowed_address_pairs": [{"ip_address": "10.0.2.0/24"}]})
    m.update_port("vm0-net2", {"allowed_address_pairs": [{"ip_address": "10.0.1.0/24"}]})
    topo.lab.expect = [
        Expect(e.src, e.dst, e.proto, e.port,
               "allow" if {e.src, e.dst} == {"serverX", "serverY"} else e.verdict)
        for e in topo.lab.expect]
    return topo


#: What the demo measured, for ``--json``: part -> phase -> results.
RECORD: dict[str, dict[str, Any]] = {}


def _part1(out: Console, examples: Path) -> bool:
    out.rule("[bold]Seed 000[/bold]: a VM that routes between two tenant subnets")
    topo = load_topology(examples / "seed000-router-vm.yaml")
    out.print("vm0 (10.0.1.1 / 10.0.2.1, ip_forward on) joins serverX (10.0.1.100) and serverY "
              "(10.0.2.101).\nIts ports have no allowed-address-pairs yet.\n")
    with sandbox(topo, f"demo-{st.short_token()}") as box:
        _announce(out, box)
        r1 = _table(out, box, topo.lab.expect, "before: real packets")
        _explain(out, topo, "serverX", "serverY", "icmp")
        fixed = _fixed_seed000(examples, topo)
        out.print("\n[bold]Fix[/bold]: allowed_address_pairs on vm0's ports "
                  "(10.0.2.0/24 on vm0-net1, 10.0.1.0/24 on vm0-net2)")
        report = box.apply(fixed)
        if report.policy is not None:
            out.print(f"  applied: {report.policy.summary}")
        r2 = _table(out, box, fixed.lab.expect, "after: real packets")
        _explain(out, fixed, "serverX", "serverY", "icmp")
    blocked = any(r.expect.dst == "serverY" and r.observed == "deny" for r in r1)
    RECORD["seed000"] = {"before": check_json(r1), "after": check_json(r2),
                         "blocked_before_fix": blocked}
    return blocked and all(r.ok for r in r1 + r2)


def _leaks(topo: Topology, results: Sequence[CheckResult]) -> set[int]:
    """Indexes of allowed results that trace explains by a wide address pair in a remote
    group (the seed 001 pitfall): found by the evaluator, not listed by hand."""
    try:
        from portwall.analyze.trace import Tracer
    except ImportError:
        return set()
    tracer = Tracer.for_topology(topo, compile_plan(topo.model))
    out = set()
    for i, r in enumerate(results):
        e = r.expect
        if r.observed != "allow":
            continue
        try:
            res = tracer.trace(e.src, e.dst, e.proto, dport=e.port)
        except (ValueError, PortwallError):
            continue
        if res.allowed and res.hint_priority == 2:
            out.add(i)
    return out


def _part2(out: Console, examples: Path) -> bool:
    out.rule("[bold]Seed 001[/bold]: the remote-group leak through a 0.0.0.0/0 address pair")
    topo = load_topology(examples / "seed001-vip-nat.yaml")
    out.print("The NAT server's port (group ssh) carries the pair 0.0.0.0/0; group proxy allows\n"
              "port 80 from remote group ssh, so its address set holds 0.0.0.0/1 + 128.0.0.0/1.\n")
    with sandbox(topo, f"demo-{st.short_token()}") as box:
        _announce(out, box)
        results = run_checks(box, topo.lab.expect)
        leaks = _leaks(topo, results)
        out.print(check_table(results, "before: real packets", leaks))
        out.print(f"[bold red]{len(leaks)} LEAK[/bold red] rows: allowed (as Neutron allows "
                  "them), but only through\nthe 0.0.0.0/0 pair in remote group ssh "
                  "(found by portwall trace, not listed by hand).")
        leak = next((results[i].expect for i in sorted(leaks)
                     if results[i].expect.src == "outside"), None)
        if leak is not None:
            _explain(out, topo, leak.src, leak.dst, leak.proto, leak.port)
        fixed_path = examples / "seed001-vip-nat-fixed.yaml"
        if not fixed_path.exists():
            out.print(f"[dim]({fixed_path} is missing: no fix to show)[/dim]")
            return all(r.ok for r in results) and bool(leaks)
        fixed = load_topology(fixed_path)
        out.print("\n[bold]Fix[/bold] (the article's advice; seed001-vip-nat-fixed.yaml): the NAT "
                  "server leaves\ngroup ssh for a group of its own, `nat`, that no rule uses as a "
                  "remote group;\nssh holds a real admin machine (admin, 10.1.1.40).")
        report = box.apply(fixed)
        for line in report.changes:
            out.print(Text(wrap(line, "      ", "  + ")))
        if report.policy is not None:
            out.print(Text(wrap(f"applied: {report.policy.summary}", "    ", "  ")))
        after = run_checks(box, fixed.lab.expect)
        still = _leaks(fixed, after)
        out.print(check_table(after, "after: real packets", still))
        was = {_key(results[i].expect) for i in leaks}
        closed = [r for r in after if _key(r.expect) in was and r.observed == "deny"]
        colour = "green" if len(closed) == len(was) and not still else "red"
        out.print(f"[bold {colour}]leak closed[/bold {colour}]: {len(closed)} of {len(was)} "
                  "LEAK paths are now denied by the kernel.")
        _explain(out, fixed, "outside", "proxy-a", "tcp", 80, hint=False)
    out.print("\nKeep servers with 0.0.0.0/0 pairs out of groups used as remote groups\n"
              "(`portwall audit` flags it: PW001).")
    RECORD["seed001"] = {
        "before": [{**row, "leak": i in leaks} for i, row in enumerate(check_json(results))],
        "after": check_json(after), "leaks_before": len(was), "leaks_closed": len(closed)}
    return (all(r.ok for r in results + after) and bool(leaks) and not still
            and len(closed) == len(was))


def _key(e: Expect) -> tuple[str, str, str, int | None]:
    return e.src, e.dst, e.proto, e.port


_MAIN_PID = os.getpid()


def _interrupt(signum: int, frame: object) -> None:
    if os.getpid() != _MAIN_PID:  # a forked helper (pyroute2) being stopped: just go
        os._exit(143)
    raise KeyboardInterrupt


@click.command("demo")
@click.option("--examples", default=None, metavar="DIR",
              help="Directory holding seed000-router-vm.yaml (default: ./examples).")
@click.option("--json", "as_json", is_flag=True,
              help="Print the measured results as JSON instead of tables.")
def demo_cmd(examples: str | None, as_json: bool) -> None:
    """Show the seed scenarios enforced with real packets (needs root; never touches the
    machine's own network namespace). Exit 1 if any packet did not behave as shown."""
    require_root()
    out = Console(file=io.StringIO()) if as_json else console()
    ex = _examples_dir(examples)
    signal.signal(signal.SIGTERM, _interrupt)  # a killed demo still removes its sandboxes
    try:
        ok1 = _part1(out, ex)
        out.print()
        ok2 = _part2(out, ex)
    except (LabError, PortwallError) as e:
        fail(str(e))
    except KeyboardInterrupt:
        fail("interrupted (sandboxes removed)", 130)
    if as_json:
        click.echo(json.dumps({**RECORD, "ok": ok1 and ok2}, indent=2))
        sys.exit(0 if ok1 and ok2 else 1)
    out.rule()
    if ok1 and ok2:
        out.print("[bold green]demo: every packet behaved as shown[/bold green]")
    else:
        out.print("[bold red]demo: some packets did not behave as expected[/bold red]")
    sys.exit(0 if ok1 and ok2 else 1)
