"""FWaaS v2: firewall rules, policies and groups on router ports, on a storage
(:class:`~portwall.model.storage.Storage`).

Called through the Model's methods of the same names; checks and Neutron exception names
follow neutron-fwaas (``FirewallIpAddressConflict``, ``FirewallGroupPortInvalid``, ...).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any

from portwall.model.errors import Conflict, InvalidInput, NotFound
from portwall.model.parsing import parse
from portwall.model.resources import FirewallGroup, FirewallPolicy, FirewallRule
from portwall.model.storage import Storage as Model


def create_firewall_rule(m: Model, body: Mapping[str, Any]) -> FirewallRule:
    """``POST /fwaas/firewall_rules``."""
    data = {"id": m.new_id("firewall_rule", str(body.get("name", ""))), **body}
    rule = parse(FirewallRule, data, "firewall_rule")
    m.check_unique("firewall_rule", rule.id)
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
    data = {"id": m.new_id("firewall_policy", str(body.get("name", ""))), **body}
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
    m.check_unique("firewall_policy", policy.id)
    m.firewall_policies[policy.id] = policy
    return policy


def create_firewall_group(m: Model, body: Mapping[str, Any]) -> FirewallGroup:
    """``POST /fwaas/firewall_groups``: policies applied to router interface ports."""
    data = {"id": m.new_id("firewall_group", str(body.get("name", ""))), **body}
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
    m.check_unique("firewall_group", group.id)
    m.firewall_groups[group.id] = group
    return group


def _rule_info(body: Mapping[str, Any]) -> str:
    """The ``firewall_rule_id`` of an insert/remove body (neutron-fwaas'
    ``_validate_insert_remove_rule_request``)."""
    rid = body.get("firewall_rule_id") if isinstance(body, Mapping) else None
    if not rid:
        raise InvalidInput("Missing rule info argument for insert/remove rule operation.",
                           field="firewall_rule_id", resource="firewall_policy",
                           neutron_type="FirewallRuleInfoMissing")
    return str(rid)


def _rule(m: Model, ref: str, field: str) -> FirewallRule:
    try:
        rule: FirewallRule = m.get("firewall_rule", ref, field=field)
    except NotFound as e:
        e.message = f"Firewall rule {ref} could not be found."
        raise
    return rule


def _not_in_policy(rule_id: str, policy: FirewallPolicy, field: str) -> InvalidInput:
    return InvalidInput(
        f"Firewall rule {rule_id} is not associated with firewall policy {policy.id}.",
        field=field, resource="firewall_policy",
        neutron_type="FirewallRuleNotAssociatedWithPolicy")


def insert_rule(m: Model, ref: str, body: Mapping[str, Any]) -> FirewallPolicy:
    """``PUT /fwaas/firewall_policies/{id}/insert_rule``: put a rule before
    ``insert_before`` or after ``insert_after`` (``insert_before`` wins when both are
    given), or at the top without either, as neutron-fwaas does. The policy is replaced,
    so its revision moves on."""
    policy: FirewallPolicy = m.get("firewall_policy", ref)
    rule_id = _rule_info(body)
    if rule_id in policy.firewall_rules:
        raise Conflict(
            f"Operation cannot be performed since Firewall Rule {rule_id} is already"
            f" associated with Firewall Policy {policy.id}.", field="firewall_rule_id",
            resource="firewall_policy", neutron_type="FirewallRuleAlreadyAssociated")
    rule = _rule(m, rule_id, "firewall_rule_id")
    if rule.id in policy.firewall_rules:  # named by its name, not its id
        raise Conflict(
            f"Operation cannot be performed since Firewall Rule {rule.id} is already"
            f" associated with Firewall Policy {policy.id}.", field="firewall_rule_id",
            resource="firewall_policy", neutron_type="FirewallRuleAlreadyAssociated")
    field, ref_id, before = "insert_before", body.get("insert_before"), True
    if not ref_id and body.get("insert_after"):
        field, ref_id, before = "insert_after", body.get("insert_after"), False
    rules = list(policy.firewall_rules)
    if ref_id:
        anchor = _rule(m, str(ref_id), field)
        if anchor.id not in rules:
            raise _not_in_policy(anchor.id, policy, field)
        at = rules.index(anchor.id) + (0 if before else 1)
    else:
        at = 0  # neutron-fwaas: "default insertion is always at the top"
    rules.insert(at, rule.id)
    updated = policy.model_copy(update={"firewall_rules": rules})
    m.firewall_policies[policy.id] = updated
    return updated


def remove_rule(m: Model, ref: str, body: Mapping[str, Any]) -> FirewallPolicy:
    """``PUT /fwaas/firewall_policies/{id}/remove_rule``: take a rule out of the policy
    (the rule itself stays)."""
    policy: FirewallPolicy = m.get("firewall_policy", ref)
    rule = _rule(m, _rule_info(body), "firewall_rule_id")
    if rule.id not in policy.firewall_rules:
        raise _not_in_policy(rule.id, policy, "firewall_rule_id")
    updated = policy.model_copy(update={
        "firewall_rules": [r for r in policy.firewall_rules if r != rule.id]})
    m.firewall_policies[policy.id] = updated
    return updated
