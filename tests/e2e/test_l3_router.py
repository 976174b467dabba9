"""Routers with real packets: SNAT, floating IPs (hairpin, moves), metadata and FWaaS v2,
on the seed 002 router example (a router namespace with qr-/qg- interfaces, the outside).
Every test runs on each backend with an L3 renderer (iptables, nftables), same assertions."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from portwall.ir import compile_plan
from portwall.lab import netns
from portwall.lab.check import endpoint
from portwall.lab.evidence import read_counters
from portwall.lab.harness import Lab, LabBox
from portwall.lab.traffic import Server, Session, probe

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SEED = EXAMPLES / "seed002-router-fip.yaml"
pytestmark = [pytest.mark.e2e, pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]


@pytest.fixture
def box(l3_backend_name: str) -> Iterator[LabBox]:
    with Lab("pwt-l3", backend=l3_backend_name) as lab:
        yield lab.up(SEED)


def _send(box: LabBox, src: str, dst: str, port: int) -> str:
    return probe(endpoint(box.box, src), "tcp", dst, port, 2.0)[0]


def _sources(srv: Server, port: int) -> list[str]:
    return [ln.split()[2] for ln in srv.stop() if ln.startswith(f"tcp {port} ")]


def test_every_expectation_holds_for_the_right_reason(box: LabBox) -> None:
    results = box.check()
    bad = [(r.expect.describe(), r.observed, r.why) for r in results if not r.ok]
    assert not bad, bad
    denies = [r for r in results if r.expect.verdict == "deny"]
    assert denies and all("by policy" in r.why for r in denies)
    # the router's drops and the host's port-filter drops are counted on every backend
    router = [r for r in denies if "firewall group" in r.why]
    assert len(router) >= 4 and all("counted" in r.why for r in router), router
    ports = [r for r in denies if r not in router]
    assert ports and all("counted" in r.why for r in ports), ports
    assert any(r.why.startswith("rejected by policy") for r in denies)  # the ssh REJECT


def test_snat_addresses_seen_by_the_outside(box: LabBox) -> None:
    with Server(endpoint(box.box, "outside"), tcp=[7]) as srv:
        for vm in ("client", "web-1", "db-1"):
            assert _send(box, vm, "198.51.100.10", 7) == "allow", vm
        seen = _sources(srv, 7)
    # client and db-1 leave as the gateway address, web-1 as its floating IP
    assert sorted(seen) == sorted(["203.0.113.2", "203.0.113.11", "203.0.113.2"])


def test_no_snat_east_west_nor_from_outside_and_hairpin(box: LabBox) -> None:
    with Server(box.vm("db-1"), tcp=[5432]) as db, Server(box.vm("web-1"), tcp=[80]) as web:
        assert _send(box, "web-1", "10.3.0.21", 5432) == "allow"
        assert _send(box, "outside", "203.0.113.11", 80) == "allow"
        assert _send(box, "client", "203.0.113.11", 80) == "allow"  # hairpin
        assert _send(box, "web-2", "203.0.113.11", 80) == "allow"  # hairpin from a FIP
        assert _sources(db, 5432) == ["10.2.0.11"]
        assert _sources(web, 80) == ["198.51.100.10", "203.0.113.2", "203.0.113.12"]


def test_floating_ip_moved_cuts_old_connections_new_ones_work(box: LabBox) -> None:
    fips = {f.floating_ip_address: f for f in box.topo.model.floating_ips.values()}
    fip = fips["203.0.113.11"]
    box.update(lambda m: m.update_floatingip(fips["203.0.113.12"].id, {"port_id": None}))
    out = endpoint(box.box, "outside")
    with Server(box.vm("web-1"), tcp=[80]), Server(box.vm("web-2"), tcp=[80]) as cl:
        with Session(out, "203.0.113.11", 80, timeout=1.0) as s:
            assert s.connected and s.send()
            report = box.update(lambda m: m.update_floatingip(fip.id,
                                                              {"port_id": "web-2-port"}))
            assert any("connections cut" in c and not c.endswith(" 0 connections cut")
                       for c in report.changes), report.changes
            assert not s.send()  # the old connection to web-1 is gone
        assert _send(box, "outside", "203.0.113.11", 80) == "allow"
        assert _sources(cl, 80) == ["198.51.100.10"]  # new connections reach web-2
    box.update(lambda m: m.update_floatingip(fip.id, {"port_id": None}))
    assert _send(box, "outside", "203.0.113.11", 80) == "deny"


def test_metadata_answered_by_router_never_forwarded(box: LabBox) -> None:
    code = ("import urllib.request,sys;"
            "print(urllib.request.urlopen('http://169.254.169.254/',timeout=3).read().decode())")
    out = netns.run(box.vm("web-1").netns, ["python3", "-c", code]).stdout
    ident = json.loads(out)
    assert ident["name"] == "web-1" and ident["fixed_ip"] == "10.2.0.11"
    out = netns.run(box.vm("db-1").netns, ["python3", "-c", code]).stdout
    assert json.loads(out)["name"] == "db-1"
    (ns,) = box.box.state.routers
    # any other port of the metadata address is dropped at the router, never routed out
    with Server(endpoint(box.box, "outside"), tcp=[81]) as srv:
        before = _counter(box, ns, "pw-metadata-never-forwarded")
        assert probe(box.vm("web-1"), "tcp", "169.254.169.254", 81, 1.0)[0] == "deny"
        assert _counter(box, ns, "pw-metadata-never-forwarded") > before
        assert srv.stop() == []


def _counter(box: LabBox, ns: str, rid: str) -> int:
    """Packets counted by the router's rules tagged ``rid``, read as the sandbox's backend
    wrote them."""
    return sum(n for key, n in read_counters({(ns, 4)}, box.box.state.backend).items()
               if key[3] == rid)


def test_changed_firewall_group_cuts_only_what_it_no_longer_allows(box: LabBox) -> None:
    m = box.topo.model
    with Server(box.vm("db-1"), tcp=[5432]):
        a = Session(box.vm("web-1"), "10.3.0.21", 5432, timeout=1.0)
        b = Session(box.vm("web-2"), "10.3.0.21", 5432, timeout=1.0)
        with a, b:
            assert a.connected and b.connected and a.send() and b.send()
            rule = m.create_firewall_rule({"name": "no-web-2", "protocol": "tcp",
                                           "destination_port": "5432",
                                           "source_ip_address": "10.2.0.12/32",
                                           "action": "deny"})
            pol = m.get("firewall_policy", "db-in")
            box.update(lambda _: pol.firewall_rules.insert(0, rule.id))
            assert a.send(), "web-1's connection is still allowed and must survive"
            assert not b.send(), "web-2's connection is no longer allowed"
        assert _send(box, "web-2", "10.3.0.21", 5432) == "deny"
        assert _send(box, "web-1", "10.3.0.21", 5432) == "allow"


def test_established_replies_pass_a_default_deny_egress(box: LabBox) -> None:
    grp = box.topo.model.get("firewall_group", "db-fw")
    box.update(lambda _: setattr(grp, "egress_firewall_policy_id", None))
    with Server(box.vm("db-1"), tcp=[5432]):
        assert _send(box, "web-1", "10.3.0.21", 5432) == "allow"  # replies: ESTABLISHED
    assert _send(box, "db-1", "198.51.100.10", 7) == "deny"  # new from db: default deny


INVALID_ACK = r"""
import sys
from scapy.all import Ether, IP, TCP, Raw, sendp
sendp(Ether(src=sys.argv[1], dst=sys.argv[2]) / IP(src="10.2.0.11", dst="10.3.0.21")
      / TCP(sport=41000, dport=5432, flags="A", seq=5, ack=7) / Raw(b"x"), iface="eth0",
      count=3, verbose=False)
"""


def test_fwaas_drops_invalid(box: LabBox) -> None:
    (ns,) = box.box.state.routers
    netns.run(ns, ["sysctl", "-q", "-w", "net.netfilter.nf_conntrack_tcp_loose=0"])
    plan_router = next(iter(compile_plan(box.topo.model).routers.values()))
    qr = next(i for i in plan_router.interfaces if any(str(a.ip) == "10.2.0.1"
                                                       for a in i.addresses))
    before = _counter(box, ns, "pw-fw-invalid")
    with Server(box.vm("db-1"), tcp=[5432]) as srv:
        netns.run(box.vm("web-1").netns, [sys.executable, "-c", INVALID_ACK,
                                          box.mac("web-1"), qr.mac])
        assert _counter(box, ns, "pw-fw-invalid") >= before + 3  # a lone ACK: INVALID, dropped
        assert _send(box, "web-1", "10.3.0.21", 5432) == "allow"  # a real one still works
        assert _sources(srv, 5432) == ["10.2.0.11"]


def test_rules_live_in_the_chosen_backend_and_name_their_resources(box: LabBox) -> None:
    """The router is programmed by the sandbox's backend only, and its comments read
    ``<rid> <names>`` (the rid first, for every parser; names for people)."""
    (ns,) = box.box.state.routers
    nft = netns.run(ns, ["nft", "list", "table", "inet", "portwall_l3"], check=False)
    ipt = netns.run(ns, ["iptables-save"]).stdout
    if box.box.state.backend == "nftables":
        assert nft.returncode == 0 and "pw-l3-" not in ipt
        listing = nft.stdout
    else:
        assert nft.returncode != 0 and "-A pw-l3-post" in ipt
        listing = ipt
    assert "group db-fw ingress tcp/22 reject" in listing
    assert "203.0.113.11->10.2.0.11 port web-1-port" in listing
    assert "group db-fw ingress default-deny" in listing


def test_disassociated_floating_ip_cuts_its_connections_in_out_and_hairpin(
        box: LabBox) -> None:
    """The connections *to* the floating IP (from outside, hairpin from another floating
    IP's VM) and *from* it (its VM's, leaving as it) are cut; another floating IP's stay."""
    fips = {f.floating_ip_address: f for f in box.topo.model.floating_ips.values()}
    out = endpoint(box.box, "outside")
    with Server(box.vm("web-1"), tcp=[80]), Server(out, tcp=[7]):
        inbound = Session(out, "203.0.113.11", 80, timeout=1.0)
        hairpin = Session(box.vm("web-2"), "203.0.113.11", 80, timeout=1.0)
        outbound = Session(box.vm("web-1"), "198.51.100.10", 7, timeout=1.0)
        keep = Session(box.vm("web-2"), "198.51.100.10", 7, timeout=1.0)  # leaves as .12
        with inbound, hairpin, outbound, keep:
            sessions = (inbound, hairpin, outbound, keep)
            assert all(s.connected and s.send() for s in sessions)
            report = box.update(lambda m: m.update_floatingip(fips["203.0.113.11"].id,
                                                              {"port_id": None}))
            cut = [c for c in report.changes if "connections cut" in c]
            assert cut and int(cut[0].rsplit(", ", 1)[1].split()[0]) >= 3, report.changes
            assert not inbound.send() and not hairpin.send() and not outbound.send()
            assert keep.send(), "the other floating IP's connection must survive"
