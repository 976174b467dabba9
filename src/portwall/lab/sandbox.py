"""A sandbox: one "compute host" namespace with a bridge per network, one namespace per VM.

Each VM port is a veth pair: the host end is the port's tap (``PortPlan.device``) enslaved
to its network's bridge (``PortPlan.bridge``), the VM end is ``eth0``, ``eth1``, ... with
the port's MAC and addresses. Bridge netfilter is on in the host namespace, so bridged
VM traffic crosses the host's iptables FORWARD chain exactly as on a Neutron linuxbridge
compute node, and the policy is applied there.

Links, addresses and routes go through pyroute2; namespaces through
:mod:`portwall.lab.netns` (iproute2), because pyroute2 would silently create a namespace
that does not exist.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import secrets
import socket
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from portwall import backends
from portwall.ir import compile_plan
from portwall.ir.types import HostPlan
from portwall.lab import netns, ovs_host
from portwall.lab import state as st
from portwall.lab.enforce import PolicyReport, apply_policy
from portwall.lab.state import LabError, PortState, SandboxState, VMState
from portwall.lab.wiring import desired_vms, host_netns
from portwall.topology import Topology, load_topology

IFA_F_NODAD = 0x02
_HOST_SYSCTLS = {
    "net.bridge.bridge-nf-call-iptables": "1",
    "net.bridge.bridge-nf-call-ip6tables": "1",
    # The host only bridges: no IPv6 addresses, ND or MLD of its own on bridges and taps.
    "net.ipv6.conf.all.disable_ipv6": "1",
    "net.ipv6.conf.default.disable_ipv6": "1",
}
_VM_SYSCTLS = {
    # Addresses are usable at once: duplicate address detection would delay every test
    # by a second and the lab guarantees uniqueness anyway.
    "net.ipv6.conf.all.accept_dad": "0",
    "net.ipv6.conf.default.accept_dad": "0",
    "net.ipv6.conf.all.accept_ra": "0",
    "net.ipv6.conf.default.accept_ra": "0",
}


@dataclass
class LabReport:
    """What one ``up``/``apply`` changed: interface-level steps and the policy report."""

    changes: list[str] = field(default_factory=list)
    policy: PolicyReport | None = None


def _iproute(ns: str) -> IPRoute:
    if not netns.exists(ns):  # pyroute2 would create it: refuse instead
        raise LabError(f"namespace {ns} does not exist")
    return IPRoute(netns=ns)


def _sysctl(ns: str, values: dict[str, str]) -> None:
    netns.run(ns, ["sysctl", "-q", "-w", *(f"{k}={v}" for k, v in values.items())])


def _forward_sysctls(on: bool) -> dict[str, str]:
    v = "1" if on else "0"
    return {"net.ipv4.ip_forward": v, "net.ipv6.conf.all.forwarding": v}


class Sandbox:
    """A live sandbox, reopened from its state file by name."""

    def __init__(self, state: SandboxState):
        self.state = state
        self.pid = os.getpid()

    # ------------------------------------------------------------------ lookup
    @property
    def name(self) -> str:
        return self.state.name

    @property
    def host_ns(self) -> str:
        return self.state.host_netns

    def vm_ns(self, vm: str) -> str:
        return self.state.vm(vm).netns

    @classmethod
    def open(cls, name: str) -> Sandbox:
        state = st.load(name)
        if state.hosts:  # several compute hosts joined by VXLAN
            from portwall.lab.multihost import MultiSandbox

            return MultiSandbox(state)
        return cls(state)

    def _host_of(self, vm: VMState) -> str:
        """The compute host namespace ``vm`` is plugged into (one here; see multihost)."""
        return self.host_ns

    def host_namespaces(self) -> list[str]:
        """Every compute host namespace (where port chains and their counters live)."""
        return [self.host_ns]

    def port_namespaces(self) -> dict[str, str]:
        """Port id -> the host namespace enforcing it (empty: all in ``host_ns``)."""
        return {}

    # -------------------------------------------------------------------- up
    @classmethod
    def up(cls, topo: Topology, name: str, *, apply: bool = True,
           backend: str | None = None,
           on_step: Callable[[str], None] | None = None) -> tuple[Sandbox, LabReport]:
        """Create a sandbox for ``topo`` enforced by ``backend`` (the default one when None).
        On any failure everything created is removed."""
        st.check_name(name)
        backend_name = backends.get(backend).name
        with st.locked(name):
            if st.state_path(name).exists():
                raise LabError(f"sandbox '{name}' already exists: `portwall lab down --name "
                               f"{name}` first, or `lab apply` to update it")
            sid = _new_id()
            state = SandboxState(name=name, id=sid, topology=_source(topo),
                                 host_netns=host_netns(sid), backend=backend_name)
            plan = compile_plan(topo.model)
            want = desired_vms(topo, plan, sid)
            # Record every namespace before creating any, so a crash leaves nothing unnamed.
            state.namespaces = [state.host_netns, *(v.netns for v in want.values())]
            st.save(state)
            box = cls(state)
            report = LabReport()
            try:
                box._create_host()
                report.changes.append(f"host namespace {state.host_netns}")
                step = on_step or (lambda text: None)
                for i, vm in enumerate(want.values(), 1):
                    step(f"VM {i}/{len(want)} {vm.name}")
                    box._add_vm(vm, report)
                step("routers")
                box._sync_l3(topo, plan, report)
                if apply:
                    step(f"applying the policy ({state.backend})")
                    report.policy = apply_policy(state.host_netns, plan, state.backend)
            except BaseException:
                _only_in(box.pid)
                box._teardown()
                raise
            return box, report

    @property
    def ovs(self) -> bool:
        """The backend needs an Open vSwitch integration bridge, not Linux bridges."""
        return backends.get(self.state.backend).bridge == "ovs"

    def _sync_l3(self, topo: Topology, plan: HostPlan, report: LabReport) -> None:
        """Routers and the outside (portwall.lab.routers / .outside)."""
        from portwall.lab.outside import sync_outside
        from portwall.lab.routers import sync_routers

        sync_outside(self, topo.lab.outside, report)
        if plan.routers or self.state.routers:
            sync_routers(self, topo, plan, report)

    def _create_host(self) -> None:
        netns.create(self.host_ns)
        _sysctl(self.host_ns, _HOST_SYSCTLS)
        if self.ovs:
            ovs_host.start(self.host_ns)

    def _ensure_bridge(self, ip: IPRoute, bridge: str, report: LabReport) -> int:
        found = ip.link_lookup(ifname=bridge)
        if found:
            return int(found[0])
        if bridge not in self.state.bridges:
            self.state.bridges.append(bridge)
        ip.link("add", ifname=bridge, kind="bridge", br_mcast_snooping=0, br_forward_delay=0)
        idx = int(ip.link_lookup(ifname=bridge)[0])
        ip.link("set", index=idx, state="up")
        report.changes.append(f"bridge {bridge}")
        return idx

    def _add_vm(self, vm: VMState, report: LabReport) -> None:
        if vm.netns not in self.state.namespaces:
            self.state.namespaces.append(vm.netns)
            st.save(self.state)
        netns.create(vm.netns)
        _sysctl(vm.netns, {**_VM_SYSCTLS, **_forward_sysctls(vm.forward)})
        recorded = VMState(**{**vm.model_dump(), "ports": [], "routes": [], "gateway": None})
        self.state.vms[vm.name] = recorded
        st.save(self.state)
        report.changes.append(f"VM {vm.name} (namespace {vm.netns}"
                              f"{', forwarding' if vm.forward else ''})")
        for port in vm.ports:
            self._plug(recorded, port, report)
        self._set_routes(recorded, vm, report)

    def _plug(self, vm: VMState, port: PortState, report: LabReport) -> None:
        with _iproute(self._host_of(vm)) as hip:
            br = None if self.ovs else self._ensure_bridge(hip, port.bridge, report)
            for stale in hip.link_lookup(ifname=port.device):
                hip.link("del", index=stale)
            with _iproute(vm.netns) as vip:
                for stale in vip.link_lookup(ifname=port.ifname):
                    vip.link("del", index=stale)
            # Our own fd, not the namespace name: given a name, pyroute2 opens the file and
            # closes the fd number later from a clean-up callback, which can hit an fd that
            # was reused in between (seen as hangs in its event loop).
            with netns.fd(vm.netns) as nsfd:
                hip.link("add", ifname=port.device, kind="veth",
                         peer={"ifname": port.ifname, "net_ns_fd": nsfd, "address": port.mac})
            tap = hip.link_lookup(ifname=port.device)[0]
            if br is None:
                hip.link("set", index=tap, state="up")
            else:
                hip.link("set", index=tap, master=br, state="up")
        if br is None:
            ovs_host.plug(self.host_ns, port.device)
            ovs_host.vm_side_offload_off(vm.netns, port.ifname)
        with _iproute(vm.netns) as vip:
            idx = vip.link_lookup(ifname=port.ifname)[0]
            vip.link("set", index=idx, state="up")
            for a in port.addresses:
                _addr(vip, "add", idx, a)
        vm.ports = [p for p in vm.ports if p.ifname != port.ifname] + [port]
        vm.ports.sort(key=lambda p: int(p.ifname[3:]))
        st.save(self.state)
        report.changes.append(
            f"plugged {vm.name}/{port.ifname} port {port.name or port.id} {port.mac} "
            f"{' '.join(port.addresses) or '(no address)'} as {port.device} on {port.bridge}")

    def _unplug(self, vm: VMState, port: PortState, report: LabReport) -> None:
        with _iproute(self._host_of(vm)) as hip:
            for idx in hip.link_lookup(ifname=port.device):
                hip.link("del", index=idx)  # deleting one end removes the VM end too
        if self.ovs:
            ovs_host.unplug(self.host_ns, port.device)
        vm.ports = [p for p in vm.ports if p.ifname != port.ifname]
        st.save(self.state)
        report.changes.append(f"unplugged {vm.name}/{port.ifname} ({port.device})")

    def _update_port(self, vm: VMState, old: PortState, new: PortState,
                     report: LabReport) -> list[str]:
        """Change MAC and addresses in place; returns addresses that appeared (for GARP)."""
        added: list[str] = []
        with _iproute(vm.netns) as vip:
            idx = vip.link_lookup(ifname=new.ifname)[0]
            if old.mac != new.mac:
                vip.link("set", index=idx, address=new.mac)
                report.changes.append(f"{vm.name}/{new.ifname}: MAC {old.mac} -> {new.mac}")
            for a in old.addresses:
                if a not in new.addresses:
                    _addr(vip, "del", idx, a)
                    report.changes.append(f"{vm.name}/{new.ifname}: removed {a}")
            for a in new.addresses:
                if a not in old.addresses:
                    _addr(vip, "add", idx, a)
                    added.append(a)
                    report.changes.append(f"{vm.name}/{new.ifname}: added {a}")
        vm.ports = [new if p.ifname == new.ifname else p for p in vm.ports]
        st.save(self.state)
        return added

    def _set_routes(self, vm: VMState, want: VMState, report: LabReport,
                    refresh: bool = False) -> None:
        """Routes and forwarding as ``want`` says. ``refresh`` re-installs every route even
        if unchanged: the kernel silently drops routes whose next hop lost its address or
        interface, which a re-addressed or re-plugged port causes."""
        old = {(r.destination, r.via) for r in vm.routes}
        if vm.gateway:
            old.add(("default", vm.gateway))
        new = {(r.destination, r.via) for r in want.routes}
        if want.gateway:
            new.add(("default", want.gateway))
        if old == new and vm.forward == want.forward and not refresh:
            return
        if vm.forward != want.forward:
            _sysctl(vm.netns, _forward_sysctls(want.forward))
            report.changes.append(f"VM {vm.name}: forwarding {'on' if want.forward else 'off'}")
        with _iproute(vm.netns) as vip:
            for dst, via in sorted(old - new):
                with contextlib.suppress(NetlinkError):
                    vip.route("del", **_route_args(dst, via))
                report.changes.append(f"VM {vm.name}: route {dst} via {via} removed")
            for dst, via in sorted(new if refresh else new - old):
                try:
                    vip.route("replace", **_route_args(dst, via))
                except NetlinkError as e:
                    raise LabError(f"VM {vm.name}: cannot add route {dst} via {via}: {e}"
                                   " (is the gateway on one of its networks?)") from None
                if (dst, via) not in old:
                    report.changes.append(f"VM {vm.name}: route {dst} via {via}")
        vm.forward, vm.gateway, vm.routes = want.forward, want.gateway, list(want.routes)
        st.save(self.state)

    # ------------------------------------------------------------------ apply
    def apply(self, topo: Topology) -> LabReport:
        """Bring the sandbox in line with a (changed) file: only what differs is touched."""
        with st.locked(self.name):
            self.state = st.load(self.name)
            plan = compile_plan(topo.model)
            want = self._desired(topo, plan)
            report = LabReport()
            for name in sorted(set(self.state.vms) - set(want)):
                self._remove_vm(self.state.vms[name], report)
            garp: list[tuple[VMState, PortState, str]] = []
            for vm in want.values():
                have = self.state.vms.get(vm.name)
                if have is None:
                    self._add_vm(vm, report)
                    continue
                garp += self._sync_vm(have, vm, report)
            self._drop_unused_bridges(report)
            self.state.topology = _source(topo)
            st.save(self.state)
            report.policy = self._enforce(topo, plan)
            self._sync_l3(topo, plan, report)
            for vm_state, port, addr in garp:
                self._announce(vm_state, port, addr)
            return report

    def _desired(self, topo: Topology, plan: HostPlan) -> dict[str, VMState]:
        return desired_vms(topo, plan, self.state.id)

    def _enforce(self, topo: Topology, plan: HostPlan) -> PolicyReport | None:
        """Make the dataplane enforce ``plan`` (the multi-host sandbox: per host)."""
        return apply_policy(self.host_ns, plan, self.state.backend)

    def _sync_vm(self, have: VMState, want: VMState,
                 report: LabReport) -> list[tuple[VMState, PortState, str]]:
        garp = []
        old_ports = {p.ifname: p for p in have.ports}
        new_ports = {p.ifname: p for p in want.ports}
        touched = False
        for ifname in sorted(set(old_ports) - set(new_ports)):
            self._unplug(have, old_ports[ifname], report)
            touched = True
        for ifname, new in new_ports.items():
            old = old_ports.get(ifname)
            if old is None or (old.id, old.device, old.bridge) != (new.id, new.device, new.bridge):
                if old is not None:
                    self._unplug(have, old, report)
                self._plug(have, new, report)
                touched = True
            elif old != new:
                garp += [(have, new, a) for a in self._update_port(have, old, new, report)]
                touched = True
        self._set_routes(have, want, report, refresh=touched)
        return garp

    def _remove_vm(self, vm: VMState, report: LabReport) -> None:
        with _iproute(self._host_of(vm)) as hip:
            for p in vm.ports:
                for idx in hip.link_lookup(ifname=p.device):
                    hip.link("del", index=idx)
        if self.ovs:
            for p in vm.ports:
                ovs_host.unplug(self.host_ns, p.device)
        netns.delete(vm.netns)
        del self.state.vms[vm.name]
        self.state.namespaces = [n for n in self.state.namespaces if n != vm.netns]
        st.save(self.state)
        report.changes.append(f"removed VM {vm.name} (namespace {vm.netns})")

    def _drop_unused_bridges(self, report: LabReport) -> None:
        used = {p.bridge for vm in self.state.vms.values() for p in vm.ports}
        with _iproute(self.host_ns) as hip:
            for br in [b for b in self.state.bridges if b not in used]:
                for idx in hip.link_lookup(ifname=br):
                    hip.link("del", index=idx)
                self.state.bridges.remove(br)
                report.changes.append(f"removed bridge {br}")
        st.save(self.state)

    def _announce(self, vm: VMState, port: PortState, addr: str) -> None:
        """A VIP moved here: tell the network (gratuitous ARP) and make every VM on the
        network forget the old owner's MAC, as keepalived's failover does."""
        ip = ipaddress.ip_interface(addr).ip
        if ip.version == 4:
            netns.run(vm.netns, ["arping", "-q", "-U", "-c", "1", "-I", port.ifname, str(ip)],
                      check=False, timeout=5)
        for other in self.state.vms.values():
            if any(p.network_id == port.network_id for p in other.ports) and other is not vm:
                netns.run(other.netns, ["ip", "neigh", "flush", "to", str(ip)], check=False)

    # ------------------------------------------------------------------- down
    def down(self) -> list[str]:
        """Remove every namespace (and so every interface) the sandbox recorded."""
        with st.locked(self.name):
            with contextlib.suppress(LabError):
                self.state = st.load(self.name)
            return self._teardown()

    def _teardown(self) -> list[str]:
        _only_in(self.pid)
        from portwall.lab.routers import teardown as l3_teardown

        l3_teardown(self.state)
        removed = []
        with contextlib.suppress(Exception):  # the namespace's deletion kills them anyway
            ovs_host.stop(self.host_ns)
        for ns in reversed(self.state.namespaces):
            if netns.exists(ns):
                netns.delete(ns)
                removed.append(ns)
        left = [ns for ns in self.state.namespaces if netns.exists(ns)]
        if left:
            raise LabError(f"could not delete namespaces {', '.join(left)}")
        st.remove(self.name)
        with contextlib.suppress(FileNotFoundError):
            (st.state_dir() / f".{self.name}.lock").unlink()
        return removed

    # ------------------------------------------------------------------- misc
    def exec_argv(self, vm: str, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.vm_ns(vm), *argv]

    def status(self) -> dict[str, Any]:
        """The state file plus whether each namespace still exists (for `lab status`)."""
        d = self.state.model_dump()
        d["alive"] = netns.exists(self.host_ns)
        for vm in d["vms"].values():
            vm["alive"] = netns.exists(vm["netns"])
        return d


def _source(topo: Topology) -> str:
    """Where the topology came from: an absolute path, or its label (``<test>``)."""
    p = Path(topo.path)
    return str(p.resolve()) if p.exists() else topo.path


def _only_in(pid: int) -> None:
    """Leave at once if this is a forked copy of the process that owns the sandbox.

    pyroute2 forks helper children (no exec) to open sockets in a namespace; a signal that
    reaches such a child raises in *our* code there, and its clean-up would tear down the
    parent's sandbox while it is still being built.
    """
    if os.getpid() != pid:
        os._exit(1)


def _new_id() -> str:
    while True:
        sid = secrets.token_hex(4)
        if not netns.exists(host_netns(sid)):
            return sid


def _addr(ip: IPRoute, cmd: str, index: int, cidr: str) -> None:
    iface = ipaddress.ip_interface(cidr)
    kw: dict[str, object] = {}
    if iface.version == 6:
        kw["flags"] = IFA_F_NODAD
    try:
        ip.addr(cmd, index=index, address=str(iface.ip), prefixlen=iface.network.prefixlen, **kw)
    except NetlinkError as e:
        # Idempotent: an address already there (EEXIST) or already gone (EADDRNOTAVAIL).
        if not ((cmd == "add" and e.code == 17) or (cmd == "del" and e.code == 99)):
            raise


def _route_args(dst: str, via: str) -> dict[str, object]:
    fam = ipaddress.ip_address(via).version
    if dst == "default":
        dst = "0.0.0.0/0" if fam == 4 else "::/0"
    return {"dst": dst, "gateway": via,
            "family": socket.AF_INET if fam == 4 else socket.AF_INET6}


@contextlib.contextmanager
def sandbox(topo: Topology | str | Path, name: str | None = None, *,
            apply: bool = True, backend: str | None = None) -> Iterator[Sandbox]:
    """A sandbox that is always torn down, for tests and the demo."""
    if not isinstance(topo, Topology):
        topo = load_topology(topo)
    box, _ = Sandbox.up(topo, name or netns.unique_name("pwlab"), apply=apply,
                        backend=backend)
    try:
        yield box
    finally:
        box.down()


def all_sandboxes() -> list[Sandbox]:
    out = []
    for n in st.names():
        with contextlib.suppress(LabError, ValueError):
            out.append(Sandbox.open(n))
    return out

