"""Sandboxes for tests and scripts: built from a file or YAML text, always torn down.

``with Lab() as lab: box = lab.up(text)`` gives a :class:`LabBox`: the sandbox, the
topology it runs, and short helpers to send real traffic by VM name. Leaving the block
removes every sandbox and fails loudly if any namespace survived, so a test can never leak
one (and parallel tests never share one: names are unique per process and call).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from pathlib import Path
from typing import Any

from portwall.ir import compile_plan
from portwall.lab import netns
from portwall.lab.check import CheckResult, resolve_target, run_checks
from portwall.lab.enforce import policy_drift
from portwall.lab.sandbox import LabReport, Sandbox
from portwall.lab.state import LabError, VMState
from portwall.lab.traffic import DEFAULT_TIMEOUT, probe
from portwall.model.store import Model
from portwall.topology import Expect, Topology, load_topology, loads_topology


def as_topology(src: Topology | str | Path) -> Topology:
    """A topology from an object, a file path, or YAML text (anything with a newline)."""
    if isinstance(src, Topology):
        return src
    if isinstance(src, Path) or "\n" not in src:
        return load_topology(src)
    return loads_topology(src, "<test>")


class LabBox:
    """A running sandbox plus the topology it currently enforces."""

    def __init__(self, box: Sandbox, topo: Topology):
        self.box, self.topo = box, topo

    @property
    def host_ns(self) -> str:
        return self.box.host_ns

    def vm(self, name: str) -> VMState:
        return self.box.state.vm(name)

    def ip(self, vm: str, family: int = 4, index: int = 0) -> str:
        """The ``index``-th address of ``family`` on ``vm`` (without prefix length)."""
        addrs = [ipaddress.ip_interface(a).ip for p in self.vm(vm).ports for a in p.addresses]
        return str([a for a in addrs if a.version == family][index])

    def mac(self, vm: str, ifname: str = "eth0") -> str:
        return next(p.mac for p in self.vm(vm).ports if p.ifname == ifname)

    def target(self, src: str, dst: str) -> str:
        """``dst`` as an address: a VM name resolves as ``lab check`` resolves it."""
        return resolve_target(self.box, Expect(src, dst, "icmp", None, "allow"))[0]

    def reach(self, src: str, dst: str, proto: str = "icmp", port: int | None = None,
              timeout: float = DEFAULT_TIMEOUT, sport: int | None = None) -> bool:
        """True when a real request from ``src`` to ``dst`` is answered. No listener is
        started: pair it with :class:`portwall.lab.traffic.Server` for TCP/UDP."""
        return probe(self.vm(src), proto, self.target(src, dst), port, timeout,
                     sport)[0] == "allow"

    def check(self, expects: list[Expect] | None = None) -> list[CheckResult]:
        return run_checks(self.box, self.topo.lab.expect if expects is None else expects,
                          topo=self.topo)

    def apply(self, topo: Topology | str | Path | None = None) -> LabReport:
        """Re-apply (a changed) topology; without one, the current topology again."""
        if topo is not None:
            self.topo = as_topology(topo)
        return self.box.apply(self.topo)

    def update(self, change: Callable[[Model], Any]) -> LabReport:
        """Change the model through its API (as a Neutron call would), then apply."""
        change(self.topo.model)
        return self.box.apply(self.topo)

    def drift(self) -> list[str]:
        return policy_drift(self.host_ns, compile_plan(self.topo.model), self.box.state.backend)

    def host(self, argv: list[str], check: bool = True) -> str:
        """Run a command in the compute-host namespace (iptables, ipset, conntrack, ...)."""
        return netns.run(self.host_ns, argv, check=check).stdout

    def namespaces(self) -> list[str]:
        return list(self.box.state.namespaces)


class Lab:
    """Creates sandboxes and guarantees their removal."""

    def __init__(self, prefix: str = "pwt", backend: str | None = None) -> None:
        self.prefix, self.backend = prefix, backend
        self.boxes: list[LabBox] = []

    def up(self, topo: Topology | str | Path, *, apply: bool = True,
           backend: str | None = None) -> LabBox:
        """A sandbox for ``topo`` on ``backend`` (else the Lab's, else the default one)."""
        t = as_topology(topo)
        box, _ = Sandbox.up(t, netns.unique_name(self.prefix), apply=apply,
                            backend=backend or self.backend)
        lb = LabBox(box, t)
        self.boxes.append(lb)
        return lb

    def close(self) -> None:
        errors: list[str] = []
        for lb in self.boxes:
            names = lb.namespaces()
            try:
                lb.box.down()
            except LabError as e:
                errors.append(str(e))
            errors += [f"namespace {n} survived `lab down`" for n in names if netns.exists(n)]
        self.boxes.clear()
        if errors:
            raise LabError("; ".join(errors))

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
