"""FWaaS v2: firewall rules, policies and groups on router ports, on a :class:`Model`.

Called through the Model's methods of the same names; checks and Neutron exception names
follow neutron-fwaas (``FirewallIpAddressConflict``, ``FirewallGroupPortInvalid``, ...).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from portwall.model.errors import Conflict, InvalidInput
from portwall.model.parsing import parse
from portwall.model.resources import FirewallGroup, FirewallPolicy, FirewallRule

if TYPE_CHECKING:
    from portwall.model.store import Model


def create_firewall_rule(m: Model, body: Mapping[str, Any]) -> FirewallRule:
    """``POST /fwaas/firewall_rules``."""
    data = {"id": m._new_id("firewall_rule", str(body.get("name", ""))), **body}
    rule = parse(FirewallRule, data, "firewall_rule")
    m._unique_id("firewall_rule", rule.id)
    for f in ("source_ip_address", "destination_ip_address"):
        v = getattr(rule, f)
        if v is not None and ipaddress.ip_network(v).version != rule.ip_version:
            raise InvalidInput(f"{v} is not an IPv{rule.ip_version} address",
                               field=f, resource="firewall_rule",
                               neutron_type="FirewallIpAddressConflict")
    if rule.protocol in (None, "icmp") and (rule.source_port or rule.destination_port):
        field = "source_port" if rule.source_port else "destination_port"
        raise InvalidInput(
            "Source/destination port requires a protocol of tcp or udp",
            field=field, resource="firewall_rule",
            neutron_type="FirewallRuleInvalidICMPParameter"
            if rule.protocol == "icmp" else "FirewallRuleWithPortWithoutProtocolInvalid",
        )
    m.firewall_rules[rule.id] = rule
    return rule


def create_firewall_policy(m: Model, body: Mapping[str, Any]) -> FirewallPolicy:
    """``POST /fwaas/firewall_policies``: an ordered list of existing rules."""
    data = {"id": m._new_id("firewall_policy", str(body.get("name", ""))), **body}
    refs = data.get("firewall_rules") or []
    data["firewall_rules"] = [
        m.get("firewall_rule", r, field=f"firewall_rules[{i}]").id
        for i, r in enumerate(refs)
    ]
    if len(set(data["firewall_rules"])) != len(data["firewall_rules"]):
        raise Conflict("A firewall rule may appear only once in a policy.",
                       field="firewall_rules", resource="firewall_policy",
                       neutron_type="FirewallRuleAlreadyAssociated")
    policy = parse(FirewallPolicy, data, "firewall_policy")
    m._unique_id("firewall_policy", policy.id)
    m.firewall_policies[policy.id] = policy
    return policy


def create_firewall_group(m: Model, body: Mapping[str, Any]) -> FirewallGroup:
    """``POST /fwaas/firewall_groups``: policies applied to router interface ports."""
    data = {"id": m._new_id("firewall_group", str(body.get("name", ""))), **body}
    if data.get("name") == "default":
        raise Conflict(
            "Default firewall group already exists. 'default' is the reserved name for"
            " firewall group.", field="name", resource="firewall_group",
            neutron_type="FirewallGroupDefaultAlreadyExists")
    for f in ("ingress_firewall_policy_id", "egress_firewall_policy_id"):
        if data.get(f) is not None:
            data[f] = m.get("firewall_policy", data[f], field=f).id
    ports = []
    for i, ref in enumerate(data.get("ports") or []):
        port = m.get("port", ref, field=f"ports[{i}]")
        if not port.is_router_port:
            raise Conflict(
                f"Port {port.label()} of firewall group is invalid: firewall groups apply"
                f" to router interface ports, and its device_owner is"
                f" '{port.device_owner}'.", field=f"ports[{i}]",
                resource="firewall_group", neutron_type="FirewallGroupPortInvalid",
            )
        for other in m.firewall_groups.values():
            if port.id in other.ports:
                raise Conflict(
                    f"port {port.label()} is already in firewall group {other.label()}",
                    field=f"ports[{i}]", resource="firewall_group",
                    neutron_type="FirewallGroupPortInUse",
                )
        ports.append(port.id)
    data["ports"] = ports
    group = parse(FirewallGroup, data, "firewall_group")
    m._unique_id("firewall_group", group.id)
    m.firewall_groups[group.id] = group
    return group
