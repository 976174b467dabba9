"""The one seam between the lab and the dataplane: render a plan and make the host match it.

The lab never writes rules itself. It picks a backend by name from
:mod:`portwall.backends` (iptables, nftables, ...), renders the compiled plan with it and
hands the result to that backend's applier (atomic, incremental, conntrack clean-up), inside
the sandbox's host namespace only.
"""

from __future__ import annotations

from dataclasses import dataclass

from portwall import backends
from portwall.backends.base import ApplyReport
from portwall.ir.types import HostPlan


@dataclass
class PolicyReport:
    """What applying the policy changed, in the applier's words."""

    backend: str
    changed: bool
    summary: str
    detail: ApplyReport

    def __str__(self) -> str:
        return self.summary


def apply_policy(host_ns: str, plan: HostPlan, backend: str | None = None) -> PolicyReport:
    """Render ``plan`` with ``backend`` (the default one when None) and apply it in ``host_ns``."""
    b = backends.get(backend)
    with b.applier(host_ns) as applier:
        report = applier.apply(b.render(plan), plan)
    report.touched += guard_host_nat(host_ns, plan)
    return PolicyReport(b.name, not report.noop, report.summary(), report)


def guard_host_nat(host_ns: str | None, plan: HostPlan) -> list[str]:
    """Seed 003: keep foreign host NAT off bridged tenant traffic, whatever the backend
    (:mod:`portwall.kernel.natguard`); re-checked on every apply."""
    from portwall.kernel.natguard import ensure_guard
    from portwall.kernel.runner import Runner

    bridges = {p.bridge for p in plan.ports} | {
        i.bridge for r in plan.routers.values() for i in r.all_interfaces()}
    return ensure_guard(Runner(host_ns), bridges)


def policy_drift(host_ns: str, plan: HostPlan, backend: str | None = None) -> list[str]:
    """How the kernel differs from ``plan`` (empty when in sync), read afresh."""
    b = backends.get(backend)
    with b.applier(host_ns) as applier:
        return applier.drift(b.render(plan))
