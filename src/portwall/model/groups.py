"""Security groups and their rules: Neutron's checks and defaults (the per-project
``default`` group, duplicate rules, groups in use), on a
:class:`~portwall.model.storage.Storage`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from portwall.model.errors import Conflict, InvalidInput, NotFound, PortwallError
from portwall.model.parsing import parse, required
from portwall.model.resources import SecurityGroup, SecurityGroupRule, normalize_rule
from portwall.model.storage import Storage


def ensure_default_group(m: Storage, project_id: str) -> SecurityGroup:
    """The project's ``default`` group, created on first use as Neutron does: egress to
    anywhere and ingress from members of the group itself, for IPv4 and IPv6."""
    existing = m.default_group(project_id)
    if existing:
        return existing
    sg_id = m.new_id("security_group", f"{project_id}/default")
    sg = SecurityGroup(id=sg_id, name="default", project_id=project_id,
                       description="Default security group")
    m.security_groups[sg.id] = sg
    for direction in ("egress", "ingress"):
        for ethertype in ("IPv4", "IPv6"):
            remote = sg.id if direction == "ingress" else None
            add_rule(m, sg, {"direction": direction, "ethertype": ethertype,
                                "remote_group_id": remote})
    return sg


def create_security_group(m: Storage, body: Mapping[str, Any]) -> SecurityGroup:
    body = dict(body)
    rules = body.pop("security_group_rules", None)
    data = {"id": m.new_id("security_group", str(body.get("name", ""))), **body}
    sg = parse(SecurityGroup, data, "security_group")
    m.check_unique("security_group", sg.id)
    if sg.name == "default":
        # Reserved: each project has exactly one, made by ensure_default_group.
        raise Conflict(
            "Default security group already exists: 'default' is reserved for the group"
            " Neutron creates for each project.", field="name",
            resource="security_group", neutron_type="SecurityGroupDefaultAlreadyExists",
        )
    ensure_default_group(m, sg.project_id)
    staged = SecurityGroup(**{**sg.model_dump(), "security_group_rules": []})
    m.security_groups[sg.id] = staged
    try:
        if rules is None:
            for ethertype in ("IPv4", "IPv6"):
                add_rule(m, staged, {"direction": "egress", "ethertype": ethertype})
        else:
            for i, rule in enumerate(rules):
                try:
                    add_rule(m, staged, rule)
                except PortwallError as e:
                    e.resource = f"security_group_rules[{i}]"
                    raise
    except PortwallError:
        del m.security_groups[sg.id]
        raise
    return staged


def create_security_group_rule(m: Storage, body: Mapping[str, Any]) -> SecurityGroupRule:
    if "security_group_id" not in body:
        raise required("security_group_id", "security_group_rule")
    sg = m.get("security_group", body["security_group_id"], field="security_group_id")
    return add_rule(m, sg, body)


def add_rule(m: Storage, sg: SecurityGroup, body: Mapping[str, Any]) -> SecurityGroupRule:
    """Validate (shape, then Neutron's rule checks, then references, then duplicates, in
    Neutron's order) and append one rule to ``sg``."""
    data = dict(body)
    if "tenant_id" not in data:
        data.setdefault("project_id", sg.project_id)
    data.setdefault("id", m.new_id("security_group_rule",
                                       f"{sg.id}/{len(sg.security_group_rules)}"))
    data["security_group_id"] = sg.id
    rule = normalize_rule(parse(SecurityGroupRule, data, "security_group_rule"))
    if rule.remote_group_id is not None:
        rule.remote_group_id = m.get(
            "security_group", rule.remote_group_id, field="remote_group_id"
        ).id
    if rule.remote_address_group_id is not None:
        # portwall has no address groups (yet): a reference can only dangle, and
        # ignoring it would silently widen the rule to "from anywhere".
        raise NotFound(
            f"Address group {rule.remote_address_group_id} could not be found.",
            field="remote_address_group_id", resource="security_group_rule",
            neutron_type="AddressGroupNotFound",
        )
    key = rule.key()
    for existing in sg.security_group_rules:
        if existing.key() == key:
            raise Conflict(
                f"Security group rule already exists. Rule id is {existing.id}.",
                resource="security_group_rule", neutron_type="SecurityGroupRuleExists",
                ref=existing.id,
            )
    sg.security_group_rules.append(rule)
    m.touch("security_group", sg.id)
    return rule


def delete_security_group_rule(m: Storage, rule_id: str) -> None:
    rule = m.security_group_rule(rule_id)
    sg = m.security_groups[rule.security_group_id]
    sg.security_group_rules = [r for r in sg.security_group_rules if r.id != rule_id]
    m.touch("security_group", sg.id)


def update_security_group(m: Storage, ref: str, changes: Mapping[str, Any]) -> SecurityGroup:
    sg = m.get("security_group", ref)
    allowed = {"name", "description", "stateful"}
    for k in changes:
        if k not in allowed:
            raise InvalidInput(f"Cannot update read-only attribute {k}", field=k,
                               resource="security_group", neutron_type="HTTPBadRequest")
    if "stateful" in changes and bool(changes["stateful"]) != sg.stateful and m.ports_in_group(sg.id):
        raise Conflict(
            f"Security group {sg.label()} is in use: stateful cannot change while ports use it",
            field="stateful", resource="security_group", neutron_type="SecurityGroupInUse",
        )
    if sg.name == "default" and "name" in changes and changes["name"] != "default":
        raise Conflict("Updating default security group not allowed.", field="name",
                       resource="security_group",
                       neutron_type="SecurityGroupCannotUpdateDefault")
    if changes.get("name") == "default" and sg.name != "default":
        raise Conflict("Default security group already exists.", field="name",
                       resource="security_group",
                       neutron_type="SecurityGroupDefaultAlreadyExists")
    updated = parse(SecurityGroup, {**sg.model_dump(), **changes}, "security_group")
    m.security_groups[sg.id] = updated
    return updated


def delete_security_group(m: Storage, ref: str) -> None:
    sg = m.get("security_group", ref)
    users = m.ports_in_group(sg.id)
    if users:
        raise Conflict(
            f"Security Group {sg.id} in use by port(s) {', '.join(p.label() for p in users)}.",
            resource="security_group", neutron_type="SecurityGroupInUse",
        )
    if sg.name == "default":
        raise Conflict("Removing the default security group is not allowed.",
                       resource="security_group",
                       neutron_type="SecurityGroupCannotRemoveDefault")
    referrers = [
        r for other in m.security_groups.values() if other.id != sg.id
        for r in other.security_group_rules if r.remote_group_id == sg.id
    ]
    for r in referrers:
        delete_security_group_rule(m, r.id)
    del m.security_groups[sg.id]
