"""``audit --matrix`` agrees with ``trace`` on every pair of the routed examples, packet by
packet: flows across routers (FWaaS both ways, NAT, extra routes and a forwarding VM, the
outside to floating IPs and back) and flows on one network."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import yaml

from portwall.analyze.l3matrix import RoutedMatrix, allows
from portwall.analyze.matrix import reachability_matrix
from portwall.analyze.reach import SetIntervals, pair_services, services_text
from portwall.analyze.trace import Tracer
from portwall.ir import compile_plan
from portwall.ir.types import HostPlan
from portwall.model.protocols import ICMP, ICMPV6, TCP, UDP
from portwall.topology import loads_topology

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SEED002 = (EXAMPLES / "seed002-router-fip.yaml").read_text()
APP_FW = SEED002.replace("firewall_groups:\n", """firewall_groups:
  - {name: app-fw, ingress_firewall_policy_id: app-in, egress_firewall_policy_id: app-out,
     ports: [edge-app-v4, edge-app-v6]}
""").replace("firewall_policies:\n", """firewall_policies:
  - {name: app-in, firewall_rules: [web-in, ping-from-app]}
  - {name: app-out, firewall_rules: [no-ssh, db-from-app, any-out-v6]}
""").replace("firewall_rules:\n  - {name: no-db", """firewall_rules:
  - {name: web-in, protocol: tcp, destination_port: "80:81", action: allow}
  - {name: no-db""")
CASES = {
    "seed002": SEED002,
    "seed002-app-fw": APP_FW,
    "extraroute": (EXAMPLES / "extraroute-nexthop.yaml").read_text(),
}


def _dports(plan: HostPlan) -> list[int]:
    """Every bound a rule names, and its neighbours: where answers can change."""
    out = {1, 22, 67, 68, 80, 5432, 8080, 40000, 65535}
    ranges = [r.match.dport for rs in plan.rulesets.values() for r in rs.rules]
    ranges += [r.match.dport for rp in plan.routers.values() for fw in rp.firewalls
               for d in ("ingress", "egress") for r in fw.rules(d) or ()]  # type: ignore[arg-type]
    for pr in ranges:
        if pr is not None:
            out |= {pr.lo - 1, pr.lo, pr.hi, pr.hi + 1}
    return sorted(p for p in out if 1 <= p <= 65535)


def _random(seed: int) -> str:
    """A random routed topology of the L3 differential test (routers, floating IPs, a
    firewall group with allow/deny/reject in random order, SNAT on or off)."""
    spec = importlib.util.spec_from_file_location(
        "l3diff", Path(__file__).resolve().parents[1] / "e2e" / "test_l3_differential.py")
    assert spec is not None and spec.loader is not None
    mod = sys.modules.get("l3diff") or importlib.util.module_from_spec(spec)
    if "l3diff" not in sys.modules:
        sys.modules["l3diff"] = mod  # dataclasses look their module up while defining
        spec.loader.exec_module(mod)
    return str(yaml.safe_dump(mod.generate(seed)))


@pytest.mark.parametrize("case", sorted(CASES))
def test_matrix_agrees_with_trace_on_every_pair(case: str) -> None:
    _agree(CASES[case], 6, 300)


@pytest.mark.parametrize("seed", range(4))
def test_matrix_agrees_with_trace_on_random_routed_topologies(seed: int) -> None:
    _agree(_random(seed), 10, 300)


def _agree(text: str, min_routed: int, min_checked: int) -> None:
    topo = loads_topology(text)
    plan = compile_plan(topo.model)
    assert plan.routers
    rows = reachability_matrix(topo.model, plan, lab=topo.lab, per_port=True)
    rm = RoutedMatrix(topo.model, plan, topo.lab)
    tracer = Tracer(topo.model, plan, topo.lab)
    sets = SetIntervals(plan)
    by_name = {p.name: p for p in plan.ports}
    dports = _dports(plan)
    checked = routed = 0
    for row in rows:
        fam = row.family
        a, b = by_name.get(row.src), by_name.get(row.dst)
        if a is not None and b is not None and (a.network_id == b.network_id
                                                or rm.same_vm(a, b)):
            assert not row.path
            sa = next(int(x.network_address) for x in a.addresses if x.version == fam)
            sb = next(int(x.network_address) for x in b.addresses if x.version == fam)
            sv = pair_services(plan, a, b, fam, sa, sb, sets)
            assert row.services == services_text(sv)
            if rm.same_vm(a, b):
                continue
            src, dst = a.id, b.id
        else:
            src = a.id if a is not None else "outside"
            dst = b.id if b is not None else ("outside" if row.dst.startswith("outside")
                                              else row.dst.split()[0])
            ans = rm.answer(src, dst, fam)
            assert ans is not None and row.services == ans.text and row.path == ans.path
            sv = ans.services  # type: ignore[assignment]
            routed += 1
        icmp = ICMP if fam == 4 else ICMPV6
        probes = [(icmp, None)] + [(p, d) for p in (TCP, UDP) for d in dports]
        for proto, dport in probes:
            kw = ({"dport": dport, "sport": 40000} if dport is not None else
                  {"icmp_type": 8 if fam == 4 else 128, "icmp_code": 0})
            t = tracer.trace(src, dst, proto, family=fam, **kw)  # type: ignore[arg-type]
            if sv is None:
                assert t.verdict == "unknown", (row.text(), proto, dport, t.verdict)
                continue
            want = allows(sv, proto, dport, 40000 if dport else None,
                          kw.get("icmp_type"), kw.get("icmp_code"))
            assert t.verdict == ("allow" if want else "deny"), (
                row.text(), proto, dport, t.verdict, [s.detail for s in t.steps][-3:])
            checked += 1
    assert routed >= min_routed and checked > min_checked, (routed, checked)


def test_routed_rows_show_the_firewall_and_nat() -> None:
    topo = loads_topology(SEED002)
    plan = compile_plan(topo.model)
    rows = {(r.src, r.dst, r.family): r for r in
            reachability_matrix(topo.model, plan, lab=topo.lab)}
    # the pure policy would say "tcp" (db's group allows all tcp from app): db-fw narrows it
    r = rows[("web-1-port", "db-1-port", 4)]
    assert r.services == "icmp; tcp 5432" and r.path == "via router edge"
    r = rows[("client-port", "db-1-port", 4)]
    assert r.services == "icmp"  # no-db-from-client comes first
    r = rows[("outside (198.51.100.10)", "203.0.113.11 (web-1-port)", 4)]
    assert "tcp 80" in r.services and "DNAT 203.0.113.11 -> 10.2.0.11" in r.path
    r = rows[("client-port", "outside (198.51.100.10)", 4)]
    assert "SNAT 10.2.0.100 -> 203.0.113.2" in r.path
    assert r.to_json()["path"] == r.path


def test_without_routers_the_matrix_is_pure_policy() -> None:
    text = (EXAMPLES / "seed000-router-vm.yaml").read_text()
    topo = loads_topology(text)
    plan = compile_plan(topo.model)
    assert not plan.routers
    assert all(not r.path for r in reachability_matrix(topo.model, plan, lab=topo.lab))
