"""The Open vSwitch side of a sandbox, for backends whose ``bridge`` is "ovs".

Instead of a Linux bridge per network the sandbox gets one integration bridge served by a
private ovsdb-server + ovs-vswitchd started inside its host namespace
(:mod:`portwall.backends.ovs.daemon`); VM taps become OVS ports through OVSDB (ovsdbapp);
``down`` stops the daemons and removes their directory, even after a failure half-way.
"""

from __future__ import annotations

from portwall.backends.ovs.daemon import plug, start, stop, unplug
from portwall.lab import netns

__all__ = ["plug", "start", "stop", "unplug", "vm_side_offload_off"]


def vm_side_offload_off(vm_ns: str, ifname: str) -> None:
    """The userspace datapath does not fill in checksums the VM's veth leaves to offload:
    TCP through it needs TX checksum offload off on the VM side."""
    netns.run(vm_ns, ["ethtool", "-K", ifname, "tx", "off"], check=False)
