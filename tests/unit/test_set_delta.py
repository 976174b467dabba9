"""The compiler's AddressSet deltas: one member change is an O(change) update of the set."""

from __future__ import annotations

from portwall.backends.nftables.render import NftRenderer
from portwall.ir.compile import PlanCompiler, compile_plan
from portwall.model import Model, stable_ids


def _model(n: int) -> tuple[Model, list[str], str]:
    m = Model(stable_ids("delta"))
    net = m.create_network({"name": "n", "project_id": "p"})
    m.create_subnet({"network_id": net.id, "cidr": "10.0.0.0/16", "project_id": "p"})
    sg = m.create_security_group({"name": "web", "project_id": "p"})
    m.create_security_group_rule({"security_group_id": sg.id, "direction": "ingress",
                                  "remote_group_id": sg.id})
    ids = [m.create_port({"network_id": net.id, "name": f"p{i}", "project_id": "p",
                          "security_groups": [sg.id]}).id for i in range(n)]
    return m, ids, sg.id


def test_pair_change_gives_a_delta_of_that_member_only() -> None:
    m, ids, gid = _model(40)
    comp = PlanCompiler()
    first = comp.compile(m).address_sets[f"sg-{gid}-v4"]
    assert first.delta is None  # nothing to compare with yet
    m.update_port(ids[3], {"allowed_address_pairs": [{"ip_address": "10.9.0.0/24"}]})
    second = comp.compile(m).address_sets[f"sg-{gid}-v4"]
    assert second.delta is not None and second.delta.base is first
    assert [str(x.cidr) for x in second.delta.added] == [
        str(f.cidr) for f in second.members if f.port_id == ids[3]]
    assert [x.port_id for x in second.delta.removed] == [ids[3]]
    assert second == compile_plan(m).address_sets[f"sg-{gid}-v4"]
    m.delete_port(ids[5])
    third = comp.compile(m).address_sets[f"sg-{gid}-v4"]
    assert third.delta is not None and third.delta.base is second
    assert second.delta.base is None  # deltas never chain: old sets can be freed
    assert third.delta.added == () and [x.port_id for x in third.delta.removed] == [ids[5]]


def test_renderer_follows_deltas_and_falls_back_when_it_missed_a_plan() -> None:
    m, ids, _gid = _model(30)
    comp, r = PlanCompiler(), NftRenderer()
    r.render(comp.compile(m))
    for k, pair in enumerate(["10.9.0.0/24", "10.0.5.5", "10.9.0.0/24", "10.8.0.0/16"]):
        m.update_port(ids[k], {"allowed_address_pairs": [{"ip_address": pair}]})
        plan = comp.compile(m)
        if k == 2:
            continue  # the renderer never sees this plan: the next delta's base is unknown
        got = r.render(plan)
        want = NftRenderer().render(compile_plan(m))
        assert {k: s.elements for k, s in got.sets.items()} == \
            {k: s.elements for k, s in want.sets.items()}


def test_iptables_ipsets_follow_deltas_like_a_fresh_render() -> None:
    from portwall.backends.iptables.render import IptablesRenderer

    m, ids, _gid = _model(30)
    comp, r = PlanCompiler(), IptablesRenderer()
    r.render(comp.compile(m))
    pairs = ["10.9.0.0/24", "10.0.5.5", "0.0.0.0/0", "10.9.0.0/24", "10.8.0.0/16"]
    for k, pair in enumerate(pairs):
        m.update_port(ids[k % 3], {"allowed_address_pairs": [{"ip_address": pair}]})
        if k == 3:
            m.delete_port(ids[7])
        plan = comp.compile(m)
        if k == 1:
            continue  # a plan this renderer never sees: it rebuilds from the members
        got = r.render(plan)
        want = IptablesRenderer().render(compile_plan(m))
        assert {n: s.members for n, s in got.ipsets.items()} == \
            {n: s.members for n, s in want.ipsets.items()}
