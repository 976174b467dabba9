"""``portwall audit``: every finding code, positive and negative, on small topologies."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from click.testing import CliRunner

from portwall.analyze.audit import Finding, audit, reachability_matrix
from portwall.analyze.hostrules import HostRules
from portwall.cli import main
from portwall.ir import compile_plan
from portwall.ir.types import HostPlan
from portwall.topology import loads_topology


def findings(text: str, host: HostRules | None = None, plan: HostPlan | None = None
             ) -> list[Finding]:
    topo = loads_topology(text)
    return audit(topo.model, plan or compile_plan(topo.model), host)


def codes(fs: list[Finding], code: str) -> list[Finding]:
    return [f for f in fs if f.code == code]


def topo(groups: str, ports: str, cidr: str = "10.0.0.0/24", extra_nets: str = "") -> str:
    return f"""
project: t
networks:
  - name: net
    subnets: [{{name: sub, cidr: {cidr}}}]
{extra_nets}
security_groups:
{groups}
ports:
{ports}
"""


# ------------------------------------------------------------------ PW001
LEAK_GROUPS = """
  - name: ssh
  - name: proxy
    security_group_rules:
      - {direction: ingress, protocol: tcp, port_range_min: 80, port_range_max: 80,
         remote_group_id: ssh}
"""


def test_pw001_wide_pair_in_remote_group() -> None:
    fs = findings(topo(LEAK_GROUPS, """
  - {name: nat, network_id: net, fixed_ips: [10.0.0.10], security_groups: [ssh],
     allowed_address_pairs: [{ip_address: 0.0.0.0/0}]}
  - {name: proxy1, network_id: net, fixed_ips: [10.0.0.21], security_groups: [proxy]}
  - {name: proxy2, network_id: net, fixed_ips: [10.0.0.22], security_groups: [proxy]}
"""))
    (f,) = codes(fs, "PW001")
    assert f.severity == "critical"
    names = {r.name for r in f.resources}
    assert {"nat", "proxy1", "proxy2", "ssh", "proxy"} <= names
    assert "0.0.0.0/0" in f.detail and "tcp dport 80" in f.detail
    assert "nat" in f.fix


def test_pw001_slash8_is_high_and_narrow_pairs_are_fine() -> None:
    ports = """
  - {{name: nat, network_id: net, fixed_ips: [10.0.0.10], security_groups: [ssh],
     allowed_address_pairs: [{{ip_address: {pair}}}]}}
  - {{name: proxy1, network_id: net, fixed_ips: [10.0.0.21], security_groups: [proxy]}}
"""
    (f,) = codes(findings(topo(LEAK_GROUPS, ports.format(pair="10.0.0.0/8"))), "PW001")
    assert f.severity == "high"
    assert not codes(findings(topo(LEAK_GROUPS, ports.format(pair="10.0.0.0/16"))), "PW001")
    assert not codes(findings(topo(LEAK_GROUPS, ports.format(pair="10.0.0.99"))), "PW001")


def test_pw001_not_when_the_nat_port_has_its_own_group() -> None:
    fs = findings(topo(LEAK_GROUPS + "  - name: natgroup\n", """
  - {name: nat, network_id: net, fixed_ips: [10.0.0.10], security_groups: [natgroup],
     allowed_address_pairs: [{ip_address: 0.0.0.0/0}]}
  - {name: bastion, network_id: net, fixed_ips: [10.0.0.11], security_groups: [ssh]}
  - {name: proxy1, network_id: net, fixed_ips: [10.0.0.21], security_groups: [proxy]}
"""))
    assert not codes(fs, "PW001")


# ------------------------------------------------------------------ PW002
def _ssh_rules(*prefixes: str) -> str:
    rules = "\n".join(
        f"      - {{direction: ingress, protocol: tcp, port_range_min: 22, port_range_max: 22,"
        f" remote_ip_prefix: {p}}}" for p in prefixes)
    return f"""
  - name: web
    security_group_rules:
{rules}
"""


ONE_PORT = "  - {name: web1, network_id: net, fixed_ips: [10.0.0.5], security_groups: [web]}\n"


def test_pw002_ssh_from_anywhere() -> None:
    (f,) = codes(findings(topo(_ssh_rules("0.0.0.0/0"), ONE_PORT)), "PW002")
    assert f.severity == "high" and "ssh (tcp/22)" in f.detail and "0.0.0.0/0" in f.detail
    assert f.resources[0].name == "web1"


def test_pw002_exhaustive_over_split_prefixes() -> None:
    """Two halves cover every address; a half and a quarter do not."""
    assert codes(findings(topo(_ssh_rules("0.0.0.0/1", "128.0.0.0/1"), ONE_PORT)), "PW002")
    assert not codes(findings(topo(_ssh_rules("0.0.0.0/1", "128.0.0.0/2"), ONE_PORT)), "PW002")
    assert not codes(findings(topo(_ssh_rules("10.0.0.0/8"), ONE_PORT)), "PW002")


def test_pw002_via_remote_group_member_and_databases() -> None:
    groups = """
  - name: nat
  - name: db
    security_group_rules:
      - {direction: ingress, protocol: tcp, port_range_min: 5432, port_range_max: 6379,
         remote_group_id: nat}
"""
    ports = """
  - {name: natp, network_id: net, fixed_ips: [10.0.0.10], security_groups: [nat],
     allowed_address_pairs: [{ip_address: 0.0.0.0/0}]}
  - {name: db1, network_id: net, fixed_ips: [10.0.0.20], security_groups: [db]}
"""
    (f,) = codes(findings(topo(groups, ports)), "PW002")
    assert f.resources[0].name == "db1" and f.severity == "critical"
    assert "postgresql" in f.detail and "redis" in f.detail and "mysql" not in f.detail


def test_pw002_ignores_unfiltered_ports() -> None:
    ports = "  - {name: raw, network_id: net, fixed_ips: [10.0.0.5], port_security_enabled: false}\n"
    fs = findings(topo("  - name: web\n", ports))
    assert not codes(fs, "PW002") and codes(fs, "PW005")


# ------------------------------------------------------------------ PW003
def _rules(*rules: str) -> str:
    body = "\n".join(f"      - {r}" for r in rules)
    return f"  - name: g\n    security_group_rules:\n{body}\n"


G_PORT = "  - {name: p, network_id: net, fixed_ips: [10.0.0.5], security_groups: [g]}\n"


def test_pw003_shadowed_by_wider_rule() -> None:
    fs = findings(topo(_rules(
        "{direction: ingress, protocol: tcp, port_range_min: 22, port_range_max: 22,"
        " remote_ip_prefix: 10.0.0.0/24, description: narrow}",
        "{direction: ingress, protocol: tcp, port_range_min: 1, port_range_max: 1000,"
        " remote_ip_prefix: 10.0.0.0/16}"), G_PORT))
    (f,) = codes(fs, "PW003")
    assert f.resources[0].name == "narrow" and "10.0.0.0/16" in f.detail


def test_pw003_covered_only_by_two_rules_together() -> None:
    fs = findings(topo(_rules(
        "{direction: ingress, protocol: tcp, port_range_min: 50, port_range_max: 150,"
        " description: middle}",
        "{direction: ingress, protocol: tcp, port_range_min: 1, port_range_max: 100}",
        "{direction: ingress, protocol: tcp, port_range_min: 101, port_range_max: 200}"), G_PORT))
    (f,) = codes(fs, "PW003")
    assert f.resources[0].name == "middle"
    fs = findings(topo(_rules(
        "{direction: ingress, protocol: tcp, port_range_min: 50, port_range_max: 250}",
        "{direction: ingress, protocol: tcp, port_range_min: 1, port_range_max: 100}",
        "{direction: ingress, protocol: tcp, port_range_min: 101, port_range_max: 200,"
        " description: inside}"), G_PORT))
    assert [f.resources[0].name for f in codes(fs, "PW003")] == ["inside"]


def test_pw003_any_protocol_covers_and_remote_groups_are_not_prefixes() -> None:
    fs = findings(topo(_rules(
        "{direction: ingress, protocol: icmp, port_range_min: 8, description: ping}",
        "{direction: ingress, remote_ip_prefix: 0.0.0.0/0}"), G_PORT))
    assert [f.resources[0].name for f in codes(fs, "PW003")] == ["ping"]
    # a remote-group rule is not redundant with a prefix rule that contains today's members
    fs = findings(topo(_rules(
        "{direction: ingress, protocol: tcp, port_range_min: 22, port_range_max: 22,"
        " remote_group_id: g}",
        "{direction: ingress, protocol: tcp, port_range_min: 22, port_range_max: 22,"
        " remote_ip_prefix: 10.0.0.0/24}"), G_PORT))
    assert not codes(fs, "PW003")


def test_pw003_no_findings_for_distinct_rules_and_egress_defaults() -> None:
    fs = findings(topo(_rules(
        "{direction: ingress, protocol: tcp, port_range_min: 22, port_range_max: 22}",
        "{direction: ingress, protocol: udp, port_range_min: 22, port_range_max: 22}"), G_PORT))
    assert not codes(fs, "PW003")


# ------------------------------------------------------------------ PW004
def test_pw004_empty_remote_group() -> None:
    groups = """
  - name: unused
  - name: g
    security_group_rules:
      - {direction: ingress, protocol: tcp, port_range_min: 22, port_range_max: 22,
         remote_group_id: unused}
"""
    (f,) = codes(findings(topo(groups, G_PORT)), "PW004")
    assert f.severity == "low" and "unused" in f.detail
    groups_ok = groups.replace("remote_group_id: unused", "remote_group_id: g")
    assert not [f for f in codes(findings(topo(groups_ok, G_PORT)), "PW004")
                if f.severity != "info"]


def test_pw004_info_for_default_ipv6_rule_without_ipv6_ports() -> None:
    ports = "  - {name: p, network_id: net, fixed_ips: [10.0.0.5]}\n"  # default group
    fs = codes(findings(topo("  - name: x\n", ports)), "PW004")
    assert fs and all(f.severity == "info" and "IPv6" in f.detail for f in fs)


# ------------------------------------------------------------------ PW005
def test_pw005_port_security_disabled() -> None:
    ports = """
  - {name: raw, network_id: net, fixed_ips: [10.0.0.5], port_security_enabled: false}
  - {name: ok, network_id: net, fixed_ips: [10.0.0.6]}
"""
    fs = codes(findings(topo("  - name: x\n", ports)), "PW005")
    assert [f.resources[0].name for f in fs] == ["raw"]


# ------------------------------------------------------------------ PW006
def test_pw006_pair_width() -> None:
    ports = """
  - {name: vip, network_id: net, fixed_ips: [10.0.0.5], allowed_address_pairs: [{ip_address: 10.0.0.100}]}
  - {name: router, network_id: net, fixed_ips: [10.0.0.6],
     allowed_address_pairs: [{ip_address: 10.9.0.0/24}]}
  - {name: wider, network_id: net, fixed_ips: [10.0.0.7],
     allowed_address_pairs: [{ip_address: 10.0.0.0/16}]}
  - {name: nat, network_id: net, fixed_ips: [10.0.0.8],
     allowed_address_pairs: [{ip_address: 0.0.0.0/0}]}
"""
    fs = {f.resources[0].name: f.severity for f in codes(findings(topo("  - name: x\n", ports)),
                                                        "PW006")}
    assert fs == {"router": "low", "wider": "medium", "nat": "high"}


# ------------------------------------------------------------------ PW007
TWO_NETS = """
  - name: net2
    subnets: [{name: sub2, cidr: 10.0.0.128/25}]
"""
TWO_PORTS = """
  - {name: a, network_id: net, fixed_ips: [10.0.0.5]}
  - {name: b, network_id: net2, fixed_ips: [10.0.0.200]}
"""


def test_pw007_overlap_only_matters_within_a_zone() -> None:
    text = topo("  - name: x\n", TWO_PORTS, extra_nets=TWO_NETS)
    assert not codes(findings(text), "PW007")  # each network has its own zone
    t = loads_topology(text)
    plan = compile_plan(t.model)
    shared = HostPlan(plan.host, tuple(dataclasses.replace(p, zone=7) for p in plan.ports),
                      plan.rulesets, plan.address_sets)
    (f,) = codes(audit(t.model, shared), "PW007")
    assert "zone 7" in f.title and {r.name for r in f.resources} == {"sub", "sub2"}


# ------------------------------------------------------------------ PW008
DOCKER_SAVE = """# Generated by iptables-save
*nat
:PREROUTING ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:DOCKER - [0:0]
-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER
-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE
-A POSTROUTING -s 192.168.50.0/24 -o eth0 -j SNAT --to-source 1.2.3.4
-A POSTROUTING -s 10.99.0.0/16 -j pw-snat
COMMIT
*filter
-A FORWARD -s 172.17.0.0/16 -j ACCEPT
COMMIT
"""


def test_pw008_docker_masquerade_overlap() -> None:
    host = HostRules.parse(DOCKER_SAVE, "dump")
    (f,) = codes(findings(topo("  - name: x\n", "", cidr="172.17.0.0/16"), host), "PW008")
    assert f.severity == "critical" and "MASQUERADE" in f.title and "docker" in f.detail
    assert not codes(findings(topo("  - name: x\n", "", cidr="10.0.0.0/24"), host), "PW008")
    (f,) = codes(findings(topo("  - name: x\n", "", cidr="192.168.50.0/25"), host), "PW008")
    assert f.severity == "medium"  # only traffic leaving through eth0
    assert not codes(findings(topo("  - name: x\n", "", cidr="172.17.0.0/16")), "PW008")


def test_pw009_well_known_host_ranges_without_host_rules() -> None:
    (f,) = codes(findings(topo("  - name: x\n", "", cidr="172.17.0.0/16")), "PW009")
    assert f.severity == "low" and "docker" in f.title and "--host-rules" in f.fix
    assert not codes(findings(topo("  - name: x\n", "", cidr="10.0.0.0/24")), "PW009")
    host = HostRules.parse(DOCKER_SAVE)  # with host rules, PW008 decides instead
    assert not codes(findings(topo("  - name: x\n", "", cidr="172.17.0.0/16"), host), "PW009")


def test_hostrules_parser() -> None:
    host = HostRules.parse(DOCKER_SAVE)
    nat = host.nat_rules()
    assert [r.target for r in nat] == ["MASQUERADE", "SNAT"]
    assert str(nat[0].src) == "172.17.0.0/16" and nat[0].out_iface == "docker0"
    assert nat[0].out_negated and not nat[1].out_negated


# ------------------------------------------------------------------ matrix + CLI
def test_matrix_is_per_pair_and_per_service() -> None:
    text = topo("""
  - name: web
    security_group_rules:
      - {direction: ingress, protocol: tcp, port_range_min: 80, port_range_max: 80}
      - {direction: ingress, protocol: tcp, port_range_min: 443, port_range_max: 443}
  - name: db
    default_egress_rules: false
    security_group_rules:
      - {direction: ingress, protocol: tcp, port_range_min: 5432, port_range_max: 5432,
         remote_group_id: web}
""", """
  - {name: w, network_id: net, fixed_ips: [10.0.0.5], security_groups: [web]}
  - {name: d, network_id: net, fixed_ips: [10.0.0.6], security_groups: [db]}
""")
    t = loads_topology(text)
    rows = {(r.src, r.dst): r.services for r in reachability_matrix(t.model, compile_plan(t.model))}
    assert rows[("w", "d")] == "tcp 5432"
    assert rows[("d", "w")] == "nothing"  # db has no egress rules


def test_cli_fail_on_and_json(tmp_path: Path) -> None:
    f = tmp_path / "t.yaml"
    f.write_text(topo(_ssh_rules("0.0.0.0/0"), ONE_PORT))
    runner = CliRunner()
    r = runner.invoke(main, ["audit", str(f), "--json", "--fail-on", "none"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    assert any(x["code"] == "PW002" for x in doc["findings"])
    assert set(doc["findings"][0]) == {"code", "severity", "title", "resources", "detail", "fix"}
    assert runner.invoke(main, ["audit", str(f), "--fail-on", "high"]).exit_code == 1
    assert runner.invoke(main, ["audit", str(f), "--fail-on", "critical"]).exit_code == 0
    dump = tmp_path / "save.txt"
    dump.write_text(DOCKER_SAVE)
    r = runner.invoke(main, ["audit", str(f), "--host-rules", str(dump), "--matrix",
                               "--fail-on", "none"])
    assert r.exit_code == 0 and "reachability" in r.output
    r = runner.invoke(main, ["audit", str(f), "--host-netns", "pw-no-such-ns-xyz"])
    assert r.exit_code == 2
