"""The fixed part of portwall's nftables layout: base chains, shared chains, set types.

Packet path (the lab bridges VM taps into Linux bridges with bridge netfilter on; this
kernel has no ``nf_conntrack_bridge``, so ``ct`` cannot be used in the bridge family and
filtering runs in the inet family, which bridge netfilter calls for bridged IP packets):

* ``bridge portwall prerouting`` (-300): the packet mark := the in-port's mark (map
  ``ports``: tap -> port id << 16 | combination id, see below); ARP and neighbour
  advertisements of filtered ports checked against their anti-spoof entries;
* ``inet portwall raw`` (prerouting -300): NOTRACK when both ends are stateless (or a
  stateless port and a non-port), ending the chain (``ct zone set`` on an untracked packet
  would attach a fresh template and track it after all); else the network's zone by bridge;
* ``inet portwall egress`` (prerouting 0, after conntrack): for a port's mark (in
  ``@tracked_ids`` or ``@stateless_ids``), ``meta mark & 0xffff vmap @egress`` -> the egress
  chain of the port's combination (covers forwarded and to-host traffic; an unfiltered
  port's combination id is 0, which the maps never hold);
* ``bridge portwall forward`` (-200): the mark := the out-port's mark;
* ``inet portwall ingress`` (forward 0): the same through ``@ingress`` -> the ingress chain.

Dispatch is in two steps because the kernel re-validates every ``goto`` of a verdict map
whenever a transaction touches chains: keyed by port (10,000 entries) that cost ~3 ms per
changed rule; keyed by the combination of the port's (ingress, egress) chains it is a few
dozen entries. The port -> combination step is the ``ports`` data map, which is never
validated.

Port chains accept (allowed: the base chain ends, the other direction's base chain still
runs) or drop; a security-group chain is jumped to and accepts on a match, so it needs no
mark bits. Ports only add map/set elements; chains grow with group combinations.
"""

from __future__ import annotations

from portwall.backends.nftables.spell import COMBO_MASK, comment
from portwall.backends.nftables.types import BRIDGE, INET, NftChain

# set name -> (is_map, declaration)
BRIDGE_SETS: dict[str, tuple[bool, str]] = {
    "ports": (True, "type ifname : mark;"),
    "ids": (False, "type mark;"),
    "arp_h": (False, "type ifname . ether_addr . ether_addr . ipv4_addr;"),
    "arp_n": (False, "type ifname . ether_addr . ether_addr . ipv4_addr; flags interval;"),
    "arp_m": (False, "type ifname . ether_addr . ether_addr;"),
    "nd_h": (False, "typeof iifname . ether saddr . @th,64,128;"),
    "nd_n": (False, "typeof iifname . ether saddr . @th,64,128; flags interval;"),
    "nd_m": (False, "type ifname . ether_addr;"),
}
INET_SETS: dict[str, tuple[bool, str]] = {
    "zones": (True, "typeof iifname : ct zone;"),
    "egress": (True, "type mark : verdict;"),
    "ingress": (True, "type mark : verdict;"),
    "stateless_ids": (False, "type mark;"),
    "tracked_ids": (False, "type mark;"),
    "stateless_macs": (False, "type ether_addr;"),
    "tracked_macs": (False, "type ether_addr;"),
    "sp4h": (False, "type mark . ether_addr . ipv4_addr;"),
    "sp4n": (False, "type mark . ether_addr . ipv4_addr; flags interval;"),
    "sp4m": (False, "type mark . ether_addr;"),
    "sp6h": (False, "type mark . ether_addr . ipv6_addr;"),
    "sp6n": (False, "type mark . ether_addr . ipv6_addr; flags interval;"),
    "sp6m": (False, "type mark . ether_addr;"),
}

SPOOF_CHAIN = "spoof"


def _c(tag: str) -> str:
    return comment(tag)


#: a filtered port's frame: its mark came from the ``ports`` map (a map looked up as a set)
#: and carries a combination id (unfiltered ports have 0), so no per-port set is needed
_GUARDED = f"iifname @ports meta mark & {COMBO_MASK:#x} != 0"


def _dispatch(direction: str) -> tuple[str, ...]:
    """Only a port's mark (every port is in exactly one of the two id sets) is dispatched:
    another program's mark whose low bits happen to equal a combination id is not."""
    return tuple(f"meta mark @{side}_ids meta mark & {COMBO_MASK:#x} vmap @{direction} "
                 f"{_c(f'pw-{direction}')}" for side in ("tracked", "stateless"))


BASE_CHAINS: tuple[NftChain, ...] = (
    NftChain(BRIDGE, "prerouting", (
        f"meta mark set iifname map @ports {_c('pw-in-port')}",
        f"{_GUARDED} ether type arp jump arp_check {_c('pw-arp')}",
        f"{_GUARDED} icmpv6 type nd-neighbor-advert jump nd_check {_c('pw-nd')}",
    ), "type filter hook prerouting priority -300; policy accept;"),
    NftChain(BRIDGE, "arp_check", (
        f"iifname . ether saddr . arp saddr ether . arp saddr ip @arp_h return {_c('pw-arp-ip')}",
        f"iifname . ether saddr . arp saddr ether . arp saddr ip @arp_n return "
        f"{_c('pw-arp-pair')}",
        f"iifname . ether saddr . arp saddr ether @arp_m return {_c('pw-arp-mac-only')}",
        f"counter drop {_c('pw-arp-spoof-drop')}",
    )),
    NftChain(BRIDGE, "nd_check", (
        f"iifname . ether saddr . @th,64,128 @nd_h return {_c('pw-nd-ip')}",
        f"iifname . ether saddr . @th,64,128 @nd_n return {_c('pw-nd-pair')}",
        f"iifname . ether saddr @nd_m return {_c('pw-nd-mac-only')}",
        f"counter drop {_c('pw-nd-spoof-drop')}",
    )),
    NftChain(BRIDGE, "forward", (
        f"meta mark set oifname map @ports accept {_c('pw-out-port')}",
        f"meta mark @ids meta mark set 0 {_c('pw-out-clear')}",
    ), "type filter hook forward priority -200; policy accept;"),
    NftChain(INET, "raw", (
        f"meta mark @stateless_ids ether daddr != @tracked_macs notrack accept {_c('pw-notrack-src')}",
        f"ether daddr @stateless_macs meta mark != @tracked_ids notrack accept {_c('pw-notrack-dst')}",
        f"ct zone set iifname map @zones {_c('pw-zone')}",
    ), "type filter hook prerouting priority -300; policy accept;"),
    NftChain(INET, "egress_hook", _dispatch("egress"),
             "type filter hook prerouting priority 0; policy accept;"),
    NftChain(INET, "ingress_hook", _dispatch("ingress"),
             "type filter hook forward priority 0; policy accept;"),
    NftChain(INET, SPOOF_CHAIN, (
        f"meta mark . ether saddr . ip saddr @sp4h return {_c('pw-spoof-ip')}",
        f"meta mark . ether saddr . ip saddr @sp4n return {_c('pw-spoof-pair')}",
        f"meta nfproto ipv4 meta mark . ether saddr @sp4m return {_c('pw-spoof-mac-only')}",
        f"meta mark . ether saddr . ip6 saddr @sp6h return {_c('pw-spoof-ip6')}",
        f"meta mark . ether saddr . ip6 saddr @sp6n return {_c('pw-spoof-pair6')}",
        f"meta nfproto ipv6 meta mark . ether saddr @sp6m return {_c('pw-spoof-mac-only6')}",
        f"counter drop {_c('pw-spoof-drop')}",
    )),
)
