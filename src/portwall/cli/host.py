"""``portwall apply`` and ``portwall remove``: load a file's policy into a network namespace
the safe way (only portwall's own ``pw-`` chains, hooks and sets; ``--noflush``), or take it
out again. The namespace must be named: these commands never act on the machine's own one
by default."""

from __future__ import annotations

import click

from portwall import backends
from portwall.backends.base import Backend
from portwall.cli.common import echo_json, fail, load_or_exit, wrap
from portwall.ir import compile_plan


def _backend(name: str) -> Backend:
    try:
        return backends.get(name)
    except backends.UnknownBackend as e:
        fail(str(e))


def _require_ns(netns: str) -> None:
    from portwall.lab import netns as ns

    if not ns.exists(netns):
        fail(f"network namespace {netns} does not exist (ip netns list)")


@click.command("apply")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--netns", "netns", required=True, metavar="NS",
              help="Network namespace to enforce the policy in (required).")
@click.option("--backend", default=backends.DEFAULT, show_default=True,
              help=f"Dataplane backend ({', '.join(backends.names())}).")
@click.option("--host", default=None, help="Only ports bound to this binding:host_id.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable report.")
def apply_cmd(file: str, netns: str, backend: str, host: str | None, as_json: bool) -> None:
    """Enforce FILE's policy in network namespace NS, atomically and incrementally.

    Only portwall's own objects are written (nftables, the default: its own tables inet
    portwall and bridge portwall; iptables: chains and sets named pw-..., one jump at the
    top of INPUT, FORWARD and raw PREROUTING); other rules in the namespace (docker's,
    libvirt's, yours) are kept. Running it again with a changed file writes only what
    differs and cuts connections the new policy no longer allows.
    """
    be = _backend(backend)
    topo = load_or_exit(file, as_json)
    _require_ns(netns)
    plan = compile_plan(topo.model, host=host)
    try:
        with be.applier(netns) as applier:
            report = applier.apply(be.render(plan), plan)
        from portwall.lab.enforce import guard_host_nat

        report.touched += guard_host_nat(netns, plan)  # seed 003: host NAT skips our bridges
    except Exception as e:  # an ApplyError names the line, rule and resource
        fail(str(e))
    if as_json:
        echo_json({"file": file, "netns": netns, "backend": be.name, "noop": report.noop,
                   "changes": report.changes, "conntrack_deleted": report.conntrack_deleted,
                   "touched": report.touched, "warnings": report.warnings})
        return
    from portwall.cli.core import owners

    whose = owners(topo, [text for _, text in be.render(plan).sections()])
    click.echo(wrap(f"{netns}: {report.summary()}", "  "))
    for line in report.touched[:20]:
        name = line.rsplit(" ", 1)[-1]
        extra = f"  ({whose[name]})" if name in whose else ""
        click.echo(wrap(line + extra, "      ", "    "))
    if len(report.touched) > 20:
        click.echo(f"    ... and {len(report.touched) - 20} more")
    for w in report.warnings:
        click.secho(wrap(f"warning: {w}", "  "), fg="yellow", err=True)


@click.command("remove")
@click.option("--netns", "netns", required=True, metavar="NS",
              help="Network namespace to remove portwall from (required).")
@click.option("--backend", default=backends.DEFAULT, show_default=True,
              help=f"Dataplane backend ({', '.join(backends.names())}).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable result.")
def remove_cmd(netns: str, backend: str, as_json: bool) -> None:
    """Remove everything portwall owns in namespace NS (nftables: its tables; iptables: its
    pw- chains, hook jumps and sets; the host-NAT guard pwguard-nat), and nothing else."""
    be = _backend(backend)
    _require_ns(netns)
    try:
        with be.applier(netns) as applier:
            applier.remove_all()
        from portwall.kernel.natguard import remove_guard
        from portwall.kernel.runner import Runner

        remove_guard(Runner(netns))
    except Exception as e:
        fail(str(e))
    if as_json:
        echo_json({"netns": netns, "backend": be.name, "removed": True})
        return
    click.echo(f"{netns}: every {be.name} object of portwall removed; other rules kept")
