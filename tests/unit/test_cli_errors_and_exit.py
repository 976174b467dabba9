"""What a person sees: every error of a file in one run, syntax errors in words, names
instead of ids, audit's exit status and its silence about what the user did not write."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from portwall.cli import main
from portwall.ir import compile_plan
from portwall.topology import TopologyError, loads_topology
from portwall.topology.spec import TopologyErrors

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"

#: Three independent mistakes (and a fourth that only follows from the first).
BROKEN = """\
networks:
  - name: net
    subnets: [{name: sub, cidr: 10.0.0.0/24}]
  - name: net
    subnets: [{name: sub2, cidr: 10.0.9.0/24}]
security_groups:
  - name: web
    security_group_rules:
      - {direction: ingress, protocol: tcp, port_range_min: 90, port_range_max: 80}
ports:
  - {name: a, network_id: net, fixed_ips: [10.0.1.5], security_groups: [web]}
  - {name: b, network_id: nowhere, fixed_ips: [10.0.0.6]}
  - {name: c, network_id: net, fixed_ips: [10.0.0.7], security_groups: [web]}
lab:
  vms:
    vb: {ports: [b]}
    vc: {ports: [c]}
  expect:
    - {from: vc, to: vb, proto: icmp, verdict: allow}
"""


def _errors(text: str, path: str = "broken.yaml") -> list[TopologyError]:
    with pytest.raises(TopologyError) as info:
        loads_topology(text, path)
    assert isinstance(info.value, TopologyErrors)
    return info.value.errors


def test_every_independent_error_in_one_run() -> None:
    errs = _errors(BROKEN)
    where = [(e.line, e.location) for e in errs]
    assert (4, "networks[1].name") in where  # the duplicate, where it is declared
    assert (9, "security_groups[0].security_group_rules[0].port_range_min") in where
    assert (11, "ports[0].fixed_ips[0].ip_address") in where
    assert (12, "ports[1].network_id") in where
    # port b was refused: VM vb and the expectation about it are not reported again
    assert len(errs) == 4, [str(e) for e in errs]


def test_address_outside_subnet_names_the_network() -> None:
    [err] = [e for e in _errors(BROKEN) if e.location.startswith("ports[0].fixed_ips")]
    assert "network 'net'" in err.message
    assert not any(c in err.message for c in ("-4", "-5")), err.message  # no uuid


def test_duplicate_names_reported_at_each_declaration() -> None:
    text = BROKEN.replace("vb: {ports: [b]}", "vb: {ports: [c]}") + ""
    errs = _errors(text.replace("  - {name: c,", "  - {name: a,"))
    dup = [e for e in errs if "already declared" in e.message]
    assert {(e.line, e.location) for e in dup} == {(4, "networks[1].name"), (13, "ports[2].name")}
    assert all("line" in e.message for e in dup)


def test_tab_in_yaml_is_explained_with_its_line() -> None:
    text = "networks:\n  - name: n\n\tsubnets: []\n"
    [err] = _errors(text)
    assert err.line == 3 and "tab" in err.message and "spaces" in err.message
    assert "cannot start any token" not in err.message


def test_cli_validate_prints_every_error_with_file_line_field(tmp_path: Path) -> None:
    f = tmp_path / "broken.yaml"
    f.write_text(BROKEN)
    r = CliRunner().invoke(main, ["validate", str(f)])
    assert r.exit_code == 2
    heads = [ln for ln in r.output.splitlines() if ln.startswith("error: ")]
    assert len(heads) == 4 and all(ln.startswith(f"error: {f}:") for ln in heads)
    assert "4 errors in" in r.output
    doc = json.loads(CliRunner().invoke(main, ["validate", str(f), "--json"]).output)
    assert doc["valid"] is False and len(doc["errors"]) == 4
    assert {e["line"] for e in doc["errors"]} == {4, 9, 11, 12}


def test_validate_leaves_the_implicit_default_group_out() -> None:
    r = CliRunner().invoke(main, ["validate", str(EXAMPLES / "seed000-router-vm.yaml"),
                                  "--json"])
    assert r.exit_code == 0, r.output
    s = json.loads(r.output)["summary"]
    assert s["security_groups"] == 1 and s["security_group_rules"] == 3  # group open
    assert s["automatic"]["default_group"] is True and s["automatic"]["rules"] == 6


# ------------------------------------------------------------------ audit
CLEAN = """\
networks:
  - name: net
    subnets: [{name: sub, cidr: 10.0.0.0/24}]
security_groups:
  - name: web
    security_group_rules:
      - {direction: ingress, protocol: tcp, port_range_min: 443, port_range_max: 443}
ports:
  - {name: a, network_id: net, fixed_ips: [10.0.0.5], security_groups: [web]}
"""
MEDIUM = CLEAN + "  - {name: u, network_id: net, fixed_ips: [10.0.0.9], port_security_enabled: false}\n"


def _audit(tmp_path: Path, text: str, *args: str) -> tuple[int, str]:
    f = tmp_path / "t.yaml"
    f.write_text(text)
    r = CliRunner().invoke(main, ["audit", str(f), *args])
    return r.exit_code, r.output


def test_audit_default_exit_fails_on_critical_and_high(tmp_path: Path) -> None:
    seed001 = (EXAMPLES / "seed001-vip-nat.yaml").read_text()
    code, out = _audit(tmp_path, seed001)
    assert code == 1 and "PW001 CRITICAL" in out and "exit status 1" in out
    assert _audit(tmp_path, seed001, "--fail-on", "none")[0] == 0
    assert _audit(tmp_path, seed001, "--fail-on", "critical")[0] == 1
    # a medium finding alone passes by default, fails when asked
    code, out = _audit(tmp_path, MEDIUM)
    assert code == 0 and "PW005 MEDIUM" in out
    assert _audit(tmp_path, MEDIUM, "--fail-on", "medium")[0] == 1
    fixed = (EXAMPLES / "seed001-vip-nat-fixed.yaml").read_text()
    code, out = _audit(tmp_path, fixed)
    assert "PW001" not in out and code == 0, out


def test_audit_json_says_whether_it_failed(tmp_path: Path) -> None:
    code, out = _audit(tmp_path, (EXAMPLES / "seed001-vip-nat.yaml").read_text(), "--json")
    doc = json.loads(out)
    assert code == 1 and doc["failed"] is True and doc["fail_on"] == "high"


def test_audit_plurals(tmp_path: Path) -> None:
    code, out = _audit(tmp_path, MEDIUM)
    assert "\n1 finding (1 medium)" in out and "1 findings" not in out
    code, out = _audit(tmp_path, CLEAN)
    assert code == 0 and out.startswith("0 findings")


def test_no_finding_about_the_implicit_default_group(tmp_path: Path) -> None:
    """Every file gets the project's default group (ingress from itself, IPv4 and IPv6);
    with no IPv6 ports its IPv6 rule is "empty", but the user never wrote it."""
    from portwall.analyze.audit import audit

    text = MEDIUM + "  - {name: plain, network_id: net, fixed_ips: [10.0.0.8]}\n"  # in default
    topo = loads_topology(text)
    plan = compile_plan(topo.model)
    raw = audit(topo.model, plan)
    assert any(f.code == "PW004" for f in raw)  # what the analysis alone sees
    assert not any(f.code == "PW004" for f in audit(topo.model, plan, written=topo.written))
    assert "PW004" not in _audit(tmp_path, text)[1]


def test_pw004_still_reported_for_a_rule_the_user_wrote(tmp_path: Path) -> None:
    text = CLEAN.replace(
        "port_range_max: 443}",
        "port_range_max: 443}\n      - {direction: ingress, protocol: tcp, port_range_min: 22,"
        " port_range_max: 22, remote_group_id: admin}\n  - name: admin")
    _code, out = _audit(tmp_path, text)
    assert "PW004" in out and "group admin has no ports" in " ".join(out.split())
