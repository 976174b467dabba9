"""The iptables applier's decisions, without a kernel: a :class:`FakeRunner` stands in for
iptables-restore/-save, ipset and conntrack, so what the applier writes, skips and rolls back
is checked in milliseconds. (``tests/e2e/test_apply.py`` checks the same against a kernel.)"""

from __future__ import annotations

import copy

import pytest
from l2listing import l2_listing

from portwall.backends.iptables.apply import ApplyError, IptablesApplier
from portwall.backends.iptables.render import (
    egress_chain,
    group_chain,
    ingress_chain,
    render_iptables,
    set_name,
    spoof_chain,
)
from portwall.backends.iptables.types import Chain, IpFamily, IptablesRuleset
from portwall.ir import compile_plan
from portwall.ir.types import HostPlan
from portwall.kernel.fake import FakeRunner
from portwall.model import Model, stable_ids

HOST = "h1"
DOCKER = """*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
:DOCKER-USER - [0:0]
-A FORWARD -j DOCKER-USER
-A DOCKER-USER -s 192.0.2.0/24 -j DROP
COMMIT
"""


class Cloud:
    """Groups web (tcp/80, ssh from web) and db (5432 from web); ports in web."""

    def __init__(self, ports: int = 3) -> None:
        self.m = Model(stable_ids("unit-apply"))
        self.net = self.m.create_network({"name": "n1"})
        self.m.create_subnet({"network_id": self.net.id, "cidr": "10.60.0.0/16"})
        self.m.create_subnet({"network_id": self.net.id, "cidr": "fd00:60::/64"})
        self.web = self.m.create_security_group({"name": "web", "security_group_rules": [
            {"direction": "ingress", "protocol": "tcp", "port_range_min": 80,
             "port_range_max": 80}]}).id
        self.m.create_security_group_rule({
            "security_group_id": self.web, "direction": "ingress", "protocol": "tcp",
            "port_range_min": 22, "port_range_max": 22, "remote_group_id": self.web})
        self.db = self.m.create_security_group({"name": "db", "security_group_rules": [
            {"direction": "ingress", "protocol": "tcp", "port_range_min": 5432,
             "port_range_max": 5432, "remote_group_id": self.web}]}).id
        self.n = 0
        for _ in range(ports):
            self.add_port()

    def add_port(self, groups: list[str] | None = None) -> str:
        self.n += 1
        return self.m.create_port({
            "network_id": self.net.id, "name": f"p{self.n}", "binding:host_id": HOST,
            "security_groups": groups or [self.web],
            "fixed_ips": [{"ip_address": f"10.60.0.{10 + self.n}"}]}).id

    def render(self) -> tuple[HostPlan, IptablesRuleset]:
        plan = compile_plan(self.m, host=HOST)
        return plan, render_iptables(plan)


def applier(fake: FakeRunner, rs: IptablesRuleset | None = None) -> IptablesApplier:
    """An applier on ``fake``; with ``rs``, the fake's bridge table reads back as ``rs``'s
    (what the kernel holds after ``rs`` was applied)."""
    if rs is not None:
        listing = l2_listing(rs)
        fake.nft_list = lambda: listing
    return IptablesApplier(None, runner=fake)


def declared(fake: FakeRunner, tool: str) -> set[str]:
    """Chains declared (created or rewritten) in the restore inputs of ``tool``."""
    return {line[1:].split()[0] for text in fake.inputs(tool) for line in text.splitlines()
            if line.startswith(":pw-")}


def test_first_apply_writes_everything_and_a_second_writes_nothing() -> None:
    cloud, fake = Cloud(), FakeRunner()
    plan, rs = cloud.render()
    a = applier(fake)
    first = a.apply(rs, plan)
    assert not first.noop and first.hooks_fixed == 6
    assert [c.split()[0] for c in first.write_commands] == [
        "nft", "ipset", "iptables-nft-restore", "ip6tables-nft-restore"]
    assert "table bridge portwall_l2" in fake.nft_batches[0]  # the ARP/ND guard
    assert first.chains_written == sum(len(t.chains) for f in rs.tables.values()
                                       for t in f.values())
    assert set(fake.sets) == set(rs.ipsets)

    applier(fake, rs)  # the fake's bridge table now lists what was written
    fake.log.clear()
    again = a.apply(rs, plan)
    assert again.noop and again.write_commands == [] and not fake.writes
    assert {argv[0] for argv, _ in fake.log} <= {
        "iptables-nft-save", "ip6tables-nft-save", "ipset", "nft"}  # it read, did not write
    assert a.drift(rs) == []
    # a second applier (no memory of the first) reaches the same decision from the state
    second = applier(fake, rs).apply(rs, plan)
    assert second.noop, second.write_commands


def test_only_changed_chains_are_written() -> None:
    cloud, fake = Cloud(), FakeRunner()
    plan, rs = cloud.render()
    a = applier(fake, rs)
    a.apply(rs, plan)

    new = cloud.add_port()
    plan2, rs2 = cloud.render()
    fake.log.clear()
    r = a.apply(rs2, plan2)
    applier(fake, rs2)
    p = plan2.port(new)
    own = {ingress_chain(p), egress_chain(p), spoof_chain(p)}
    assert {c for _, _, c in r.written} == own | {"pw-dispatch", "pw-INPUT"}
    # new chains are declared; the big order-free dispatch chains are appended to, not rewritten
    assert declared(fake, "iptables") == own
    assert (r.set_entries_added, r.set_entries_removed) == (1, 0)
    assert f"add {set_name(cloud.web, 4)} 10.60.0.14" in "".join(fake.inputs("ipset"))

    cloud.m.create_security_group_rule({
        "security_group_id": cloud.web, "direction": "ingress", "protocol": "udp",
        "port_range_min": 53, "port_range_max": 53})
    plan3, rs3 = cloud.render()
    applier(fake, rs2)  # the bridge table holds rs2's elements
    fake.log.clear()
    fake.writes.clear()
    r = a.apply(rs3, plan3)
    chain = group_chain(plan3.rulesets[f"sg-{cloud.web}-ingress"])
    assert r.written == [(4, "filter", chain)]
    assert fake.written() == ["iptables-nft-restore --noflush"]  # no IPv6, ipset, bridge
    applier(fake, rs3)
    assert a.drift(rs3) == [] and a.apply(rs3, plan3).noop


def test_drift_is_seen_and_only_the_damaged_chain_rewritten() -> None:
    cloud, fake = Cloud(), FakeRunner()
    plan, rs = cloud.render()
    a = applier(fake, rs)
    a.apply(rs, plan)
    fake.families[4].tables["filter"]["pw-sg"] = []  # someone flushed it
    web_set = set_name(cloud.web, 4)
    fake.sets[web_set].members.pop()
    drift = a.drift(rs)
    assert any("chain pw-sg modified" in d for d in drift), drift
    assert any(f"ipset {web_set}: 1 members missing" in d for d in drift), drift
    r = a.apply(rs, plan)
    assert r.written == [(4, "filter", "pw-sg")] and r.set_entries_added == 1
    assert a.drift(rs) == []


def broken(rs: IptablesRuleset, family: IpFamily, rid: str) -> IptablesRuleset:
    """``rs`` plus a rule the kernel refuses (a jump to a chain that does not exist)."""
    bad = copy.deepcopy(rs)
    chain = bad.tables[family]["filter"].chains["pw-sg"]
    bad.tables[family]["filter"].chains["pw-sg"] = Chain(
        "pw-sg", [*chain.rules, f"-m comment --comment {rid} -j pw-no-such-chain"])
    return bad


@pytest.mark.parametrize("family", [4, 6])
def test_a_refused_rule_is_named_with_its_origin_and_rolled_back(family: IpFamily) -> None:
    cloud, fake = Cloud(), FakeRunner()
    plan, rs = cloud.render()
    a = applier(fake)
    a.apply(rs, plan)
    before = {f: t.save() for f, t in fake.families.items()}
    sets_before = set(fake.sets)

    extra = cloud.m.create_security_group({"name": "extra", "security_group_rules": [
        {"direction": "ingress", "protocol": "tcp", "port_range_min": 1, "port_range_max": 9,
         "remote_group_id": cloud.db}]}).id
    cloud.add_port(groups=[cloud.web, extra])
    plan2, rs2 = cloud.render()
    rule = cloud.m.security_groups[cloud.web].security_group_rules[0]
    rid = f"sgr-{rule.id}"
    with pytest.raises(ApplyError) as info:
        a.apply(broken(rs2, family, rid), plan2)
    err = info.value
    assert err.rid == rid
    assert err.origin is not None and err.origin.resource_id == rule.id
    assert err.origin.resource_type == "security_group_rule"
    assert err.line is not None and "pw-no-such-chain" in err.line
    assert rule.id in str(err) and "previous rules stay enforced" in str(err)
    if family == 6:  # IPv4 had been committed: it was put back
        assert err.rolled_back
    assert {f: t.save() for f, t in fake.families.items()} == before
    assert set(fake.sets) == sets_before  # the set created for the new group is gone
    applier(fake, rs)
    assert a.drift(rs) == []
    assert a.apply(rs2, plan2).chains_written > 0
    applier(fake, rs2)
    assert a.drift(rs2) == []


def test_a_refused_set_update_stops_before_any_rule_changes() -> None:
    cloud, fake = Cloud(), FakeRunner()
    plan, rs = cloud.render()
    a = applier(fake)
    a.apply(rs, plan)
    before = {f: t.save() for f, t in fake.families.items()}
    extra = cloud.m.create_security_group({"name": "extra2", "security_group_rules": [
        {"direction": "ingress", "protocol": "udp", "remote_group_id": cloud.db}]}).id
    cloud.add_port(groups=[cloud.db, extra])
    plan2, rs2 = cloud.render()
    fake.fail = f"create {set_name(cloud.db, 4)}"
    with pytest.raises(ApplyError, match="ipset refused the new sets"):
        a.apply(rs2, plan2)
    assert {f: t.save() for f, t in fake.families.items()} == before
    fake.fail = None
    assert not a.apply(rs2, plan2).noop
    applier(fake, rs2)
    assert a.drift(rs2) == []


def test_other_programs_rules_survive_and_remove_all_takes_only_ours() -> None:
    cloud, fake = Cloud(), FakeRunner()
    fake.families[4].restore(DOCKER, None)
    before = fake.families[4].save()
    plan, rs = cloud.render()
    a = applier(fake)
    a.apply(rs, plan)
    forward = fake.families[4].tables["filter"]["FORWARD"]
    assert forward[0].endswith("-j pw-FORWARD") and forward[1:] == ["-j DOCKER-USER"]
    a.remove_all()
    # byte for byte, apart from the table portwall had to create (left empty)
    assert fake.families[4].save() == before + "*raw\n:PREROUTING ACCEPT [0:0]\n" \
        ":OUTPUT ACCEPT [0:0]\nCOMMIT\n"
    assert not any(c.startswith("pw-") for t in fake.families[4].tables.values() for c in t)
    assert not fake.sets
