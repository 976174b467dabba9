"""``portwall validate`` and ``portwall render``: the model and render stages on their own."""

from __future__ import annotations

import re
from typing import Any

import click

from portwall import backends
from portwall.cli.common import echo_json, fail, load_or_exit, plural, wrap
from portwall.ir import compile_plan
from portwall.topology import Topology


def summary(topo: Topology) -> dict[str, Any]:
    """What the file declares, apart from what the model added by itself (the project's
    ``default`` group and each group's automatic egress rules)."""
    m = topo.model
    groups = [g for g in m.security_groups.values() if topo.written(g.id)]
    rules = [r for g in m.security_groups.values() for r in g.security_group_rules]
    written = [r for r in rules if topo.written(r.id)]
    implicit_default = [g for g in m.security_groups.values()
                        if g.name == "default" and not topo.written(g.id)]
    return {
        "networks": len(m.networks), "subnets": len(m.subnets), "ports": len(m.ports),
        "security_groups": len(groups), "security_group_rules": len(written),
        "routers": len(m.routers), "floating_ips": len(m.floating_ips),
        "firewall_groups": len(m.firewall_groups),
        "automatic": {
            "default_group": bool(implicit_default),
            "default_group_used_by": sum(
                1 for p in m.ports.values() for g in implicit_default
                if g.id in (p.security_groups or ())),
            "rules": len(rules) - len(written)},
        "lab": {"vms": len(topo.lab.vms), "expectations": len(topo.lab.expect)},
    }


@click.command("validate")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True,
              help="Machine-readable: {valid, summary} or {valid: false, errors: [...]}.")
def validate_cmd(file: str, as_json: bool) -> None:
    """Check a topology FILE (YAML or JSON) the way Neutron's API would.

    Prints what the file declares, or every error found (file:line: field, then why) and
    exits 2. Resources the model adds by itself (the project's default group, each group's
    automatic egress rules) are counted apart from what the file writes.
    """
    topo = load_or_exit(file, as_json)
    plan = compile_plan(topo.model)
    s = summary(topo)
    compiled = {"ports": len(plan.ports), "ir_rules": plan.rule_count(),
                "address_sets": len(plan.address_sets),
                "set_members": plan.set_member_count()}
    if as_json:
        echo_json({"file": file, "valid": True, "summary": s, "compiled": compiled})
        return
    parts = [plural(s["networks"], "network"), plural(s["subnets"], "subnet"),
             plural(s["ports"], "port"),
             f"{plural(s['security_groups'], 'security group')} "
             f"({plural(s['security_group_rules'], 'rule')})"]
    parts += [plural(s[k], w) for k, w in (("routers", "router"), ("floating_ips", "floating IP"),
                                            ("firewall_groups", "firewall group")) if s[k]]
    click.echo(f"{file}: valid")
    click.echo(wrap("declared: " + ", ".join(parts), "    ", "  "))
    auto = s["automatic"]
    if auto["rules"]:
        what = []
        if auto["default_group"]:
            used = auto["default_group_used_by"]
            what.append("the project's default group" + (
                f" (used by {plural(used, 'port')} without security_groups)" if used else
                " (no port uses it)"))
        what.append(plural(auto["rules"], "automatic rule")
                    + " (egress to anywhere, default group members)")
        click.echo(wrap("added by the model, as Neutron does: " + "; ".join(what), "    ", "  "))
    lab = s["lab"]
    if lab["vms"]:
        click.echo(f"  lab: {plural(lab['vms'], 'VM')}, "
                   f"{plural(lab['expectations'], 'expectation')}")
    click.echo(wrap(
        f"compiled plan: {plural(compiled['ports'], 'port')}, "
        f"{plural(compiled['ir_rules'], 'rule')}, "
        f"{plural(compiled['address_sets'], 'address set')} "
        f"({plural(compiled['set_members'], 'member')})", "    ", "  "))


HEADER = """\
# portwall render {file}
# backend {backend}: {n} parts, each headed by the command that loads it.
# Load them in this order, inside the target network namespace:
#   ip netns exec NS <command> < part
# The iptables parts end in -I INPUT 1 / -I FORWARD 1 jumps to portwall's chains, so they
# MUST be loaded with --noflush: a plain iptables-restore flushes the whole filter table
# first, wiping every rule docker, libvirt or the admin put there. `portwall lab up`
# (and the appliers) load them this way and only touch portwall's own pw- chains.
"""


_CHAIN = re.compile(r"^:(pw-g[ie]|pw-[sio])([0-9a-f]{8})[-0-9a-f]*|^create (pw[46]-)([0-9a-f]{8})\S*",
                    re.M)
#: nftables: group chains gi_/ge_<group id> and remote-group sets r4h_/r4n_/r6h_/r6n_<id>
_NFT = re.compile(r"^add (?:chain|set) inet portwall ((g[ie]_|r[46][hn]_)([0-9a-f]{8})\S*)", re.M)
_NFT_ROLE = {"gi_": "ingress rules of security group", "ge_": "egress rules of security group",
             "r4h_": "IPv4 member addresses of remote group",
             "r4n_": "IPv4 member prefixes of remote group",
             "r6h_": "IPv6 member addresses of remote group",
             "r6n_": "IPv6 member prefixes of remote group"}
_ROLE = {"pw-s": "anti-spoof entries of port", "pw-i": "to-VM (ingress) rules of port",
         "pw-o": "from-VM (egress) rules of port", "pw-gi": "ingress rules of security group",
         "pw-ge": "egress rules of security group", "pw4-": "IPv4 members of remote group",
         "pw6-": "IPv6 members of remote group"}


def owners(topo: Topology, texts: list[str]) -> dict[str, str]:
    """Kernel object name -> whose it is (``to-VM (ingress) rules of port web-1``), for the
    chain and set names found in ``texts``: the names carry ids (length limits)."""
    m = topo.model
    names: dict[str, str] = {}
    for table in (m.ports, m.security_groups):
        for rid, res in table.items():
            names.setdefault(rid[:8], res.name or rid[:8])
    out: dict[str, str] = {}
    for text in texts:
        for match in _CHAIN.finditer(text):
            prefix, short_id = (match.group(1), match.group(2)) if match.group(1) else (
                match.group(3), match.group(4))
            full = match.group(0).split()[1] if match.group(3) else match.group(0)[1:]
            role = _ROLE.get(prefix)
            if role is not None and short_id in names:
                out.setdefault(full, f"{role} {names[short_id]}")
        for match in _NFT.finditer(text):
            full, prefix, short_id = match.groups()
            if short_id in names:
                out.setdefault(full, f"{_NFT_ROLE[prefix]} {names[short_id]}")
    return out


def legend(topo: Topology, sections: list[tuple[str, str]]) -> list[str]:
    """``#   pw-i1338dfe9-fa  to-VM (ingress) rules of port serverX-port`` lines."""
    found = owners(topo, [text for _, text in sections])
    out: list[str] = []
    for full, what in found.items():  # a long (nftables) name gets its own line
        if len(full) <= 28:
            out.append(f"#   {full:<28} {what}")
        else:
            out += [f"#   {full}", f"#   {'':<28} {what}"]
    return ["# Whose chains and sets these are:", *out] if out else []


@click.command("render")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--host", default=None, help="Only ports bound to this binding:host_id.")
@click.option("--backend", default=backends.DEFAULT, show_default=True,
              help=f"Dataplane to render for ({', '.join(backends.names())}).")
@click.option("--part", "parts", multiple=True, metavar="TITLE",
              help="Only the parts whose title contains TITLE (e.g. ip6tables, ipset); the "
                   "text is printed bare, ready to pipe into its command.")
@click.option("--ipv6", is_flag=True, help="Same as --part ip6tables (--backend iptables).")
@click.option("--json", "as_json", is_flag=True, help="Parts as [{title, text}] and counts.")
def render_cmd(file: str, host: str | None, backend: str, parts: tuple[str, ...], ipv6: bool,
               as_json: bool) -> None:
    """Print what portwall would load for FILE, without touching the kernel.

    The output is one part per kernel command (one nft -f file for the nftables backend,
    the default; ipset, iptables, ip6tables for --backend iptables), each titled with the
    command that loads it safely; the same file always renders byte-identically. Rule
    comments name the security group rule or port behind each rule.

    \b
    Example (into a namespace you own, never the host's):
      portwall render topo.yaml --part "nft -f" | ip netns exec NS nft -f -
      portwall render topo.yaml --backend iptables --part iptables-restore | \\
        ip netns exec NS iptables-restore --noflush
    """

    try:
        be = backends.get(backend)
    except backends.UnknownBackend as e:
        fail(str(e))
    topo = load_or_exit(file, as_json)
    plan = compile_plan(topo.model, host=host)
    if host is not None and not plan.ports:
        fail(f"no port of {file} is bound to host '{host}' (binding:host_id)")
    ruleset = be.render(plan)
    sections = ruleset.sections()
    wanted = [*parts, *(["ip6tables"] if ipv6 else [])]
    if wanted:
        sections = [(t, x) for t, x in sections if any(w in t for w in wanted)]
        if not sections:
            fail(f"no part's title contains {', '.join(wanted)} (parts: "
                 f"{', '.join(t for t, _ in ruleset.sections())})")
    if as_json:
        echo_json({"file": file, "backend": be.name, "counts": ruleset.counts(),
                   "parts": [{"title": t, "text": x} for t, x in sections]})
        return
    if wanted:  # bare text: pipe it into its command
        for _, text in sections:
            click.echo(text, nl=False)
        return
    click.echo(HEADER.format(file=file, backend=be.name, n=len(sections)), nl=False)
    for line in legend(topo, sections):
        click.echo(line)
    for i, (title, text) in enumerate(sections, 1):
        lines = text.count("\n")
        click.echo(f"\n# ---- part {i}/{len(sections)}: {title} ({plural(lines, 'line')})")
        click.echo(f"# load: ip netns exec NS {title.split(' (')[0]} < this-part")
        click.echo(text, nl=False)
