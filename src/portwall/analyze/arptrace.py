"""``portwall trace`` for ARP: may a port send an ARP frame claiming an address, and why not.

The verdict is :func:`portwall.analyze.evaluate.evaluate_arp`, the same check every backend's
bridge-level guard enforces (ARP sender MAC = frame MAC, (MAC, IP) among the port's fixed IPs
and allowed address pairs), so a VIP takeover that the kernel drops is explained here in the
user's terms.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

from portwall.analyze.evaluate import ArpPacket, ArpResult, evaluate_arp, plan_index
from portwall.analyze.trace import TraceError, TraceStep
from portwall.ir.types import HostPlan


@dataclass
class ArpTrace:
    """Why a port may (not) send an ARP frame: ``portwall trace``'s layer-2 answer."""

    result: ArpResult
    steps: list[TraceStep]
    hint: str | None = None

    @property
    def allowed(self) -> bool:
        return self.result.allowed

    @property
    def verdict(self) -> str:
        return "allow" if self.allowed else "deny"

    def to_json(self) -> dict[str, Any]:
        return {"verdict": self.verdict, "steps": [s.to_json() for s in self.steps],
                "hint": self.hint}


def trace_arp(plan: HostPlan, port: str, sender_ip: str, *, sender_mac: str | None = None,
              frame_mac: str | None = None, vm: str | None = None) -> ArpTrace:
    """Explain whether ``port`` (id, name or device) may send an ARP frame claiming
    ``sender_ip`` (a gratuitous ARP taking over a VIP, a reply, a request); MACs default to
    the port's own."""
    pp = plan_index(plan).port(port)
    if pp is None:
        raise TraceError(f"'{port}' is not a port of the plan")
    smac = sender_mac or pp.mac
    arp = ArpPacket(frame_mac or smac, smac, ipaddress.IPv4Address(sender_ip))
    res = evaluate_arp(pp, arp)
    who = f"port {pp.name} (VM {vm})" if vm else f"port {pp.name}"
    steps = [TraceStep("resolve", "packet", "", "",
                       f"ARP from {who}: frame MAC {arp.frame_mac}, sender {arp.sender_ip} "
                       f"{arp.sender_mac}")]
    hint = None
    if res.allowed:
        steps.append(TraceStep("anti-spoof", "port", pp.id, pp.name,
                               f"{who}: {res.reason}", "allow"))
    else:
        known = ", ".join(f"{e.cidr or 'any'} {e.mac}" for e in pp.spoof if e.family == 4)
        steps.append(TraceStep("anti-spoof", "port", pp.id, pp.name,
                               f"{who}: {res.reason} ({known or 'none'}): dropped", "deny"))
        if arp.sender_mac == arp.frame_mac:
            hint = (f"if {who} legitimately owns {arp.sender_ip} (e.g. a keepalived VIP), add "
                    f"an allowed address pair {arp.sender_ip} to port {pp.name}")
    steps.append(TraceStep("verdict", "packet", "", "", "allowed" if res.allowed else "denied",
                           "allow" if res.allowed else "deny"))
    return ArpTrace(res, steps, hint)
