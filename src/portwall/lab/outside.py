"""The lab's "outside": one namespace standing for the world beyond an external network.

It is plugged into the external network's bridge like an upstream router: it answers the
external subnet's gateway address (the routers' default next hop) and owns ``address``,
which lies outside every subnet (on ``lo``), so a tenant reaches it only through a
router, SNATed, and it reaches tenants only through floating IPs. It has no route to any
tenant subnet, as the internet has none. ``lab check`` runs its echo server and probes
in it like in a VM (:func:`outside_vm`).
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING

from pyroute2 import IPRoute

from portwall.ir.compile import bridge_name
from portwall.lab import netns
from portwall.lab import state as st
from portwall.lab.state import LabError, VMState

if TYPE_CHECKING:
    from portwall.lab.sandbox import LabReport, Sandbox
    from portwall.topology.spec import Outside

NAME = "outside"


def outside_ns(sandbox_id: str) -> str:
    return f"pwo-{sandbox_id}"


def outside_vm(state: st.SandboxState) -> VMState:
    """The outside as a VM-shaped record (name and namespace) for probes and servers."""
    if state.outside is None or state.outside_address is None:
        raise LabError(f"sandbox {state.name} has no outside (lab.outside in the file)")
    return VMState(name=NAME, netns=state.outside)


def sync_outside(box: Sandbox, spec: Outside | None, report: LabReport) -> None:
    """Create (or remove) the outside namespace as the file says."""
    state = box.state
    ns = outside_ns(state.id)
    if spec is None:
        if state.outside is not None and netns.exists(state.outside):
            netns.delete(state.outside)
            state.namespaces = [n for n in state.namespaces if n != state.outside]
            state.outside = state.outside_address = None
            st.save(state)
        return
    if state.outside == ns and netns.exists(ns):
        return
    if ns not in state.namespaces:
        state.namespaces.append(ns)
    state.outside, state.outside_address = ns, spec.address
    st.save(state)
    netns.create(ns)
    host_end = f"out{state.id}"[:15]
    with IPRoute(netns=box.host_ns) as hip:
        br = bridge_name(spec.network_id)
        found = hip.link_lookup(ifname=br)
        if not found:
            hip.link("add", ifname=br, kind="bridge", br_mcast_snooping=0, br_forward_delay=0)
            found = hip.link_lookup(ifname=br)
            hip.link("set", index=found[0], state="up")
        with netns.fd(ns) as nsfd:
            hip.link("add", ifname=host_end, kind="veth",
                     peer={"ifname": "eth0", "net_ns_fd": nsfd})
        idx = hip.link_lookup(ifname=host_end)[0]
        hip.link("set", index=idx, master=found[0], state="up")
    netns.run(ns, ["ip", "link", "set", "lo", "up"])
    netns.run(ns, ["ip", "link", "set", "eth0", "up"])
    netns.run(ns, ["ip", "addr", "add", f"{spec.gateway}/{spec.prefixlen}", "dev", "eth0"])
    netns.run(ns, ["ip", "addr", "add", f"{spec.address}/32", "dev", "lo"])
    # Answer (UDP too) from the outside address, not the gateway one; ARP still speaks
    # with the on-link address.
    net = ipaddress.ip_interface(f"{spec.gateway}/{spec.prefixlen}").network
    netns.run(ns, ["ip", "route", "replace", str(net), "dev", "eth0", "proto", "kernel",
                   "scope", "link", "src", spec.address])
    netns.run(ns, ["sysctl", "-q", "-w", "net.ipv4.conf.all.arp_announce=2",
                   "net.ipv4.conf.eth0.arp_announce=2"])
    report.changes.append(f"outside {spec.address} (namespace {ns}, gateway {spec.gateway})")
