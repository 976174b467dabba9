"""The nftables router rendering follows neutron-semantics sections 4 and 5 like the
iptables one (same group chain names, same decisions), names its resources in comments,
and marks floating-IP connections so that a move cuts them by mark."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from portwall.backends.iptables.l3 import render_router as render_ipt
from portwall.backends.nftables.counters import parse_counters
from portwall.backends.nftables.l3 import NftL3Renderer, render_router
from portwall.ir.compile import compile_plan
from portwall.kernel.conntrack import fip_ct_marks
from portwall.topology import load_topology, loads_topology

SEED = Path(__file__).resolve().parents[2] / "examples" / "seed002-router-fip.yaml"


def _router(text: str | None = None):  # type: ignore[no-untyped-def]
    topo = loads_topology(text) if text is not None else load_topology(SEED)
    (r,) = compile_plan(topo.model).routers.values()
    return r


def test_nat_layout() -> None:
    r = _router()
    rs = render_router(r)
    pre, post = rs.chains["l3_pre"].rules, rs.chains["l3_post"].rules
    assert rs.chains["l3_pre"].hook and "type nat hook prerouting" in str(rs.chains["l3_pre"].hook)
    assert any("redirect to :9697" in x and 'iifname "qr-*"' in x for x in pre)
    dnat = next(x for x in pre if "dnat ip to 10.2.0.11" in x)
    assert "ip daddr 203.0.113.11" in dnat
    assert "ct mark set ct mark & 0x0000ffff | 0x710b0000" in dnat  # to F: the high half
    assert any("dnat ip to 10.2.0.11" in x for x in rs.chains["l3_out"].rules)
    # east-west first (no SNAT unless DNATed), then float-SNAT before the default SNAT
    assert "ct status & dnat == 0 accept" in post[0] and post[0].startswith("oifname !=")
    kinds = ["fsnat" if "snat ip to 203.0.113.1" in x else "gw" if "pw-snat-gateway" in x
             else "hairpin" if "pw-snat-hairpin" in x else "?" for x in post[1:]]
    assert kinds == ["fsnat", "fsnat", "gw", "hairpin"]
    assert "ct mark set ct mark & 0xffff0000 | 0x0000710b" in post[1]  # from F: the low half
    assert "meta mark & 0xffff != 0x2 ct status dnat" in post[-1]


def test_fwaas_chains_match_iptables_names_order_and_families() -> None:
    r = _router()
    rs, ipt = render_router(r), render_ipt(r)
    ipt_chains = {name for fam in (4, 6) for name, _ in ipt.tables[fam]["filter"]}
    assert {n for n in rs.chains if n.startswith("pw-f")} == ipt_chains - {"pw-l3-fwd"}
    fi = next(c for n, c in rs.chains.items() if n.startswith("pw-fi")).rules
    assert "ct state invalid" in fi[0] and "drop" in fi[0]
    assert "ct state established,related return" in fi[1]
    assert fi[-2].startswith("meta nfproto ipv4 counter drop") and "default-deny" in fi[-2]
    assert fi[-1].startswith("meta nfproto ipv6 counter drop")
    decisive = [x for x in fi if "fwr-" in x]
    assert "ip saddr 10.2.0.100" in decisive[0] and " drop " in decisive[0]  # order kept
    assert "ip saddr 10.2.0.0/24" in decisive[1] and " return " in decisive[1]
    assert any("reject with icmpx type port-unreachable" in x for x in decisive)
    assert any(x.startswith("meta nfproto ipv6 ip6 saddr 2001:db8:2::/64") for x in decisive)
    fwd = rs.chains["l3_fwd"].rules
    assert "169.254.169.254" in fwd[0] and "drop" in fwd[0]
    assert sum("jump pw-f" in x for x in fwd) == 2 * sum(
        1 for i in r.interfaces if r.firewall_of(i.port_id) is not None)


def test_comments_lead_with_the_rid_then_names() -> None:
    r = _router()
    rs = render_router(r)
    every = [x for c in rs.chains.values() for x in c.rules]
    assert all('comment "' in x for x in every)
    assert any('comment "fwr-' in x and "group db-fw ingress tcp/22 reject" in x for x in every)
    assert any("203.0.113.11->10.2.0.11 port web-1-port" in x for x in every)
    for rid in (x.split('comment "', 1)[1].split(" ", 1)[0].rstrip('"') for x in every):
        assert rid in rs.provenance or rid.startswith("pw-") or rid.startswith("fw-"), rid
    # the iptables rendering carries the same names (issue 11)
    v4 = render_ipt(r).restore_input(4)
    assert "group db-fw ingress tcp/22 reject" in v4 and "port web-1-port" in v4
    assert "-j CONNMARK --set-xmark 0x710b0000/0xffff0000" in v4
    assert "-j CONNMARK --set-xmark 0x710b/0xffff" in v4


def test_no_snat_when_disabled_and_renders_are_reused() -> None:
    r = _router(SEED.read_text().replace("enable_snat: true", "enable_snat: false"))
    rs = render_router(r)
    assert not any("203.0.113.2 " in x for x in rs.chains["l3_post"].rules)
    ren = NftL3Renderer()
    first = ren.render([r])[r.id]
    assert ren.render([r])[r.id] is first


def test_fip_marks_skip_zero_and_shared_low_bits() -> None:
    a = [ipaddress.IPv4Address(x) for x in ("100.64.1.5", "100.65.1.5", "100.64.0.7",
                                              "100.64.0.0")]
    assert fip_ct_marks(a) == {"100.64.0.7": 0x7}


def test_counters_parsed_per_family_chain_and_rid() -> None:
    listing = {"nftables": [
        {"rule": {"chain": "pw-fiX", "comment": "fw-default-1 group g ingress default-deny",
                  "expr": [{"match": {"op": "==", "left": {"meta": {"key": "nfproto"}},
                                      "right": "ipv6"}},
                           {"counter": {"packets": 3, "bytes": 180}}, {"drop": None}]}},
        {"rule": {"chain": "pw-fiX", "comment": "pw-fw-invalid",
                  "expr": [{"counter": {"packets": 2, "bytes": 80}}, {"drop": None}]}}]}
    got = parse_counters(listing["nftables"])
    assert got == {(6, "pw-fiX", "fw-default-1"): 3, (4, "pw-fiX", "pw-fw-invalid"): 2,
                   (6, "pw-fiX", "pw-fw-invalid"): 2}
