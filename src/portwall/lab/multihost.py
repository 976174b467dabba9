"""A sandbox of several "compute host" namespaces joined by VXLAN (``lab up --hosts N``).

Each host has its own bridges, VMs and enforcement, as on a real cloud: VMs are assigned to
hosts (a VM's ``host:`` key or its ports' ``binding:host_id``, else round-robin), their ports
get that ``binding:host_id``, and each host enforces only its own ports -- the plan compiled
for that host (``compile_plan(model, host)``) applied in its namespace, or, with a store
(``--db URL``), a real ``portwall agent --host H`` process per host following the store
(:mod:`portwall.lab.hostagents`). Remote-group address sets still hold every host's members,
so a group change on one host changes what another allows. The first host also plays the
network node: routers and the outside attach to its bridges. :mod:`portwall.lab.overlay`
wires the underlay and the VXLAN devices.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections import Counter
from collections.abc import Callable
from typing import Any

from portwall import backends
from portwall.backends.base import ApplyReport
from portwall.ir import compile_plan
from portwall.ir.compile import bridge_name
from portwall.ir.types import HostPlan
from portwall.lab import hostagents, netns, overlay
from portwall.lab import state as st
from portwall.lab.enforce import PolicyReport, apply_policy
from portwall.lab.sandbox import (
    _HOST_SYSCTLS,
    LabReport,
    Sandbox,
    _new_id,
    _only_in,
    _source,
    _sysctl,
)
from portwall.lab.state import HostState, LabError, SandboxState, VMState
from portwall.lab.wiring import desired_vms
from portwall.topology import Topology

DEFAULT_HOST = "host{}"  # generated host names: host1, host2, ...


def host_names(topo: Topology, count: int) -> list[str]:
    """The file's hosts (in the order VMs name them), then host1, host2... up to ``count``."""
    names: list[str] = []
    for vm in topo.lab.vms.values():
        if vm.host and vm.host not in names:
            names.append(vm.host)
    i = 1
    while len(names) < count:
        if DEFAULT_HOST.format(i) not in names:
            names.append(DEFAULT_HOST.format(i))
        i += 1
    return names


def is_multihost(topo: Topology, hosts: int) -> bool:
    """A multi-host sandbox is asked for: ``--hosts`` > 1 or a VM names its host."""
    return hosts > 1 or any(vm.host for vm in topo.lab.vms.values())


class MultiSandbox(Sandbox):
    """A sandbox whose VMs live on several compute host namespaces."""

    @classmethod
    def up_hosts(cls, topo: Topology, name: str, *, hosts: int = 0, apply: bool = True,
                 backend: str | None = None, store: str | None = None, seed: bool = True,
                 on_step: Callable[[str], None] | None = None) -> tuple[MultiSandbox, LabReport]:
        """Build the hosts, the underlay and the VMs, and enforce (in-process, or by one
        agent per host following ``store``). On any failure everything is removed.
        ``seed``: write the file's resources into an empty ``store`` first."""
        st.check_name(name)
        b = backends.get(backend)
        if b.bridge != "linux":
            raise LabError(f"a multi-host sandbox joins Linux bridges with VXLAN; the {b.name}"
                           " backend's OVS bridge has no tunnel ports here: use iptables or"
                           " nftables")
        names = host_names(topo, hosts)
        if len(names) < 2:
            raise LabError("a multi-host sandbox needs 2 or more hosts (--hosts N, or "
                           "`host:` on the VMs)")
        step = on_step or (lambda text: None)
        with st.locked(name):
            if st.state_path(name).exists():
                raise LabError(f"sandbox '{name}' already exists: `portwall lab down --name "
                               f"{name}` first")
            sid = _new_id()
            hs = {n: HostState(name=n, netns=overlay.host_ns(sid, i),
                               underlay_ip=overlay.underlay_ip(i))
                  for i, n in enumerate(names, 1)}
            first = hs[names[0]]
            state = SandboxState(name=name, id=sid, topology=_source(topo),
                                 host_netns=first.netns, backend=b.name, hosts=hs,
                                 underlay=overlay.underlay_ns(sid), store=store)
            box = cls(state)
            plan = compile_plan(topo.model)
            want = box._desired(topo, plan)
            state.namespaces = [state.underlay or "", *(h.netns for h in hs.values()),
                                *(v.netns for v in want.values())]
            st.save(state)
            report = LabReport()
            try:
                overlay.create_underlay(state.underlay or "")
                for i, h in enumerate(hs.values(), 1):
                    step(f"host {i}/{len(hs)} {h.name}")
                    netns.create(h.netns)
                    _sysctl(h.netns, _HOST_SYSCTLS)
                    overlay.attach_host(state.underlay or "", h.netns, i)
                    report.changes.append(f"host {h.name} (namespace {h.netns}, underlay "
                                          f"{h.underlay_ip})")
                for i, vm in enumerate(want.values(), 1):
                    step(f"VM {i}/{len(want)} {vm.name} on {vm.host}")
                    box._add_vm(vm, report)
                step("routers")
                box._sync_l3(topo, plan, report)
                step("VXLAN")
                report.changes += box._sync_overlay(topo)
                if store is not None:
                    step("agents")
                    rev = hostagents.prepare_store(store, topo, want, seed=seed)
                    report.changes += hostagents.start_agents(box)
                    if apply:
                        hostagents.wait_converged(box, rev)
                elif apply:
                    step(f"applying the policy ({state.backend}) on {len(hs)} hosts")
                    report.policy = box._enforce(topo, plan)
            except BaseException:
                _only_in(box.pid)
                box._teardown()
                raise
            return box, report

    # ----------------------------------------------------------------- hooks
    def _host_of(self, vm: VMState) -> str:
        h = self.state.hosts.get(vm.host)
        return h.netns if h is not None else self.host_ns

    def host_namespaces(self) -> list[str]:
        return [h.netns for h in self.state.hosts.values()]

    def port_namespaces(self) -> dict[str, str]:
        return {p.id: self._host_of(vm) for vm in self.state.vms.values() for p in vm.ports}

    def _desired(self, topo: Topology, plan: HostPlan) -> dict[str, VMState]:
        """The file's VMs, each on a host; binds their ports there (``binding:host_id``).
        A VM keeps the host it has; a new one without ``host:`` goes to the least busy."""
        want = desired_vms(topo, plan, self.state.id)
        order = list(self.state.hosts)
        load = Counter(v.host for n, v in self.state.vms.items() if n in want)
        for vm in want.values():
            spec = topo.lab.vms[vm.name].host
            have = self.state.vms.get(vm.name)
            if spec is not None:
                if spec not in self.state.hosts:
                    raise LabError(f"VM {vm.name}: host {spec} is not one of the sandbox's "
                                   f"hosts ({', '.join(order)})")
                vm.host = spec
            elif have is not None and have.host in self.state.hosts:
                vm.host = have.host
            else:
                vm.host = min(order, key=lambda h: (load[h], order.index(h)))
            if have is None or have.host != vm.host:
                load[vm.host] += 1
            for p in vm.ports:
                port = topo.model.ports[p.id]
                if port.binding_host_id != vm.host:
                    topo.model.update_port(p.id, {"binding:host_id": vm.host})
        return want

    def _sync_vm(self, have: VMState, want: VMState,
                 report: LabReport) -> list[tuple[VMState, Any, str]]:
        if have.host != want.host:
            raise LabError(f"VM {have.name} runs on {have.host}; moving it to {want.host} "
                           "is not supported (remove it, apply, add it back)")
        return super()._sync_vm(have, want, report)

    def host_plan(self, topo: Topology, host: str) -> HostPlan:
        """What ``host`` enforces: its own ports (routers only on the first host)."""
        plan = compile_plan(topo.model, host)
        if host != next(iter(self.state.hosts)):
            plan = dataclasses.replace(plan, routers={})
        return plan

    def _enforce(self, topo: Topology, plan: HostPlan) -> PolicyReport | None:
        """Each host applies its own plan in its own namespace (in-process)."""
        if self.state.store is not None:
            return None  # the hosts' agents enforce what the store says
        parts: list[PolicyReport] = []
        for host in self.state.hosts.values():
            parts.append(apply_policy(host.netns, self.host_plan(topo, host.name),
                                      self.state.backend))
        detail = ApplyReport(backend=self.state.backend,
                             noop=all(not p.changed for p in parts),
                             seconds=sum(p.detail.seconds for p in parts))
        for h, p in zip(self.state.hosts, parts, strict=True):
            detail.touched += [f"{h}: {line}" for line in p.detail.touched]
            detail.warnings += [f"{h}: {w}" for w in p.detail.warnings]
            detail.conntrack_deleted += p.detail.conntrack_deleted
        summary = "; ".join(f"{h}: {p.summary}" for h, p in zip(self.state.hosts, parts,
                                                                   strict=True))
        return PolicyReport(self.state.backend, not detail.noop, summary, detail)

    def _sync_overlay(self, topo: Topology) -> list[str]:
        bridges = {bridge_name(nid): nid for nid in topo.model.networks}
        changes = overlay.sync_overlay(self.state, bridges)
        st.save(self.state)
        return changes

    def _drop_unused_bridges(self, report: LabReport) -> None:
        for h in self.state.hosts.values():
            used = {p.bridge for vm in self.state.vms.values() if vm.host == h.name
                    for p in vm.ports}
            present = set(overlay.links(h.netns, "bridge"))
            for br in [b for b in self.state.bridges if b not in used and b in present]:
                netns.run(h.netns, ["ip", "link", "del", br])
                report.changes.append(f"{h.name}: removed bridge {br}")

    # ------------------------------------------------------------- lifecycle
    def apply(self, topo: Topology) -> LabReport:
        if self.state.store is not None:
            raise LabError(f"sandbox {self.name} is enforced by agents following "
                           f"{self.state.store}: change the resources there (the API)")
        report = super().apply(topo)
        if report.changes:  # interfaces changed: VXLAN devices and flood lists may have to
            with st.locked(self.name):
                report.changes += self._sync_overlay(topo)
        return report

    def _teardown(self) -> list[str]:
        _only_in(self.pid)
        with contextlib.suppress(Exception):
            hostagents.stop_agents(self)
        removed = super()._teardown()
        for h in self.state.hosts.values():
            if h.agent_log:
                with contextlib.suppress(OSError):
                    os.unlink(h.agent_log)
        return removed

    def status(self) -> dict[str, Any]:
        d = super().status()
        for h in d["hosts"].values():
            h["alive"] = netns.exists(h["netns"])
            h["agent_alive"] = hostagents.agent_alive(self, h["name"])
        d["alive"] = all(h["alive"] for h in d["hosts"].values())
        return d
