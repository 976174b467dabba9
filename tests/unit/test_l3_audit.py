"""``portwall audit`` on routers (PW010-PW015): each finding on a variant of seed 002 or the
extra-route example, none on the examples as they are, and the JSON shape."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from portwall.analyze.audit import Finding, audit
from portwall.cli import main
from portwall.ir import compile_plan
from portwall.topology import loads_topology

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SEED002 = (EXAMPLES / "seed002-router-fip.yaml").read_text()
XROUTE = (EXAMPLES / "extraroute-nexthop.yaml").read_text()
L3_CODES = {f"PW01{i}" for i in range(6)}


def _l3(text: str) -> list[Finding]:
    topo = loads_topology(text)
    return [f for f in audit(topo.model, compile_plan(topo.model), written=topo.written)
            if f.code in L3_CODES]


def _sub(text: str, old: str, new: str) -> str:
    assert old in text, old
    return text.replace(old, new)


@pytest.mark.parametrize("name", sorted(p.name for p in EXAMPLES.glob("*.yaml")))
def test_no_router_finding_on_the_examples(name: str) -> None:
    assert _l3((EXAMPLES / name).read_text()) == []


def test_pw010_fip_whose_groups_admit_nothing_from_outside() -> None:
    text = _sub(SEED002, "port_id: web-2-port}", "port_id: client-port}")
    (f,) = _l3(text)
    assert f.code == "PW010" and "203.0.113.12" in f.title and "client-port" in f.title
    assert "security groups admits any address outside" in f.detail
    assert {r.type for r in f.resources} == {"floatingip", "port", "router"}


def test_pw010_fip_the_firewall_group_closes() -> None:
    text = _sub(SEED002, "firewall_groups:\n", """firewall_groups:
  - {name: app-fw, ingress_firewall_policy_id: ssh-only, egress_firewall_policy_id: db-out,
     ports: [edge-app-v4]}
""")
    text = _sub(text, "firewall_policies:\n", "firewall_policies:\n"
                "  - {name: ssh-only, firewall_rules: [ssh-in]}\n")
    text = _sub(text, "firewall_rules:\n  - {name: no-db", "firewall_rules:\n"
                "  - {name: ssh-in, protocol: tcp, destination_port: '22', action: allow}\n"
                "  - {name: no-db")
    found = {(f.code, f.title) for f in _l3(text)}
    fips = sorted(t for c, t in found if c == "PW010")
    assert len(fips) == 2 and all("unreachable from the outside" in t for t in fips)
    (f,) = [f for f in _l3(text) if f.code == "PW010" and "203.0.113.11" in f.title]
    assert "firewall group app-fw" in f.detail
    assert any(r.type == "firewall_group" and r.name == "app-fw" for r in f.resources)


def test_pw011_rule_after_a_catch_all_never_matches() -> None:
    text = _sub(SEED002, "firewall_rules: [no-db-from-client, db-from-app",
                "firewall_rules: [any-out, no-db-from-client, db-from-app")
    got = [f for f in _l3(text) if f.code == "PW011"]
    names = sorted(f.resources[0].name for f in got)
    assert names == ["db-from-app", "no-db-from-client", "no-ssh", "ping-from-app"]
    deny = next(f for f in got if f.resources[0].name == "no-db-from-client")
    assert deny.severity == "medium" and "after catch-all rule any-out (allow)" in deny.detail
    allow = next(f for f in got if f.resources[0].name == "db-from-app")
    assert allow.severity == "low"


def test_pw011_covered_by_several_rules_not_only_a_catch_all() -> None:
    text = _sub(SEED002, "firewall_rules: [no-db-from-client, db-from-app",
                "firewall_rules: [db-from-app, no-db-from-client")
    (f,) = [f for f in _l3(text) if f.code == "PW011"]
    assert f.resources[0].name == "no-db-from-client" and "covered by rules db-from-app" in f.detail


def test_pw012_group_without_egress_policy_denies_everything() -> None:
    text = _sub(SEED002, "egress_firewall_policy_id: db-out,", "")
    got = sorted(f.title for f in _l3(text) if f.code == "PW012")
    assert got == ["firewall group db-fw denies every new IPv4 egress connection",
                   "firewall group db-fw denies every new IPv6 egress connection"]


def test_pw012_only_the_family_without_allow_rules() -> None:
    text = _sub(SEED002, "firewall_rules: [any-out, any-out-v6]", "firewall_rules: [any-out]")
    (f,) = [f for f in _l3(text) if f.code == "PW012"]
    assert "IPv6 egress" in f.title and "no rule of its egress policy" in f.detail


def test_pw013_no_snat_and_no_floating_ip() -> None:
    text = _sub(SEED002, "enable_snat: true", "enable_snat: false")
    assert not [f for f in _l3(text) if f.code == "PW013"]  # floating IPs: a way out
    text = text.split("floating_ips:\n")[0] + "firewall_rules:" + text.split(
        "firewall_rules:", 1)[1]
    text = _sub(text, "    - {from: outside, to: 203.0.113.11", "    # ")
    text = "\n".join(ln for ln in text.splitlines() if "203.0.113.1" not in ln
                     or "gateway_ip" in ln or "external_fixed_ips" in ln)
    (f,) = [f for f in _l3(text) if f.code == "PW013"]
    assert f.resources[0].name == "edge" and "10.2.0.0/24" in f.detail


def test_pw014_tenant_subnet_overlaps_the_external_network() -> None:
    text = _sub(SEED002, "{name: db-v4, cidr: 10.3.0.0/24, gateway_ip: 10.3.0.1}",
                "{name: db-v4, cidr: 10.3.0.0/24, gateway_ip: 10.3.0.1}\n"
                "      - {name: db-b, cidr: 203.0.113.128/25}")
    (f,) = [f for f in _l3(text) if f.code == "PW014"]
    assert f.severity == "high" and "db-b" in f.title and "public-v4" in f.title


def test_pw015_nexthop_nobody_owns_and_connected_replaced() -> None:
    text = _sub(XROUTE, "routes: [{destination: 10.63.0.0/24, nexthop: 10.61.0.50}]",
                "routes: [{destination: 10.64.0.0/24, nexthop: 10.61.0.77},"
                " {destination: 10.62.0.0/24, nexthop: 10.61.0.50}]")
    got = sorted(f.title for f in _l3(text) if f.code == "PW015")
    assert got == ["router r1's extra route 10.62.0.0/24 via 10.61.0.50 replaces a connected"
                   " route", "router r1's extra route 10.64.0.0/24 via 10.61.0.77: no port has"
                   " 10.61.0.77"]


def test_json_names_the_resource_and_the_reason(tmp_path: Path) -> None:
    f = tmp_path / "t.yaml"
    f.write_text(_sub(SEED002, "port_id: web-2-port}", "port_id: client-port}"))
    out = CliRunner().invoke(main, ["audit", str(f), "--json", "--fail-on", "none"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.output)
    items = data["findings"] if isinstance(data, dict) else data
    (pw,) = [x for x in items if x["code"] == "PW010"]
    assert pw["resources"][0] == {"type": "floatingip", "id": pw["resources"][0]["id"],
                                  "name": "203.0.113.12"}
    assert pw["detail"] and pw["fix"]
    text = CliRunner().invoke(main, ["audit", str(f), "--fail-on", "none"]).output
    assert "PW010 LOW" in text and "floating IP 203.0.113.12 of port client-port" in text
