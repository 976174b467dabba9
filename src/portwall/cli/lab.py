"""``portwall lab ...``: sandboxes of network namespaces that enforce a topology for real."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from fnmatch import fnmatch
from typing import Any

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from portwall import backends
from portwall.cli.common import MAX_WIDTH, echo_json, fail, load_or_exit, plural, progress, wrap
from portwall.lab import state as st
from portwall.lab.check import CheckResult, run_checks
from portwall.lab.sandbox import LabReport, Sandbox
from portwall.lab.state import LabError

DEFAULT_NAME = "default"


def console() -> Console:
    """Colours only on a terminal (rich turns them off for pipes by itself); 100 columns
    at most, also in logs (rich's own default for a pipe is 80)."""
    cols = os.environ.get("COLUMNS")
    term = int(cols) if cols and cols.isdigit() else (
        os.get_terminal_size().columns if sys.stdout.isatty() else MAX_WIDTH)
    return Console(highlight=False, soft_wrap=False, width=min(MAX_WIDTH, term))


def pick_name(name: str | None) -> str:
    """--name, else ``default``: never "whichever is up", which could pick a sandbox that
    another user (or a test running in parallel) is using."""
    return name or DEFAULT_NAME


def print_report(report: LabReport, out: Console, chains: int = 12) -> None:
    """Interface changes, then the applier's report and (up to ``chains``) what it wrote."""
    for line in report.changes:
        out.print(Text(wrap(line, "      ", "  + ")))
    if report.policy is None:
        return
    out.print(Text(wrap(f"policy: {report.policy.summary}", "    ", "  ")))
    rep = report.policy.detail
    for line in rep.touched[:chains]:
        out.print(Text(wrap(line, "      ", "    ")))
    if len(rep.touched) > chains > 0:
        out.print(f"    ... and {len(rep.touched) - chains} more")


def report_json(report: LabReport) -> dict[str, Any]:
    pol = report.policy
    return {"changes": report.changes,
            "policy": None if pol is None else {
                "backend": pol.backend, "changed": pol.changed, "summary": pol.summary,
                "touched": pol.detail.touched}}


def check_json(results: Sequence[CheckResult]) -> list[dict[str, Any]]:
    return [{"from": r.expect.src, "to": r.expect.dst, "target": r.target,
             "target_vm": r.target_vm, "proto": r.expect.proto, "port": r.expect.port,
             "expected": r.expect.verdict, "observed": r.observed, "detail": r.detail,
             "seconds": round(r.seconds, 3), "ok": r.ok, "line": r.expect.line}
            for r in results]


def check_table(results: Sequence[CheckResult], title: str = "",
                leaks: set[int] | frozenset[int] = frozenset()) -> Table:
    """One row per expectation; rows in ``leaks`` (indexes) are marked LEAK even though
    they behave as the file expects: allowed, but only through a wide address pair."""
    t = Table(title=title or None, title_justify="left")
    for col in ("from", "to", "proto/port", "expected", "observed", "", "why"):
        t.add_column(col)
    for i, r in enumerate(results):
        e = r.expect
        to = e.dst if e.dst == r.target else f"{e.dst} ({r.target})"
        if r.target_vm and r.target_vm != e.dst:
            to += f" @{r.target_vm}"
        what = e.proto + (f"/{e.port}" if e.port is not None else "")
        verdict = "[green]OK[/green]" if r.ok else "[bold red]MISMATCH[/bold red]"
        if i in leaks:
            verdict += " [bold red]LEAK[/bold red]"
        obs = f"{r.observed} ({r.detail}, {r.seconds:.2f}s)"
        t.add_row(e.src, to, what, e.verdict, obs, verdict, getattr(r, "why", ""))
    return t


@click.group("lab")
def lab_group() -> None:
    """Sandboxes that enforce a topology with real packets.

    \b
    A sandbox is a "compute host" network namespace holding one bridge per network and one
    namespace per VM of the file's lab: section, each port a veth pair whose host end (the
    tap) is filtered by the portwall policy applied in the host namespace. Nothing is
    created in, or changed on, the machine's own network namespace.
    """
    require_root()


def require_root() -> None:
    if os.geteuid() != 0:
        fail("the lab creates network namespaces: run as root")


@lab_group.command("up")
@click.argument("file", type=click.Path(dir_okay=False, exists=True), required=False)
@click.option("--name", default=DEFAULT_NAME, show_default=True, help="Sandbox name.")
@click.option("--no-policy", is_flag=True, help="Wire the VMs but apply no policy.")
@click.option("--backend", type=click.Choice(backends.names()), default=backends.DEFAULT,
              show_default=True, help="Dataplane that enforces the policy.")
@click.option("--server", "server", default=None, metavar="URL",
              help="Build from a portwall server's resources instead of FILE (one VM per "
                   "port device_id; the file is kept beside the sandbox's state).")
@click.option("--token", envvar="PORTWALL_ADMIN_TOKEN", default=None,
              help="Admin token for --server (also PORTWALL_ADMIN_TOKEN).")
@click.option("--hosts", type=click.IntRange(min=0), default=0,
              help="Spread the VMs over N compute host namespaces joined by VXLAN (VMs "
                   "with `host:` stay where the file puts them; the rest round-robin).")
@click.option("--db", "db", default=None, metavar="URL",
              help="Multi-host: enforce with one `portwall agent --host H` per host "
                   "following this store (sqlite:///..., etcd://...); FILE's resources "
                   "are written into it when it is empty.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable result.")
def up_cmd(file: str | None, name: str, no_policy: bool, backend: str, server: str | None,
           token: str | None, hosts: int, db: str | None, as_json: bool) -> None:
    """Build a sandbox from FILE (or from a server's resources) and apply its policy."""
    from portwall.lab.multihost import MultiSandbox, is_multihost

    if (file is None) == (server is None):
        fail("give a topology FILE or --server URL (one of them)")
    if server is not None:
        file = _file_from_server(server, token, name)
    assert file is not None
    topo = load_or_exit(file, as_json)
    multi = is_multihost(topo, hosts)
    if db is not None and not multi:
        fail("--db (agents per host) needs a multi-host sandbox: --hosts N or `host:` on VMs")
    out = console()
    box: Sandbox
    try:
        with progress(f"building sandbox {name}: {len(topo.lab.vms)} VMs, "
                      f"{len(topo.model.ports)} ports", enabled=not as_json) as step:
            if multi:
                box, report = MultiSandbox.up_hosts(
                    topo, name, hosts=hosts, apply=not no_policy, backend=backend, store=db,
                    seed=server is None, on_step=step)
            else:
                box, report = Sandbox.up(topo, name, apply=not no_policy, backend=backend,
                                         on_step=step)
    except LabError as e:
        fail(str(e))
    if as_json:
        echo_json({"name": box.name, "host_netns": box.host_ns, "backend": box.state.backend,
                   "hosts": {h.name: h.netns for h in box.state.hosts.values()},
                   **report_json(report)})
        return
    where = (f"{len(box.state.hosts)} hosts ({', '.join(box.state.hosts)})"
             + (f", agents following {db}" if db else "")) if multi else \
        f"host namespace {box.host_ns}"
    out.print(f"sandbox [bold]{box.name}[/bold] is up on {box.state.backend} ({where})")
    print_report(report, out, chains=0)


def _temporary(topo: Any, backend: str, hosts: int, step: Any) -> Sandbox:
    from portwall.lab.multihost import MultiSandbox, is_multihost

    name = f"check-{st.short_token()}"
    if is_multihost(topo, hosts):
        return MultiSandbox.up_hosts(topo, name, hosts=hosts, backend=backend, on_step=step)[0]
    return Sandbox.up(topo, name, backend=backend, on_step=step)[0]


def _file_from_server(url: str, token: str | None, name: str) -> str:
    """The server's resources as a topology file with a lab section, written beside the
    sandbox's state so `lab apply`, `lab check` and `lab down` find it later."""
    import yaml

    from portwall.cli.io import _client, export_topology, lab_from_server

    doc = export_topology(_client(url, token))
    doc["lab"] = lab_from_server(doc)
    path = st.state_dir() / f"{st.check_name(name)}.server.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"# exported from {url} by `portwall lab up --server`\n"
                    + yaml.safe_dump(doc, sort_keys=False))
    return str(path)


@lab_group.command("apply")
@click.argument("file", type=click.Path(dir_okay=False, exists=True))
@click.option("--name", default=None, help=f"Sandbox name (default: {DEFAULT_NAME}).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable result.")
def apply_cmd(file: str, name: str | None, as_json: bool) -> None:
    """Re-apply FILE to a running sandbox: only changed ports, addresses and chains."""
    topo = load_or_exit(file, as_json)
    try:
        box = Sandbox.open(pick_name(name))
        with progress(f"applying {file} to sandbox {box.name}", enabled=not as_json):
            report = box.apply(topo)
    except LabError as e:
        fail(str(e))
    if as_json:
        echo_json({"name": box.name, **report_json(report)})
        return
    out = console()
    if not report.changes and report.policy is not None and not report.policy.changed:
        out.print(f"sandbox {box.name}: nothing to change")
        return
    out.print(f"sandbox {box.name}: applied {file}")
    print_report(report, out)


@lab_group.command("exec", context_settings={"ignore_unknown_options": True,
                                             "allow_interspersed_args": False})
@click.option("--name", default=None, help=f"Sandbox name (default: {DEFAULT_NAME}).")
@click.argument("vm")
@click.argument("cmd", nargs=-1, required=True, type=click.UNPROCESSED)
def exec_cmd(name: str | None, vm: str, cmd: tuple[str, ...]) -> None:
    """Run CMD inside VM's namespace: portwall lab exec VM -- CMD ARGS...

    The command's exit code is passed through.
    """
    argv = list(cmd[1:] if cmd and cmd[0] == "--" else cmd)
    if not argv:
        fail("no command given (portwall lab exec VM -- CMD ...)")
    try:
        box = Sandbox.open(pick_name(name))
        full = box.exec_argv(vm, argv)
    except LabError as e:
        fail(str(e))
    sys.exit(subprocess.call(full))


@lab_group.command("status")
@click.argument("names", nargs=-1, metavar="[NAME]...")
@click.option("--name", "opt_name", default=None, help="Only this sandbox (same as NAME).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status_cmd(names: tuple[str, ...], opt_name: str | None, as_json: bool) -> None:
    """List sandboxes: namespaces, ports (name, MAC, IPs) and VMs.

    NAME (one or more; shell patterns such as 'demo-*' allowed) shows only those sandboxes;
    without it, every sandbox on the machine.
    """
    wanted = [*names, *([opt_name] if opt_name else [])]
    try:
        known = st.names()
        picked = [n for n in known if not wanted or any(fnmatch(n, w) for w in wanted)]
        missing = [w for w in wanted if not any(fnmatch(n, w) for n in known)]
        if missing and not picked:
            raise LabError(f"no sandbox matches {', '.join(missing)} (up: "
                           f"{', '.join(known) or 'none'})")
        boxes = [Sandbox.open(n) for n in picked]
    except LabError as e:
        fail(str(e))
    if as_json:
        click.echo(json.dumps([b.status() for b in boxes], indent=1))
        return
    out = console()
    if not boxes:
        out.print("no sandbox is up")
        return
    for b in boxes:
        s = b.status()
        out.print(f"[bold]{s['name']}[/bold]  {s['topology']}")
        out.print(f"  host namespace {s['host_netns']} ({'up' if s['alive'] else 'MISSING'}),"
                  f" backend {s.get('backend', '?')}, bridges: {', '.join(s['bridges']) or '-'}")
        for h in s.get("hosts", {}).values():
            agent = "" if not h.get("agent_pid") else (
                f", agent pid {h['agent_pid']} " + ("running" if h["agent_alive"] else "DEAD"))
            out.print(f"  host {h['name']}: namespace {h['netns']} "
                      f"({'up' if h['alive'] else 'MISSING'}), underlay {h['underlay_ip']}"
                      f"{agent}")
        t = Table(show_edge=False, pad_edge=False, box=None)
        multi = bool(s.get("hosts"))
        for col in ("VM", *(["host"] if multi else []), "routing", "if", "port", "addresses",
                    "MAC", "tap"):
            t.add_column(col, overflow="fold")
        for vm in s["vms"].values():
            routing = [*(["forwards"] if vm["forward"] else []),
                       *([f"gw {vm['gateway']}"] if vm["gateway"] else []),
                       *(f"{r['destination']} via {r['via']}" for r in vm["routes"])]
            label = vm["name"] + ("" if vm["alive"] else " (MISSING)")
            for i, p in enumerate(vm["ports"]):
                first = i == 0
                t.add_row(label if first else "",
                          *([vm["host"] if first else ""] if multi else []),
                          ", ".join(routing) if first else "",
                          p["ifname"], p["name"], " ".join(p["addresses"]), p["mac"],
                          p["device"])
        out.print(t)


@lab_group.command("flows")
@click.option("--name", default=None, help=f"Sandbox name (default: {DEFAULT_NAME}).")
@click.option("--hit", is_flag=True, help="Only flows that matched a packet.")
@click.option("--json", "as_json", is_flag=True,
              help="{flows: [...], conntrack: [...]} as annotated lines.")
def flows_cmd(name: str | None, hit: bool, as_json: bool) -> None:
    """OVS sandboxes: flow counters (ovs-ofctl dump-flows) with the portwall resource behind
    each cookie, then the datapath's conntrack entries (like conntrack -L)."""
    from portwall import backends
    from portwall.backends.ovs import report as ovs_report
    from portwall.ir import compile_plan

    try:
        box = Sandbox.open(pick_name(name))
    except LabError as e:
        fail(str(e))
    b = backends.get(box.state.backend)
    if b.bridge != "ovs":
        fail(f"sandbox {box.name} runs the {b.name} backend: flows exist only on ovs")
    plan = compile_plan(load_or_exit(box.state.topology).model)
    with b.applier(box.host_ns) as applier:
        ruleset = b.render(plan)
        flows = ovs_report.flow_lines(applier, ruleset, all_flows=not hit)  # type: ignore[arg-type]
        conns = ovs_report.conntrack_lines(applier, plan)  # type: ignore[arg-type]
    if as_json:
        echo_json({"name": box.name, "host_netns": box.host_ns, "flows": list(flows),
                   "conntrack": list(conns)})
        return
    click.echo(f"# ovs-ofctl dump-flows br-int (sandbox {box.name}, {box.host_ns})")
    for line in flows:
        click.echo(line)
    click.echo("# conntrack (ovs-appctl dpctl/dump-conntrack)")
    for line in conns:
        click.echo(line)


@lab_group.command("down")
@click.option("--name", default=None, help=f"Sandbox name (default: {DEFAULT_NAME}).")
@click.option("--all", "all_", is_flag=True, help="Remove every sandbox.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable result.")
def down_cmd(name: str | None, all_: bool, as_json: bool) -> None:
    """Remove a sandbox: every namespace it created, even after a crash mid-way."""
    names = st.names() if all_ else [pick_name(name)]
    rc = 0
    done: list[dict[str, Any]] = []
    for n in names:
        try:
            removed = Sandbox.open(n).down()
        except LabError as e:
            done.append({"name": n, "error": str(e)})
            if not as_json:
                click.secho(f"error: {e}", fg="red", err=True)
            rc = 1
            continue
        done.append({"name": n, "removed": removed})
        if not as_json:
            click.echo(f"sandbox {n} removed ({plural(len(removed), 'namespace')})")
    if as_json:
        echo_json(done)
    sys.exit(rc)


@lab_group.command("check")
@click.argument("file", type=click.Path(dir_okay=False, exists=True))
@click.option("--name", default=None,
              help=f"Sandbox to test (default: {DEFAULT_NAME}; if not up, a temporary one).")
@click.option("--timeout", default=0.8, show_default=True, help="Seconds per probe.")
@click.option("--backend", type=click.Choice(backends.names()), default=backends.DEFAULT,
              show_default=True, help="Dataplane of the temporary sandbox (if one is built).")
@click.option("--hosts", type=click.IntRange(min=0), default=0,
              help="The temporary sandbox spreads its VMs over N hosts (VXLAN).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable results.")
def check_cmd(file: str, name: str | None, timeout: float, backend: str, hosts: int,
              as_json: bool) -> None:
    """Test FILE's expect: lines with real traffic; exit 1 on any mismatch.

    Uses the named sandbox when it is up; otherwise builds a temporary one from FILE and
    removes it afterwards.
    """
    topo = load_or_exit(file, as_json)
    if not topo.lab.expect:
        fail(f"{file} has no lab.expect lines")
    existing = pick_name(name) if pick_name(name) in st.names() else None
    out = console()
    try:
        if existing:
            box = Sandbox.open(existing)
            results = run_checks(box, topo.lab.expect, timeout, topo)
        else:
            with progress(f"building a temporary sandbox for {len(topo.lab.vms)} VMs",
                          enabled=not as_json) as step:
                tmp = _temporary(topo, backend, hosts, step)
            if not as_json:
                out.print(f"temporary sandbox {tmp.name} on {tmp.state.backend} "
                          "(removed afterwards)")
            try:
                results = run_checks(tmp, topo.lab.expect, timeout, topo)
            finally:
                tmp.down()
    except LabError as e:
        fail(str(e))
    bad = sum(not r.ok for r in results)
    if as_json:
        echo_json({"file": file, "results": check_json(results), "mismatches": bad})
        sys.exit(1 if bad else 0)
    out.print(check_table(results, f"{file}: expectations with real packets"))
    out.print(f"{len(results) - bad}/{len(results)} as expected"
              + (f", [bold red]{bad} MISMATCH[/bold red]" if bad else ""))
    sys.exit(1 if bad else 0)
