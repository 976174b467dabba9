"""``portwall validate`` and ``portwall render``: the model and render stages on their own."""

from __future__ import annotations

import click

from portwall.cli.common import fail, load_or_exit
from portwall.ir import compile_plan


@click.command("validate")
@click.argument("file", type=click.Path(dir_okay=False))
def validate_cmd(file: str) -> None:
    """Check a topology FILE (YAML or JSON) the way Neutron's API would.

    Prints a summary of what the file declares, or the first error with its line and
    field, and exits 2.
    """
    topo = load_or_exit(file)
    m = topo.model
    plan = compile_plan(m)
    rules = sum(len(g.security_group_rules) for g in m.security_groups.values())
    click.echo(f"{file}: valid")
    click.echo(
        f"  {len(m.networks)} networks, {len(m.subnets)} subnets, {len(m.ports)} ports, "
        f"{len(m.security_groups)} security groups ({rules} rules), {len(m.routers)} routers, "
        f"{len(m.floating_ips)} floating IPs, {len(m.firewall_groups)} firewall groups"
    )
    click.echo(
        f"  lab: {len(topo.lab.vms)} VMs, {len(topo.lab.expect)} expectations; "
        f"compiled plan: {len(plan.ports)} ports, {plan.rule_count()} IR rules, "
        f"{len(plan.address_sets)} address sets ({plan.set_member_count()} members)"
    )


@click.command("render")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--host", default=None, help="Only ports bound to this binding:host_id.")
@click.option("--backend", type=click.Choice(["iptables", "ovs"]), default="iptables",
              show_default=True, help="Dataplane to render for.")
@click.option("--ipv6", is_flag=True, help="Print the ip6tables-restore input instead of IPv4.")
@click.option("--ipset/--no-ipset", "show_ipset", default=True, show_default=True,
              help="Also print the `ipset restore` input the rules need.")
def render_cmd(file: str, host: str | None, backend: str, ipv6: bool, show_ipset: bool) -> None:
    """Print what portwall would load for FILE, without touching the kernel.

    The output is `ipset restore` input followed by `iptables-restore` (or, with --ipv6,
    `ip6tables-restore`) input; the same file always renders byte-identically.
    """
    from portwall.backends.iptables.render import ipset_restore_text, render_iptables, restore_text

    topo = load_or_exit(file)
    plan = compile_plan(topo.model, host=host)
    if host is not None and not plan.ports:
        fail(f"no port of {file} is bound to host '{host}' (binding:host_id)")
    if backend != "iptables":  # any other backend: its own titled sections
        from portwall import backends

        for title, text in backends.get(backend).render(plan).sections():
            click.echo(f"# {title}")
            click.echo(text, nl=False)
        return
    ruleset = render_iptables(plan)
    if show_ipset:
        click.echo("# ipset restore", nl=True)
        click.echo(ipset_restore_text(ruleset), nl=False)
    click.echo(f"# {'ip6tables' if ipv6 else 'iptables'}-restore")
    click.echo(restore_text(ruleset, 6 if ipv6 else 4), nl=False)
