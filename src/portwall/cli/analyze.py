"""``portwall trace`` and ``portwall audit``: explain one verdict, or review a whole policy."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING

import click

from portwall.cli.common import fail, load_or_exit, plural, progress, wrap
from portwall.ir import compile_plan

SEVERITY_CHOICES = ("info", "low", "medium", "high", "critical")

if TYPE_CHECKING:
    from portwall.analyze.audit import Finding, MatrixRow


@click.command("trace")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--from", "src", required=True, metavar="A",
              help="Source: VM name (lab section), port name/id, or IP address.")
@click.option("--to", "dst", required=True, metavar="B",
              help="Destination: VM name, port name/id, or IP address.")
@click.option("--proto", default="icmp", show_default=True,
              help="tcp, udp, icmp, another protocol name, or a number.")
@click.option("--sport", type=click.IntRange(1, 65535), default=None,
              help="Source port (tcp/udp; default 40000).")
@click.option("--dport", type=click.IntRange(1, 65535), default=None, help="Destination port.")
@click.option("--icmp-type", type=click.IntRange(0, 255), default=None,
              help="ICMP type (default echo request).")
@click.option("--icmp-code", type=click.IntRange(0, 255), default=None)
@click.option("--state", type=click.Choice(["new", "established"]), default="new",
              show_default=True, help="Conntrack state of the packet.")
@click.option("-6", "--ipv6", "v6", is_flag=True, help="Use IPv6 addresses of VMs and ports.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (stable schema).")
@click.option("--backend", default=None,
              help="Also show the backend's own path (ovs: tables and flows, cookie -> rule).")
def trace_cmd(file: str, src: str, dst: str, proto: str, sport: int | None, dport: int | None,
              icmp_type: int | None, icmp_code: int | None, state: str, v6: bool,
              as_json: bool, backend: str | None) -> None:
    """Explain why a packet from A to B is allowed or denied.

    Walks the path hop by hop (through VMs that forward and Neutron routers) and, on each
    hop, the sender's anti-spoof check and egress rules and the receiver's ingress rules,
    naming the rule, group, remote-group member and port responsible. Exit status 0 when
    the packet is allowed, 1 when it is denied, 3 when the path leaves what is modelled
    (e.g. through a gateway no router models) so no verdict can be given.

    \b
    Example:
      portwall trace examples/seed000-router-vm.yaml --from serverX --to serverY --proto icmp
    """
    from portwall.analyze.trace import TraceError, Tracer

    topo = load_or_exit(file, as_json)
    plan = compile_plan(topo.model)
    try:
        result = Tracer.for_topology(topo, plan).trace(
            src, dst, proto, sport=sport, dport=dport, state=state, icmp_type=icmp_type,
            icmp_code=icmp_code, family=6 if v6 else None)
    except (TraceError, ValueError) as e:
        fail(str(e))
    flows = _backend_path(backend, plan, result) if backend else None
    if as_json:
        doc = result.to_json()
        if flows is not None:
            doc["flows"] = flows
        click.echo(json.dumps(doc, indent=2))
    else:
        _print_trace(result)
        for line in flows or []:
            click.echo(line)
    sys.exit({"allow": 0, "deny": 1}.get(result.verdict, 3))


def _backend_path(name: str, plan: object, result: object) -> list[str]:
    """The flows each hop meets on an OVS bridge (compare with ovs-appctl ofproto/trace)."""
    from portwall import backends
    from portwall.analyze.trace import TraceResult
    from portwall.ir.types import HostPlan

    assert isinstance(result, TraceResult) and isinstance(plan, HostPlan)
    try:
        b = backends.get(name)
    except backends.UnknownBackend as e:
        fail(str(e))
    if b.bridge != "ovs":
        return [f"(backend {b.name}: no per-flow path to show)"]
    from portwall.backends.ovs.sim import Simulator, explain, simulate_hop

    ruleset = b.render(plan)
    sim = Simulator(ruleset)  # type: ignore[arg-type]
    out = []
    for hop in result.hops:
        eg, ing = hop.result.egress, hop.result.ingress
        src = eg.port if eg is not None else None
        dst = ing.port if ing is not None else None
        out.append(f"OpenFlow path {hop.sender} -> {hop.receiver} (bridge br-int):")
        res = simulate_hop(sim, hop.result.packet, src, dst)
        out += ["  " + ln for ln in explain(ruleset, res, dst)]  # type: ignore[arg-type]
    return out


def _print_trace(result: object) -> None:
    """One line per step, wrapped at word boundaries under its text (100 columns)."""
    from rich.console import Console
    from rich.text import Text

    from portwall.analyze.trace import TraceResult

    assert isinstance(result, TraceResult)
    con = Console(highlight=False, soft_wrap=True)
    colour = {"allow": "green", "deny": "red"}.get(result.verdict, "yellow")
    con.print(Text(wrap(f"{result.verdict.upper()}: {result.packet.describe()}", "  "),
                   style=f"bold {colour}"))
    marks = {"allow": ("✓", "green"), "deny": ("✗", "red"), "info": ("·", "dim")}
    pad = " " * 15
    header = result.packet.describe()
    for s in result.steps:
        if s.stage == "verdict" or (s.stage == "resolve" and s.detail == header):
            continue  # the verdict line above already says both
        mark, style = marks[s.outcome]
        body = wrap(s.detail, pad, pad)[len(pad):]
        line = Text(f"  {mark} ", style=style)
        line.append(f"{s.stage:<10} ", style="bold")
        line.append(body)
        con.print(line)
    if result.hint:
        con.print(Text(wrap(f"hint: {result.hint}", "      "), style="yellow"))


@click.command("audit")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable findings.")
@click.option("--fail-on", type=click.Choice(["none", *SEVERITY_CHOICES]), default="high",
              show_default=True,
              help="Exit 1 if a finding at or above this severity exists; none: always 0.")
@click.option("--host-rules", type=click.Path(dir_okay=False, exists=True), default=None,
              help="An `iptables-save` dump of the compute host, to check host NAT rules.")
@click.option("--host-netns", default=None, metavar="NS",
              help="Read the host rules live from network namespace NS (never the root one).")
@click.option("--matrix", is_flag=True, help="Also print who can reach whom, per service.")
def audit_cmd(file: str, as_json: bool, fail_on: str, host_rules: str | None,
              host_netns: str | None, matrix: bool) -> None:
    """Review FILE's policy: leaks through wide address pairs in remote groups, sensitive
    services open to the internet, shadowed rules, unfiltered ports, overlapping subnets,
    and (with --host-rules/--host-netns) tenant subnets hijacked by host NAT rules.

    The analysis is exhaustive: it reasons over address and port ranges, not samples. Only
    what the file writes is judged: rules the model adds by itself (the project's implicit
    default group) get no findings. Codes are explained in docs/audit.md.

    \b
    Exit status: 0 no finding at or above --fail-on (default: high, so critical and high
    findings fail a CI job), 1 there is one, 2 the file or host rules could not be read.
    """
    from portwall.analyze.audit import SEVERITIES, HostRules, audit, reachability_matrix

    if host_rules and host_netns:
        fail("give --host-rules or --host-netns, not both")
    topo = load_or_exit(file, as_json)
    plan = compile_plan(topo.model)
    host: HostRules | None = None
    try:
        if host_rules:
            host = HostRules.from_file(host_rules)
        elif host_netns:
            host = HostRules.from_netns(host_netns)
    except (OSError, ValueError) as e:
        fail(str(e))
    with progress(f"auditing {len(plan.ports)} ports", enabled=len(plan.ports) >= 500
                  and not as_json):
        findings = audit(topo.model, plan, host, written=topo.written)
        mat = reachability_matrix(topo.model, plan, lab=topo.lab) if matrix else None
    failing = fail_on != "none" and any(
        SEVERITIES.index(f.severity) >= SEVERITIES.index(fail_on) for f in findings)
    if as_json:
        doc: dict[str, object] = {"file": file, "findings": [f.to_json() for f in findings],
                                  "fail_on": fail_on, "failed": failing}
        if mat is not None:
            doc["matrix"] = [row.to_json() for row in mat]
        click.echo(json.dumps(doc, indent=2))
    else:
        _print_audit(findings, mat, fail_on, failing)
    sys.exit(1 if failing else 0)


def _print_audit(findings: list[Finding], mat: list[MatrixRow] | None, fail_on: str,
                 failing: bool) -> None:
    from rich.console import Console
    from rich.text import Text

    from portwall.analyze.audit import SEVERITIES

    con = Console(highlight=False, soft_wrap=True)
    styles = {"critical": "bold red", "high": "red", "medium": "yellow", "low": "cyan",
              "info": "dim"}
    for f in findings:
        con.print(Text(wrap(f"{f.code} {f.severity.upper():<8} {f.title}", " " * 15),
                       style=styles[f.severity]))
        if f.resources:
            con.print(Text(wrap("resources: " + ", ".join(r.label() for r in f.resources),
                                "    ", "  ")))
        con.print(Text(wrap(f.detail, "  ", "  ")))
        if f.fix:
            con.print(Text(wrap(f"fix: {f.fix}", "       ", "  "), style="yellow"))
        con.print()
    if mat is not None:
        con.print(Text(wrap("reachability (who can open connections to whom; {a, b} -> {c, d}:"
                            " each of a, b to each other port of c, d)"), style="bold"))
        if mat:  # one write: rich's per-call cost dominated at tens of thousands of rows
            click.echo("\n".join(f"  {row.text()}" if len(row.text()) <= 98 else
                                  wrap(row.text(), "      ", "  ") for row in mat))
    counts = {sev: sum(f.severity == sev for f in findings) for sev in reversed(SEVERITIES)}
    summary = ", ".join(f"{n} {sev}" for sev, n in counts.items() if n)
    con.print(Text(plural(len(findings), "finding") + (f" ({summary})" if summary else ""),
                   style="bold"))
    if fail_on == "none":
        con.print(Text("exit status 0 (--fail-on none)", style="dim"))
    elif failing:
        con.print(Text(f"exit status 1: findings at or above {fail_on} (--fail-on none to "
                       "only report)", style="bold red"))
    else:
        con.print(Text(f"exit status 0: nothing at or above {fail_on}", style="green"))
