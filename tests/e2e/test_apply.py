"""Appliers against a real kernel, in throw-away namespaces.

The first part runs on every backend (``backend_name``), through the backend interface only:
convergence, a second apply that writes nothing, provenance for every rule, small changes
that write little, other programs' iptables, ipset and nft state left byte-for-byte, drift
reported and repaired. The sandboxes are lab ones, so a backend that needs an OVS bridge
gets it. The second part is iptables-only (chain names, ipsets, hooks, rollback, the legacy
tools). Traffic-level checks (conntrack clean-up) are in ``test_apply_conntrack.py``.
"""

from __future__ import annotations

import copy
import os
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from portwall import backends
from portwall.backends.base import ApplyReport
from portwall.backends.iptables.apply import ApplyError, IptablesApplier
from portwall.backends.iptables.ipset import temp_name
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
from portwall.ir.types import HostPlan, Jump, Rule
from portwall.kernel.natguard import remove_guard
from portwall.kernel.runner import Runner
from portwall.lab import netns
from portwall.lab.harness import Lab, LabBox
from portwall.model import Model, stable_ids

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ipset") is None,
                       reason="needs root, iptables and ipset"),
]

HOST = "h1"


class Cloud:
    """A small deployment: groups web (tcp/80, ssh from web) and db (5432 from web)."""

    def __init__(self, ports: int = 3) -> None:
        self.m = Model(stable_ids("test-apply"))
        self.net = self.m.create_network({"name": "n1"})
        self.m.create_subnet({"network_id": self.net.id, "cidr": "10.60.0.0/16"})
        self.m.create_subnet({"network_id": self.net.id, "cidr": "fd00:60::/64"})
        self.web = self.m.create_security_group({"name": "web", "security_group_rules": [
            {"direction": "ingress", "protocol": "tcp", "port_range_min": 80,
             "port_range_max": 80},
            {"direction": "egress"},
        ]}).id
        self.m.create_security_group_rule({
            "security_group_id": self.web, "direction": "ingress", "protocol": "tcp",
            "port_range_min": 22, "port_range_max": 22, "remote_group_id": self.web})
        self.db = self.m.create_security_group({"name": "db", "security_group_rules": [
            {"direction": "ingress", "protocol": "tcp", "port_range_min": 5432,
             "port_range_max": 5432, "remote_group_id": self.web},
        ]}).id
        self.n = 0
        for _ in range(ports):
            self.add_port()

    def add_port(self, host: str = HOST, groups: list[str] | None = None) -> str:
        self.n += 1
        port = self.m.create_port({
            "network_id": self.net.id, "name": f"p{self.n}", "binding:host_id": host,
            "security_groups": groups or [self.web],
            "fixed_ips": [{"ip_address": f"10.60.{self.n // 200}.{10 + self.n % 200}"}],
        })
        return port.id

    def plan(self) -> HostPlan:
        return compile_plan(self.m, host=HOST)

    def render(self) -> tuple[HostPlan, IptablesRuleset]:
        plan = self.plan()
        return plan, render_iptables(plan)


def save(ns: str, tool: str = "iptables-save") -> str:
    """``iptables-save`` without its timestamp comments."""
    out = netns.run(ns, [tool]).stdout
    return "\n".join(line for line in out.splitlines() if not line.startswith("#"))


def foreign_lines(text: str) -> dict[str, list[str]]:
    """Per table, everything in a save that portwall does not own (its ``pw-`` chains and the
    lab's host-NAT guard ``pwguard-nat``). A table portwall had to create (e.g. ip6tables'
    raw) holds nothing else: only its empty built-in chains."""
    out: dict[str, list[str]] = {}
    table = ""
    for line in text.splitlines():
        if line.startswith("*"):
            table = line[1:]
            out[table] = []
        elif not re.match(r"(:|-A )pw(guard)?-", line) and \
                not re.search(r" -[jg] pw(guard)?-", line):
            out[table].append(line)
    return out


def same_foreign(before: str, after: str) -> None:
    old, new = foreign_lines(before), foreign_lines(after)
    for table, lines in new.items():
        if table in old:
            assert lines == old[table], table
        else:
            assert all(re.fullmatch(r":[A-Z]+ ACCEPT \[\d+:\d+\]|COMMIT", x) for x in lines), lines
    assert set(old) <= set(new)


def all_chains(rs: IptablesRuleset) -> set[tuple[int, str, str]]:
    return {(f, t, c) for f, tables in rs.tables.items() for t, tab in tables.items()
            for c in tab.chains}


def ipset_members(ns: str, name: str) -> set[str]:
    out = netns.run(ns, ["ipset", "save", name], check=False).stdout
    return {line.split()[2] for line in out.splitlines() if line.startswith("add ")}


# ------------------------------------------------------------------ every backend
LAB_TOPOLOGY = """
project: applier
networks:
  - name: n1
    subnets:
      - {name: s4, cidr: 10.61.0.0/24}
      - {name: s6, cidr: "fd00:61::/64", ip_version: 6}
security_groups:
  - name: web
    security_group_rules:
      - {direction: ingress, protocol: tcp, port_range_min: 80, port_range_max: 80}
      - {direction: ingress, protocol: tcp, port_range_min: 22, port_range_max: 22,
         remote_group_id: web}
  - name: db
    security_group_rules:
      - {direction: ingress, protocol: tcp, port_range_min: 5432, port_range_max: 5432,
         remote_group_id: web}
ports:
  - {name: p1, network_id: n1, fixed_ips: [10.61.0.11, "fd00:61::11"], security_groups: [web]}
  - {name: p2, network_id: n1, fixed_ips: [10.61.0.12], security_groups: [web, db],
     allowed_address_pairs: [{ip_address: 10.61.0.128/28}]}
  - {name: p3, network_id: n1, fixed_ips: [10.61.0.13], security_groups: [db]}
lab:
  vms:
    v1: {ports: [p1]}
    v2: {ports: [p2]}
    v3: {ports: [p3]}
"""
#: one more VM on the same host: its port is new to the applier
GROWN = LAB_TOPOLOGY.replace("lab:\n", "  - {name: p4, network_id: n1, fixed_ips: [10.61.0.14], "
                             "security_groups: [web]}\nlab:\n") + "    v4: {ports: [p4]}\n"
OTHER_NFT = """table inet someone_else {
\tset blocked {
\t\ttype ipv4_addr
\t\telements = { 192.0.2.7 }
\t}

\tchain gate {
\t\ttype filter hook forward priority filter + 5; policy accept;
\t\tip saddr @blocked counter packets 0 bytes 0 drop
\t}
}
"""


@pytest.fixture
def applier_lab(backend_name: str) -> Iterator[Lab]:
    with Lab("pwt-apl", backend=backend_name) as lab:
        yield lab


def _apply(box: LabBox) -> tuple[HostPlan, ApplyReport]:
    """Render the box's current model with its backend and apply it with a fresh applier."""
    b = backends.get(box.box.state.backend)
    plan = compile_plan(box.topo.model)
    with b.applier(box.host_ns) as a:
        return plan, a.apply(b.render(plan), plan)


def test_backend_converges_and_a_second_apply_writes_nothing(applier_lab: Lab,
                                                             backend_name: str) -> None:
    box = applier_lab.up(LAB_TOPOLOGY, apply=False)
    b = backends.get(backend_name)
    plan = compile_plan(box.topo.model)
    renderer = b.renderer()
    rs = renderer.render(plan)
    assert rs.backend == backend_name
    counts = rs.counts()
    assert counts and sum(counts.values()) > 0, counts
    # provenance comes with the ruleset: every IR rule is traced to its resource
    prov = rs.provenance()
    rules = [r for s in plan.rulesets.values() for r in s.rules] + [
        st for p in plan.ports for st in (*p.ingress, *p.egress) if isinstance(st, Rule)]
    missing = [r.rid for r in rules if r.rid not in prov]
    assert not missing, f"{len(missing)} rule ids without provenance, e.g. {missing[:3]}"
    assert all(prov[r.rid] == r.origin for r in rules)
    assert all(isinstance(st, Jump) or st.rid for p in plan.ports for st in p.ingress)
    assert [title for title, _ in rs.sections()], "render must show how to load it"

    with b.applier(box.host_ns) as a:
        first = a.apply(rs, plan)
        assert not first.noop and first.backend == backend_name
        assert first.touched and sum(first.changes.values()) > 0, first
        again = a.apply(renderer.render(plan), plan)
        assert again.noop and again.write_commands == [] and again.touched == [], again
        assert again.conntrack_checked == 0
        assert a.drift(rs) == []
    # a new applier has no cache: it reads the kernel and still finds nothing to do
    with b.applier(box.host_ns) as fresh:
        r = fresh.apply(b.render(plan), plan)
        assert r.noop and r.write_commands == [], r
        assert fresh.drift(rs) == []


def test_backend_small_changes_write_little(applier_lab: Lab) -> None:
    box = applier_lab.up(LAB_TOPOLOGY)
    assert box.box.state.vms and box.drift() == []
    full = _apply(box)[1]  # nothing to do: measure the first apply from a clean slate
    assert full.noop
    b = backends.get(box.box.state.backend)
    with b.applier(box.host_ns) as a:
        a.remove_all()
    first = _apply(box)[1]
    assert not first.noop and first.touched
    size = len(first.touched)

    # a new port (a VM plugged) on a host that has ports already
    rep = box.apply(GROWN).policy
    assert rep is not None and rep.changed
    assert 0 < len(rep.detail.touched) < size, rep.detail.touched
    assert box.drift() == [] and _apply(box)[1].noop

    # one new rule in one group
    def add_rule(m: Model) -> None:
        m.create_security_group_rule({"security_group_id": "db", "direction": "ingress",
                                      "protocol": "udp", "port_range_min": 53,
                                      "port_range_max": 53})
    rep = box.update(add_rule).policy
    assert rep is not None and rep.changed
    assert 0 < len(rep.detail.touched) < size / 2, rep.detail.touched
    assert box.drift() == [] and _apply(box)[1].noop

    # one more address pair: anti-spoof entry plus remote-group member of web
    rep = box.update(lambda m: m.update_port(
        "p1",
        {"allowed_address_pairs": [{"ip_address": "10.61.0.200"}]})).policy
    assert rep is not None and rep.changed
    assert 0 < len(rep.detail.touched) < size / 2, rep.detail.touched
    assert box.drift() == [] and _apply(box)[1].noop


EXAMPLE_FILES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.yaml"))


@pytest.mark.parametrize("example", EXAMPLE_FILES, ids=lambda p: p.name)
def test_backend_loads_every_example_and_reads_it_back(applier_lab: Lab, example: Path) -> None:
    """Each example's whole plan (every feature the files use) is accepted by the kernel
    and reads back as rendered: a second apply by a fresh applier writes nothing."""
    box = applier_lab.up(example, apply=False)
    assert not _apply(box)[1].noop
    assert _apply(box)[1].noop
    assert box.drift() == []


def _saves(ns: str) -> dict[str, str]:
    """Other programs' state; packet counters zeroed (the VMs' own ND/MLD traffic moves
    them)."""
    out = {t: re.sub(r"\[\d+:\d+\]", "[0:0]", save(ns, t))
           for t in ("iptables-save", "ip6tables-save")}
    out["ipset"] = netns.run(ns, ["ipset", "save", "docker-set"]).stdout
    out["nft"] = re.sub(r"counter packets \d+ bytes \d+", "counter",
                        netns.run(ns, ["nft", "list", "table", "inet", "someone_else"]).stdout)
    return out


def test_backend_leaves_other_programs_state_byte_for_byte(applier_lab: Lab) -> None:
    box = applier_lab.up(LAB_TOPOLOGY, apply=False)
    ns = box.host_ns
    netns.run(ns, ["iptables-restore"], input=DOCKER_V4)
    netns.run(ns, ["ip6tables-restore"], input=DOCKER_V6)
    netns.run(ns, ["ipset", "create", "docker-set", "hash:ip"])
    netns.run(ns, ["ipset", "add", "docker-set", "172.17.0.9"])
    netns.run(ns, ["nft", "-f", "-"], input=OTHER_NFT)
    before = _saves(ns)

    assert not _apply(box)[1].noop
    box.apply(GROWN)
    assert _apply(box)[1].noop
    during = _saves(ns)
    for key in ("iptables-save", "ip6tables-save"):
        same_foreign(before[key], during[key])
    assert (during["ipset"], during["nft"]) == (before["ipset"], before["nft"])

    b = backends.get(box.box.state.backend)
    with b.applier(ns) as a:
        a.remove_all()
        assert a.drift(b.render(compile_plan(box.topo.model)))  # everything is gone now
    # the lab's host-NAT guard (seed 003) goes as `portwall remove` takes it
    assert remove_guard(Runner(ns)) and not remove_guard(Runner(ns))
    after = _saves(ns)
    same_foreign(before["iptables-save"], after["iptables-save"])
    same_foreign(before["ip6tables-save"], after["ip6tables-save"])
    assert "pw-" not in after["iptables-save"] + after["ip6tables-save"]
    assert (after["ipset"], after["nft"]) == (before["ipset"], before["nft"])
    assert netns.run(ns, ["ipset", "list", "-n"]).stdout.split() == ["docker-set"]
    # the other program's table is the only nft table that is not empty of rules
    assert "someone_else" in netns.run(ns, ["nft", "list", "tables"]).stdout


def test_backend_drift_is_reported_and_repaired(applier_lab: Lab) -> None:
    box = applier_lab.up(LAB_TOPOLOGY)
    b = backends.get(box.box.state.backend)
    plan = compile_plan(box.topo.model)
    with b.applier(box.host_ns) as a:
        rs = b.render(plan)
        assert a.apply(rs, plan).noop
        a.remove_all()
        drift = a.drift(rs)
        assert drift and all(isinstance(d, str) and d for d in drift)
        r = a.apply(rs, plan)
        assert not r.noop and r.touched
        assert a.drift(rs) == [] and a.apply(rs, plan).noop


# ---------------------------------------------------------------------------- iptables only
# ---------------------------------------------------------------------------- sync (iptables)
def test_apply_converges_and_a_second_apply_writes_nothing(host_ns: str) -> None:
    cloud = Cloud()
    plan, rs = cloud.render()
    with IptablesApplier(host_ns) as a:
        first = a.apply(rs, plan)
        assert not first.noop
        assert first.chains_written == len(all_chains(rs))
        assert first.sets_created == len(rs.ipsets) > 0
        assert first.hooks_fixed == 6  # FORWARD, INPUT, raw PREROUTING; both families
        # the bridge table (ARP/ND guard, tracking marks: one nft transaction), then sets
        # and rules
        assert [c.split()[0] for c in first.write_commands] == [
            "nft", "ipset", "iptables-nft-restore", "ip6tables-nft-restore"]

        again = a.apply(rs, plan)
        assert again.noop and again.write_commands == [] and again.chains_written == 0
        # our own two commits per family moved the generation as expected: cache trusted
        assert again.cached_read
        assert a.drift(rs) == []

    # A new applier has no cache: it reads everything and still finds nothing to do,
    # which proves the renderer's spelling is what iptables-save prints.
    with IptablesApplier(host_ns) as fresh:
        r = fresh.apply(rs, plan)
        assert r.noop and not r.cached_read and r.write_commands == []
        current = fresh.current()
    for fam, tables in rs.tables.items():
        for tname, table in tables.items():
            got = current.tables[fam][tname]
            assert {n: c.rules for n, c in got.chains.items()} == {
                n: c.rules for n, c in table.chains.items()}
            assert {(h.builtin, h.rule) for h in got.hooks} == {
                (h.builtin, h.rule) for h in table.hooks}
    assert set(current.ipsets) == set(rs.ipsets)


def test_one_new_port_writes_only_its_chains_and_the_dispatch(host_ns: str) -> None:
    cloud = Cloud()
    plan, rs = cloud.render()
    with IptablesApplier(host_ns) as a:
        a.apply(rs, plan)
        new_id = cloud.add_port()
        plan2, rs2 = cloud.render()
        r = a.apply(rs2, plan2)
        p = plan2.port(new_id)
        own = {ingress_chain(p), egress_chain(p), spoof_chain(p)}
        expected = {(f, "filter", c) for f in (4, 6) for c in own | {"pw-dispatch", "pw-INPUT"}}
        # a stateful port is zoned by its bridge's rule: the raw table is not rewritten
        assert set(r.written) == expected
        assert r.chains_deleted == 0 and r.hooks_fixed == 0
        # web is a remote group: the new port's address joins its set, nothing else changes
        assert (r.sets_updated, r.set_entries_added, r.set_entries_removed) == (1, 1, 0)
        web_set = set_name(cloud.web, 4)
        assert p.addresses[0].network_address.compressed in ipset_members(host_ns, web_set)
        assert a.drift(rs2) == []

        # An address pair on one port: its anti-spoof chain and its groups' set change.
        first = plan2.ports[0]
        cloud.m.update_port(first.id, {"allowed_address_pairs": [{"ip_address": "10.61.0.0/24"}]})
        plan_p, rs_p = cloud.render()
        r = a.apply(rs_p, plan_p)
        assert set(r.written) == {(4, "filter", spoof_chain(first))}
        assert (r.sets_updated, r.set_entries_added) == (1, 1)
        assert "10.61.0.0/24" in ipset_members(host_ns, web_set)

        # A changed rule rewrites the group's chain and nothing else.
        cloud.m.create_security_group_rule({
            "security_group_id": cloud.web, "direction": "ingress", "protocol": "udp",
            "port_range_min": 53, "port_range_max": 53})
        plan3, rs3 = cloud.render()
        r = a.apply(rs3, plan3)
        assert set(r.written) == {(4, "filter", group_chain(plan3.rulesets[f"sg-{cloud.web}-ingress"]))}
        assert a.drift(rs3) == []


# ---------------------------------------------------------------------------- others
DOCKER_V4 = """*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:DOCKER - [0:0]
-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER
-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE
-A DOCKER -i docker0 -j RETURN
COMMIT
*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
:DOCKER - [0:0]
:DOCKER-USER - [0:0]
-A FORWARD -s 10.99.0.0/16 -m comment --comment "admin: backup network" -j ACCEPT
-A FORWARD -j DOCKER-USER
-A FORWARD -o docker0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A FORWARD -o docker0 -j DOCKER
-A DOCKER -d 172.17.0.2/32 ! -i docker0 -o docker0 -p tcp -m tcp --dport 80 -j ACCEPT
-A DOCKER-USER -j RETURN
COMMIT
*raw
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A PREROUTING -s 10.98.0.0/16 -j NOTRACK
COMMIT
"""
DOCKER_V6 = """*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A FORWARD -s fd99::/64 -j ACCEPT
COMMIT
"""


def test_foreign_chains_and_rules_survive_byte_for_byte(host_ns: str) -> None:
    netns.run(host_ns, ["iptables-restore"], input=DOCKER_V4)
    netns.run(host_ns, ["ip6tables-restore"], input=DOCKER_V6)
    netns.run(host_ns, ["ipset", "create", "docker-set", "hash:ip"])
    netns.run(host_ns, ["ipset", "add", "docker-set", "172.17.0.9"])
    before = {t: save(host_ns, t) for t in ("iptables-save", "ip6tables-save")}
    sets_before = netns.run(host_ns, ["ipset", "save", "docker-set"]).stdout

    cloud = Cloud()
    plan, rs = cloud.render()
    with IptablesApplier(host_ns) as a:
        a.apply(rs, plan)
        for tool, text in before.items():
            same_foreign(text, save(host_ns, tool))
        cloud.add_port()
        plan2, rs2 = cloud.render()
        assert not a.apply(rs2, plan2).noop
        assert a.apply(rs2, plan2).noop
        after = save(host_ns)
        same_foreign(before["iptables-save"], after)
        # portwall's hook went in front of the admin's rule, which kept its place after it
        forward = [line for line in after.splitlines() if line.startswith("-A FORWARD")]
        assert forward[0].endswith("-j pw-FORWARD")
        assert forward[1:] == [line for line in before["iptables-save"].splitlines()
                               if line.startswith("-A FORWARD")]
        a.remove_all()
    # Byte for byte, apart from tables portwall had to create (left empty, ACCEPT).
    assert save(host_ns) == before["iptables-save"]
    same_foreign(before["ip6tables-save"], save(host_ns, "ip6tables-save"))
    assert "pw-" not in save(host_ns, "ip6tables-save")
    assert netns.run(host_ns, ["ipset", "save", "docker-set"]).stdout == sets_before
    assert netns.run(host_ns, ["ipset", "list", "-n"]).stdout.split() == ["docker-set"]


def test_a_hook_pushed_down_by_another_program_is_moved_back_to_the_top(host_ns: str) -> None:
    cloud = Cloud()
    plan, rs = cloud.render()
    with IptablesApplier(host_ns) as a:
        a.apply(rs, plan)
        netns.run(host_ns, ["iptables", "-I", "FORWARD", "1", "-s", "10.99.0.0/16", "-j", "ACCEPT"])
        # The change moved the nf_tables generation: the cached snapshot is not trusted.
        r = a.apply(rs, plan)
        assert r.hooks_fixed == 1 and r.chains_written == 0 and not r.cached_read
        netns.run(host_ns, ["iptables", "-t", "raw", "-I", "PREROUTING", "1", "-j", "ACCEPT"])
        drift = a.drift(rs)
        assert drift == ["IPv4 raw: hook in PREROUTING is rule 2, not 1 (another program "
                         "inserted rules before it): -m comment --comment pw-hook -j "
                         "pw-PREROUTING"], drift
        r = a.apply(rs, plan)
        assert r.hooks_fixed == 1 and r.chains_written == 0
        forward = netns.run(host_ns, ["iptables", "-S", "FORWARD"]).stdout.splitlines()
        assert forward[1].endswith("-j pw-FORWARD")
        assert forward[2] == "-A FORWARD -s 10.99.0.0/16 -j ACCEPT"
        assert a.drift(rs) == []
        assert a.apply(rs, plan).noop


def test_drift_is_reported_and_the_next_apply_repairs_it(host_ns: str) -> None:
    cloud = Cloud()
    plan, rs = cloud.render()
    web_set = set_name(cloud.web, 4)
    member = sorted(ipset_members(host_ns, web_set) or rs.ipsets[web_set].members)[0]
    with IptablesApplier(host_ns) as a:
        a.apply(rs, plan)
        hook = next(h.rule for h in rs.tables[4]["filter"].hooks if h.builtin == "FORWARD")
        netns.run(host_ns, ["iptables", "-F", "pw-sg"])
        netns.run(host_ns, ["ipset", "del", web_set, member])
        netns.run(host_ns, ["sh", "-c", f"iptables -D FORWARD {hook}"])
        drift = a.drift(rs)
        assert any("chain pw-sg modified" in d for d in drift), drift
        assert any(f"ipset {web_set}: 1 members missing" in d for d in drift), drift
        assert any("hook missing in FORWARD" in d for d in drift), drift
        r = a.apply(rs, plan)
        assert (4, "filter", "pw-sg") in r.written
        assert r.hooks_fixed == 1 and r.set_entries_added == 1
        assert a.drift(rs) == []
        assert a.apply(rs, plan).noop


# ---------------------------------------------------------------------------- failure
def broken(rs: IptablesRuleset, family: IpFamily, rid: str) -> IptablesRuleset:
    """``rs`` plus a rule the kernel refuses (a jump to a chain that does not exist)."""
    bad = copy.deepcopy(rs)
    name = "pw-sg"
    chain = bad.tables[family]["filter"].chains[name]
    bad.tables[family]["filter"].chains[name] = Chain(
        name, [*chain.rules, f"-m comment --comment {rid} -j pw-no-such-chain"])
    return bad


def test_a_failed_load_names_the_rule_and_leaves_the_previous_state(host_ns: str) -> None:
    cloud = Cloud()
    plan, rs = cloud.render()
    with IptablesApplier(host_ns) as a:
        a.apply(rs, plan)
        before = save(host_ns)
        # The next version adds a port and a group with a new set, and one bad rule.
        newgrp = cloud.m.create_security_group({"name": "extra", "security_group_rules": [
            {"direction": "ingress", "protocol": "tcp", "port_range_min": 1,
             "port_range_max": 9, "remote_group_id": cloud.db}]}).id
        cloud.add_port(groups=[cloud.web, newgrp])
        plan2, rs2 = cloud.render()
        rule = cloud.m.security_groups[cloud.web].security_group_rules[0]
        with pytest.raises(ApplyError) as info:
            a.apply(broken(rs2, 4, f"sgr-{rule.id}"), plan2)
        err = info.value
        assert err.rid == f"sgr-{rule.id}"
        assert err.origin is not None and err.origin.resource_id == rule.id
        assert err.line is not None and "pw-no-such-chain" in err.line
        assert "pw-no-such-chain" in str(err) and rule.id in str(err)
        assert save(host_ns) == before
        assert a.drift(rs) == []
        assert set_name(cloud.db, 4) not in netns.run(host_ns, ["ipset", "list", "-n"]).stdout

        # IPv6 fails after IPv4 went in: IPv4 is rolled back.
        with pytest.raises(ApplyError) as info:
            a.apply(broken(rs2, 6, f"sgr-{rule.id}"), plan2)
        assert info.value.rolled_back
        assert save(host_ns) == before
        assert a.drift(rs) == []
        assert a.apply(rs2, plan2).chains_written > 0
        assert a.drift(rs2) == []


# ---------------------------------------------------------------------------- ipsets
def test_few_set_changes_are_adds_many_are_a_swap(host_ns: str) -> None:
    cloud = Cloud(ports=1)
    for _ in range(60):  # members of web on other hosts: only web's set knows them
        cloud.add_port(host="elsewhere")
    plan, rs = cloud.render()
    web_set = set_name(cloud.web, 4)
    with IptablesApplier(host_ns) as a:
        a.apply(rs, plan)
        assert len(ipset_members(host_ns, web_set)) == 61

        cloud.add_port(host="elsewhere")
        plan, rs = cloud.render()
        r = a.apply(rs, plan)
        assert (r.sets_updated, r.sets_swapped, r.set_entries_added, r.chains_written) == (1, 0, 1, 0)
        assert r.write_commands == ["ipset restore -exist"]
        assert len(ipset_members(host_ns, web_set)) == 62

        for _ in range(40):
            cloud.add_port(host="elsewhere")
        plan, rs = cloud.render()
        r = a.apply(rs, plan)
        assert (r.sets_updated, r.sets_swapped, r.set_entries_added) == (1, 1, 40)
        assert len(ipset_members(host_ns, web_set)) == 102
        names = netns.run(host_ns, ["ipset", "list", "-n"]).stdout.split()
        assert temp_name(web_set) not in names
        assert a.drift(rs) == []


def test_a_set_is_destroyed_only_after_the_rules_stop_using_it(host_ns: str) -> None:
    cloud = Cloud()
    cloud.add_port(groups=[cloud.db])
    plan, rs = cloud.render()
    web_set = set_name(cloud.web, 4)
    with IptablesApplier(host_ns) as a:
        a.apply(rs, plan)
        # Drop every rule that names web as a remote group: its set becomes unneeded.
        for sg in (cloud.web, cloud.db):
            for rule in list(cloud.m.security_groups[sg].security_group_rules):
                if rule.remote_group_id == cloud.web:
                    cloud.m.delete_security_group_rule(rule.id)
        plan2, rs2 = cloud.render()
        assert web_set not in rs2.ipsets
        r = a.apply(rs2, plan2)
        assert r.sets_deleted >= 1 and r.chains_written >= 1
        assert web_set not in netns.run(host_ns, ["ipset", "list", "-n"]).stdout.split()
        assert a.drift(rs2) == []


# ---------------------------------------------------------------------------- legacy
def test_the_legacy_backend_converges_too(make_netns: Callable[[str], str]) -> None:
    ns = make_netns("pwt-leg")
    cloud = Cloud()
    plan, rs = cloud.render()
    with IptablesApplier(ns, legacy=True) as a:
        assert not a.apply(rs, plan).noop
        r = a.apply(rs, plan)
        assert r.noop and not r.cached_read  # no generation counter: always a full read
        assert a.drift(rs) == []
        cloud.add_port()
        plan2, rs2 = cloud.render()
        assert a.apply(rs2, plan2).chains_written == 10  # 3 own + pw-dispatch + pw-INPUT, x2 families
        assert a.drift(rs2) == []
        assert ":pw-sg" in save(ns, "iptables-legacy-save")
        a.remove_all()
        assert "pw-" not in save(ns, "iptables-legacy-save")
