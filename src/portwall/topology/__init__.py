"""Topology files: the user's resources by name, plus the lab's VMs and expectations."""

from portwall.topology.loader import (
    VM,
    Expect,
    LabSpec,
    Route,
    Topology,
    TopologyError,
    load_topology,
    loads_topology,
)

__all__ = [
    "VM",
    "Expect",
    "LabSpec",
    "Route",
    "Topology",
    "TopologyError",
    "load_topology",
    "loads_topology",
]
