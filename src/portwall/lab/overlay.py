"""The underlay and the VXLAN overlay that join a multi-host sandbox's compute hosts.

The underlay is one namespace holding a bridge (``br-ul``); every compute host namespace has
one veth into it (``pw-ul``, an address in 198.18.0.0/24, the benchmarking range no tenant
file uses). Each tenant network present on a host gets a VXLAN device (one VNI per network,
recorded in the sandbox state so it never changes) enslaved to the network's bridge. Broadcast
and unknown unicast (ARP first) go to every other host that has the network, by head-end
replication (all-zero FDB entries, as Neutron's l2population does); remote MACs are then
learned. The underlay MTU is 1600 so that VMs keep 1500 despite the 50 bytes of VXLAN.

Everything here is iproute2 inside the sandbox's namespaces; nothing in the root namespace.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from portwall.lab import netns
from portwall.lab.state import SandboxState

UNDERLAY_BRIDGE = "br-ul"
UNDERLAY_DEV = "pw-ul"  # a host's end of its underlay veth
UNDERLAY_MTU = 1600  # >= 1500 + 50 bytes of VXLAN/UDP/IP/Ethernet
VXLAN_PORT = 4789
FIRST_VNI = 1001
_FLOOD = "00:00:00:00:00:00"


def underlay_ns(sandbox_id: str) -> str:
    return f"pwu-{sandbox_id}"


def host_ns(sandbox_id: str, index: int) -> str:
    return f"pwh-{sandbox_id}-{index}"


def underlay_ip(index: int) -> str:
    if not 1 <= index <= 250:
        raise ValueError("a multi-host sandbox has at most 250 hosts")
    return f"198.18.0.{index}"


def vxlan_dev(vni: int) -> str:
    return f"vx-{vni}"


def create_underlay(ns: str) -> None:
    """The underlay namespace and its bridge (the namespace is already recorded)."""
    netns.create(ns)
    netns.run(ns, ["ip", "link", "add", UNDERLAY_BRIDGE, "mtu", str(UNDERLAY_MTU), "type",
                   "bridge", "mcast_snooping", "0", "forward_delay", "0"])
    netns.run(ns, ["ip", "link", "set", UNDERLAY_BRIDGE, "up"])


def attach_host(underlay: str, host: str, index: int) -> None:
    """A veth from ``host`` (``pw-ul`` with its underlay address) to the underlay bridge."""
    peer = f"ul{index}"
    netns.run(underlay, ["ip", "link", "add", peer, "mtu", str(UNDERLAY_MTU), "type", "veth",
                         "peer", "name", UNDERLAY_DEV, "mtu", str(UNDERLAY_MTU), "netns", host])
    netns.run(underlay, ["ip", "link", "set", peer, "master", UNDERLAY_BRIDGE, "up"])
    netns.run(host, ["ip", "addr", "add", f"{underlay_ip(index)}/24", "dev", UNDERLAY_DEV])
    netns.run(host, ["ip", "link", "set", UNDERLAY_DEV, "up"])


def links(ns: str, kind: str) -> list[str]:
    out = netns.run(ns, ["ip", "-j", "link", "show", "type", kind]).stdout
    return [str(link["ifname"]) for link in json.loads(out or "[]")]


def _flood_peers(ns: str, dev: str) -> set[str]:
    out = netns.run(ns, ["bridge", "-j", "fdb", "show", "dev", dev]).stdout
    return {str(e["dst"]) for e in json.loads(out or "[]")
            if e.get("mac") == _FLOOD and e.get("dst")}


def host_networks(state: SandboxState, bridges: Mapping[str, str]) -> dict[str, set[str]]:
    """Host name -> tenant networks whose bridge exists there (VM ports, and on the first
    host the routers' and the outside's). ``bridges``: bridge name -> network id."""
    return {h.name: {bridges[b] for b in links(h.netns, "bridge") if b in bridges}
            for h in state.hosts.values()}


def sync_overlay(state: SandboxState, bridges: Mapping[str, str]) -> list[str]:
    """Give every host a VXLAN device per network it has, flooding to the other hosts that
    have it; remove devices of networks a host no longer has. Returns what changed."""
    changes: list[str] = []
    present = host_networks(state, bridges)
    inverse = {n: b for b, n in bridges.items()}
    for net in sorted(set().union(*present.values())):
        if net not in state.vnis:
            state.vnis[net] = max(state.vnis.values(), default=FIRST_VNI - 1) + 1
    for h in state.hosts.values():
        have = {d for d in links(h.netns, "vxlan")}
        want = {vxlan_dev(state.vnis[n]): n for n in present[h.name]}
        for dev in sorted(have - set(want)):
            netns.run(h.netns, ["ip", "link", "del", dev])
            changes.append(f"{h.name}: removed {dev}")
        for dev, net in sorted(want.items()):
            if dev not in have:
                netns.run(h.netns, [
                    "ip", "link", "add", dev, "mtu", "1500", "type", "vxlan",
                    "id", str(state.vnis[net]), "local", h.underlay_ip, "dev", UNDERLAY_DEV,
                    "dstport", str(VXLAN_PORT)])
                netns.run(h.netns, ["ip", "link", "set", dev, "master", inverse[net], "up"])
                changes.append(f"{h.name}: {dev} (VNI {state.vnis[net]}) on {inverse[net]}")
            peers = {o.underlay_ip for o in state.hosts.values()
                     if o.name != h.name and net in present[o.name]}
            have_peers = _flood_peers(h.netns, dev)
            for ip in sorted(peers - have_peers):
                netns.run(h.netns, ["bridge", "fdb", "append", _FLOOD, "dev", dev, "dst", ip])
            for ip in sorted(have_peers - peers):
                netns.run(h.netns, ["bridge", "fdb", "del", _FLOOD, "dev", dev, "dst", ip])
    return changes
