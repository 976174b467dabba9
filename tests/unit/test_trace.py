"""``portwall trace``: paths, verdicts and explanations on the seed scenarios and small topologies."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from portwall.analyze.trace import TraceError, Tracer
from portwall.cli import main
from portwall.ir import compile_plan
from portwall.topology import Topology, load_topology, loads_topology

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SEEDS = sorted(EXAMPLES.glob("*.yaml"))


def tracer(topo: Topology) -> Tracer:
    return Tracer.for_topology(topo, compile_plan(topo.model))


def _expectations() -> list[tuple[Path, int]]:
    out = []
    for path in SEEDS:
        topo = load_topology(path)
        out += [(path, i) for i in range(len(topo.lab.expect))]
    return out


@pytest.mark.parametrize(("path", "i"), _expectations(),
                         ids=lambda v: v.stem if isinstance(v, Path) else str(v))
def test_trace_agrees_with_every_seed_expectation(path: Path, i: int) -> None:
    """Each seed's ``lab.expect`` line is what real packets do; trace must say the same."""
    topo = load_topology(path)
    e = topo.lab.expect[i]
    res = tracer(topo).trace(e.src, e.dst, e.proto, dport=e.port)
    assert res.verdict == e.verdict, (e.describe(), [s.detail for s in res.steps])


def test_seed000_names_the_missing_address_pair() -> None:
    topo = load_topology(EXAMPLES / "seed000-router-vm.yaml")
    res = tracer(topo).trace("serverX", "serverY", "icmp")
    assert not res.allowed
    # the path crosses vm0: serverX -> vm0-net1, then vm0-net2 -> serverY
    assert [(h.sender, h.receiver) for h in res.hops] == [
        ("serverX-port", "vm0-net1"), ("vm0-net2", "serverY-port")]
    assert res.hops[0].result.allowed and not res.hops[1].result.allowed
    deny = [s for s in res.steps if s.outcome == "deny" and s.stage == "anti-spoof"]
    assert len(deny) == 1 and deny[0].resource_name == "vm0-net2"
    assert "10.0.1.100" in deny[0].detail and "serverX" in deny[0].detail
    assert "not among" in deny[0].detail
    assert res.hint is not None and "10.0.1.0/24" in res.hint and "vm0-net2" in res.hint


def test_seed000_fixed_with_address_pairs() -> None:
    """Applying the hint (pairs on both of vm0's ports) makes the path pass, both ways."""
    text = (EXAMPLES / "seed000-router-vm.yaml").read_text()
    text = text.replace(
        "fixed_ips: [10.0.1.1], security_groups: [open]}",
        "fixed_ips: [10.0.1.1], security_groups: [open],"
        " allowed_address_pairs: [{ip_address: 10.0.2.0/24}]}").replace(
        "fixed_ips: [10.0.2.1], security_groups: [open]}",
        "fixed_ips: [10.0.2.1], security_groups: [open],"
        " allowed_address_pairs: [{ip_address: 10.0.1.0/24}]}")
    topo = loads_topology(text)
    t = tracer(topo)
    res = t.trace("serverX", "serverY", "tcp", dport=22)
    assert res.allowed, [s.detail for s in res.steps]
    spoof = [s for s in res.steps if s.stage == "anti-spoof" and s.resource_name == "vm0-net2"]
    assert spoof and "allowed address pair 10.0.1.0/24" in spoof[0].detail
    assert t.trace("serverY", "serverX", "udp", dport=5353).allowed


SEED001 = """
project: vip
networks:
  - name: lan
    subnets: [{name: lan-sub, cidr: 10.1.1.0/24}]
security_groups:
  - name: ssh
    security_group_rules:
      - {direction: ingress, protocol: tcp, port_range_min: 22, port_range_max: 22,
         remote_ip_prefix: 10.1.1.0/24}
  - name: proxy
    security_group_rules:
      - {direction: ingress, protocol: tcp, port_range_min: 80, port_range_max: 80,
         remote_group_id: ssh}
ports:
  - {name: nat-port, network_id: lan, fixed_ips: [10.1.1.10], security_groups: [ssh],
     allowed_address_pairs: [{ip_address: 0.0.0.0/0}]}
  - {name: proxy1-port, network_id: lan, fixed_ips: [10.1.1.21], security_groups: [proxy]}
  - {name: int-port, network_id: lan, fixed_ips: [10.1.1.30], security_groups: [ssh]}
lab:
  vms:
    nat: {ports: [nat-port], forward: true}
    proxy1: {ports: [proxy1-port]}
    internal: {ports: [int-port], gateway: 10.1.1.10}
"""


def test_seed001_leak_names_member_and_port() -> None:
    t = tracer(loads_topology(SEED001))
    res = t.trace("203.0.113.9", "proxy1", "tcp", dport=80)
    assert res.allowed
    ing = [s for s in res.steps if s.stage == "ingress"]
    assert len(ing) == 1 and ing[0].resource_type == "security_group_rule"
    assert "remote group ssh" in ing[0].detail and "0.0.0.0/0" in ing[0].detail
    assert "nat-port" in ing[0].detail
    assert res.hint is not None and "nat-port" in res.hint
    # not port 81: the rule is only for 80
    res = t.trace("203.0.113.9", "proxy1", "tcp", dport=81)
    assert not res.allowed and res.hint is not None and "--dst-port 81" in res.hint


def test_external_destination_and_forwarding_needs_ingress_rule() -> None:
    t = tracer(loads_topology(SEED001))
    res = t.trace("internal", "8.8.8.8", "tcp", dport=443)
    assert not res.allowed
    assert [(h.sender, h.receiver) for h in res.hops] == [("int-port", "nat-port"),
                                                          ("nat-port", "8.8.8.8")]
    deny = [s for s in res.steps if s.outcome == "deny"]
    assert deny[0].stage == "ingress" and deny[0].resource_name == "nat-port"
    # the NAT VM sends through its subnet's gateway, which no router models: no verdict
    assert t.trace("nat", "8.8.8.8", "tcp", dport=443).verdict == "unknown"


def test_established_state_and_stateless_groups() -> None:
    topo = loads_topology("""
project: s
networks: [{name: n, subnets: [{name: s, cidr: 10.2.0.0/24}]}]
security_groups:
  - {name: closed}
  - name: sl
    stateful: false
    security_group_rules:
      - {direction: ingress, protocol: udp, port_range_min: 53, port_range_max: 53}
ports:
  - {name: a, network_id: n, fixed_ips: [10.2.0.5], security_groups: [closed]}
  - {name: b, network_id: n, fixed_ips: [10.2.0.6], security_groups: [sl]}
""")
    t = tracer(topo)
    assert not t.trace("b", "a", "tcp", dport=5000).allowed
    # a reply of a connection a opened is accepted by conntrack on a's ingress ...
    res = t.trace("10.2.0.99", "a", "tcp", dport=5000, state="established")
    assert res.allowed and any("replies" in s.detail for s in res.steps)
    # ... and so is the reply of a stateless port: a hop with a stateful end is tracked
    # (as Neutron's OVS firewall does), so b's replies to a's connections are ESTABLISHED
    res = t.trace("b", "a", "tcp", dport=5000, state="established")
    assert res.allowed and any("replies" in s.detail for s in res.steps)
    assert t.trace("a", "b", "udp", dport=53).allowed


def test_unfiltered_port_and_errors() -> None:
    topo = loads_topology("""
project: u
networks: [{name: n, subnets: [{name: s, cidr: 10.3.0.0/24}]}]
ports:
  - {name: a, network_id: n, fixed_ips: [10.3.0.5], port_security_enabled: false}
  - {name: b, network_id: n, fixed_ips: [10.3.0.6]}
""")
    t = tracer(topo)
    res = t.trace("b", "a", "tcp", dport=9999)
    assert res.allowed and any("port security is disabled" in s.detail for s in res.steps)
    with pytest.raises(TraceError):
        t.trace("nope", "a", "icmp")
    with pytest.raises(TraceError):
        t.trace("b", "a", "tcp")  # tcp needs a destination port
    with pytest.raises(TraceError):
        t.trace("b", "a", "icmp", dport=3)


def test_cli_json_schema_and_exit_status() -> None:
    runner = CliRunner()
    path = str(EXAMPLES / "seed000-router-vm.yaml")
    r = runner.invoke(main, ["trace", path, "--from", "serverX", "--to", "serverY", "--proto",
                             "tcp", "--dport", "22", "--json"])
    assert r.exit_code == 1, r.output
    doc = json.loads(r.output)
    assert doc["verdict"] == "deny" and isinstance(doc["hint"], str)
    for step in doc["steps"]:
        assert {"stage", "resource_type", "resource_id", "resource_name", "detail"} <= set(step)
    r = runner.invoke(main, ["trace", path, "--from", "serverX", "--to", "vm0", "--proto", "icmp"])
    assert r.exit_code == 0 and r.output.startswith("ALLOW"), r.output
    r = runner.invoke(main, ["trace", path, "--from", "ghost", "--to", "vm0"])
    assert r.exit_code == 2 and "ghost" in r.output
