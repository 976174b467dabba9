"""PW003 across groups: a port's policy is the union of its groups' rules (Neutron)."""

from __future__ import annotations

import ipaddress
import random
from typing import Any

import pytest
from test_audit_matrix import random_topology

from portwall.analyze.audit import Finding, audit
from portwall.analyze.evaluate import Packet, evaluate_direction
from portwall.ir import compile_plan
from portwall.ir.types import HostPlan
from portwall.model.store import Model
from portwall.topology import loads_topology


def topo(groups: str, ports: str) -> str:
    return f"""
project: t
networks:
  - name: net
    subnets: [{{name: sub, cidr: 10.0.0.0/24}}]
security_groups:
{groups}
ports:
{ports}
"""


def pw003(text: str) -> list[Finding]:
    t = loads_topology(text)
    return [f for f in audit(t.model, compile_plan(t.model)) if f.code == "PW003"]


def port(name: str, ip: int, *groups: str) -> str:
    return (f"  - {{name: {name}, network_id: net, fixed_ips: [10.0.0.{ip}],"
            f" security_groups: [{', '.join(groups)}]}}\n")


def group(name: str, *rules: str, egress: bool = False) -> str:
    body = "".join(f"      - {r}\n" for r in rules)
    head = f"  - name: {name}\n" + ("" if egress else "    default_egress_rules: false\n")
    return head + (f"    security_group_rules:\n{body}" if rules else "")


SSH_A = group("A", "{direction: ingress, protocol: tcp, port_range_min: 22, port_range_max: 22,"
              " remote_ip_prefix: 10.0.0.0/8, description: ssh-from-10}")
ALL_TCP_B = group("B", "{direction: ingress, protocol: tcp, port_range_min: 1,"
                  " port_range_max: 65535, description: all-tcp}")


def test_rule_covered_by_another_group_of_every_port() -> None:
    (f,) = pw003(topo(SSH_A + ALL_TCP_B, port("p1", 5, "A", "B") + port("p2", 6, "B", "A")))
    assert f.severity == "info" and f.resources[0].name == "ssh-from-10"
    names = {(r.type, r.name) for r in f.resources}
    assert {("security_group_rule", "all-tcp"), ("security_group", "A"),
            ("security_group", "B")} <= names
    assert "group B" in f.title and "p1, p2" in f.detail and "all ports from anywhere" in f.detail
    assert "stay in B" in f.fix


def test_not_redundant_when_one_port_of_the_group_lacks_the_other_group() -> None:
    ports = port("p1", 5, "A", "B") + port("p2", 6, "A")
    assert not pw003(topo(SSH_A + ALL_TCP_B, ports))
    # ports of B that are not in A do not matter: the question is about A's ports
    ports = port("p1", 5, "A", "B") + port("p3", 7, "B")
    assert [f.resources[0].name for f in pw003(topo(SSH_A + ALL_TCP_B, ports))] == ["ssh-from-10"]


def _tcp(name: str, lo: int, hi: int) -> str:
    return (f"{{direction: ingress, protocol: tcp, port_range_min: {lo}, port_range_max: {hi},"
            f" description: {name}}}")


MID = group("A", _tcp("mid", 50, 150))
LOW = group("B", _tcp("low", 1, 100))
HIGH = group("C", _tcp("high", 101, 200))
WIDE = group("D", _tcp("wide", 1, 1000))


def test_exhaustive_union_over_groups_and_per_port() -> None:
    """Covered only by two other groups together; each port must be covered on its own."""
    groups = MID + LOW + HIGH + WIDE
    (f,) = pw003(topo(groups, port("p1", 5, "A", "B", "C") + port("p2", 6, "C", "A", "B")))
    assert f.resources[0].name == "mid"
    assert {r.name for r in f.resources if r.type == "security_group"} == {"A", "B", "C"}
    # each port has a different cover (B+C for one, D for the other): still redundant
    (f,) = pw003(topo(groups, port("p1", 5, "A", "B", "C") + port("p2", 6, "A", "D")))
    assert f.resources[0].name == "mid"
    assert {"low", "high", "wide"} <= {r.name for r in f.resources}
    # p1 has 50-100 (B), p2 has 101-150 (C): together they cover A, but no port alone does
    assert not pw003(topo(groups, port("p1", 5, "A", "B") + port("p2", 6, "A", "C")))
    # 150 is missing from 1-100 and 101-149: A's rule stays (and C's is the redundant one)
    narrow = group("C", _tcp("high", 101, 149))
    fs = pw003(topo(MID + LOW + narrow, port("p1", 5, "A", "B", "C")))
    assert [f.resources[0].name for f in fs] == ["high"]


def test_direction_ethertype_and_remote_groups() -> None:
    v6 = group("B", "{direction: ingress, ethertype: IPv6, protocol: tcp, port_range_min: 1,"
               " port_range_max: 65535}")
    eg = group("B", "{direction: egress, protocol: tcp, port_range_min: 1, port_range_max: 65535}")
    for other in (v6, eg):
        assert not pw003(topo(SSH_A + other, port("p1", 5, "A", "B")))
    # a prefix that contains every member today does not make a remote-group rule redundant
    rg = group("A", "{direction: ingress, protocol: tcp, port_range_min: 22, port_range_max: 22,"
               " remote_group_id: A, description: ssh-from-A}")
    prefix = group("B", "{direction: ingress, protocol: tcp, port_range_min: 22,"
                   " port_range_max: 22, remote_ip_prefix: 10.0.0.0/24}")
    assert not pw003(topo(rg + prefix, port("p1", 5, "A", "B")))
    # the same remote group in another group's rule does
    same = group("B", "{direction: ingress, protocol: tcp, port_range_min: 1, port_range_max: 100,"
                 " remote_group_id: A}")
    (f,) = pw003(topo(rg + same, port("p1", 5, "A", "B")))
    assert f.resources[0].name == "ssh-from-A"


def test_duplicates_across_groups_report_one_rule_and_the_smaller_group() -> None:
    """Neutron's automatic egress rules of two groups: deleting every reported rule must
    keep the policy, so of two identical rules only one is reported; the one of the group
    whose ports are all in the other group."""
    groups = group("web", egress=True) + group("base", egress=True)
    ports = port("w1", 5, "web", "base") + port("b1", 6, "base")
    fs = pw003(topo(groups, ports))
    assert len(fs) == 2 and {f.resources[1].name for f in fs} == {"web"}
    assert all(f.severity == "info" and "base" in f.title for f in fs)
    fs = pw003(topo(groups, port("w1", 5, "web", "base") + port("w2", 6, "base", "web")))
    assert len(fs) == 2 and len({f.resources[1].name for f in fs}) == 1


def test_groups_without_ports_are_not_reported() -> None:
    lonely = group("lonely", _tcp("narrow", 22, 22), _tcp("wide", 1, 1000))
    assert not pw003(topo(lonely + ALL_TCP_B, port("p1", 5, "B")))
    # the same group with a port: the within-group finding (severity low) is back
    (f,) = pw003(topo(lonely + ALL_TCP_B, port("p1", 5, "lonely")))
    assert f.severity == "low" and f.resources[0].name == "narrow"


# ------------------------------------------------------------------ soundness
def _addresses(plan: HostPlan, family: int, rng: random.Random) -> list[Any]:
    """Addresses around every boundary the policy has: fixed IPs, pair and prefix edges."""
    nets: set[Any] = set()
    for p in plan.ports:
        nets.update(a for a in p.addresses if a.version == family)
        nets.update(e.cidr for e in p.spoof if e.cidr is not None and e.family == family)
    for rs in plan.rulesets.values():
        for r in rs.rules:
            for a in (r.match.src, r.match.dst):
                if isinstance(a, ipaddress.IPv4Network | ipaddress.IPv6Network) \
                        and a.version == family:
                    nets.add(a)
    top = 2 ** (32 if family == 4 else 128) - 1
    out = set()
    for n in nets:
        for v in (int(n.network_address), int(n.broadcast_address)):
            out.update(x for x in (v - 1, v, v + 1) if 0 <= x <= top)
    out.update(rng.randrange(top) for _ in range(5))
    make = ipaddress.IPv4Address if family == 4 else ipaddress.IPv6Address
    return [make(x) for x in sorted(out)]


def _verdicts(plan: HostPlan, pools: dict[int, list[Any]]) -> dict[tuple[Any, ...], bool]:
    out = {}
    for fam, pool in pools.items():
        for p in plan.ports:
            own = next((a.network_address for a in p.addresses if a.version == fam), None)
            if own is None:
                continue
            for other in pool:
                for proto, dport, itype in ((6, 22, None), (6, 53, None), (6, 100, None),
                                            (6, 1500, None), (17, 53, None), (17, 443, None),
                                            (1 if fam == 4 else 58, None, 8),
                                            (1 if fam == 4 else 58, None, 128), (47, None, None)):
                    kw: dict[str, Any] = {"sport": 40000, "dport": dport} if dport else {}
                    if itype is not None:
                        kw["icmp_type"] = itype
                    for d, src, dst in (("ingress", other, own), ("egress", own, other)):
                        pkt = Packet(fam, src, dst, proto, src_mac=p.mac, **kw)  # type: ignore[arg-type]
                        out[(p.name, d, fam, str(other), proto, dport, itype)] = \
                            evaluate_direction(plan, p, d, pkt).allowed  # type: ignore[arg-type]
    return out


SEEDS = range(20)


@pytest.mark.parametrize("seed", SEEDS)
def test_deleting_every_reported_rule_keeps_every_verdict(seed: int) -> None:
    t = loads_topology(random_topology(seed, n_ports=10))
    model: Model = t.model
    plan = compile_plan(model)
    rng = random.Random(seed)
    pools = {fam: _addresses(plan, fam, rng) for fam in (4, 6)}  # of the policy before
    before = _verdicts(plan, pools)
    reported = [f.resources[0].id for f in audit(model, plan) if f.code == "PW003"]
    for rid in reported:
        model.delete_security_group_rule(rid)
    assert _verdicts(compile_plan(model), pools) == before


def test_random_topologies_have_cross_group_findings() -> None:
    """The soundness test above is not vacuous: its topologies do get PW003 findings of
    both kinds."""
    sev = []
    for seed in SEEDS:
        t = loads_topology(random_topology(seed, n_ports=10))
        sev += [f.severity for f in audit(t.model, compile_plan(t.model)) if f.code == "PW003"]
    assert sev.count("info") >= 5 and sev.count("low") >= 1
