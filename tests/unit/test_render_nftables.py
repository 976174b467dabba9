"""The nftables renderer's output: shared chains, elements per port, rids, incremental deltas.

What the kernel makes of this text is checked by tests/e2e/test_nftables_*.py.
"""

from __future__ import annotations

from pathlib import Path

from portwall.backends import get, names
from portwall.backends.nftables.render import NftRenderer, render_nftables
from portwall.backends.nftables.spell import COMBO_MASK, match_variants, rid_of
from portwall.backends.nftables.types import BRIDGE, INET
from portwall.ir import compile_plan
from portwall.ir.compile import PlanCompiler
from portwall.ir.types import CtState, Match, PortRange, SetRef
from portwall.model import Model, stable_ids
from portwall.topology import load_topology

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _model(ports: int = 3, pairs: bool = False) -> tuple[Model, str, str]:
    m = Model(stable_ids("unit-nft"))
    net = m.create_network({"name": "n"}).id
    m.create_subnet({"network_id": net, "cidr": "10.5.0.0/16"})
    web = m.create_security_group({"name": "web", "security_group_rules": [
        {"direction": "ingress", "protocol": "tcp", "port_range_min": 80,
         "port_range_max": 80}]}).id
    m.create_security_group_rule({"security_group_id": web, "direction": "ingress",
                                  "protocol": "tcp", "port_range_min": 22,
                                  "port_range_max": 22, "remote_group_id": web})
    for i in range(ports):
        m.create_port({"network_id": net, "name": f"p{i}", "security_groups": [web],
                       "fixed_ips": [{"ip_address": f"10.5.0.{10 + i}"}],
                       "allowed_address_pairs": [{"ip_address": "10.5.9.0/24"}] if pairs else []})
    return m, net, web


def test_registered_by_name() -> None:
    assert "nftables" in names()
    assert get("nftables").render(compile_plan(_model()[0])).backend == "nftables"


def test_ports_with_the_same_groups_share_chains_and_add_only_elements() -> None:
    m, net, web = _model(3)
    rs3 = render_nftables(compile_plan(m))
    m.create_port({"network_id": net, "name": "p9", "security_groups": [web],
                   "fixed_ips": [{"ip_address": "10.5.0.99"}]})
    rs4 = render_nftables(compile_plan(m))
    assert set(rs3.chains) == set(rs4.chains)
    assert rs3.counts()["rules"] == rs4.counts()["rules"]
    port_chains = [k for k in rs4.chains if k[1].startswith(("pi_", "pe_"))]
    assert len(port_chains) == 2  # one ingress and one egress chain for all four ports
    # two-step dispatch: four port marks, one combination id in each verdict map
    assert len(rs4.sets[(INET, "egress")].elements) == 1
    assert len(rs4.sets[(INET, "ingress")].elements) == 1
    assert len(rs4.sets[(INET, "tracked_ids")].elements) == 4
    cid = int(next(iter(rs4.sets[(INET, "egress")].elements)).split(" : ")[0])
    assert {int(e) & COMBO_MASK for e in rs4.sets[(INET, "tracked_ids")].elements} == {cid}
    assert {e.split(" . ")[-1] for e in rs4.sets[(INET, "sp4h")].elements} == {
        "10.5.0.10", "10.5.0.11", "10.5.0.12", "10.5.0.99"}


def test_every_rule_carries_its_rid_and_provenance_covers_spoof_entries() -> None:
    m, _net, _web = _model(2, pairs=True)
    plan = compile_plan(m)
    rs = render_nftables(plan)
    prov = rs.provenance()
    for c in rs.chains.values():
        for r in c.rules:
            assert r.endswith('"'), r
    for tag in {t for c in rs.chains.values() for t in c.tags()}:
        assert tag.startswith(("pw-", "t_")) or rid_of(tag) in prov, tag
    port = plan.ports[0]
    assert prov[f"spoof-{port.id}-0"].kind.value == "allowed_address_pair"
    assert any("10.5.9.0/24" in e for e in rs.sets[(INET, "sp4n")].elements)
    assert any("10.5.9.0/24" in e for e in rs.sets[(BRIDGE, "arp_n")].elements)


def test_dhcp_reply_to_own_address_is_a_template_plus_elements() -> None:
    rs = render_nftables(compile_plan(_model(3)[0]))
    tmpl = [k for k in rs.sets if k[1].startswith("t_")]
    assert len(tmpl) == 1
    assert len(rs.sets[tmpl[0]].elements) == 3
    ingress = next(c for k, c in rs.chains.items() if k[1].startswith("pi_"))
    assert sum(f"@{tmpl[0][1]}" in r for r in ingress.rules) == 1


def test_remote_group_is_a_hash_set_and_an_interval_set() -> None:
    rs = render_nftables(compile_plan(_model(2, pairs=True)[0]))
    group = next(c for k, c in rs.chains.items() if k[1].startswith("gi_"))
    ssh = [r for r in group.rules if "th dport 22" in r]
    assert len(ssh) == 2 and "@r4h_" in ssh[0] and "@r4n_" in ssh[1]
    h = next(s for k, s in rs.sets.items() if k[1].startswith("r4h_"))
    n = next(s for k, s in rs.sets.items() if k[1].startswith("r4n_"))
    assert h.elements == {"10.5.0.10", "10.5.0.11"} and n.elements == {"10.5.9.0/24"}
    assert "flags interval" in n.decl and "interval" not in h.decl


def test_match_spelling() -> None:
    m = Match(family=4, protocol=6, src=SetRef("s"), dport=PortRange(80, 90),
              ct=frozenset({CtState.NEW}))
    assert match_variants(m, {"s": ("a", "b")}) == [
        "meta nfproto ipv4 ip saddr @a meta l4proto 6 th dport 80-90 ct state new",
        "meta nfproto ipv4 ip saddr @b meta l4proto 6 th dport 80-90 ct state new"]
    assert match_variants(Match(family=6, protocol=58, icmp_type=128), {}) == [
        "meta nfproto ipv6 meta l4proto 58 icmpv6 type 128"]


def test_incremental_render_equals_fresh_and_reports_deltas() -> None:
    m, net, web = _model(3)
    comp, r = PlanCompiler(), NftRenderer()
    r.render(comp.compile(m))
    m.create_port({"network_id": net, "name": "p9", "security_groups": [web],
                   "fixed_ips": [{"ip_address": "10.5.0.99"}]})
    plan = comp.compile(m)
    inc, fresh = r.render(plan), render_nftables(plan)
    assert {k: s.elements for k, s in inc.sets.items()} == {
        k: s.elements for k, s in fresh.sets.items()}
    assert {k: c.rules for k, c in inc.chains.items()} == {
        k: c.rules for k, c in fresh.chains.items()}
    added = {k[1]: a for k, (a, rem) in inc.deltas.items() if not rem}
    assert set(added) >= {"ports", "sp4h", "tracked_ids"} and inc.parent == inc.serial - 1
    assert all(len(a) == 1 for k, a in added.items() if k in ("ports", "sp4h", "tracked_ids"))
    # a port of a known group combination adds no verdict-map element (no chain re-check)
    assert not ({"egress", "ingress"} & {k[1] for k in inc.deltas})


def test_render_examples() -> None:
    for f in sorted(EXAMPLES.glob("*.yaml")):
        rs = render_nftables(compile_plan(load_topology(f).model))
        text = rs.sections()[0][1]
        assert "add table inet portwall" in text and "add table bridge portwall" in text


def test_comments_carry_names_after_the_rid() -> None:
    m, _net, web = _model(2)
    plan = compile_plan(m)
    rs = render_nftables(plan)
    prov = rs.provenance()
    group = next(c for k, c in rs.chains.items() if k[1].startswith("gi_"))
    rid80 = next(r.rid for r in plan.rulesets[f"sg-{web}-ingress"].rules
                 if r.match.dport == PortRange(80, 80))
    assert f"{rid80} group web ingress tcp/80" in group.tags()
    assert any(t.endswith(" group web ingress tcp/22") for t in group.tags())
    port_in = next(c for k, c in rs.chains.items() if k[1].startswith("pi_"))
    jumps = [(r, t) for r, t in zip(port_in.rules, port_in.tags(), strict=True)
             if r.startswith("jump ")]
    assert jumps and all(t == f"sg-{web}-ingress group web" for _r, t in jumps)
    for c in rs.chains.values():  # every parser reads the first token: still the rid
        for t in c.tags():
            assert rid_of(t).startswith(("pw-", "t_")) or rid_of(t) in prov, t


def test_unsafe_and_long_names_stay_one_token_within_nfts_limit() -> None:
    m, _net, web = _model(1)
    name = 'db "prod" \\ ' + "\u00e9t\u00e9-" * 40 + "x" * 200
    m.update_security_group(web, {"name": name})
    rs = render_nftables(compile_plan(m))
    for c in rs.chains.values():
        for rule, tag in zip(c.rules, c.tags(), strict=True):
            assert len(tag.encode()) <= 127 and tag.isascii(), tag
            assert rule.endswith(f'comment "{tag}"')
            if " group " in tag:
                words = tag.split(" ")
                assert words[1] == "group" and words[2].startswith("db_prod_t_-")
                assert len(words[2]) == 48
                assert words[0].startswith(("sgr-", "sg-"))
