"""Routers on nftables: NAT, metadata redirect and FWaaS v2 in each router's namespace.

Rendered from :class:`portwall.ir.l3.RouterPlan` only, like the iptables L3 renderer
(:mod:`portwall.backends.iptables.l3`), with the same semantics and the same group chain
names, into one table of portwall's own, ``table inet portwall_l3`` (both families; NAT
rules are IPv4 only, as in Neutron). Nothing else in the namespace is touched::

    l3_mark  filter prerouting -150: iifname qg-X -> meta mark 0x2/0xffff (from the gateway)
    l3_pre   nat prerouting -100:    metadata redirect (iifname qr-*), floating-IP DNAT
    l3_out   nat output -100:        floating-IP DNAT for the router's own packets
    l3_post  nat postrouting 100:    oifname != qg-X and not DNATed -> accept (east-west,
                                     no SNAT); float-SNAT (P -> F); SNAT to the gateway
                                     by qg-X; DNATed and not from the gateway -> SNAT to
                                     the gateway (hairpin)
    l3_fwd   filter forward 0:       metadata address never forwarded; per firewall-group
                                     port iifname qr-X -> pw-fe<group>, oifname -> pw-fi<group>
    pw-fi/pw-fe: INVALID drop, ESTABLISHED,RELATED return, the rules in order (allow
                 return, deny drop, reject ICMP(v6) port-unreachable), default drop

Floating-IP rules also put the floating IP's slot in the connection's ct mark (DNAT: high
half, float-SNAT: low half; :func:`portwall.kernel.conntrack.fip_ct_marks`), so moving one
cuts its connections with two in-kernel flushes. Every rule ends in ``comment "<rid>
<names>"``: the rid (first token) maps to an :class:`Origin` through
:attr:`NftL3Ruleset.provenance`; decisive rules count.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from portwall.backends.base import RouterRenderCache
from portwall.backends.nftables import counters
from portwall.backends.nftables.counters import Counters
from portwall.backends.nftables.notes import fip_note, fw_chain, fw_rule_note
from portwall.backends.nftables.notes import fw_group_note as group_note
from portwall.backends.nftables.spell import comment, match_variants, quote
from portwall.backends.nftables.types import NftChain
from portwall.ir.l3 import FirewallPlan, FwAction, RouterPlan
from portwall.ir.types import Origin
from portwall.kernel.conntrack import DNAT_MASK, SNAT_MASK, fip_ct_marks

FAMILY = "inet"
TABLE = "portwall_l3"
MARK_GW = 0x2  # in the packet mark's low 16 bits, as the iptables renderer
HOOKS: dict[str, str] = {
    "l3_mark": "type filter hook prerouting priority -150; policy accept;",
    "l3_pre": "type nat hook prerouting priority -100; policy accept;",
    "l3_out": "type nat hook output priority -100; policy accept;",
    "l3_post": "type nat hook postrouting priority 100; policy accept;",
    "l3_fwd": "type filter hook forward priority 0; policy accept;",
}
_DIRECTIONS: tuple[Literal["egress", "ingress"], ...] = ("egress", "ingress")
_VERDICT = {FwAction.ALLOW: "return", FwAction.DENY: "drop",
            FwAction.REJECT: "reject with icmpx type port-unreachable"}


@dataclass
class NftL3Ruleset:
    """One router's table: chains by name (base chains first), and rid -> Origin."""

    router_id: str
    netns: str
    chains: dict[str, NftChain]
    provenance: dict[str, Origin] = field(default_factory=dict)

    def text(self) -> str:
        """The whole table for ``nft -f`` (replacing portwall's table, nothing else)."""
        lines = [f"add table {FAMILY} {TABLE}", f"delete table {FAMILY} {TABLE}",
                 f"add table {FAMILY} {TABLE}"]
        lines += [chain_decl(c) for c in self.chains.values()]
        for c in self.chains.values():
            lines += rule_lines(c)
        return "\n".join(lines) + "\n"


def chain_decl(c: NftChain) -> str:
    body = f" {{ {c.hook} }}" if c.hook else ""
    return f"add chain {FAMILY} {TABLE} {c.name}{body}"


def rule_lines(c: NftChain) -> list[str]:
    return [f"add rule {FAMILY} {TABLE} {c.name} {r}" for r in c.rules]


def _note(rid: str, *words: str) -> str:
    return comment(" ".join((rid, *words)))


def _group_chain(fw: FirewallPlan, direction: Literal["ingress", "egress"],
                 prov: dict[str, Origin]) -> NftChain:
    rules = [f"ct state invalid counter drop {comment('pw-fw-invalid')}",
             f"ct state established,related return {comment('pw-fw-established')}"]
    for r in fw.rules(direction) or ():
        prov[r.rid] = r.origin
        for v in match_variants(r.match, {}):
            rules.append(f"{v} counter {_VERDICT[r.action]} "
                         f"{_note(r.rid, fw_rule_note(fw, direction, r))}")
    rid = f"fw-default-{fw.id}"
    prov[rid] = fw.origin
    for fam in (4, 6):  # one per family, so a drop is credited to the right one
        rules.append(f"meta nfproto ipv{fam} counter drop "
                     f"{_note(rid, group_note(fw, direction), 'default-deny')}")
    return NftChain(FAMILY, fw_chain(fw, direction), tuple(rules))


def render_router(r: RouterPlan) -> NftL3Ruleset:
    """A router's table (see the module docstring for the layout)."""
    prov: dict[str, Origin] = {}
    mark: list[str] = []
    pre: list[str] = []
    out: list[str] = []
    post: list[str] = []
    fwd: list[str] = []
    groups: list[NftChain] = []
    gw = r.gateway
    if r.metadata is not None:
        md = r.metadata
        prov["pw-metadata"] = md.origin
        pre.append(f'meta nfproto ipv4 iifname "qr-*" ip daddr {md.address} tcp dport {md.port}'
                   f" counter redirect to :{md.local_port} {comment('pw-metadata')}")
        fwd.append(f"meta nfproto ipv4 ip daddr {md.address} counter drop "
                   f"{comment('pw-metadata-never-forwarded')}")
    marks = fip_ct_marks(f.floating for f in r.floating_ips)
    fsnat: list[str] = []
    for f in r.floating_ips:
        rid = f"fip-{f.id}"
        prov[rid] = f.origin
        note = _note(rid, fip_note(f))
        slot = marks.get(str(f.floating))
        to = from_ = ""  # the slot in the mark's high half (to F) or low half (from F)
        if slot is not None:
            to = f"ct mark set ct mark & {SNAT_MASK:#010x} | {slot << 16:#010x} "
            from_ = f"ct mark set ct mark & {DNAT_MASK:#010x} | {slot:#010x} "
        pre.append(f"meta nfproto ipv4 ip daddr {f.floating} counter {to}dnat ip to {f.fixed}"
                   f" {note}")
        out.append(f"meta nfproto ipv4 ip daddr {f.floating} counter {to}dnat ip to {f.fixed}"
                   f" {note}")
        fsnat.append(f"meta nfproto ipv4 ip saddr {f.fixed} counter {from_}snat ip to "
                     f"{f.floating} {note}")
    if gw is not None:
        dev = quote(gw.device)
        mark.append(f"iifname {dev} meta mark set meta mark & 0xffff0000 | {MARK_GW:#x} "
                    f"{comment('pw-from-gateway')}")
        post.append(f"oifname != {dev} ct status & dnat == 0 accept "
                    f"{comment('pw-no-snat-east-west')}")
        post += fsnat
        if r.snat is not None:
            prov["pw-snat"] = r.snat.origin
            post.append(f"meta nfproto ipv4 oifname {dev} counter snat ip to {r.snat.to} "
                        f"{comment('pw-snat-gateway')}")
            post.append(f"meta nfproto ipv4 meta mark & 0xffff != {MARK_GW:#x} ct status dnat"
                        f" counter snat ip to {r.snat.to} {comment('pw-snat-hairpin')}")
    for fw in r.firewalls:
        if not fw.enabled:
            continue
        for direction in _DIRECTIONS:
            groups.append(_group_chain(fw, direction, prov))
        for itf in r.interfaces:
            if itf.port_id in fw.ports:
                dev = quote(itf.device)
                fwd.append(f"iifname {dev} jump {fw_chain(fw, 'egress')} "
                           f"{_note(f'fw-{fw.id}', group_note(fw, 'egress'))}")
                fwd.append(f"oifname {dev} jump {fw_chain(fw, 'ingress')} "
                           f"{_note(f'fw-{fw.id}', group_note(fw, 'ingress'))}")
    chains = {name: NftChain(FAMILY, name, tuple(rules), HOOKS[name]) for name, rules in (
        ("l3_mark", mark), ("l3_pre", pre), ("l3_out", out), ("l3_post", post),
        ("l3_fwd", fwd))}
    chains |= {c.name: c for c in groups}
    return NftL3Ruleset(r.id, r.netns, chains, prov)


class NftL3Renderer(RouterRenderCache[NftL3Ruleset]):
    """Renders every router of a plan, reusing a router's output while its plan is equal."""

    def __init__(self) -> None:
        super().__init__(render_router)


# ------------------------------------------------------------------ counters
def read_counters(netns: str) -> Counters:
    """The packet counters of portwall's router table in ``netns`` (empty without it),
    read in-process through libnftables."""
    return counters.read_counters(netns, ((FAMILY, TABLE),))
