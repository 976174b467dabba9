"""The OpenFlow renderer: spelling, cookies, conjunction sizes, and the flows against the
evaluator packet by packet (through the flow simulator, no switch needed).

What ovs-vswitchd makes of the flows is checked with real packets in
``tests/e2e/test_ovs_*.py``.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import random
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from portwall.analyze.evaluate import Packet, evaluate_hop
from portwall.backends.ovs import flows as F
from portwall.backends.ovs.render import OvsRenderer, render_ovs
from portwall.backends.ovs.sim import Simulator, simulate_hop
from portwall.ir import PlanCompiler, compile_plan
from portwall.ir.types import CtState, PortRange
from portwall.model import Model
from portwall.topology import load_topology, loads_topology

ROOT = Path(__file__).resolve().parent.parent.parent


def _differential() -> Any:
    spec = importlib.util.spec_from_file_location(
        "pw_differential", ROOT / "tests" / "e2e" / "test_differential.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize(("lo", "hi", "count"), [
    (80, 80, 1), (1, 65535, 16), (0, 65535, 1), (8000, 8100, 4), (1, 65534, 30), (5000, 5100, 7),
])
def test_port_ranges_are_value_mask_pairs(lo: int, hi: int, count: int) -> None:
    """Exactly the range, in the fewest value/mask pairs (1-65534 = 30, as Neutron says)."""
    masks = F.port_masks(PortRange(lo, hi))
    assert len(masks) == count
    covered: set[int] = set()
    for m in masks:
        if m == "":  # the whole range: no match on the port at all
            covered |= set(range(65536))
            continue
        v, _, mask = m.partition("/")
        mv = int(mask, 0) if mask else 0xFFFF
        covered |= {p for p in range(65536) if p & mv == int(v, 0) & mv}
    assert covered == set(range(lo, hi + 1))


def test_every_flow_has_a_cookie_that_names_its_rule() -> None:
    plan = compile_plan(load_topology(ROOT / "examples" / "seed001-vip-nat.yaml").model)
    rs = render_ovs(plan)
    prov = rs.provenance()
    for f in rs.flows():
        owner = rs.owners[f.cookie & F.OWNER_MASK]
        assert f in owner.flows
        rid = rs.rid_of(f.cookie)
        assert rid is not None and rid in prov, f.text()
    # every IR rule of every rule set is traceable to a flow cookie (except rules on an
    # empty remote group, which allow nothing and have no flow)
    def empty(a: object) -> bool:
        sid = getattr(a, "set_id", None)
        return sid is not None and not plan.address_sets[sid].members

    sg_rids = {r.rid for s in plan.rulesets.values() for r in s.rules
               if not (empty(r.match.src) or empty(r.match.dst))}
    rendered = {rs.rid_of(f.cookie) for f in rs.flows()}
    assert sg_rids <= rendered


def test_seed004_flows_like_the_seed() -> None:
    plan = compile_plan(load_topology(ROOT / "examples" / "seed004-ovs-stateful.yaml").model)
    text = render_ovs(plan).sections()[0][1]
    vm1 = plan.port("tap2")
    # ip -> ct(table=..., zone=<network>) and a commit of new connections when delivered
    assert f"ip,in_port={{{vm1.device}}} actions=ct(table=1,zone={vm1.zone})" in text
    assert "ct_state=+new+trk reg7" not in text
    assert f"actions=ct(commit,zone={vm1.zone}),output:{{{vm1.device}}}" in text
    assert "ct_state=+est+trk" in text and "ct_state=+inv+trk" in text
    assert "conjunction(" in text and "conj_id=" in text


def _model(n_members: int, n_rules: int) -> Model:
    rules = [{"direction": "ingress", "ethertype": "IPv4", "protocol": "tcp",
              "port_range_min": 1000 + i, "port_range_max": 1000 + i, "remote_group_id": "web"}
             for i in range(n_rules)]
    doc = {"project": "p", "networks": [{"name": "n", "subnets": [{"name": "s",
                                                                     "cidr": "10.8.0.0/16"}]}],
           "security_groups": [{"name": "web", "security_group_rules": rules}],
           "ports": [{"name": f"p{i}", "network_id": "n", "fixed_ips": [f"10.8.{i // 250}.{i % 250 + 2}"],
                      "security_groups": ["web"]} for i in range(n_members)]}
    return loads_topology(yaml.safe_dump(doc), "<t>").model


def test_remote_group_flows_grow_with_members_plus_rules() -> None:
    def member_and_rule_flows(m: int, r: int) -> int:
        rs = render_ovs(compile_plan(_model(m, r)))
        return sum(1 for f in rs.flows() if f.table in (F.T_INGRESS_RULES, F.T_EGRESS_RULES))

    base = member_and_rule_flows(10, 5)
    # members x10: +90 member flows; rules x10: +45 rule flows -- never 10 x members x rules
    assert member_and_rule_flows(100, 5) - base == 90
    assert member_and_rule_flows(10, 50) - base == 45


def test_member_change_touches_one_flow() -> None:
    model = _model(50, 5)
    comp, rend = PlanCompiler(), OvsRenderer()
    before = rend.render(comp.compile(model))
    port = next(iter(model.ports.values()))
    model.update_port(port.id, {"allowed_address_pairs": [{"ip_address": "10.9.9.9"}]})
    after = rend.render(comp.compile(model))
    changed = {c for c in after.owners.keys() | before.owners.keys()
               if before.owners.get(c) is None or after.owners.get(c) is None
               or before.owners[c].flows != after.owners[c].flows}
    kinds = sorted(F.kind_of(c) for c in changed)
    # the port itself (its anti-spoof entries) and one new member flow
    assert kinds == [F.KIND_PORT, F.KIND_MEMBER]


def test_incremental_render_equals_fresh_render() -> None:
    model = _model(30, 3)
    comp, rend = PlanCompiler(), OvsRenderer()
    rend.render(comp.compile(model))
    port = list(model.ports.values())[3]
    model.update_port(port.id, {"security_groups": []})
    inc = rend.render(comp.compile(model))
    fresh = render_ovs(compile_plan(model))
    assert {c: o.flows for c, o in inc.owners.items()} == {c: o.flows for c, o in fresh.owners.items()}


def test_member_deltas_equal_a_fresh_render() -> None:
    """Members counted from the compiler's set deltas, with one address given by two ports
    (the member flow stays until both are gone) and a port removed and re-added."""
    model = _model(20, 3)
    comp, rend = PlanCompiler(), OvsRenderer()
    rend.render(comp.compile(model))
    a, b, c = list(model.ports.values())[2:5]
    pair = {"allowed_address_pairs": [{"ip_address": "10.9.9.9"}]}

    def check() -> set[int]:
        inc = rend.render(comp.compile(model))
        fresh = render_ovs(compile_plan(model))
        assert {k: o.flows for k, o in inc.owners.items()} == {
            k: o.flows for k, o in fresh.owners.items()}
        return {k for k, o in inc.owners.items() if F.kind_of(k) == F.KIND_MEMBER
                and any("10.9.9.9" in f.match for f in o.flows)}

    assert not check()
    model.update_port(a.id, pair)
    shared = check()
    assert shared
    model.update_port(b.id, pair)
    assert check() == shared
    model.update_port(a.id, {"allowed_address_pairs": []})
    assert check() == shared  # b still gives the address
    model.update_port(b.id, {"allowed_address_pairs": []})
    assert not check()
    body = {k: v for k, v in vars(c).items() if k in ("network_id", "security_groups")}
    model.delete_port(c.id)
    check()
    model.create_port({**body, "name": "again"})
    check()


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_flows_decide_like_the_evaluator(seed: int, tmp_path: Path) -> None:
    """Random topologies (the e2e differential's generator) and random packets, in every
    conntrack state: the simulated flows deliver a packet iff the evaluator allows it."""
    diff = _differential()
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump(diff.generate(seed, dual=seed % 2 == 0), sort_keys=False))
    topo = load_topology(path)
    plan = compile_plan(topo.model)
    rs = Simulator(render_ovs(plan))
    probes = diff.make_probes(topo, plan, seed, 600)
    rng = random.Random(seed)
    ports = {vm: plan.port(topo.lab.vms[vm].ports[0]) for vm in topo.lab.vms}
    bad = []
    for pr in probes:
        pkt = pr.packet()
        state = rng.choice([CtState.NEW, CtState.NEW, CtState.ESTABLISHED, CtState.INVALID,
                            CtState.RELATED])
        pkt = Packet(pkt.family, pkt.src, pkt.dst, pkt.protocol, pkt.sport, pkt.dport,
                     pkt.icmp_type, pkt.icmp_code, pkt.src_mac, state)
        src, dst = ports[pr.src_vm], ports[pr.dst_vm]
        want = evaluate_hop(plan, pkt, src, dst).allowed
        got = dst.device in simulate_hop(rs, pkt, src, dst).outputs
        if want != got:
            bad.append(f"{pkt.describe()} {pr.src_vm}->{pr.dst_vm}: evaluator {want}, flows {got}")
    assert not bad, "\n".join(bad[:20])


def test_arp_and_na_guard_flows() -> None:
    plan = compile_plan(load_topology(ROOT / "examples" / "seed001-vip-nat.yaml").model)
    text = render_ovs(plan).sections()[0][1]
    p = next(p for p in plan.ports if p.filtered and p.addresses)
    a = next(x for x in p.addresses if x.version == 4).network_address
    assert (f"arp,dl_src={p.mac.lower()},arp_sha={p.mac.lower()},arp_spa={a} actions=resubmit(,30)"
            in text)
    assert f"in_port={{{p.device}}},arp actions=drop" in text
    assert f"in_port={{{p.device}}},icmp6,icmp_type=136 actions=drop" in text
    assert ipaddress.ip_address(a)


def test_the_warnings_the_renderer_lists_are_every_owners_warnings() -> None:
    """A rule on ports of a protocol OpenFlow cannot match ports for (dccp) warns; the
    renderer's list of warned owners gives the same warnings as asking every owner."""
    rules = [{"direction": d, "ethertype": "IPv4", "protocol": "dccp", "port_range_min": 80,
              "port_range_max": 80} for d in ("ingress", "egress")]
    doc = {"project": "p", "networks": [{"name": "n", "subnets": [{"name": "s",
                                                                     "cidr": "10.8.0.0/16"}]}],
           "security_groups": [{"name": "odd", "security_group_rules": rules}],
           "ports": [{"name": f"p{i}", "network_id": "n", "fixed_ips": [f"10.8.0.{i + 2}"],
                      "security_groups": ["odd"]} for i in range(3)]}
    model = loads_topology(yaml.safe_dump(doc), "<t>").model
    comp, rend = PlanCompiler(), OvsRenderer()
    for _ in range(2):  # a fresh render, then one from the caches
        rs = rend.render(comp.compile(model))
        every = [w for o in rs.owners.values() for w in o.warnings]
        assert every and rs.warned is not None and rs.warnings() == every
