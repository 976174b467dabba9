"""The nftables renderer finds what changed by the common prefix/suffix of the sorted port and
member tuples: whatever the plans do between renders (ports inserted, removed, reordered,
replaced by equal copies; members in the middle of a group), the incremental ruleset must
equal a fresh render, and its deltas must add up to the fresh element sets."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from portwall.backends.nftables.render import NftRenderer, render_nftables
from portwall.backends.nftables.spell import RenderError
from portwall.backends.nftables.types import NftRuleset
from portwall.ir.compile import PlanCompiler
from portwall.ir.types import HostPlan
from portwall.model import Model, stable_ids


def _same(inc: NftRuleset, fresh: NftRuleset) -> None:
    assert {k: s.elements for k, s in inc.sets.items()} == {
        k: s.elements for k, s in fresh.sets.items()}
    assert {k: c.rules for k, c in inc.chains.items()} == {
        k: c.rules for k, c in fresh.chains.items()}


def _plan(n: int) -> tuple[Model, HostPlan, list[str], str, str]:
    m = Model(stable_ids("unit-nft-diff"))
    net = m.create_network({"name": "n"}).id
    m.create_subnet({"network_id": net, "cidr": "10.6.0.0/16"})
    sg = m.create_security_group({"name": "all", "security_group_rules": []}).id
    m.create_security_group_rule({"security_group_id": sg, "direction": "ingress",
                                  "protocol": "tcp", "remote_group_id": sg})
    ids = [m.create_port({"network_id": net, "name": f"p{i:03d}", "security_groups": [sg],
                          "fixed_ips": [{"ip_address": f"10.6.0.{10 + i}"}]}).id
           for i in range(n)]
    return m, PlanCompiler().compile(m), ids, net, sg


def test_random_changes_render_like_fresh() -> None:
    rnd = random.Random(7)
    m, _, ids, net, sg = _plan(12)
    comp, r = PlanCompiler(), NftRenderer()
    elements: dict[object, set[str]] = {}
    for step in range(40):
        what = rnd.choice(["add", "delete", "pair"])
        if what == "add" or len(ids) < 3:
            ids.append(m.create_port({
                "network_id": net, "name": f"q{step:03d}", "security_groups": [sg],
                "fixed_ips": [{"ip_address": f"10.6.1.{step + 1}"}]}).id)
        elif what == "delete":
            m.delete_port(ids.pop(rnd.randrange(len(ids))))
        else:
            m.update_port(rnd.choice(ids), {"allowed_address_pairs": [
                {"ip_address": rnd.choice(["10.6.7.0/24", "10.6.8.8"])}]})
        plan = comp.compile(m)
        if step % 5 == 4:  # equal copies of every port and a different order
            plan = replace(plan, ports=tuple(replace(p) for p in reversed(plan.ports)))
        inc = r.render(plan)
        for key, (added, removed) in inc.deltas.items():
            got = elements.setdefault(key, set())
            assert not (added & got) and removed <= got
            got |= added
            got -= removed
        fresh = render_nftables(plan)
        _same(inc, fresh)
        assert {k: v for k, v in elements.items() if v} == {
            k: set(s.elements) for k, s in fresh.sets.items() if s.elements}


def test_duplicate_device_is_refused_incrementally() -> None:
    _, plan, _, _, _ = _plan(4)
    r = NftRenderer()
    r.render(plan)
    dup = replace(plan.ports[1], id="another", name="another")
    with pytest.raises(RenderError, match="share a device"):
        r.render(replace(plan, ports=(*plan.ports, dup)))
    _same(r.render(plan), render_nftables(plan))  # the reset cache renders afresh
