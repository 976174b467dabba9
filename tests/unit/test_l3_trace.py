"""L3 in the IR, the evaluator through routers, and trace's verdicts at the model's edges."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from click.testing import CliRunner

from portwall.analyze.evaluate import Packet
from portwall.analyze.l3eval import route_packet
from portwall.analyze.trace import Tracer
from portwall.cli import main
from portwall.ir import compile_plan
from portwall.ir.types import CtState
from portwall.topology import load_topology, loads_topology

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SEED002 = EXAMPLES / "seed002-router-fip.yaml"

# The measured defect: app-sg allows 8080 only from its own members; `outside` sits
# on another subnet whose gateway no router models.
DEFECT = """
project: defect
networks:
  - name: out-net
    subnets: [{name: out-v4, cidr: 10.50.0.0/24, gateway_ip: 10.50.0.1}]
  - name: app-net
    subnets: [{name: app-v4, cidr: 10.60.0.0/24, gateway_ip: 10.60.0.1}]
security_groups:
  - name: app-sg
    security_group_rules:
      - {direction: ingress, protocol: tcp, port_range_min: 8080, port_range_max: 8080,
         remote_group_id: app-sg}
ports:
  - {name: outside-port, network_id: out-net, fixed_ips: [10.50.0.10]}
  - {name: app1-port, network_id: app-net, fixed_ips: [10.60.0.11], security_groups: [app-sg]}
ROUTERS
lab:
  vms:
    outside: {ports: [outside-port]}
    app1: {ports: [app1-port]}
"""
ROUTER = """
routers:
  - {name: r1, interfaces: [out-v4, app-v4]}
"""


def test_defect_path_through_unmodelled_gateway_is_unknown() -> None:
    topo = loads_topology(DEFECT.replace("ROUTERS", ""))
    res = Tracer.for_topology(topo, compile_plan(topo.model)).trace(
        "outside", "app1", "tcp", dport=8080)
    assert res.verdict == "unknown" and not res.allowed
    assert res.unknown == "leaves through gateway 10.50.0.1, which no router models"
    assert res.to_json()["verdict"] == "unknown"


def test_defect_with_router_modelled_is_deny_naming_app_sg() -> None:
    topo = loads_topology(DEFECT.replace("ROUTERS", ROUTER))
    res = Tracer.for_topology(topo, compile_plan(topo.model)).trace(
        "outside", "app1", "tcp", dport=8080)
    assert res.verdict == "deny"
    deny = [s for s in res.steps if s.outcome == "deny"]
    assert deny and deny[0].stage == "ingress" and "app-sg" in deny[0].detail


def test_defect_cli_exit_codes(tmp_path: Path) -> None:
    f = tmp_path / "d.yaml"
    f.write_text(DEFECT.replace("ROUTERS", ""))
    args = ["trace", str(f), "--from", "outside", "--to", "app1", "--proto", "tcp",
            "--dport", "8080"]
    r = CliRunner().invoke(main, args, env={"COLUMNS": "100"})
    assert r.exit_code == 3, r.output
    assert "unknown: leaves through gateway 10.50.0.1, which no router models" in \
        " ".join(r.output.split())  # however the terminal's width wrapped it
    f.write_text(DEFECT.replace("ROUTERS", ROUTER))
    r = CliRunner().invoke(main, args, env={"COLUMNS": "100"})
    assert r.exit_code == 1 and "app-sg" in r.output


def _tracer() -> Tracer:
    topo = load_topology(SEED002)
    return Tracer.for_topology(topo, compile_plan(topo.model))


def test_router_plan_has_interfaces_nat_and_firewall() -> None:
    plan = compile_plan(load_topology(SEED002).model)
    (r,) = plan.routers.values()
    assert r.name == "edge" and r.gateway is not None and len(r.interfaces) == 4
    assert r.snat is not None and str(r.snat.to) == "203.0.113.2"
    assert {str(f.floating) for f in r.floating_ips} == {"203.0.113.11", "203.0.113.12"}
    assert r.metadata is not None and len(r.firewalls) == 1
    fw = r.firewalls[0]
    assert fw.ingress is not None and [x.origin.resource_name for x in fw.ingress] == [
        "no-db-from-client", "db-from-app", "db-from-app-v6", "no-ssh", "ping-from-app"]
    assert any(str(rt.destination) == "0.0.0.0/0" and str(rt.via) == "203.0.113.1"
               for rt in r.routes)


def test_snat_float_snat_and_east_west() -> None:
    t = _tracer()
    res = t.trace("client", "outside", "tcp", dport=7)
    assert res.allowed and res.translated is not None
    assert str(res.translated.src) == "203.0.113.2"  # gateway address
    res = t.trace("web-1", "outside", "tcp", dport=7)
    assert res.translated is not None and str(res.translated.src) == "203.0.113.11"
    res = t.trace("web-1", "db-1", "tcp", dport=5432)
    assert res.allowed and res.translated is None  # east-west: no NAT
    assert any(s.detail == "east-west: not SNATed" for s in res.steps)


def test_floating_ip_from_outside_and_hairpin() -> None:
    t = _tracer()
    res = t.trace("outside", "203.0.113.11", "tcp", dport=80)
    assert res.allowed and res.translated is not None
    assert (str(res.translated.src), str(res.translated.dst)) == ("198.51.100.10", "10.2.0.11")
    assert not t.trace("outside", "203.0.113.11", "tcp", dport=22).allowed
    res = t.trace("client", "203.0.113.11", "tcp", dport=80)  # hairpin
    assert res.allowed and res.translated is not None
    assert (str(res.translated.src), str(res.translated.dst)) == ("203.0.113.2", "10.2.0.11")
    res = t.trace("web-2", "203.0.113.11", "tcp", dport=80)  # hairpin from a FIP owner
    assert res.translated is not None and str(res.translated.src) == "203.0.113.12"


def test_fwaas_order_reject_default_deny_ipv6_and_metadata() -> None:
    t = _tracer()
    client = t.trace("client", "db-1", "tcp", dport=5432)
    assert not client.allowed and any("no-db-from-client" in s.detail for s in client.steps)
    assert t.trace("web-1", "db-1", "tcp", dport=5432).allowed
    ssh = t.trace("web-1", "db-1", "tcp", dport=22)
    assert not ssh.allowed and any("reject" in s.detail for s in ssh.steps)
    assert not t.trace("web-1", "db-1", "tcp", dport=80).allowed
    assert t.trace("web-1", "2001:db8:3::21", "tcp", dport=5432).allowed
    v6 = t.trace("web-1", "2001:db8:3::21", "tcp", dport=80)
    assert not v6.allowed and any("default deny" in s.detail for s in v6.steps)
    md = t.trace("web-1", "169.254.169.254", "tcp", dport=80)
    assert md.allowed and any(s.stage == "metadata" for s in md.steps)
    assert not any(s.stage == "route" and "via qg-" in s.detail for s in md.steps)


def test_fwaas_established_and_invalid() -> None:
    plan = compile_plan(load_topology(SEED002).model)
    (r,) = plan.routers.values()
    app = next(i for i in r.interfaces if any(str(a.ip) == "10.2.0.1" for a in i.addresses))
    for ct, ok in ((CtState.ESTABLISHED, True), (CtState.INVALID, False), (CtState.NEW, False)):
        pkt = Packet(4, ipaddress.ip_address("10.2.0.11"), ipaddress.ip_address("10.3.0.21"),
                     6, 40000, 80, ct=ct)
        assert route_packet(plan, r, pkt, app).allowed is ok, ct


def test_disabled_firewall_group_does_not_filter() -> None:
    text = SEED002.read_text().replace(
        "ports: [edge-db-v4, edge-db-v6]}", "ports: [edge-db-v4, edge-db-v6], admin_state_up: false}")
    topo = loads_topology(text)
    t = Tracer.for_topology(topo, compile_plan(topo.model))
    assert t.trace("web-1", "db-1", "tcp", dport=80).allowed
