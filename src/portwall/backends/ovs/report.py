"""What the seed showed with ``ovs-ofctl dump-flows`` and ``conntrack -L``, with names.

Each flow line of the bridge keeps its counters and gets the portwall resource behind its
cookie (port, security group rule, remote-group member) appended; then the userspace
datapath's conntrack entries (``ovs-appctl dpctl/dump-conntrack``) with the network of
their zone.
"""

from __future__ import annotations

import re

from portwall.backends.ovs.apply import OvsApplier
from portwall.backends.ovs.flows import TABLE_NAMES
from portwall.backends.ovs.render import OvsRuleset
from portwall.ir.types import HostPlan

_COOKIE = re.compile(r"cookie=(0x[0-9a-f]+)")
_TABLE = re.compile(r"table=(\d+)")


def flow_lines(applier: OvsApplier, ruleset: OvsRuleset, all_flows: bool = True) -> list[str]:
    """``dump-flows`` lines annotated ``# table-name | owner / rule id``; with
    ``all_flows`` False only flows that matched a packet."""
    out = []
    for ln in applier.dump().splitlines():
        m = _COOKIE.search(ln)
        if m is None:
            continue
        if not all_flows and "n_packets=0," in ln:
            continue
        t = _TABLE.search(ln)
        table = TABLE_NAMES.get(int(t.group(1)) if t else 0, "")
        out.append(f"{ln.strip()}  # {table} | {ruleset.label_of(int(m.group(1), 16))}")
    return out


def conntrack_lines(applier: OvsApplier, plan: HostPlan) -> list[str]:
    nets = {p.zone: p.network_id for p in plan.ports}
    text = applier._run(["ovs-appctl", "-t", _ctl(applier), "dpctl/dump-conntrack"]).stdout
    out = []
    for ln in text.splitlines():
        z = re.search(r"zone=(\d+)", ln)
        net = nets.get(int(z.group(1))) if z else None
        out.append(ln.strip() + (f"  # network {net}" if net else ""))
    return out


def _ctl(applier: OvsApplier) -> str:
    from portwall.backends.ovs.ovsdb import vswitchd_ctl

    return vswitchd_ctl(applier.netns)
