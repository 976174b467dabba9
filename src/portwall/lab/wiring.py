"""What a topology's ``lab:`` section asks the sandbox to look like, computed without the kernel.

The result is the same :class:`~portwall.lab.state.VMState` shape the state file records,
so bringing a sandbox up is "make the kernel match this" and re-applying a changed file is
"diff the recorded state against this", one interface or address at a time.

Addresses a VM carries: its ports' fixed IPs (prefix length from the subnet) and, playing
the part keepalived would, every single-address allowed-address-pair (a VIP) as a /32 or
/128 on the first VM (in file order) whose port carries it. CIDR pairs (10.0.2.0/24,
0.0.0.0/0) are permissions to *forward* such sources and are never configured.
"""

from __future__ import annotations

import ipaddress

from portwall.ir.compile import bridge_name, tap_name
from portwall.ir.types import HostPlan
from portwall.lab.state import PortState, RouteState, VMState
from portwall.topology import Topology


def vm_netns(sandbox_id: str, vm: str) -> str:
    return f"pwv-{sandbox_id}-{vm}"


def host_netns(sandbox_id: str) -> str:
    return f"pwh-{sandbox_id}"


def desired_vms(topo: Topology, plan: HostPlan, sandbox_id: str) -> dict[str, VMState]:
    """The VMs, their interfaces and addresses that ``topo`` describes."""
    model = topo.model
    planned = {p.id: p for p in plan.ports}
    vip_owner: set[str] = set()
    out: dict[str, VMState] = {}
    for vm in topo.lab.vms.values():
        ports: list[PortState] = []
        for i, pid in enumerate(vm.ports):
            port = model.ports[pid]
            pp = planned.get(pid)
            addrs: list[str] = []
            for fip in port.fixed_ips:
                if fip.ip_address is None:
                    continue
                prefix = _prefixlen(topo, fip.subnet_id, fip.ip_address)
                addrs.append(f"{fip.ip_address}/{prefix}")
            for pair in port.allowed_address_pairs:
                net = pair.network
                if net.prefixlen != net.max_prefixlen or str(net) in vip_owner:
                    continue
                vip_owner.add(str(net))
                if str(net.network_address) not in {a.split("/")[0] for a in addrs}:
                    addrs.append(str(net))
            ports.append(PortState(
                id=pid, name=port.name, ifname=f"eth{i}",
                device=pp.device if pp else tap_name(pid),
                bridge=pp.bridge if pp else bridge_name(port.network_id),
                network_id=port.network_id, mac=port.mac_address or "", addresses=addrs,
            ))
        out[vm.name] = VMState(
            name=vm.name, netns=vm_netns(sandbox_id, vm.name), forward=vm.forward,
            gateway=vm.gateway,
            routes=[RouteState(destination=r.destination, via=r.via) for r in vm.routes],
            ports=ports,
        )
    return out


def _prefixlen(topo: Topology, subnet_id: str | None, address: str) -> int:
    addr = ipaddress.ip_address(address)
    subnet = topo.model.subnets.get(subnet_id or "")
    if subnet is not None and addr in subnet.network:
        return subnet.network.prefixlen
    return addr.max_prefixlen


def vm_of_address(vms: dict[str, VMState], address: str) -> tuple[VMState, PortState] | None:
    """The VM (and port) that answers for ``address``: a fixed IP or a configured VIP."""
    want = ipaddress.ip_address(address)
    for vm in vms.values():
        for p in vm.ports:
            for a in p.addresses:
                if ipaddress.ip_interface(a).ip == want:
                    return vm, p
    return None
