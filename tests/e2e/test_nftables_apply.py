"""The nftables applier against a real kernel: convergence, O(change) writes, other
programs' rules untouched, drift repaired, a refused batch changes nothing, and a stateful
client talking to a stateless server (real traffic)."""

from __future__ import annotations

import os
from dataclasses import replace

import pytest

from portwall.backends.base import ApplyError
from portwall.backends.nftables import NftApplier, NftRenderer
from portwall.backends.nftables.types import INET, NftChain
from portwall.ir import compile_plan
from portwall.ir.types import HostPlan
from portwall.lab import netns
from portwall.lab.harness import Lab
from portwall.lab.traffic import Server
from portwall.model import Model, stable_ids

pytestmark = [pytest.mark.e2e,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]

HOST = "h1"


class Cloud:
    """Groups web (tcp/80, ssh from web) and db (5432 from web); ports in web."""

    def __init__(self, ports: int = 3) -> None:
        self.m = Model(stable_ids("test-nft-apply"))
        self.net = self.m.create_network({"name": "n1"})
        self.m.create_subnet({"network_id": self.net.id, "cidr": "10.61.0.0/16"})
        self.web = self.m.create_security_group({"name": "web", "security_group_rules": [
            {"direction": "ingress", "protocol": "tcp", "port_range_min": 80,
             "port_range_max": 80}]}).id
        self.m.create_security_group_rule({
            "security_group_id": self.web, "direction": "ingress", "protocol": "tcp",
            "port_range_min": 22, "port_range_max": 22, "remote_group_id": self.web})
        self.db = self.m.create_security_group({"name": "db"}).id
        self.n = 0
        for _ in range(ports):
            self.add_port()

    def add_port(self, host: str = HOST, groups: list[str] | None = None) -> str:
        self.n += 1
        return self.m.create_port({
            "network_id": self.net.id, "name": f"p{self.n}", "binding:host_id": host,
            "security_groups": groups or [self.web],
            "fixed_ips": [{"ip_address": f"10.61.0.{10 + self.n}"}]}).id

    def plan(self) -> HostPlan:
        return compile_plan(self.m, host=HOST)


def _table(ns: str, family: str) -> str:
    return netns.run(ns, ["nft", "list", "table", family, "portwall"], check=False).stdout


def test_converges_then_writes_only_the_change(host_ns: str) -> None:
    cloud = Cloud()
    r = NftRenderer()
    with NftApplier(host_ns) as a:
        plan = cloud.plan()
        rs = r.render(plan)
        first = a.apply(rs, plan)
        assert not first.noop and first.changes["chains_written"] >= 2
        assert a.apply(rs, plan).noop
        with NftApplier(host_ns) as fresh:  # reads the kernel instead of its cache
            assert fresh.apply(rs, plan).noop and fresh.drift(rs) == []

        cloud.add_port()  # same groups: elements only
        plan = cloud.plan()
        rep = a.apply(rs := r.render(plan), plan)
        assert rep.changes["chains_written"] == 0 and rep.changes["set_elements_added"] >= 5

        cloud.add_port(host="h2")  # a member on another host: one element
        plan = cloud.plan()
        rep = a.apply(rs := r.render(plan), plan)
        assert rep.changes["chains_written"] == 0
        assert rep.changes["set_elements_added"] == 1, rep.touched

        cloud.add_port(groups=[cloud.web, cloud.db])  # a new group combination: 2 chains
        plan = cloud.plan()
        rep = a.apply(rs := r.render(plan), plan)
        assert rep.changes["chains_written"] == 4, rep.touched  # 2 port + 2 db group chains

        cloud.m.create_security_group_rule({  # one changed rule: one chain rewritten
            "security_group_id": cloud.db, "direction": "ingress", "protocol": "udp"})
        plan = cloud.plan()
        rep = a.apply(rs := r.render(plan), plan)
        assert rep.changes["chains_written"] == 1 and rep.touched == [
            f"~ inet chain {next(c for c in rs.chains if c[1].startswith('gi_'+cloud.db[:8]))[1]}"]
        assert a.drift(rs) == []


def test_other_programs_rules_are_untouched(host_ns: str) -> None:
    netns.run(host_ns, ["nft", "-f", "-"], input=(
        "table inet other {\n chain f {\n type filter hook forward priority 0;\n"
        " ip saddr 192.0.2.1 counter drop\n }\n}\n"
        "table bridge other {\n chain p {\n type filter hook prerouting priority -300;\n"
        " ether type arp counter\n }\n}\n"))
    netns.run(host_ns, ["iptables", "-N", "DOCKER-USER"])
    netns.run(host_ns, ["iptables", "-A", "FORWARD", "-j", "DOCKER-USER"])
    netns.run(host_ns, ["iptables", "-A", "DOCKER-USER", "-s", "192.0.2.0/24", "-j", "DROP"])

    def foreign() -> str:
        out = netns.run(host_ns, ["nft", "list", "ruleset"]).stdout
        tables = out.split("\ntable ")
        return "\n".join(t.strip() for t in tables if not t.split(" {")[0].endswith("portwall"))

    before = foreign()
    cloud = Cloud()
    with NftApplier(host_ns) as a:
        plan = cloud.plan()
        a.apply(NftRenderer().render(plan), plan)
        cloud.add_port(groups=[cloud.db])
        plan = cloud.plan()
        a.apply(NftRenderer().render(plan), plan)
        assert foreign() == before
        a.remove_all()
    assert foreign() == before
    assert _table(host_ns, "inet") == "" and _table(host_ns, "bridge") == ""


def test_drift_is_reported_and_repaired(host_ns: str) -> None:
    cloud = Cloud()
    plan = cloud.plan()
    rs = NftRenderer().render(plan)
    with NftApplier(host_ns) as a:
        a.apply(rs, plan)
        group = next(k[1] for k in rs.chains if k[1].startswith("gi_"))
        ip = str(cloud.m.ports[next(iter(cloud.m.ports))].addresses()[0])
        setname = next(k[1] for k in rs.sets if k[1].startswith("r4h_"))
        netns.run(host_ns, ["nft", "flush", "chain", "inet", "portwall", group])
        netns.run(host_ns, ["nft", "delete", "element", "inet", "portwall", setname,
                            "{", ip, "}"])
        netns.run(host_ns, ["nft", "delete", "chain", "bridge", "portwall", "forward"])
        drift = a.drift(rs)
        assert any(f"chain {group} modified" in d for d in drift), drift
        assert any(f"{setname}: 1 elements missing" in d for d in drift), drift
        assert any("chain forward missing" in d for d in drift), drift
        rep = a.apply(rs, plan)  # the generation moved: the applier reads the kernel again
        assert not rep.noop and not rep.native.cached
        assert a.drift(rs) == [] and a.apply(rs, plan).noop


def test_a_refused_batch_changes_nothing(host_ns: str) -> None:
    cloud = Cloud()
    plan = cloud.plan()
    rs = NftRenderer().render(plan)
    with NftApplier(host_ns) as a:
        a.apply(rs, plan)
        before = _table(host_ns, "inet") + _table(host_ns, "bridge")
        cloud.add_port()
        plan2 = cloud.plan()
        good = NftRenderer().render(plan2)
        key = next(k for k in good.chains if k[1].startswith("gi_"))
        chain = good.chains[key]
        bad_rule = 'meta nfproto ipv4 ip saddr @nosuchset accept comment "sgr-broken"'
        bad = replace(good, chains={**good.chains, key: NftChain(
            INET, chain.name, (*chain.rules, bad_rule))})
        with pytest.raises(ApplyError) as err:
            a.apply(bad, plan2)
        assert err.value.rid == "sgr-broken" and err.value.rolled_back
        assert _table(host_ns, "inet") + _table(host_ns, "bridge") == before
        assert a.drift(rs) == []
        assert not a.apply(good, plan2).noop and a.drift(good) == []


def test_the_worker_acts_in_its_namespace_and_returns_the_caller(host_ns: str) -> None:
    """libnftables runs in the caller's thread, moved into the namespace per call: the
    table lands there (not in the caller's namespace), and the thread comes back, also when
    the call raises."""
    from portwall.backends.nftables.worker import NftWorker

    home = os.stat("/proc/thread-self/ns/net").st_ino
    table = f"pwtest{os.getpid()}"
    w = NftWorker(host_ns)
    try:
        assert w.run(f"add table inet {table}\n")[0] == 0
        assert os.stat("/proc/thread-self/ns/net").st_ino == home

        def boom() -> None:
            assert os.stat("/proc/thread-self/ns/net").st_ino != home
            raise RuntimeError("boom")

        with pytest.raises(RuntimeError):
            w.call(boom)
        assert os.stat("/proc/thread-self/ns/net").st_ino == home
        assert w.list_json(f"table inet {table}") is not None
        assert w.generation() is not None
    finally:
        w.close()
    assert table in netns.run(host_ns, ["nft", "list", "tables"]).stdout
    mine = subprocess_tables()
    assert table not in mine


def subprocess_tables() -> str:
    import subprocess

    return subprocess.run(["nft", "list", "tables"], capture_output=True, text=True,
                          check=False).stdout


def test_names_in_comments_reach_the_kernel_and_parse_back(host_ns: str) -> None:
    """Group names after the rids (unsafe, non-ASCII and overlong ones cut to one ASCII
    token) load, list back equal (no drift), and a refused rule is still traced by its rid."""
    cloud = Cloud()
    cloud.m.update_security_group(cloud.web, {"name": 'web "front" ' + "\u00e9" * 30 + "y" * 300})
    plan = cloud.plan()
    rs = NftRenderer().render(plan)
    with NftApplier(host_ns) as a:
        a.apply(rs, plan)
        listing = _table(host_ns, "inet")
        assert "group web_front_" in listing and " ingress tcp/80" in listing
        assert a.drift(rs) == []
        with NftApplier(host_ns) as fresh:  # compares the kernel's comments, not a cache
            assert fresh.apply(rs, plan).noop
        key = next(k for k in rs.chains if k[1].startswith("gi_"))
        bad = replace(rs, owner=None, chains={**rs.chains, key: NftChain(INET, key[1], (
            *rs.chains[key].rules,
            'meta nfproto ipv4 ip saddr @nosuchset accept comment "sgr-broken group web in"'))})
        with pytest.raises(ApplyError) as err:
            a.apply(bad, plan)
        assert err.value.rid == "sgr-broken"
        assert a.drift(rs) == []


STATELESS_SERVER = """
project: mixed
networks:
  - name: net
    subnets: [{name: v4, cidr: 10.62.0.0/24}]
security_groups:
  - name: sl
    stateful: false
    security_group_rules:
      - {direction: ingress, protocol: tcp, port_range_min: 80, port_range_max: 80}
      - {direction: ingress, protocol: udp, port_range_min: 53, port_range_max: 53}
      - {direction: ingress, protocol: icmp}
  - name: sf
ports:
  - {name: srv-port, network_id: net, fixed_ips: [10.62.0.10], security_groups: [sl]}
  - {name: cli-port, network_id: net, fixed_ips: [10.62.0.20], security_groups: [sf]}
lab:
  vms:
    srv: {ports: [srv-port]}
    cli: {ports: [cli-port]}
"""


def test_stateful_client_gets_a_stateless_servers_replies() -> None:
    with Lab("pwt-nfmix", backend="nftables") as lab:
        box = lab.up(STATELESS_SERVER)
        with Server(box.vm("srv"), tcp=[80], udp=[53]):
            assert box.reach("cli", "srv", "tcp", 80)
            assert box.reach("cli", "srv", "udp", 53)
            assert box.reach("cli", "srv", "icmp")
            assert not box.reach("cli", "srv", "tcp", 81)
        # the stateless server itself still gets no conntrack help: it cannot reach the
        # client (the client has no ingress rule and the server's packets start no state)
        assert not box.reach("srv", "cli", "icmp")
