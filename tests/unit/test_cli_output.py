"""Output for people: lines of at most 100 columns, names before ids, and ``render`` parts
that say how to load them without wiping the host's firewall."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from portwall.cli import main

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
FILES = sorted(EXAMPLES.glob("*.yaml"))
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
TRACES = [
    ("seed000-router-vm.yaml", ["--from", "serverX", "--to", "serverY", "--proto", "tcp",
                                "--dport", "22"]),
    ("seed000-router-vm-fixed.yaml", ["--from", "serverX", "--to", "serverY"]),
    ("seed001-vip-nat.yaml", ["--from", "outside", "--to", "proxy-a", "--proto", "tcp",
                              "--dport", "80"]),
    ("seed002-web-db.yaml", ["--from", "client", "--to", "db-1", "--proto", "tcp",
                             "--dport", "5432"]),
]


def run(*args: str) -> tuple[int, str]:
    r = CliRunner().invoke(main, list(args), env={"COLUMNS": "100"})
    return r.exit_code, r.output


def assert_fits(out: str) -> None:
    long = [ln for ln in out.splitlines() if len(ln) > 100]
    assert not long, long[:3]
    assert not UUID.search(out), UUID.search(out)


@pytest.mark.parametrize("f", FILES, ids=lambda p: p.name)
def test_validate_and_audit_fit_100_columns_without_uuids(f: Path) -> None:
    code, out = run("validate", str(f))
    assert code == 0, out
    assert_fits(out)
    code, out = run("audit", str(f), "--matrix")
    assert code in (0, 1), out
    assert_fits(out)


@pytest.mark.parametrize(("name", "args"), TRACES, ids=[t[0] for t in TRACES])
def test_trace_fits_100_columns_without_uuids(name: str, args: list[str]) -> None:
    code, out = run("trace", str(EXAMPLES / name), *args)
    assert code in (0, 1), out
    assert_fits(out)
    assert out.startswith(("ALLOW", "DENY"))


def test_render_explains_how_to_load_each_part() -> None:
    code, out = run("render", str(EXAMPLES / "seed001-vip-nat.yaml"), "--backend", "iptables")
    assert code == 0, out
    head = out.split("\n# ---- part 1/")[0]
    assert "--noflush" in head and "flushes the whole filter table" in head
    titles = re.findall(r"^# ---- part \d/\d: (.+) \(\d+ lines?\)$", out, re.M)
    assert titles == ["ipset restore -exist", "iptables-restore --noflush",
                      "ip6tables-restore --noflush",
                      "nft -f - (bridge portwall_l2: ARP/ND guard, tracking)"]
    loads = re.findall(r"^# load: (.+)$", out, re.M)
    assert loads[-1] == "ip netns exec NS nft -f - < this-part"  # the command, no remark
    # the legend names every group's chains and sets by group name
    for group in ("ssh", "proxy", "vip"):
        assert re.search(rf"^#   pw-gi\S+ +ingress rules of security group {group}$", out, re.M)
        assert re.search(rf"^#   pw-ge\S+ +egress rules of security group {group}$", out, re.M)
    assert re.search(r"^#   pw4-\S+ +IPv4 members of remote group ssh$", out, re.M)
    assert re.search(r"^#   pw-i\S+ +to-VM \(ingress\) rules of port proxy-a-port$", out, re.M)


def test_render_nftables_names_groups_in_legend_and_comments() -> None:
    code, out = run("render", str(EXAMPLES / "seed001-vip-nat.yaml"), "--backend", "nftables")
    assert code == 0, out
    for group in ("ssh", "proxy", "vip"):
        assert re.search(rf"^#   gi_\S+\n# +ingress rules of security group {group}$", out, re.M)
        assert re.search(rf'comment "sgr-\S+ group {group} ingress [a-z0-9/-]+"$', out, re.M)
        assert re.search(rf'jump gi_\S+ comment "sg-\S+-ingress group {group}"$', out, re.M)
    assert re.search(r"^#   r4h_\S+\n# +IPv4 member addresses of remote group ssh$", out, re.M)
    legend = out.split("\n# ---- part 1/")[0]
    assert not [ln for ln in legend.splitlines() if len(ln) > 100]


def test_render_part_is_bare_and_loadable_text() -> None:
    code, out = run("render", str(EXAMPLES / "seed000-router-vm.yaml"), "--backend",
                    "iptables", "--part", "iptables-restore")
    assert code == 0
    assert out.startswith("*filter") and "-I INPUT 1" in out and "# ----" not in out
    code, out = run("render", str(EXAMPLES / "seed000-router-vm.yaml"), "--backend",
                    "iptables", "--json")
    doc = json.loads(out)
    assert [p["title"] for p in doc["parts"]][1] == "iptables-restore --noflush"
    assert doc["counts"]["rules"] > 0


#: Commands with nothing to report as data: ``lab exec`` passes its command's own output
#: and exit status through; long-running daemons (the API server, the agent) log.
NO_JSON = {"portwall lab exec", "portwall server", "portwall agent"}


def test_every_command_takes_json() -> None:
    import click

    def walk(cmd: click.Command, path: str) -> list[str]:
        if isinstance(cmd, click.Group):
            return [p for name, sub in cmd.commands.items() for p in walk(sub, f"{path} {name}")]
        return [path]

    missing = []
    for path in walk(main, "portwall"):
        cmd: click.Command = main
        for part in path.split()[1:]:
            assert isinstance(cmd, click.Group)
            cmd = cmd.commands[part]
        if path in NO_JSON:
            continue
        if not any("--json" in p.opts for p in cmd.params if isinstance(p, click.Option)):
            missing.append(path)
    assert not missing
