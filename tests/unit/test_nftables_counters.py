"""Counters on the nftables port filter: every drop counts (so ``lab check`` can prove a
denied probe by its rule's counter), accepts do not, the lab finds the chain a port's drop
is counted in, and the applier's diff tells a rule without its counter from one with it.

The kernel side (real packets raising these counters) is tests/e2e/test_l3_check.py and
tests/e2e/test_multihost.py on both backends."""

from __future__ import annotations

from pathlib import Path

from portwall.backends.iptables.render import egress_chain, ingress_chain
from portwall.backends.nftables.counters import _MAPS, _chains, parse_counters
from portwall.backends.nftables.render import render_nftables
from portwall.backends.nftables.spell import rid_of
from portwall.backends.nftables.state import KernelState, parse
from portwall.backends.nftables.text import full_text
from portwall.backends.nftables.types import INET, TABLE, NftChain, NftRuleset
from portwall.ir import compile_plan
from portwall.ir.types import PortPlan, Rule
from portwall.lab.evidence import places
from portwall.model import Model, stable_ids
from portwall.topology import load_topology

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def chains_of(rs: NftRuleset) -> dict[str, tuple[str, str]]:
    """device -> (ingress chain, egress chain) of every filtered port of a rendered ruleset
    (the same lookup the lab does in the kernel's dispatch maps)."""
    return _chains({k: rs.sets[k].elements for k in _MAPS if k in rs.sets})


def _model() -> Model:
    m = Model(stable_ids("unit-nft-counters"))
    net = m.create_network({"name": "n"}).id
    m.create_subnet({"network_id": net, "cidr": "10.5.0.0/16"})
    web = m.create_security_group({"name": "web", "security_group_rules": [
        {"direction": "ingress", "protocol": "tcp", "port_range_min": 80,
         "port_range_max": 80}]}).id
    db = m.create_security_group({"name": "db", "security_group_rules": [
        {"direction": "ingress", "protocol": "tcp", "port_range_min": 5432,
         "port_range_max": 5432, "remote_group_id": web}]}).id
    for i, groups in enumerate(([web], [web], [db], [])):
        m.create_port({"network_id": net, "name": f"p{i}", "security_groups": groups,
                       "fixed_ips": [{"ip_address": f"10.5.0.{10 + i}"}]})
    m.create_port({"network_id": net, "name": "open", "port_security_enabled": False,
                   "fixed_ips": [{"ip_address": "10.5.0.99"}]})
    return m


def test_every_drop_counts_and_no_accept_does() -> None:
    rs = render_nftables(compile_plan(load_topology(EXAMPLES / "seed001-vip-nat.yaml")
                                      .model))
    text = full_text(rs)
    rules = [ln for ln in text.splitlines() if ln.startswith("add rule ")]
    drops = [ln for ln in rules if " drop comment " in ln]
    assert drops and all(" counter drop comment " in ln for ln in drops), \
        [ln for ln in drops if " counter " not in ln]
    assert not [ln for ln in rules if " counter " in ln and " drop comment " not in ln]
    tags = {rid_of(ln.split('comment "', 1)[1].rstrip('"')) for ln in drops}
    # the drops lab check credits: fallback and invalid of port chains, anti-spoof (IP,
    # ARP, ND), provider drops
    assert {"fallback-v4", "fallback-v6", "ct-invalid-v4", "ct-invalid-v6", "pw-spoof-drop",
            "pw-arp-spoof-drop", "pw-nd-spoof-drop", "prov-dhcp-server-drop"} <= tags, tags
    assert "add rule inet portwall spoof counter drop comment \"pw-spoof-drop\"" in rules
    assert "add rule bridge portwall arp_check counter drop comment \"pw-arp-spoof-drop\"" \
        in rules


def test_dispatch_maps_name_where_each_ports_drops_are_counted() -> None:
    plan = compile_plan(_model())
    rs = render_nftables(plan)
    by_dev = chains_of(rs)
    names = {p.name: p for p in plan.ports}
    filtered = [p for p in plan.ports if p.filtered]
    assert {p.device for p in filtered} == set(by_dev)
    assert names["open"].device not in by_dev  # no port-security: no chain, no counter
    # ports with equal groups share their chains; other groups get others
    assert by_dev[names["p0"].device] == by_dev[names["p1"].device]
    assert len({by_dev[names[n].device] for n in ("p0", "p2", "p3")}) == 3
    for p in filtered:
        for direction, chain in zip(("ingress", "egress"), by_dev[p.device], strict=True):
            rules = rs.chains[(INET, chain)]
            steps = p.ingress if direction == "ingress" else p.egress
            drops = {s.rid for s in steps if isinstance(s, Rule) and s.action.value == "drop"}
            # every drop rule of the port's direction is a counting rule of that chain
            counting = {t.split(" ", 1)[0] for r, t in zip(rules.rules, rules.tags(),
                                                            strict=True) if " counter " in r}
            assert drops and drops <= counting, (p.name, direction, drops, counting)


def test_the_kernels_dispatch_maps_read_back_to_the_same_chains() -> None:
    """What ``kernel_port_chains`` does with a listing: the kernel's JSON of the three maps
    (marks in hex, verdicts as goto objects) gives the chains the renderer chose."""
    plan = compile_plan(_model())
    rs = render_nftables(plan)
    items: list[dict[str, object]] = []
    for fam, name in (("bridge", "ports"), ("inet", "ingress"), ("inet", "egress")):
        elem = []
        for el in rs.sets[(fam, name)].elements:
            key, val = el.split(" : ", 1)
            if name == "ports":
                elem.append([key.strip('"'), hex(int(val))])
            else:
                elem.append([int(key), {"goto": {"target": val.split()[1]}}])
        items.append({"map": {"family": fam, "name": name, "table": TABLE,
                              "type": "ifname" if name == "ports" else "mark",
                              "map": "mark" if name == "ports" else "verdict", "elem": elem}})
    state = KernelState()
    for fam in ("bridge", "inet"):
        parse([i for i in items if i["map"]["family"] == fam], fam, state)  # type: ignore[index]
    got = _chains({k: v.elements for k, v in state.sets.items()})
    assert got == chains_of(rs) and got


def test_lab_places_follow_the_backend() -> None:
    plan = compile_plan(_model())
    p0: PortPlan = plan.ports[0]
    nft, ipt = places("nftables"), places("iptables")
    assert nft.port_chain("pwt-no-such-namespace", p0, "ingress") is None  # nothing to read
    assert nft.spoof(p0) == ("spoof", "pw-spoof-drop")
    assert ipt.port_chain("any", p0, "ingress") == ingress_chain(p0)
    assert ipt.port_chain("any", p0, "egress") == egress_chain(p0)
    assert ipt.spoof(p0)[1] == "pw-spoof-drop"


def test_counters_parsed_from_a_stateful_listing_of_one_table() -> None:
    items = [
        {"rule": {"family": "inet", "table": TABLE, "chain": "pi_abc",
                  "comment": "fallback-v4",
                  "expr": [{"match": {"op": "==", "left": {"meta": {"key": "nfproto"}},
                                      "right": "ipv4"}},
                           {"counter": {"packets": 7, "bytes": 420}}, {"drop": None}]}},
        {"rule": {"family": "inet", "table": TABLE, "chain": "spoof",
                  "comment": "pw-spoof-drop",
                  "expr": [{"counter": {"packets": 2, "bytes": 80}}, {"drop": None}]}},
        {"rule": {"family": "inet", "table": TABLE, "chain": "gi_web", "comment": "r1 web",
                  "expr": [{"accept": None}]}},  # no counter: not read
        {"rule": {"family": "inet", "table": "other", "chain": "x", "comment": "fallback-v4",
                  "expr": [{"counter": {"packets": 9, "bytes": 9}}, {"drop": None}]}},
    ]
    assert parse_counters(items, TABLE) == {(4, "pi_abc", "fallback-v4"): 7,
                                            (4, "spoof", "pw-spoof-drop"): 2,
                                            (6, "spoof", "pw-spoof-drop"): 2}


def _kernel(counted: bool) -> KernelState:
    expr: list[dict[str, object]] = [{"counter": None}] if counted else []
    state = KernelState()
    parse([{"table": {"family": "inet", "name": TABLE}},
           {"chain": {"family": "inet", "table": TABLE, "name": "spoof"}},
           {"rule": {"family": "inet", "table": TABLE, "chain": "spoof",
                     "comment": "pw-spoof-drop", "expr": [*expr, {"drop": None}]}}],
          INET, state)
    return state


def test_a_kernel_rule_without_its_counter_differs_from_the_rendered_one() -> None:
    want = NftChain(INET, "spoof", ('counter drop comment "pw-spoof-drop"',))
    assert want.tags() == ("pw-spoof-drop",)  # comments alone cannot tell them apart
    assert _kernel(counted=True).chains[(INET, "spoof")] == want.signature()
    assert _kernel(counted=False).chains[(INET, "spoof")] != want.signature()
