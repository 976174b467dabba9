"""The one seam between the lab and the dataplane: render a plan and make the host match it.

The lab never writes rules itself. It hands the compiled plan to the iptables renderer and
the result to :class:`portwall.backends.iptables.apply.IptablesApplier` (atomic, incremental, conntrack
clean-up), inside the sandbox's host namespace only.
"""

from __future__ import annotations

from dataclasses import dataclass

from portwall.backends.iptables.apply import IptablesApplier, IptablesReport
from portwall.backends.iptables.render import render_iptables
from portwall.ir.types import HostPlan


@dataclass
class PolicyReport:
    """What applying the policy changed, in the applier's words."""

    backend: str
    changed: bool
    summary: str
    detail: IptablesReport

    def __str__(self) -> str:
        return self.summary


def apply_policy(host_ns: str, plan: HostPlan) -> PolicyReport:
    """Render ``plan`` for iptables+ipset and apply it in ``host_ns``."""
    with IptablesApplier(host_ns) as applier:
        report = applier.apply(render_iptables(plan), plan)
    return PolicyReport("iptables", not report.noop, report.summary(), report)


def policy_drift(host_ns: str, plan: HostPlan) -> list[str]:
    """How the kernel differs from ``plan`` (empty when in sync), read afresh."""
    with IptablesApplier(host_ns) as applier:
        return applier.drift(render_iptables(plan))
