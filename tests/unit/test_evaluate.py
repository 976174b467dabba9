"""The evaluator, one step kind at a time, on hand-built IR and on compiled topologies."""

from __future__ import annotations

import ipaddress

import pytest

from portwall.analyze.evaluate import Packet, evaluate_direction, evaluate_hop, plan_index
from portwall.ir import compile_plan
from portwall.ir.types import (
    Action,
    AddressSet,
    CtState,
    HostPlan,
    Jump,
    Match,
    Origin,
    OriginKind,
    PortPlan,
    PortRange,
    Rule,
    RuleSet,
    SetMember,
    SetRef,
    SpoofCheck,
    SpoofEntry,
    Step,
)
from portwall.topology import loads_topology

MAC = "fa:16:3e:00:00:01"
ORIG = Origin(OriginKind.PROVIDER, "provider", "t", "t")


def net(s: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(s)


def rule(rid: str, action: Action = Action.ALLOW, **m: object) -> Rule:
    return Rule(rid, Match(**{"family": 4, **m}), action, ORIG)  # type: ignore[arg-type]


def port(ingress: tuple[Step, ...] = (), egress: tuple[Step, ...] = (),
         spoof: tuple[SpoofEntry, ...] = (), filtered: bool = True) -> PortPlan:
    return PortPlan(id="p1", name="p1", device="tapp1", bridge="brq", mac=MAC, network_id="n",
                    zone=1, filtered=filtered, stateful=True, addresses=(net("10.0.0.5/32"),),
                    spoof=spoof, ingress=ingress, egress=egress, groups=())


def plan(p: PortPlan, rulesets: dict[str, RuleSet] | None = None,
         sets: dict[str, AddressSet] | None = None) -> HostPlan:
    return HostPlan(None, (p,), rulesets or {}, sets or {})


def pkt(**kw: object) -> Packet:
    base: dict[str, object] = {"family": 4, "src": "10.0.0.9", "dst": "10.0.0.5", "protocol": 6,
                               "sport": 40000, "dport": 22}
    base.update(kw)
    return Packet(**base)  # type: ignore[arg-type]


DROP_ALL = rule("fallback", Action.DROP)


# ------------------------------------------------------------------- Rule steps
def test_first_matching_rule_decides() -> None:
    p = port(ingress=(rule("deny22", Action.DROP, protocol=6, dport=PortRange(22, 22)),
                      rule("allow-tcp", protocol=6), DROP_ALL))
    hp = plan(p)
    r = evaluate_direction(hp, p, "ingress", pkt())
    assert not r.allowed and r.decided_by is not None and r.decided_by.rid == "deny22"
    r = evaluate_direction(hp, p, "ingress", pkt(dport=23))
    assert r.allowed and r.decided_by is not None and r.decided_by.rid == "allow-tcp"
    assert [s.outcome for s in r.steps] == ["continue", "allow"]


def test_port_ranges_and_protocols() -> None:
    p = port(ingress=(rule("r", protocol=17, sport=PortRange(53, 53), dport=PortRange(1000, 2000)),
                      DROP_ALL))
    hp = plan(p)
    assert evaluate_direction(hp, p, "ingress", pkt(protocol=17, sport=53, dport=1000)).allowed
    assert evaluate_direction(hp, p, "ingress", pkt(protocol=17, sport=53, dport=2000)).allowed
    assert not evaluate_direction(hp, p, "ingress", pkt(protocol=17, sport=53, dport=2001)).allowed
    assert not evaluate_direction(hp, p, "ingress", pkt(protocol=17, sport=54, dport=1500)).allowed
    assert not evaluate_direction(hp, p, "ingress", pkt(protocol=6, sport=53, dport=1500)).allowed


def test_icmp_type_and_code() -> None:
    p = port(ingress=(rule("echo", protocol=1, icmp_type=8), rule("unreach", protocol=1,
                      icmp_type=3, icmp_code=4), DROP_ALL))
    hp = plan(p)

    def icmp(t: int, c: int) -> bool:
        return evaluate_direction(hp, p, "ingress", pkt(protocol=1, sport=None, dport=None,
                                                        icmp_type=t, icmp_code=c)).allowed

    assert icmp(8, 0) and icmp(8, 7) and icmp(3, 4)
    assert not icmp(3, 3) and not icmp(0, 0)


def test_family_mismatch_and_any_protocol() -> None:
    p = port(ingress=(rule("any4"), DROP_ALL))
    hp = plan(p)
    assert evaluate_direction(hp, p, "ingress", pkt(protocol=47, sport=None, dport=None)).allowed
    v6 = Packet(6, "fd00::1", "fd00::2", 6, 1, 2)
    assert not evaluate_direction(hp, p, "ingress", v6).allowed


def test_ct_state() -> None:
    est = frozenset({CtState.ESTABLISHED, CtState.RELATED})
    p = port(ingress=(rule("est", ct=est), rule("inv", Action.DROP, ct=frozenset({CtState.INVALID})),
                      rule("allow80", protocol=6, dport=PortRange(80, 80)), DROP_ALL))
    hp = plan(p)
    assert evaluate_direction(hp, p, "ingress", pkt(ct=CtState.ESTABLISHED)).allowed
    assert evaluate_direction(hp, p, "ingress", pkt(ct=CtState.RELATED)).allowed
    assert not evaluate_direction(hp, p, "ingress", pkt(ct=CtState.NEW)).allowed
    assert not evaluate_direction(hp, p, "ingress", pkt(ct=CtState.INVALID, dport=80)).allowed
    assert evaluate_direction(hp, p, "ingress", pkt(ct=CtState.UNTRACKED, dport=80)).allowed


def test_address_networks() -> None:
    p = port(ingress=(rule("r", src=net("192.168.0.0/16"), dst=net("10.0.0.5/32")), DROP_ALL))
    hp = plan(p)
    assert evaluate_direction(hp, p, "ingress", pkt(src="192.168.44.1")).allowed
    assert not evaluate_direction(hp, p, "ingress", pkt(src="192.169.0.1")).allowed
    assert not evaluate_direction(hp, p, "ingress", pkt(src="192.168.0.1", dst="10.0.0.6")).allowed


def test_end_of_chain_without_fallback_drops() -> None:
    p = port(ingress=(rule("only80", protocol=6, dport=PortRange(80, 80)),))
    r = evaluate_direction(plan(p), p, "ingress", pkt())
    assert not r.allowed and r.decided_by is None and r.origin.kind == OriginKind.FALLBACK


# ------------------------------------------------------------------- Jump steps
def test_jump_allows_if_any_rule_matches_else_continues() -> None:
    rs = RuleSet("g-in", "g", "web", "ingress", True,
                 (rule("http", protocol=6, dport=PortRange(80, 80)),
                  rule("https", protocol=6, dport=PortRange(443, 443))))
    jump = Jump("g-in", Origin(OriginKind.GROUP, "security_group", "g", "web"))
    p = port(ingress=(jump, rule("after", protocol=6, dport=PortRange(22, 22)), DROP_ALL))
    hp = plan(p, {"g-in": rs})
    r = evaluate_direction(hp, p, "ingress", pkt(dport=443))
    assert r.allowed and r.via == jump and r.decided_by is not None
    assert r.decided_by.rid == "https"
    r = evaluate_direction(hp, p, "ingress", pkt(dport=22))
    assert r.allowed and r.via is None and r.decided_by is not None and r.decided_by.rid == "after"
    assert [s.outcome for s in r.steps] == ["continue", "allow"]
    assert not evaluate_direction(hp, p, "ingress", pkt(dport=25)).allowed


def test_setref_membership_names_member_and_port() -> None:
    members = (SetMember(net("10.0.0.7/32"), "pa", "port-a", OriginKind.FIXED_IP),
               SetMember(net("0.0.0.0/0"), "pn", "nat", OriginKind.ADDRESS_PAIR))
    aset = AddressSet("sg-x-v4", 4, "x", "ssh", members)
    rs = RuleSet("g-in", "g", "proxy", "ingress", True,
                 (rule("r80", protocol=6, dport=PortRange(80, 80), src=SetRef("sg-x-v4")),))
    p = port(ingress=(Jump("g-in", ORIG), DROP_ALL))
    hp = plan(p, {"g-in": rs}, {"sg-x-v4": aset})
    r = evaluate_direction(hp, p, "ingress", pkt(src="10.0.0.7", dport=80))
    assert r.allowed and r.member is not None and r.member.port_name == "port-a"  # most specific
    r = evaluate_direction(hp, p, "ingress", pkt(src="203.0.113.9", dport=80))
    assert r.allowed and r.member is not None and r.member.port_name == "nat"
    assert r.member.kind == OriginKind.ADDRESS_PAIR


def test_setref_to_missing_set_matches_nothing() -> None:
    p = port(ingress=(rule("r", src=SetRef("nope")), DROP_ALL))
    assert not evaluate_direction(plan(p), p, "ingress", pkt()).allowed


# ------------------------------------------------------------------- SpoofCheck
def spoof_port() -> PortPlan:
    entries = (
        SpoofEntry(4, net("10.0.2.0/24"), "fa:16:3e:00:00:99",
                   Origin(OriginKind.ADDRESS_PAIR, "port", "p1", "p1", "pair")),
        SpoofEntry(4, net("10.0.0.5/32"), MAC, Origin(OriginKind.FIXED_IP, "port", "p1", "p1")),
    )
    sc = SpoofCheck(Origin(OriginKind.SPOOF, "port", "p1", "p1"))
    return port(egress=(sc, rule("any"), DROP_ALL), spoof=entries)


def test_spoofcheck_ip_and_mac() -> None:
    p = spoof_port()
    hp = plan(p)

    def out(src: str, mac: str | None) -> bool:
        return evaluate_direction(hp, p, "egress", pkt(src=src, dst="10.9.9.9", src_mac=mac)).allowed

    assert out("10.0.0.5", MAC)
    assert out("10.0.0.5", MAC.upper())  # MACs compare case-insensitively
    assert not out("10.0.0.6", MAC)
    assert not out("10.0.2.7", MAC)  # pair CIDR with another MAC
    assert out("10.0.2.7", "FA:16:3E:00:00:99")
    assert out("10.0.2.7", None)  # MAC unknown: the address alone decides
    r = evaluate_direction(hp, p, "egress", pkt(src="10.0.0.6", src_mac=MAC))
    assert isinstance(r.decided_by, SpoofCheck) and r.spoof_checked and r.spoof_entry is None
    r = evaluate_direction(hp, p, "egress", pkt(src="10.0.2.7", src_mac=None))
    assert r.spoof_entry is not None and r.spoof_entry.origin.kind == OriginKind.ADDRESS_PAIR


def test_spoofcheck_mac_only_entry_and_family() -> None:
    entries = (SpoofEntry(4, None, MAC, Origin(OriginKind.MAC_ONLY, "port", "p1", "p1")),)
    p = port(egress=(SpoofCheck(ORIG), rule("any"), DROP_ALL), spoof=entries)
    hp = plan(p)
    assert evaluate_direction(hp, p, "egress", pkt(src="1.2.3.4", src_mac=MAC)).allowed
    assert not evaluate_direction(hp, p, "egress", pkt(src="1.2.3.4",
                                                       src_mac="fa:16:3e:00:00:02")).allowed
    v6 = Packet(6, "fd00::1", "fd00::2", 6, 1, 2, src_mac=MAC)
    assert not evaluate_direction(hp, p, "egress", v6).allowed


def test_unfiltered_port_allows_everything() -> None:
    p = port(filtered=False)
    r = evaluate_direction(plan(p), p, "ingress", pkt())
    assert r.allowed and r.origin.kind == OriginKind.UNFILTERED


# ------------------------------------------------------------------- compiled plans
TOPO = """
project: t
networks:
  - name: net
    subnets: [{name: sub, cidr: 10.0.0.0/24}]
security_groups:
  - name: web
    security_group_rules:
      - {direction: ingress, protocol: tcp, port_range_min: 80, port_range_max: 80}
      - {direction: ingress, protocol: tcp, port_range_min: 22, port_range_max: 22,
         remote_group_id: admin}
  - name: admin
  - name: stateless
    stateful: false
    security_group_rules:
      - {direction: ingress, protocol: udp, port_range_min: 53, port_range_max: 53}
ports:
  - {name: web1, network_id: net, fixed_ips: [10.0.0.10], security_groups: [web]}
  - {name: adm1, network_id: net, fixed_ips: [10.0.0.20], security_groups: [admin],
     allowed_address_pairs: [{ip_address: 10.0.0.128/25}]}
  - {name: dns1, network_id: net, fixed_ips: [10.0.0.30], security_groups: [stateless]}
  - {name: open1, network_id: net, fixed_ips: [10.0.0.40], port_security_enabled: false}
"""


@pytest.fixture(scope="module")
def compiled() -> HostPlan:
    return compile_plan(loads_topology(TOPO).model)


def test_hop_on_compiled_plan(compiled: HostPlan) -> None:
    web, adm = compiled.port("web1"), compiled.port("adm1")

    def hop(src: str, dport: int, sp: PortPlan, dp: PortPlan, mac: str | None = None) -> bool:
        p = Packet(4, src, "10.0.0.10", 6, 40000, dport, src_mac=mac or sp.mac)
        return evaluate_hop(compiled, p, sp, dp).allowed

    assert hop("10.0.0.20", 22, adm, web)
    assert hop("10.0.0.200", 22, adm, web)  # via adm1's address pair (a remote-group member)
    assert hop("10.0.0.20", 80, adm, web)
    assert not hop("10.0.0.20", 23, adm, web)
    assert not hop("10.0.0.99", 22, adm, web)  # spoofed: dies on adm1's egress
    r = evaluate_hop(compiled, Packet(4, "10.0.0.99", "10.0.0.10", 6, 1, 22, src_mac=adm.mac),
                     adm, web)
    assert r.denied_by is r.egress and r.ingress is not None and not r.ingress.allowed
    # from outside portwall (no source port): only the ingress side counts
    assert evaluate_hop(compiled, Packet(4, "10.0.0.99", "10.0.0.10", 6, 1, 80), None, web).allowed
    assert not evaluate_hop(compiled, Packet(4, "10.0.0.99", "10.0.0.10", 6, 1, 22), None,
                            web).allowed


def test_established_and_stateless(compiled: HostPlan) -> None:
    web, dns = compiled.port("web1"), compiled.port("dns1")
    reply = Packet(4, "10.0.0.99", "10.0.0.10", 6, 5000, 40000, ct=CtState.ESTABLISHED)
    assert evaluate_direction(compiled, web, "ingress", reply).allowed
    assert not evaluate_direction(compiled, web, "ingress",
                                  Packet(4, "10.0.0.99", "10.0.0.10", 6, 5000, 40000)).allowed
    # a stateless port has no conntrack steps: an "established" reply needs a rule of its own
    assert not dns.stateful
    rep = Packet(4, "10.0.0.99", "10.0.0.30", 6, 5000, 40000, ct=CtState.UNTRACKED)
    assert not evaluate_direction(compiled, dns, "ingress", rep).allowed
    q = Packet(4, "10.0.0.99", "10.0.0.30", 17, 5000, 53, ct=CtState.UNTRACKED)
    assert evaluate_direction(compiled, dns, "ingress", q).allowed


def test_unfiltered_and_dhcp_provider_rules(compiled: HostPlan) -> None:
    open1, web = compiled.port("open1"), compiled.port("web1")
    assert evaluate_direction(compiled, open1, "ingress",
                              Packet(4, "1.1.1.1", "10.0.0.40", 6, 1, 3306)).allowed
    dhcp = Packet(4, "10.0.0.2", "10.0.0.10", 17, 67, 68)
    r = evaluate_direction(compiled, web, "ingress", dhcp)
    assert r.allowed and r.origin.kind == OriginKind.PROVIDER
    serve = Packet(4, "10.0.0.10", "10.0.0.77", 17, 67, 68, src_mac=web.mac)
    r = evaluate_direction(compiled, web, "egress", serve)
    assert not r.allowed and r.origin.kind == OriginKind.PROVIDER


def test_index_lookups(compiled: HostPlan) -> None:
    idx = plan_index(compiled)
    assert plan_index(compiled) is idx
    assert [p.name for p in idx.ports_with_address("10.0.0.20")] == ["adm1"]
    web = compiled.port("web1")
    assert idx.ports_with_address("10.0.0.10", zone=web.zone) == [web]
    assert idx.ports_with_address("10.0.0.10", zone=web.zone + 1) == []
    assert idx.port("web1") is web and idx.port(web.id) is web and idx.port("nope") is None


def test_packet_validation() -> None:
    with pytest.raises(ValueError):
        Packet(4, "fd00::1", "10.0.0.1", 6, 1, 2)
    with pytest.raises(ValueError):
        Packet(4, "10.0.0.1", "10.0.0.2", 1, 1, 2)
    with pytest.raises(ValueError):
        Packet(4, "10.0.0.1", "10.0.0.2", 6, icmp_type=8)


# ------------------------------------------------------- stateless next to stateful
MIXING = """
project: mix
networks: [{name: net, subnets: [{name: s4, cidr: 10.0.0.0/24},
                                 {name: s6, cidr: "fd00::/64", ip_version: 6}]}]
security_groups:
  - name: client
    default_egress_rules: true
  - name: server
    stateful: false
    default_egress_rules: false
    security_group_rules:
      - {direction: ingress, protocol: tcp, port_range_min: 80, port_range_max: 80}
      - {direction: egress, protocol: tcp}
ports:
  - {name: cl, network_id: net, fixed_ips: [10.0.0.10], security_groups: [client]}
  - {name: sv, network_id: net, fixed_ips: [10.0.0.20], security_groups: [server]}
  - {name: sv2, network_id: net, fixed_ips: [10.0.0.21], security_groups: [server]}
  - {name: free, network_id: net, fixed_ips: [10.0.0.30], port_security_enabled: false}
"""


def test_hop_tracked_unless_both_ends_stateless_or_non_port() -> None:
    from portwall.analyze.evaluate import hop_tracked

    hp = compile_plan(loads_topology(MIXING).model)
    cl, sv, sv2, free = (hp.port(n) for n in ("cl", "sv", "sv2", "free"))
    assert hop_tracked(cl, sv) and hop_tracked(sv, cl)
    assert hop_tracked(free, sv) and hop_tracked(sv, free)  # an unfiltered port is a port
    assert hop_tracked(cl, None) and hop_tracked(None, cl) and hop_tracked(None, None)
    assert not hop_tracked(sv, sv2)
    assert not hop_tracked(sv, None) and not hop_tracked(None, sv)


def test_stateful_client_gets_a_stateless_servers_replies_as_established() -> None:
    hp = compile_plan(loads_topology(MIXING).model)
    cl, sv, sv2 = (hp.port(n) for n in ("cl", "sv", "sv2"))
    syn = Packet(4, "10.0.0.10", "10.0.0.20", 6, 40000, 80)
    assert evaluate_hop(hp, syn, cl, sv).allowed
    reply = Packet(4, "10.0.0.20", "10.0.0.10", 6, 80, 40000, ct=CtState.ESTABLISHED)
    res = evaluate_hop(hp, reply, sv, cl)
    assert res.allowed and res.packet.ct is CtState.ESTABLISHED
    assert res.ingress is not None and res.ingress.decided_by is not None
    assert res.ingress.decided_by.rid == "ct-established-v4"
    # a NEW packet from the server is not a reply: the client's group allows no ingress
    assert not evaluate_hop(hp, Packet(4, "10.0.0.20", "10.0.0.10", 6, 80, 40000), sv, cl).allowed
    # between two stateless ports the hop is untracked, whatever the caller says
    res = evaluate_hop(hp, Packet(4, "10.0.0.20", "10.0.0.21", 6, 40000, 80,
                                  ct=CtState.ESTABLISHED), sv, sv2)
    assert res.allowed and res.packet.ct is CtState.UNTRACKED


# ------------------------------------------------------------------ ARP and ND
def test_arp_guard_follows_the_spoof_entries() -> None:
    from portwall.analyze.evaluate import ArpPacket, evaluate_arp

    model = loads_topology(MIXING).model
    model.update_port("cl", {"allowed_address_pairs": [{"ip_address": "10.0.0.100"},
                                                        {"ip_address": "10.0.1.0/24"}]})
    hp = compile_plan(model)
    cl, free = hp.port("cl"), hp.port("free")
    ok = evaluate_arp(cl, ArpPacket(cl.mac, cl.mac, "10.0.0.10"))
    assert ok.allowed and ok.entry is not None and ok.entry.origin.kind is OriginKind.FIXED_IP
    vip = evaluate_arp(cl, ArpPacket(cl.mac, cl.mac, "10.0.0.100"))
    assert vip.allowed and vip.entry is not None and vip.entry.origin.kind is OriginKind.ADDRESS_PAIR
    assert evaluate_arp(cl, ArpPacket(cl.mac, cl.mac, "10.0.1.77")).allowed
    stolen = evaluate_arp(cl, ArpPacket(cl.mac, cl.mac, "10.0.0.20"))
    assert not stolen.allowed and "claims 10.0.0.20" in stolen.reason
    forged = evaluate_arp(cl, ArpPacket(cl.mac, "02:00:00:00:00:99", "10.0.0.10"))
    assert not forged.allowed and "not the frame's source MAC" in forged.reason
    both = evaluate_arp(cl, ArpPacket("02:00:00:00:00:99", "02:00:00:00:00:99", "10.0.0.10"))
    assert not both.allowed  # a MAC the port may not use
    assert evaluate_arp(free, ArpPacket(free.mac, "02:00:00:00:00:99", "10.9.9.9")).allowed


def test_neighbour_advertisement_target_must_be_the_ports() -> None:
    from portwall.ir.compile import link_local

    model = loads_topology(MIXING).model
    model.update_port("cl", {"fixed_ips": [{"ip_address": "10.0.0.10"},
                                           {"ip_address": "fd00::10"}]})
    hp = compile_plan(model)
    cl = hp.port("cl")
    ll = str(link_local(cl.mac).network_address)

    def na(src: str, target: str, mac: str = cl.mac) -> Packet:
        return Packet(6, src, "ff02::1", 58, icmp_type=136, icmp_code=0, src_mac=mac,
                      nd_target=target)

    assert evaluate_direction(hp, cl, "egress", na("fd00::10", "fd00::10")).allowed
    assert evaluate_direction(hp, cl, "egress", na(ll, ll)).allowed  # its link-local address
    res = evaluate_direction(hp, cl, "egress", na("fd00::10", "fd00::20"))
    assert not res.allowed and res.nd_target_denied and "fd00::20" in res.origin.detail
    with pytest.raises(ValueError, match="neighbour advertisement"):
        Packet(6, "fd00::10", "ff02::1", 58, icmp_type=135, nd_target="fd00::10")


def test_trace_explains_an_arp_takeover() -> None:
    from portwall.analyze.trace import trace_arp

    hp = compile_plan(loads_topology(MIXING).model)
    t = trace_arp(hp, "sv", "10.0.0.10", vm="server")
    assert not t.allowed and t.verdict == "deny"
    deny = next(s for s in t.steps if s.outcome == "deny")
    assert "claims 10.0.0.10, not in its allowed pairs" in deny.detail
    assert deny.resource_id == hp.port("sv").id
    assert t.hint is not None and "allowed address pair 10.0.0.10" in t.hint
    assert trace_arp(hp, "sv", "10.0.0.20").allowed
