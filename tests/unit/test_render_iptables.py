"""The iptables renderer's output, rule by rule, for the seed scenarios and edge cases.

What the kernel makes of these strings is checked by ``tests/e2e/test_render_loads.py``;
here the order and content of chains is pinned down.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import replace
from pathlib import Path

import pytest

from portwall.backends.iptables.render import (
    CHAIN_NAME_MAX,
    DISPATCH_CHAIN,
    FORWARD_CHAIN,
    INPUT_CHAIN,
    PREROUTING_CHAIN,
    SET_NAME_MAX,
    SG_CHAIN,
    RenderError,
    egress_chain,
    group_chain,
    ingress_chain,
    ipset_restore_text,
    match_spec,
    render_iptables,
    restore_text,
    set_name,
    spoof_chain,
)
from portwall.backends.iptables.snapshot import comment_of
from portwall.backends.iptables.types import IptablesRuleset
from portwall.ir import compile_plan
from portwall.ir.types import (
    Action,
    CtState,
    HostPlan,
    Match,
    PortPlan,
    PortRange,
    Rule,
    SetRef,
)
from portwall.model.store import Model, stable_ids
from portwall.topology import loads_topology

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SEED000 = EXAMPLES / "seed000-router-vm.yaml"
MARK = "-m comment --comment pw-port-mark -j MARK --set-xmark 0x100000/0x300000"
NOTRACK = "-m mark --mark 0x400000/0x400000 -m comment --comment pw-notrack -j CT --notrack"
ACCEPTED = "-m mark --mark 0x200000/0x200000 -m comment --comment pw-group-accept -j RETURN"


def load(text: str, name: str = "t.yaml") -> Model:
    return loads_topology(text, name).model


def seed000(pairs: bool = False) -> Model:
    model = load(SEED000.read_text(), str(SEED000))
    if pairs:  # the fix the article recommends
        model.update_port("vm0-net1", {"allowed_address_pairs": [{"ip_address": "10.0.2.0/24"}]})
        model.update_port("vm0-net2", {"allowed_address_pairs": [{"ip_address": "10.0.1.0/24"}]})
    return model


_SPOOF_RID = re.compile(r"--comment (spoof-[0-9a-f-]+-v[46]-\d+) ")
_NOTED = re.compile(r'--comment "(\S+) [^"]*"')


def rid_only(rule: str) -> str:
    """``rule`` with its comment cut to the rid (the names after it are checked by
    test_comments_carry_group_and_port_names), quoted as iptables-save would."""
    return _NOTED.sub(lambda m: f"--comment {m[1]}" if re.fullmatch(r"[\w-]+", m[1])
                      else f'--comment "{m[1]}"', rule)


def chain(rs: IptablesRuleset, family: int, name: str, table: str = "filter") -> list[str]:
    """A chain's rules with comments cut to the rid, each anti-spoof entry's
    (``spoof-<port>-<n>``) shown as ``spoof-<kind>`` through the ruleset's provenance (so
    the provenance is checked too)."""
    rules = rs.tables[family][table].chains[name].rules  # type: ignore[index]
    return [_SPOOF_RID.sub(lambda m: f"--comment spoof-{rs.provenance[m[1]].kind.value} ",
                           rid_only(r)) for r in rules]


def port(plan: HostPlan, name: str) -> PortPlan:
    return plan.port(name)


# ----------------------------------------------------------------- seed 000
def test_seed000_spoof_chain_without_pairs_returns_only_the_fixed_ip() -> None:
    plan = compile_plan(seed000())
    rs = render_iptables(plan)
    p = port(plan, "vm0-net1")
    assert chain(rs, 4, spoof_chain(p)) == [
        f"-s 10.0.1.1/32 -m mac --mac-source {p.mac} -m comment --comment spoof-fixed_ip -j RETURN",
        "-m comment --comment pw-spoof-drop -j DROP",
    ]


def test_seed000_address_pair_return_comes_before_fixed_ip_and_drop() -> None:
    plan = compile_plan(seed000(pairs=True))
    rs = render_iptables(plan)
    p = port(plan, "vm0-net1")
    assert chain(rs, 4, spoof_chain(p)) == [
        f"-s 10.0.2.0/24 -m mac --mac-source {p.mac} "
        "-m comment --comment spoof-allowed_address_pair -j RETURN",
        f"-s 10.0.1.1/32 -m mac --mac-source {p.mac} -m comment --comment spoof-fixed_ip -j RETURN",
        "-m comment --comment pw-spoof-drop -j DROP",
    ]


def test_seed000_ingress_and_egress_chains_follow_neutron_order() -> None:
    plan = compile_plan(seed000())
    rs = render_iptables(plan)
    p = port(plan, "serverX-port")
    gid = plan.rulesets[next(iter(plan.rulesets))].group_id
    gi, ge = (group_chain(plan.rulesets[f"sg-{gid}-{d}"]) for d in ("ingress", "egress"))
    dhcp_rid = f"prov-dhcp-reply-{p.id}-10.0.1.100"
    assert chain(rs, 4, ingress_chain(p)) == [
        MARK,
        "-m conntrack --ctstate RELATED,ESTABLISHED -m comment --comment ct-established-v4 -j RETURN",
        f'-d 10.0.1.100/32 -p udp -m udp --sport 67 --dport 68 -m comment --comment "{dhcp_rid}"'
        " -j RETURN",
        "-d 255.255.255.255/32 -p udp -m udp --sport 67 --dport 68"
        " -m comment --comment prov-dhcp-reply-bcast -j RETURN",
        f"-m comment --comment sg-{gid}-ingress -j {gi}",
        ACCEPTED,
        "-m conntrack --ctstate INVALID -m comment --comment ct-invalid-v4 -j DROP",
        "-m comment --comment fallback-v4 -j DROP",
    ]
    assert chain(rs, 4, egress_chain(p)) == [
        MARK,
        "-s 0.0.0.0/32 -d 255.255.255.255/32 -p udp -m udp --sport 68 --dport 67"
        " -m comment --comment prov-dhcp-discover -j RETURN",
        f"-m comment --comment spoof-{p.id} -j {spoof_chain(p)}",
        "-p udp -m udp --sport 68 --dport 67 -m comment --comment prov-dhcp-client -j RETURN",
        "-p udp -m udp --sport 67 --dport 68 -m comment --comment prov-dhcp-server-drop -j DROP",
        "-m conntrack --ctstate RELATED,ESTABLISHED -m comment --comment ct-established-v4 -j RETURN",
        f"-m comment --comment sg-{gid}-egress -j {ge}",
        ACCEPTED,
        "-m conntrack --ctstate INVALID -m comment --comment ct-invalid-v4 -j DROP",
        "-m comment --comment fallback-v4 -j DROP",
    ]
    # The group "open" has only IPv4 ingress rules: no jump to it in IPv6, and its IPv6
    # ingress chain does not exist.
    v6_in = chain(rs, 6, ingress_chain(p))
    assert not any(gi in r for r in v6_in)
    assert gi not in rs.tables[6]["filter"].chains
    assert v6_in[0] == MARK
    assert v6_in[1] == (
        "-p ipv6-icmp -m icmp6 --icmpv6-type 130 -m comment --comment prov-icmp6-nd-in-130 -j RETURN")
    # the shared group chain: one rule per IR rule, setting the accept bit
    assert chain(rs, 4, gi) == [
        f"-p {proto} -m comment --comment {r.rid} -j MARK --set-xmark 0x200000/0x200000"
        for proto, r in zip(("icmp", "tcp", "udp"), plan.rulesets[f"sg-{gid}-ingress"].rules,
                            strict=True)
    ]


def test_dispatch_forward_input_and_raw_layout() -> None:
    plan = compile_plan(seed000())
    rs = render_iptables(plan)
    sg = chain(rs, 4, SG_CHAIN)
    assert sg == [
        "-m comment --comment pw-mark-reset -j MARK --set-xmark 0x0/0x300000",
        f"-m comment --comment pw-dispatch -j {DISPATCH_CHAIN}",
        "-m mark --mark 0x100000/0x100000 -m comment --comment pw-seen-accept -j ACCEPT",
    ]
    dispatch = chain(rs, 4, DISPATCH_CHAIN)
    p = plan.ports[0]
    assert dispatch[0:2] == [
        f"-m physdev --physdev-out {p.device} --physdev-is-bridged -m comment --comment port-{p.id}"
        f" -j {ingress_chain(p)}",
        f"-m physdev --physdev-in {p.device} --physdev-is-bridged -m comment --comment port-{p.id}"
        f" -j {egress_chain(p)}",
    ]
    assert len(dispatch) == 2 * len(plan.ports)
    # per-port rules are independent: the applier may append new ports (no numbered insert)
    filt = rs.tables[4]["filter"].chains
    assert not filt[DISPATCH_CHAIN].ordered and not filt[INPUT_CHAIN].ordered
    assert filt[SG_CHAIN].ordered
    assert chain(rs, 4, INPUT_CHAIN)[0] == (
        f"-m physdev --physdev-in {p.device} -m comment --comment port-{p.id} -j {egress_chain(p)}")
    bridges = sorted({q.bridge for q in plan.ports})
    assert [r.split()[1] for r in chain(rs, 4, FORWARD_CHAIN)] == bridges
    assert all("-m physdev --physdev-is-bridged" in r and r.endswith(f"-j {SG_CHAIN}")
               for r in chain(rs, 4, FORWARD_CHAIN))
    raw = chain(rs, 4, PREROUTING_CHAIN, "raw")
    # one fixed NOTRACK rule for hops the bridge table marked, then zones by bridge: no
    # per-port raw rule
    assert raw.pop(0) == NOTRACK
    assert not any(p.device in r for r in raw)
    assert [r.split()[1] for r in raw] == bridges
    assert all(r.endswith(f"-j CT --zone {q.zone}") for r, q in zip(
        raw, sorted({q.bridge: q for q in plan.ports}.values(), key=lambda q: q.bridge),
        strict=True))
    hooks = {(t, h.builtin): h.rule for t, table in rs.tables[4].items() for h in table.hooks}
    assert hooks == {
        ("filter", "FORWARD"): f"-m comment --comment pw-hook -j {FORWARD_CHAIN}",
        ("filter", "INPUT"): f"-m comment --comment pw-hook -j {INPUT_CHAIN}",
        ("raw", "PREROUTING"): f"-m comment --comment pw-hook -j {PREROUTING_CHAIN}",
    }


# ----------------------------------------------------------------- seed 001
SEED001 = """
project: vip
networks: [{name: n, subnets: [{name: s, cidr: 10.1.1.0/24}]}]
security_groups:
  - name: ssh
    security_group_rules: [{direction: ingress, ethertype: IPv4, protocol: tcp,
                            port_range_min: 22, port_range_max: 22}]
  - name: proxy
    security_group_rules: [{direction: ingress, ethertype: IPv4, protocol: tcp,
                            port_range_min: 80, port_range_max: 80, remote_group_id: ssh}]
ports:
  - {name: nat, network_id: n, fixed_ips: [10.1.1.10], security_groups: [ssh],
     allowed_address_pairs: [{ip_address: 0.0.0.0/0}]}
  - {name: web, network_id: n, fixed_ips: [10.1.1.20], security_groups: [ssh],
     allowed_address_pairs: [{ip_address: 10.1.1.2}]}
  - {name: proxy1, network_id: n, fixed_ips: [10.1.1.30], security_groups: [proxy]}
"""


def test_seed001_remote_group_set_holds_zero_prefix_as_two_halves() -> None:
    model = load(SEED001)
    plan = compile_plan(model)
    rs = render_iptables(plan)
    ssh = model.get("security_group", "ssh")
    name = set_name(ssh.id, 4)
    assert set(rs.ipsets) == {name}
    s = rs.ipsets[name]
    assert (s.family, s.set_type) == (4, "hash:net")
    assert s.members == ["0.0.0.0/1", "10.1.1.2", "10.1.1.10", "10.1.1.20", "128.0.0.0/1"]
    proxy = plan.rulesets[f"sg-{model.get('security_group', 'proxy').id}-ingress"]
    assert chain(rs, 4, group_chain(proxy)) == [
        f"-p tcp -m set --match-set {name} src -m tcp --dport 80 -m comment --comment "
        f"{proxy.rules[0].rid} -j MARK --set-xmark 0x200000/0x200000"
    ]
    # the 0.0.0.0/0 pair is a spoof entry without -s (iptables prints none for /0)
    nat = plan.port("nat")
    assert chain(rs, 4, spoof_chain(nat))[0] == (
        f"-m mac --mac-source {nat.mac} -m comment --comment spoof-allowed_address_pair -j RETURN")
    text = ipset_restore_text(rs)
    assert text.splitlines()[0] == (
        f"create {name} hash:net family inet hashsize 1024 maxelem 65536 -exist")
    assert f"add {name} 128.0.0.0/1 -exist" in text.splitlines()


# ---------------------------------------------------- port security, stateless, IPv6
MIXED = """
project: mixed
networks:
  - name: n
    subnets: [{name: s4, cidr: 10.2.0.0/24}, {name: s6, cidr: "fd00:2::/64"}]
security_groups:
  - name: sl
    stateful: false
    security_group_rules: [{direction: ingress, ethertype: IPv4, protocol: udp,
                            port_range_min: 53, port_range_max: 53}]
  - name: v6only
    default_egress_rules: false
    security_group_rules: [{direction: ingress, ethertype: IPv6, protocol: tcp}]
ports:
  - {name: a-free, network_id: n, fixed_ips: [10.2.0.5], port_security_enabled: false}
  - {name: b-sl, network_id: n, fixed_ips: [10.2.0.6], security_groups: [sl]}
  - name: c-v6
    network_id: n
    fixed_ips: ["fd00:2::7"]
    security_groups: [v6only]
    allowed_address_pairs: [{ip_address: "fd00:2::100", mac_address: "fa:16:3e:00:00:aa"}]
"""


def test_port_security_disabled_only_marks_so_a_filtered_peer_is_never_skipped() -> None:
    plan = compile_plan(load(MIXED))
    rs = render_iptables(plan)
    free = plan.port("a-free")
    assert not free.filtered
    dispatch = chain(rs, 4, DISPATCH_CHAIN)
    assert [r for r in dispatch if free.device in r] == [
        f"-m physdev --physdev-out {free.device} --physdev-is-bridged -m comment --comment "
        f"unfiltered-{free.id} -j MARK --set-xmark 0x100000/0x100000",
        f"-m physdev --physdev-in {free.device} --physdev-is-bridged -m comment --comment "
        f"unfiltered-{free.id} -j MARK --set-xmark 0x100000/0x100000",
    ]
    # nothing in the dispatch chain is terminal: every port chain on the path is evaluated
    assert not any(r.endswith(("-j ACCEPT", "-j DROP", "-j RETURN")) for r in dispatch)
    for fam in (4, 6):
        chains = rs.tables[fam]["filter"].chains
        assert ingress_chain(free) not in chains and spoof_chain(free) not in chains
        assert not any(free.device in r for r in chain(rs, fam, INPUT_CHAIN))


def test_stateless_port_is_untracked_and_has_no_conntrack_rules() -> None:
    plan = compile_plan(load(MIXED))
    rs = render_iptables(plan)
    sl, free = plan.port("b-sl"), plan.port("a-free")
    for fam in (4, 6):
        raw = chain(rs, fam, PREROUTING_CHAIN, "raw")
        # untracked only where the bridge table marked the hop (both ends stateless or
        # non-port): no per-port raw rule at all
        assert raw == [NOTRACK, f"-i {sl.bridge} -m comment --comment net-{sl.network_id}"
                       f" -j CT --zone {sl.zone}"]
        for name in (ingress_chain(sl), egress_chain(sl)):
            assert not any("conntrack" in r for r in chain(rs, fam, name))
    # the bridge table knows which ends are stateless and which are tracked
    assert ("stateless_if", (sl.device,)) in rs.l2[sl.device].elements
    assert ("stateless_mac", (sl.mac,)) in rs.l2[sl.device].elements
    assert ("tracked_if", (free.device,)) in rs.l2[free.device].elements
    c6 = plan.port("c-v6")
    assert {("tracked_mac", (c6.mac,)), ("tracked_mac", ("fa:16:3e:00:00:aa",))} <= \
        rs.l2[c6.device].elements


def test_bridge_table_guards_arp_and_nd_with_the_spoof_entries() -> None:
    """ARP (MAC, IP) and NA-target elements come from the same anti-spoof entries as the
    IP chains: /32 and /128 in hash sets, CIDRs (and MAC-only = any) in interval sets;
    unfiltered ports get no guard."""
    plan = compile_plan(seed000(pairs=True))
    rs = render_iptables(plan)
    p = plan.port("vm0-net1")
    el = rs.l2[p.device].elements
    assert ("filtered_if", (p.device,)) in el
    assert ("arp4", (p.device, p.mac, p.mac, "10.0.1.1")) in el
    assert ("arp4_net", (p.device, p.mac, p.mac, "10.0.2.0/24")) in el
    ll = int(ipaddress.ip_address(_ll(p.mac)))
    assert ("nd6", (p.device, p.mac, f"0x{ll:032x}")) in el
    free = compile_plan(load(MIXED)).port("a-free")
    assert not any(s in ("filtered_if", "arp4", "arp4_net", "nd6", "nd6_net")
                   for s, _ in render_iptables(compile_plan(load(MIXED))).l2[free.device].elements)


def test_ipv6_spoof_chain_has_link_local_of_every_mac() -> None:
    plan = compile_plan(load(MIXED))
    rs = render_iptables(plan)
    p = plan.port("c-v6")
    assert chain(rs, 6, spoof_chain(p)) == [
        "-s fd00:2::100/128 -m mac --mac-source fa:16:3e:00:00:aa"
        " -m comment --comment spoof-allowed_address_pair -j RETURN",
        f"-s fd00:2::7/128 -m mac --mac-source {p.mac} -m comment --comment spoof-fixed_ip -j RETURN",
        # link-locals of the MACs in use, in the IR's order (pair MACs, then the port's)
        "-s fe80::f816:3eff:fe00:aa/128 -m mac --mac-source fa:16:3e:00:00:aa"
        " -m comment --comment spoof-link_local -j RETURN",
        f"-s {_ll(p.mac)}/128 -m mac --mac-source {p.mac} -m comment --comment spoof-link_local"
        " -j RETURN",
        "-m comment --comment pw-spoof-drop -j DROP",
    ]
    # no IPv4 address: the IPv4 spoof chain only drops
    assert chain(rs, 4, spoof_chain(p)) == ["-m comment --comment pw-spoof-drop -j DROP"]
    # its group has only IPv6 rules (and no egress rules at all): no IPv4 jump
    assert not any("-j pw-g" in r for r in chain(rs, 4, ingress_chain(p)))
    assert any("-j pw-gi" in r for r in chain(rs, 6, ingress_chain(p)))
    assert not any("-j pw-ge" in r for r in chain(rs, 6, egress_chain(p)))


def _ll(mac: str) -> str:
    b = [int(x, 16) for x in mac.split(":")]
    b[0] ^= 2
    return str(ipaddress.IPv6Address(bytes([0xFE, 0x80, 0, 0, 0, 0, 0, 0, *b[:3], 0xFF, 0xFE,
                                            *b[3:]])))


# ---------------------------------------------------------------- match spelling
SETS = {"sg-x-v4": "pw4-x", "sg-x-v6": "pw6-x"}


@pytest.mark.parametrize(("match", "spec"), [
    (Match(4, protocol=1, icmp_type=8, icmp_code=0), "-p icmp -m icmp --icmp-type 8/0"),
    (Match(4, protocol=1, icmp_type=3), "-p icmp -m icmp --icmp-type 3"),
    (Match(6, protocol=58, icmp_type=1, icmp_code=3), "-p ipv6-icmp -m icmp6 --icmpv6-type 1/3"),
    (Match(4, protocol=6, dport=PortRange(1000, 2000)), "-p tcp -m tcp --dport 1000:2000"),
    (Match(4, protocol=17, sport=PortRange(67, 67), dport=PortRange(68, 68)),
     "-p udp -m udp --sport 67 --dport 68"),
    (Match(4, protocol=132, dport=PortRange(80, 80)), "-p sctp -m sctp --dport 80"),
    (Match(4, protocol=33, dport=PortRange(80, 90)), "-p dccp -m dccp --dport 80:90"),
    (Match(4, protocol=136, dport=PortRange(80, 90)), "-p udplite -m multiport --dports 80:90"),
    (Match(4, protocol=136, sport=PortRange(5, 5), dport=PortRange(80, 80)),
     "-p udplite -m multiport --sports 5 -m multiport --dports 80"),
    (Match(4, protocol=47), "-p gre"),
    (Match(4, protocol=0), ""),
    (Match(4, src=ipaddress.ip_network("0.0.0.0/0")), ""),
    (Match(6, dst=ipaddress.ip_network("::ffff:1.2.3.4/128")), "-d ::ffff:1.2.3.4/128"),
    (Match(4, protocol=6, src=SetRef("sg-x-v4"), dst=ipaddress.ip_network("10.0.0.1/32"),
           dport=PortRange(22, 22)),
     "-d 10.0.0.1/32 -p tcp -m set --match-set pw4-x src -m tcp --dport 22"),
    (Match(4, src_mac="FA:16:3E:00:00:01"), "-m mac --mac-source fa:16:3e:00:00:01"),
    (Match(4, ct=frozenset({CtState.ESTABLISHED, CtState.RELATED})),
     "-m conntrack --ctstate RELATED,ESTABLISHED"),
    (Match(6, ct=frozenset(CtState)), "-m conntrack --ctstate INVALID,NEW,RELATED,ESTABLISHED,UNTRACKED"),
])
def test_match_spelling(match: Match, spec: str) -> None:
    assert " ".join(match_spec(match, SETS)) == spec


def test_match_errors() -> None:
    with pytest.raises(RenderError):
        match_spec(Match(4, protocol=47, dport=PortRange(1, 2)), SETS)
    with pytest.raises(RenderError):
        match_spec(Match(4, src=SetRef("nope")), SETS)
    with pytest.raises(RenderError):
        match_spec(Match(4, protocol=6, icmp_type=1), SETS)


# ------------------------------------------------------------- whole-ruleset properties
def all_rules(rs: IptablesRuleset) -> list[tuple[str, str]]:
    return [(name, r) for tables in rs.tables.values() for t in tables.values()
            for name, c in t.chains.items() for r in c.rules]


@pytest.mark.parametrize("text", [SEED001, MIXED, None])
def test_names_comments_and_references(text: str | None) -> None:
    plan = compile_plan(seed000(pairs=True) if text is None else load(text))
    rs = render_iptables(plan)
    for fam, tables in rs.tables.items():
        for table in tables.values():
            for name, c in table.chains.items():
                assert c.name == name and name.startswith("pw-") and len(name) <= CHAIN_NAME_MAX
                for r in c.rules:
                    assert re.search(r"-m comment --comment (\S+|\"[^\"]+\") ", r), r
                    target = r.rsplit(" -j ", 1)[1].split()[0]
                    if target.startswith("pw-"):  # every jump lands on a chain of this table
                        assert target in table.chains, (fam, name, r)
            for h in table.hooks:
                assert h.rule.rsplit(" -j ", 1)[1] in table.chains
    for s in rs.ipsets.values():
        assert len(s.name) <= SET_NAME_MAX and s.name.startswith(f"pw{s.family}-")
    # IR rules are written with their rid
    rids = {r.rid for rs_ in plan.rulesets.values() for r in rs_.rules}
    comments = {m.group(1) for _, r in all_rules(rs)
                for m in [re.search(r'--comment "?([^" ]+)', r)] if m}
    assert rids <= comments


def test_long_and_odd_ids_get_short_distinct_names() -> None:
    a = "x" * 40 + "/a"
    b = "x" * 40 + "/b"
    assert set_name(a, 4) != set_name(b, 4)
    assert len(set_name(a, 6)) <= SET_NAME_MAX
    assert set_name("sg-all", 4) == "pw4-sg-all"


def test_rendering_is_deterministic() -> None:
    outs = []
    for _ in range(2):
        rs = render_iptables(compile_plan(seed000(pairs=True)))
        rs2 = render_iptables(compile_plan(load(MIXED)))
        outs.append([restore_text(rs, 4), restore_text(rs, 6), ipset_restore_text(rs),
                     restore_text(rs2, 4), restore_text(rs2, 6), ipset_restore_text(rs2)])
    assert outs[0] == outs[1]


def test_restore_text_layout() -> None:
    rs = render_iptables(compile_plan(load(SEED001)))
    lines = restore_text(rs, 4).splitlines()
    assert lines[0] == "*filter" and lines.count("COMMIT") == 2
    filt = lines[:lines.index("COMMIT")]
    decl = [i for i, ln in enumerate(filt) if ln.startswith(":")]
    rules = [i for i, ln in enumerate(filt) if ln.startswith("-A ")]
    assert max(decl) < min(rules)  # every chain exists before any rule jumps to it
    assert all(ln.endswith(" - [0:0]") and ln[1:].startswith("pw-") for ln in (filt[i] for i in decl))
    assert "-I FORWARD 1 -m comment --comment pw-hook -j pw-FORWARD" in filt
    assert not any(ln.startswith("-I ") for ln in restore_text(rs, 4, hooks=False).splitlines())
    assert not any(ln.startswith(":FORWARD") for ln in lines)  # built-in policies untouched


def _model(n_ports: int) -> Model:
    m = Model(stable_ids("lin"))
    net = m.create_network({"name": "n"})
    m.create_subnet({"network_id": net.id, "cidr": "10.0.0.0/16"})
    everyone = m.create_security_group({"name": "everyone", "security_group_rules": [
        {"direction": "ingress", "ethertype": "IPv4", "protocol": "tcp",
         "port_range_min": p, "port_range_max": p, "remote_group_id": None}
        for p in (22, 80, 443)]})
    m.create_security_group_rule({"security_group_id": everyone.id, "direction": "ingress",
                                  "ethertype": "IPv4", "remote_group_id": everyone.id})
    for i in range(n_ports):
        m.create_port({"network_id": net.id, "name": f"p{i}", "security_groups": [everyone.id],
                       "allowed_address_pairs": [{"ip_address": f"10.9.{i}.0/24"}]})
    return m


def test_rule_count_grows_linearly_with_ports() -> None:
    counts = []
    for n in (5, 10, 20):
        rs = render_iptables(compile_plan(_model(n)))
        counts.append(len(all_rules(rs)))
        group_rules = [r for name, r in all_rules(rs) if name.startswith("pw-g")]
        assert len(group_rules) == 4  # the group's 4 ingress rules, whatever the port count
        members = sum(len(s.members) for s in rs.ipsets.values())
        assert members == 2 * n  # a set member per address, not a rule per member
    assert counts[2] - counts[1] == 2 * (counts[1] - counts[0])


def test_colliding_devices_are_refused() -> None:
    plan = compile_plan(seed000())
    p, q = plan.ports[0], plan.ports[1]
    clash = HostPlan(plan.host, (p, replace(q, device=p.device)), plan.rulesets, plan.address_sets)
    with pytest.raises(RenderError, match="collide"):
        render_iptables(clash)
    # a device whose chain would shadow a fixed chain (pw-s + g = pw-sg) is refused too
    shadow = HostPlan(plan.host, (replace(p, device="tapg"),), plan.rulesets, plan.address_sets)
    with pytest.raises(RenderError, match="pw-sg"):
        render_iptables(shadow)


def test_rule_actions_map_to_return_and_drop() -> None:
    plan = compile_plan(seed000())
    rs = render_iptables(plan)
    p = plan.ports[0]
    rendered = chain(rs, 4, egress_chain(p))
    steps = [s for s in p.egress if isinstance(s, Rule) and s.match.family == 4]
    for s in steps:
        line = next(r for r in rendered if f"--comment {s.rid} " in r)
        assert line.endswith("-j RETURN" if s.action == Action.ALLOW else "-j DROP")
    assert sum("-j pw-s" in r for r in rendered) == 1  # the SpoofCheck: a jump to its chain


# ----------------------------------------------------------------- provenance
def rids_in(text: str) -> set[str]:
    """The rid of every commented line, read the way the applier reads iptables-save."""
    return {rid for line in text.splitlines() for rid in [comment_of(line)] if rid}


@pytest.mark.parametrize("example", sorted(p.name for p in EXAMPLES.glob("*.yaml")))
def test_every_comment_tag_has_an_origin(example: str) -> None:
    """The renderer records rid -> Origin for every line it writes (anti-spoof entries,
    provider rules, dispatch, zones), so an apply error on any line names its resource."""
    path = EXAMPLES / example
    model = load(path.read_text(), str(path))
    plan = compile_plan(model)
    rs = render_iptables(plan)
    text = restore_text(rs, 4) + restore_text(rs, 6)
    tags = rids_in(text)
    assert tags, "the ruleset has no comments at all?"
    missing = sorted(t for t in tags if t not in rs.provenance)
    assert not missing, missing
    # and each port's spoof entries and spoof jump trace back to that very port
    for p in plan.ports:
        if not p.filtered:
            continue
        for fam in (4, 6):
            raw = rs.tables[fam]["filter"].chains[spoof_chain(p)].rules  # type: ignore[index]
            for r in raw[:-1]:  # every entry; the last line is the shared drop
                rid = comment_of(r)
                assert rid is not None
                assert rs.provenance[rid].resource_id == p.id, (rid, rs.provenance[rid])
        assert rs.provenance[f"spoof-{p.id}"].resource_id == p.id


def test_incremental_render_keeps_provenance_complete() -> None:
    from portwall.backends.iptables.render import IptablesRenderer
    from portwall.ir.compile import PlanCompiler

    model = seed000()
    compiler, renderer = PlanCompiler(), IptablesRenderer()
    renderer.render(compiler.compile(model))
    model.update_port("vm0-net1", {"allowed_address_pairs": [{"ip_address": "10.0.2.0/24"}]})
    plan = compiler.compile(model)
    rs = renderer.render(plan)
    tags = rids_in(restore_text(rs, 4) + restore_text(rs, 6))
    assert tags <= set(rs.provenance)
    pair = [rid for rid, o in rs.provenance.items()
            if o.resource_id == plan.port("vm0-net1").id and "10.0.2.0/24" in o.detail]
    assert pair and all(rid.startswith("spoof-") for rid in pair)


# ----------------------------------------------------------------- bridge table sync
class _FakeNft:
    """Stands in for the namespace's ``nft``: no table at first, then accepts writes."""

    def __init__(self) -> None:
        self.writes: list[str] = []

    def run(self, argv: list[str], *, input: str | None = None, write: bool = False,
            timeout: float = 120) -> object:
        from portwall.kernel.runner import Result

        if write:
            self.writes.append(input or "")
            return Result(0, "", "")
        return Result(1, "", "Error: No such file or directory")


def test_bridge_table_sync_writes_the_change_only() -> None:
    from portwall.backends.iptables.l2 import L2Sync, parse_table, skeleton  # noqa: F401
    from portwall.backends.iptables.render import IptablesRenderer
    from portwall.ir.compile import PlanCompiler

    model = seed000()
    compiler, renderer = PlanCompiler(), IptablesRenderer()
    fake = _FakeNft()
    sync = L2Sync(fake)  # type: ignore[arg-type]
    rs = renderer.render(compiler.compile(model))
    first = sync.plan(rs.l2, trusted=False)
    assert first.rebuilt and "table bridge portwall_l2 {" in first.script
    assert sync.commit(first) is not None
    # nothing changed: nothing to write
    assert sync.plan(renderer.render(compiler.compile(model)).l2, trusted=True).script == ""
    # one address pair: exactly its ARP element, nothing else
    model.update_port("vm0-net1", {"allowed_address_pairs": [{"ip_address": "10.0.2.0/24"}]})
    plan = compiler.compile(model)
    p = plan.port("vm0-net1")
    change = sync.plan(renderer.render(plan).l2, trusted=True)
    assert change.script.splitlines() == [
        f'add element bridge portwall_l2 arp4_net {{ "{p.device}" . {p.mac} . {p.mac} . '
        "10.0.2.0/24 }"]
    assert change.undo.startswith("delete element bridge portwall_l2 arp4_net")
    sync.commit(change)
    # a port leaves: its elements go, the table's skeleton stays
    gone = plan.port("serverX-port")
    model.delete_port(gone.id)
    change = sync.plan(renderer.render(compiler.compile(model)).l2, trusted=True)
    assert change.script and all(ln.startswith("delete element") for ln in
                                 change.script.splitlines())
    assert all(gone.device in ln or gone.mac in ln for ln in change.script.splitlines())


def test_bridge_table_parses_back_what_it_writes() -> None:
    """Elements read back from ``nft -j`` compare equal to rendered ones (so a full
    resync after someone else's change diffs to nothing when nothing differs)."""
    from l2listing import l2_listing

    from portwall.backends.iptables.l2 import parse_table

    rs = render_iptables(compile_plan(seed000(pairs=True)))
    want = {e for p in rs.l2.values() for e in p.elements}
    state = parse_table(l2_listing(rs))
    assert state.skeleton_ok and state.elements == want


# ------------------------------------------------------------- names in comments
_ODD = """
project: odd
networks: [{name: n, subnets: [{name: s, cidr: 10.3.0.0/24}]}]
security_groups:
  - name: 'web "front" tier'
    security_group_rules:
      - {direction: ingress, ethertype: IPv4, protocol: tcp, port_range_min: 22,
         port_range_max: 22, remote_ip_prefix: 10.0.0.0/8}
ports:
  - {name: "web 1 \\\\ it's", network_id: n, fixed_ips: [10.3.0.5],
     security_groups: ['web "front" tier']}
"""


def _comment_text(rule: str) -> str:
    m = re.search(r'--comment ("[^"]*"|\S+)', rule)
    assert m, rule
    return m[1].strip('"')


def test_comments_carry_group_and_port_names_and_provenance_maps_every_rid() -> None:
    plan = compile_plan(load(SEED001))
    rs = render_iptables(plan)
    texts = {_comment_text(r) for _, r in all_rules(rs)}
    by_rid = {t.split()[0]: t for t in texts}
    for rsid, ruleset in plan.rulesets.items():
        for r in ruleset.rules:  # group rule: rid, group, direction, protocol/port
            words = by_rid[r.rid].split()
            assert words[:4] == [r.rid, "group", ruleset.group_name, ruleset.direction], words
        if ruleset.rules:  # the port's jump to the group names the group
            assert by_rid[rsid] == f"{rsid} group {ruleset.group_name}"
    ssh = next(by_rid[r.rid] for g in plan.rulesets.values() for r in g.rules
               if r.match.dport is not None and r.match.dport.lo == 22)
    assert ssh.endswith(" ingress tcp/22"), ssh
    for p in plan.ports:
        assert by_rid[f"port-{p.id}"] == f"port-{p.id} port {p.name}"
        assert by_rid[f"spoof-{p.id}"] == f"spoof-{p.id} port {p.name}"
        assert by_rid[f"spoof-{p.id}-v4-0"] == f"spoof-{p.id}-v4-0 port {p.name}"
    # the applier's parser reads the rid back from every line, and each rid has an origin
    text = restore_text(rs, 4) + restore_text(rs, 6)
    rids = rids_in(text)
    assert rids == set(by_rid) | {"pw-hook"} and not rids - set(rs.provenance)
    assert rs.provenance[f"port-{plan.ports[0].id}"].resource_name == plan.ports[0].name


def test_odd_names_become_one_safe_token_and_comments_stay_short() -> None:
    plan = compile_plan(load(_ODD))
    rs = render_iptables(plan)
    p = next(q for q in plan.ports if q.name.startswith("web"))
    texts = [_comment_text(r) for _, r in all_rules(rs)]
    assert f"port-{p.id} port web_1_it_s" in texts  # spaces, quotes, backslash -> "_"
    assert any(t.split()[1:4] == ["group", "web_front_tier", "ingress"] for t in texts), texts
    for _, r in all_rules(rs):
        m = re.search(r'--comment ("[^"]*"|\S+) -', r)
        assert m and len(m[1].strip('"')) <= 255 and "\\" not in m[1] and "'" not in m[1], r
        assert comment_of(r) in rs.provenance, r
    long = compile_plan(load(_ODD.replace("web 1", "w" * 300)))
    rules = [r for _, r in all_rules(render_iptables(long))]
    assert max(len(_comment_text(r)) for r in rules) <= 255


def test_renaming_a_group_rewrites_its_comments_in_the_incremental_renderer() -> None:
    from portwall.backends.iptables.render import IptablesRenderer
    from portwall.ir.compile import PlanCompiler

    model = load(SEED001)
    compiler, renderer = PlanCompiler(), IptablesRenderer()
    renderer.render(compiler.compile(model))
    model.update_security_group("ssh", {"name": "ssh-admins"})
    plan = compiler.compile(model)
    text = restore_text(renderer.render(plan), 4)
    assert " group ssh-admins ingress tcp/22" in text and " group ssh " not in text
    assert text == restore_text(render_iptables(plan), 4)
