"""Incremental compile + render (PlanCompiler, IptablesRenderer) against one-shot ones.

The caches are only worth having if they can never be told apart from starting afresh: a
Hypothesis state machine drives random sequences of Neutron operations on one model and,
after every step, compares the long-lived compiler's plan with a fresh ``compile_plan`` and
the long-lived renderer's ruleset (and its restore/ipset text, byte for byte) with a fresh
``render_iptables``. Further tests pin down that a small change really stays small (other
ports' plans and chains are the very same objects) and that a failed render leaves no stale
cache behind.
"""

from __future__ import annotations

import contextlib
import ipaddress
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from portwall.backends.iptables import render as r_ipt
from portwall.backends.iptables.render import (
    IptablesRenderer,
    RenderError,
    ipset_restore_text,
    render_iptables,
    restore_text,
)
from portwall.backends.iptables.types import IptablesRuleset
from portwall.ir import compile as ir_compile
from portwall.ir.compile import PlanCompiler, compile_plan
from portwall.ir.types import HostPlan
from portwall.model.errors import PortwallError
from portwall.model.store import Model, stable_ids

HOST = "h1"
HOSTS = (HOST, "h2")


def assert_same(plan: HostPlan, rs: IptablesRuleset, model: Model, host: str | None) -> None:
    """The incremental results equal a fresh compile and render, down to the bytes."""
    fresh = compile_plan(model, host)
    assert plan == fresh
    assert list(plan.rulesets) == list(fresh.rulesets)  # dict == ignores order; output doesn't
    assert list(plan.address_sets) == list(fresh.address_sets)
    want = render_iptables(fresh)
    assert rs == want
    for fam in (4, 6):
        assert list(rs.tables[fam]["filter"].chains) == list(want.tables[fam]["filter"].chains)
        assert restore_text(rs, fam) == restore_text(want, fam)
    assert ipset_restore_text(rs) == ipset_restore_text(want)


# ---------------------------------------------------------------------- the walk
_RULES: list[dict[str, Any]] = [
    {"direction": "ingress", "protocol": "tcp", "port_range_min": 22, "port_range_max": 22},
    {"direction": "ingress", "protocol": "udp", "port_range_min": 53, "port_range_max": 60,
     "remote_ip_prefix": "10.0.0.0/8"},
    {"direction": "ingress", "protocol": "icmp", "port_range_min": 8, "port_range_max": 0},
    {"direction": "ingress", "ethertype": "IPv6", "protocol": "tcp", "port_range_min": 443,
     "port_range_max": 443},
    {"direction": "egress", "protocol": "tcp", "port_range_min": 25, "port_range_max": 25,
     "remote_ip_prefix": "203.0.113.0/24"},
    {"direction": "egress", "ethertype": "IPv6", "protocol": "udp"},
    {"direction": "ingress", "protocol": "tcp", "port_range_min": 5432,
     "port_range_max": 5432, "remote": True},
    {"direction": "ingress", "ethertype": "IPv6", "protocol": "tcp", "port_range_min": 80,
     "port_range_max": 80, "remote": True},
    {"direction": "egress", "protocol": "udp", "port_range_min": 123, "port_range_max": 123,
     "remote": True},
]
_PAIRS = ["10.9.0.5", "10.9.1.0/24", "0.0.0.0/0", "2001:db8:9::/64", "10.0.0.20"]
_PROBE = ("a", "b")


class IncrementalMachine(RuleBasedStateMachine):
    """Random Neutron operations; after each, incremental == fresh, for two hosts' views."""

    def __init__(self) -> None:
        super().__init__()
        self.m = Model(stable_ids("incr"))
        self.n = 0
        # One compiler + renderer per view: this host, the other host, every port.
        self.views = [(h, PlanCompiler(h), IptablesRenderer()) for h in (HOST, "h2", None)]

    @initialize()
    def setup(self) -> None:
        m = self.m
        self.nets = []
        for i in range(2):
            net = m.create_network({"name": f"net{i}"})
            m.create_subnet({"network_id": net.id, "cidr": f"10.{i}.0.0/24", "name": f"s{i}"})
            m.create_subnet({"network_id": net.id, "cidr": f"2001:db8:{i}::/64",
                             "name": f"s{i}6"})
            self.nets.append(net.id)
        self.groups = [m.create_security_group({"name": f"g{i}"}).id for i in range(3)]
        # Start with remote-group rules and members, so that most steps touch a cache.
        for i, gid in enumerate(self.groups):
            for r in (6, 7):
                body = {k: v for k, v in _RULES[r].items() if k != "remote"}
                m.create_security_group_rule(body | {"security_group_id": gid,
                                                     "remote_group_id": self.groups[i - 1]})
        for i in range(4):
            self.add_port(net=i % 2, groups={i % 3, (i + 1) % 3}, host=HOSTS[i % 2],
                          v6=i % 2 == 0, pairs={i}, kind="vm")

    # ------------------------------------------------------------ helpers
    def _ports(self) -> list[str]:
        return sorted(self.m.ports)

    def _pick(self, items: list[str], k: int) -> str | None:
        return items[k % len(items)] if items else None

    def _try(self, fn: Any, *args: Any) -> None:
        """Model errors are part of the walk: the model stays as it was."""
        with contextlib.suppress(PortwallError):
            fn(*args)

    # -------------------------------------------------------------- rules
    @rule(net=st.integers(0, 1), groups=st.sets(st.integers(0, 5), max_size=3),
          host=st.sampled_from(HOSTS), v6=st.booleans(), pairs=st.sets(st.integers(0, 4),
                                                                      max_size=2),
          kind=st.sampled_from(["vm", "vm", "vm", "unfiltered", "dhcp"]))
    def add_port(self, net: int, groups: set[int], host: str, v6: bool, pairs: set[int],
                 kind: str) -> None:
        self.n += 1
        nid = self.nets[net]
        subnets = [s.id for s in self.m.subnets_of(nid) if v6 or s.ip_version == 4]
        body: dict[str, Any] = {
            "network_id": nid, "name": f"p{self.n}", "binding:host_id": host,
            "fixed_ips": [{"subnet_id": s} for s in subnets],
        }
        if kind == "unfiltered":
            body |= {"port_security_enabled": False, "security_groups": []}
        else:
            gids = [self.groups[g % len(self.groups)] for g in groups] if self.groups else []
            body["security_groups"] = sorted(set(gids))
            body["allowed_address_pairs"] = [{"ip_address": _PAIRS[p]} for p in sorted(pairs)]
        if kind == "dhcp":
            body["device_owner"] = "network:dhcp"
        self._try(self.m.create_port, body)

    @rule(k=st.integers(0, 1000))
    def delete_port(self, k: int) -> None:
        pid = self._pick(self._ports(), k)
        if pid is not None:
            self.m.delete_port(pid)

    @rule(k=st.integers(0, 1000), pairs=st.sets(st.integers(0, 4), max_size=3))
    def change_pairs(self, k: int, pairs: set[int]) -> None:
        pid = self._pick(self._ports(), k)
        if pid is not None:
            self._try(self.m.update_port, pid,
                      {"allowed_address_pairs": [{"ip_address": _PAIRS[p]} for p in sorted(pairs)]})

    @rule(k=st.integers(0, 1000), groups=st.sets(st.integers(0, 5), max_size=3))
    def change_membership(self, k: int, groups: set[int]) -> None:
        pid = self._pick(self._ports(), k)
        if pid is not None and self.groups:
            gids = sorted({self.groups[g % len(self.groups)] for g in groups})
            self._try(self.m.update_port, pid, {"security_groups": gids})

    @rule(k=st.integers(0, 1000), host=st.sampled_from(HOSTS))
    def move_port(self, k: int, host: str) -> None:
        pid = self._pick(self._ports(), k)
        if pid is not None:
            self._try(self.m.update_port, pid, {"binding:host_id": host})

    @rule(k=st.integers(0, 1000), last=st.integers(30, 200))
    def change_fixed_ip(self, k: int, last: int) -> None:
        pid = self._pick(self._ports(), k)
        if pid is not None:
            port = self.m.ports[pid]
            sub = self.m.subnets_of(port.network_id)[0]
            ip = str(ipaddress.ip_network(sub.cidr).network_address + last)
            self._try(self.m.update_port, pid, {"fixed_ips": [{"subnet_id": sub.id,
                                                               "ip_address": ip}]})

    @rule(k=st.integers(0, 1000), on=st.booleans())
    def port_security(self, k: int, on: bool) -> None:
        pid = self._pick(self._ports(), k)
        if pid is not None:
            changes: dict[str, Any] = {"port_security_enabled": on}
            if not on:
                changes |= {"security_groups": [], "allowed_address_pairs": []}
            self._try(self.m.update_port, pid, changes)

    @rule(g=st.integers(0, 100), r=st.integers(0, len(_RULES) - 1), remote=st.integers(0, 100))
    def add_rule(self, g: int, r: int, remote: int) -> None:
        gid = self._pick(self.groups, g)
        if gid is None:
            return
        body = dict(_RULES[r])
        if body.pop("remote", False):
            body["remote_group_id"] = self._pick(self.groups, remote)
        self._try(self.m.create_security_group_rule, body | {"security_group_id": gid})

    @rule(g=st.integers(0, 100), k=st.integers(0, 1000))
    def delete_rule(self, g: int, k: int) -> None:
        gid = self._pick(self.groups, g)
        if gid is not None:
            rules = self.m.security_groups[gid].security_group_rules
            if rules:
                self.m.delete_security_group_rule(rules[k % len(rules)].id)

    @rule(g=st.integers(0, 100), k=st.integers(0, 1000), r=st.integers(0, len(_RULES) - 1))
    def replace_rule(self, g: int, k: int, r: int) -> None:
        """Neutron rules are immutable: a change is a delete + create (same rule count)."""
        gid = self._pick(self.groups, g)
        if gid is not None and self.m.security_groups[gid].security_group_rules:
            self.delete_rule(g, k)
            self.add_rule(g, r, k)

    @rule(g=st.integers(0, 100), name=st.sampled_from(["web", "db", "x" * 40, "a b"]))
    def rename_group(self, g: int, name: str) -> None:
        gid = self._pick(self.groups, g)
        if gid is not None:
            self._try(self.m.update_security_group, gid, {"name": name})

    @rule(g=st.integers(0, 100))
    def toggle_stateful(self, g: int) -> None:
        gid = self._pick(self.groups, g)
        if gid is not None:  # only allowed while no port uses the group
            sg = self.m.security_groups[gid]
            self._try(self.m.update_security_group, gid, {"stateful": not sg.stateful})

    @rule()
    def add_group(self) -> None:
        self.groups.append(self.m.create_security_group({"name": f"g{len(self.groups)}"}).id)

    @rule(g=st.integers(0, 100))
    def delete_group(self, g: int) -> None:
        gid = self._pick(self.groups, g)
        if gid is not None:
            try:
                self.m.delete_security_group(gid)
            except PortwallError:
                return
            self.groups.remove(gid)

    @rule()
    def add_network(self) -> None:
        i = len(self.nets)
        net = self.m.create_network({"name": f"net{i}"})
        self.m.create_subnet({"network_id": net.id, "cidr": f"10.{i}.0.0/24", "name": f"s{i}"})
        self.nets.append(net.id)

    # ---------------------------------------------------------- invariant
    @invariant()
    def incremental_equals_fresh(self) -> None:
        for host, compiler, renderer in self.views:
            plan = compiler.compile(self.m)
            assert_same(plan, renderer.render(plan), self.m, host)


TestIncrementalWalk = IncrementalMachine.TestCase
TestIncrementalWalk.settings = settings(
    max_examples=80, stateful_step_count=20, deadline=None,
    suppress_health_check=[HealthCheck.too_slow])


# ------------------------------------------------------------- small stays small
def _workload(ports: int) -> tuple[Model, list[str], str]:
    """``ports`` VMs on HOST in a shared group (with a remote-group rule on itself) plus
    one of two app groups; returns the model, the app groups and the shared group."""
    m = Model(stable_ids("small"))
    net = m.create_network({"name": "n"})
    m.create_subnet({"network_id": net.id, "cidr": "10.0.0.0/16", "name": "s"})
    shared = m.create_security_group({"name": "all"}).id
    m.create_security_group_rule({"security_group_id": shared, "direction": "ingress",
                                  "protocol": "tcp", "port_range_min": 22,
                                  "port_range_max": 22, "remote_group_id": shared})
    apps = [m.create_security_group({"name": f"app{i}"}).id for i in range(2)]
    for i in range(ports):
        _add(m, net.id, i, [shared, apps[i % 2]])
    return m, apps, shared


def _add(m: Model, nid: str, i: int, groups: list[str], host: str = HOST) -> str:
    return m.create_port({"network_id": nid, "name": f"p{i}", "binding:host_id": host,
                          "security_groups": groups}).id


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, int]]:
    """How often a port is compiled (``_port_steps``) and rendered (``_render_port``)."""
    calls = {"compile": 0, "render": 0}
    steps, render_port = ir_compile._port_steps, IptablesRenderer._render_port

    def count_steps(*a: Any, **k: Any) -> Any:
        calls["compile"] += 1
        return steps(*a, **k)

    def count_render(*a: Any, **k: Any) -> Any:
        calls["render"] += 1
        return render_port(*a, **k)

    monkeypatch.setattr(ir_compile, "_port_steps", count_steps)
    monkeypatch.setattr(IptablesRenderer, "_render_port", count_render)
    yield calls


def test_one_new_port_compiles_and_renders_one_port(counted: dict[str, int]) -> None:
    m, apps, shared = _workload(40)
    compiler, renderer = PlanCompiler(HOST), IptablesRenderer()
    before = compiler.compile(m)
    rs_before = renderer.render(before)
    assert counted == {"compile": 40, "render": 40}

    new = _add(m, next(iter(m.networks)), 99, [shared, apps[0]])
    plan = compiler.compile(m)
    rs = renderer.render(plan)
    assert counted == {"compile": 41, "render": 41}
    assert_same(plan, rs, m, HOST)
    # Every other port's plan and chains are the very objects of the previous round.
    old = {p.id: p for p in before.ports}
    assert all(p is old[p.id] for p in plan.ports if p.id != new)
    for fam in (4, 6):
        chains, was = rs.tables[fam]["filter"].chains, rs_before.tables[fam]["filter"].chains
        kept = [n for n in was if n.startswith(("pw-i", "pw-o", "pw-s", "pw-g"))
                and n not in (r_ipt.INPUT_CHAIN, r_ipt.SG_CHAIN)]
        # 3 chains per port; every group has egress rules in both families, only the
        # shared group an (IPv4) ingress rule.
        assert len(kept) == 3 * 40 + (4 if fam == 4 else 3)
        assert all(chains[n] is was[n] for n in kept)
    # The shared group's set gained the port; the app groups' rule sets were reused.
    assert all(plan.rulesets[k] is before.rulesets[k] for k in before.rulesets)


def test_changed_rule_recompiles_one_rule_set_and_no_port(counted: dict[str, int]) -> None:
    m, apps, _ = _workload(30)
    compiler, renderer = PlanCompiler(HOST), IptablesRenderer()
    before = compiler.compile(m)
    renderer.render(before)
    m.create_security_group_rule({"security_group_id": apps[1], "direction": "ingress",
                                  "protocol": "udp", "port_range_min": 53,
                                  "port_range_max": 53})
    plan = compiler.compile(m)
    rs = renderer.render(plan)
    # The group had no ingress rule before: its ports now jump to it, so they (and only
    # they) are rendered again; no port is compiled again.
    assert counted == {"compile": 30, "render": 30 + 15}
    assert_same(plan, rs, m, HOST)
    changed = [k for k in plan.rulesets if plan.rulesets[k] is not before.rulesets.get(k)]
    assert changed == [f"sg-{apps[1]}-ingress"]
    assert all(a is b for a, b in zip(plan.ports, before.ports, strict=True))


def test_new_member_elsewhere_only_touches_the_set(counted: dict[str, int]) -> None:
    m, _, shared = _workload(20)
    compiler, renderer = PlanCompiler(HOST), IptablesRenderer()
    before = compiler.compile(m)
    rs_before = renderer.render(before)
    _add(m, next(iter(m.networks)), 500, [shared], host="elsewhere")
    plan = compiler.compile(m)
    rs = renderer.render(plan)
    assert counted == {"compile": 20, "render": 20}
    assert_same(plan, rs, m, HOST)
    assert all(a is b for a, b in zip(plan.ports, before.ports, strict=True))
    sid = f"sg-{shared}-v4"
    assert len(plan.address_sets[sid].members) == 21
    assert rs.ipsets != rs_before.ipsets


def test_renaming_a_group_recompiles_its_ports_only(counted: dict[str, int]) -> None:
    m, apps, _ = _workload(20)
    compiler = PlanCompiler(HOST)
    before = compiler.compile(m)
    m.update_security_group(apps[0], {"name": "renamed"})
    plan = compiler.compile(m)
    assert counted["compile"] == 20 + 10
    assert plan == compile_plan(m, HOST)
    moved = {p.id for p, q in zip(plan.ports, before.ports, strict=True) if p is not q}
    assert moved == {p.id for p in plan.ports if apps[0] in p.groups}


def test_failed_render_leaves_no_stale_cache() -> None:
    """Two ports whose ids share 11 characters get the same tap (and chain) names: the
    render fails; once one is gone the same renderer must again match a fresh render."""
    m, _apps, shared = _workload(5)
    nid = next(iter(m.networks))
    compiler, renderer = PlanCompiler(HOST), IptablesRenderer()
    renderer.render(compiler.compile(m))
    twins = [m.create_port({"id": f"deadbeef-000-{i}", "network_id": nid, "name": f"t{i}",
                            "binding:host_id": HOST, "security_groups": [shared]}).id
             for i in range(2)]
    with pytest.raises(RenderError, match="collide"):
        renderer.render(compiler.compile(m))
    m.delete_port(twins[0])
    plan = compiler.compile(m)
    assert_same(plan, renderer.render(plan), m, HOST)


def test_failed_compile_leaves_no_stale_cache() -> None:
    """A compile that raises (here: a port naming a group the model lost, which only a
    buggy caller can do) resets the caches instead of keeping half an update."""
    m, apps, _ = _workload(6)
    compiler = PlanCompiler(HOST)
    compiler.compile(m)
    saved = m.security_groups.pop(apps[0])
    with pytest.raises(KeyError):
        compiler.compile(m)
    m.security_groups[apps[0]] = saved
    assert compiler.compile(m) == compile_plan(m, HOST)


def test_renumbered_zone_recompiles_the_ports_of_that_network(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Zones are derived so that a new network does not renumber others; should it ever
    (a hash collision), the ports of the renumbered network must follow."""
    monkeypatch.setattr(ir_compile, "zone_for",
                        lambda ids: {n: i + 1 for i, n in enumerate(sorted(ids))})
    m, _apps, _shared = _workload(4)
    compiler = PlanCompiler(HOST)
    before = compiler.compile(m)
    m.networks = {"0" * 8 + "-first": m.networks[next(iter(m.networks))].model_copy(
        update={"id": "0" * 8 + "-first"}), **m.networks}  # sorts first: zones shift by one
    plan = compiler.compile(m)
    assert plan == compile_plan(m, HOST)
    assert {p.zone for p in plan.ports} == {p.zone + 1 for p in before.ports}


def test_plan_missing_a_set_or_rule_set_fails_like_a_fresh_render() -> None:
    """Cached rule text names ipsets: a plan whose rule set refers to a set the plan no
    longer has must fail as a fresh render does, not reuse the old text."""
    m, _, _shared = _workload(3)
    plan = compile_plan(m, HOST)
    renderer = IptablesRenderer()
    renderer.render(plan)
    broken = replace(plan, address_sets={})
    with pytest.raises(RenderError, match="unknown address set"):
        render_iptables(broken)
    with pytest.raises(RenderError, match="unknown address set"):
        renderer.render(broken)
    assert_same(plan, renderer.render(plan), m, HOST)
    # Likewise a port whose rule set went missing (the port itself unchanged).
    rsid = next(iter(plan.rulesets))
    broken = replace(plan, rulesets={k: v for k, v in plan.rulesets.items() if k != rsid})
    with pytest.raises(RenderError, match="unknown rule set"):
        render_iptables(broken)
    with pytest.raises(RenderError, match="unknown rule set"):
        renderer.render(broken)
    assert_same(plan, renderer.render(plan), m, HOST)


def test_rule_text_cache_stays_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ports come and go in a long-running process; the renderer must not keep every rule
    it ever rendered (per-port DHCP rules are unique to their port)."""
    monkeypatch.setattr(IptablesRenderer, "RULE_TEXT_SLACK", 0)
    m, _apps, shared = _workload(3)
    nid = next(iter(m.networks))
    compiler, renderer = PlanCompiler(HOST), IptablesRenderer()
    renderer.render(compiler.compile(m))
    gone = []
    for i in range(40):
        pid = _add(m, nid, 1000 + i, [shared])
        renderer.render(compiler.compile(m))
        gone.append(pid)
        m.delete_port(pid)
    cached = {rule.rid for rule, _note, _text in renderer._rule_text.values()}
    assert not any(rid.startswith(f"prov-dhcp-reply-{pid}") for pid in gone[:10]
                   for rid in cached)
    plan = compiler.compile(m)
    assert_same(plan, renderer.render(plan), m, HOST)


def test_set_members_matches_ipset_order() -> None:
    """The shared member formatting used by the incremental path keeps /0 split, host
    routes bare and the ipset order (by address, then prefix length)."""
    m, _, shared = _workload(2)
    port = next(iter(m.ports))
    m.update_port(port, {"allowed_address_pairs": [{"ip_address": "0.0.0.0/0"},
                                                     {"ip_address": "10.0.0.0/24"}]})
    plan = compile_plan(m, HOST)
    members = r_ipt.set_members(plan.address_sets[f"sg-{shared}-v4"])
    assert members[0] == "0.0.0.0/1"
    assert members[-1] == "128.0.0.0/1"
    assert members[1:-1] == sorted(members[1:-1], key=lambda t: (
        int(ipaddress.ip_network(t).network_address), ipaddress.ip_network(t).prefixlen))
    assert "10.0.0.0/24" in members and all("/32" not in t for t in members)


def test_port_becoming_a_router_interface_leaves_the_plan() -> None:
    """add_router_interface(port_id=...) makes the port trusted (unfiltered by Neutron); the
    model replaces the port object, so the cached plan must drop it."""
    m, apps, shared = _workload(3)
    pid = _add(m, next(iter(m.networks)), 99, [shared, apps[0]])
    compiler = PlanCompiler(HOST)
    assert any(p.id == pid for p in compiler.compile(m).ports)
    router = m.create_router({"name": "r1"})
    m.add_router_interface(router.id, {"port_id": pid})
    plan = compiler.compile(m)
    assert all(p.id != pid for p in plan.ports)
    assert plan == compile_plan(m, HOST)


def test_same_revision_of_a_reloaded_port_is_not_recompiled(counted: dict[str, int]) -> None:
    """Issue 10 prepares a database-backed model, which hands out new objects for unchanged
    rows: a port whose id and revision_number are unchanged is not compiled again, a new
    revision is."""
    from portwall.model.resources import Port

    class RevPort(Port):
        revision_number: int = 0

    m, _apps, _shared = _workload(6)
    pid = next(iter(m.ports))
    m.ports[pid] = RevPort(**m.ports[pid].model_dump(), revision_number=1)
    compiler = PlanCompiler(HOST)
    before = compiler.compile(m)
    assert counted["compile"] == 6
    m.ports[pid] = RevPort(**m.ports[pid].model_dump())  # a new object, same revision
    plan = compiler.compile(m)
    assert counted["compile"] == 6
    assert plan.ports == before.ports and all(a is b for a, b in zip(plan.ports, before.ports,
                                                                     strict=True))
    m.ports[pid] = RevPort(**{**m.ports[pid].model_dump(), "name": "renamed",
                              "revision_number": 2})
    plan = compiler.compile(m)
    assert counted["compile"] == 7
    assert plan == compile_plan(m, HOST) and plan.port(pid).name == "renamed"


def test_one_change_touches_no_other_port(monkeypatch: pytest.MonkeyPatch) -> None:
    """O(change): a compile after one new port, one new member elsewhere or one changed
    rule builds no PortPlan and no SetMember for any other port (counted, not timed)."""
    from portwall.ir import incremental

    built: list[str] = []
    entry = incremental.PlanCompiler._port_entry

    def count_entry(self: Any, port: Any) -> Any:
        built.append(port.id)
        return entry(self, port)

    monkeypatch.setattr(incremental.PlanCompiler, "_port_entry", count_entry)
    m, apps, shared = _workload(60)
    compiler = PlanCompiler(HOST)
    compiler.compile(m)
    built.clear()
    new = _add(m, next(iter(m.networks)), 900, [shared, apps[0]])
    elsewhere = _add(m, next(iter(m.networks)), 901, [shared], host="elsewhere")
    m.create_security_group_rule({"security_group_id": apps[1], "direction": "ingress",
                                  "protocol": "udp", "port_range_min": 53,
                                  "port_range_max": 53})
    plan = compiler.compile(m)
    assert built == [new, elsewhere]
    assert plan == compile_plan(m, HOST)  # (a fresh compile builds every port: not counted)
    built.clear()
    m.delete_port(new)
    plan = compiler.compile(m)
    assert built == []
    assert plan == compile_plan(m, HOST)


def test_bulk_and_one_by_one_placement_agree() -> None:
    """A first compile places ports and set members by one sort, later ones by bisect: the
    plans (order of ports and of set members included) must be the same."""
    m = Model(stable_ids("bulk"))
    net = m.create_network({"name": "n"})
    m.create_subnet({"network_id": net.id, "cidr": "10.0.0.0/16", "name": "s"})
    shared = m.create_security_group({"name": "all"}).id
    m.create_security_group_rule({"security_group_id": shared, "direction": "ingress",
                                  "protocol": "tcp", "remote_group_id": shared})
    one_by_one = PlanCompiler(HOST)
    for i in range(150):
        pid = _add(m, net.id, i, [shared])
        if i % 3 == 0:  # ports with the same address as a pair: equal keys across ports
            m.update_port(pid, {"allowed_address_pairs": [{"ip_address": "10.0.9.9"},
                                                          {"ip_address": "10.0.0.0/24"}]})
        one_by_one.compile(m)
    bulk = PlanCompiler(HOST).compile(m)
    plan = one_by_one.compile(m)
    assert plan == bulk
    sid = f"sg-{shared}-v4"
    assert plan.address_sets[sid].members == bulk.address_sets[sid].members
