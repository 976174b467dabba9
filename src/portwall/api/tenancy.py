"""Who may see and reference what: a project sees its own resources, shared networks,
external networks and shared FWaaS rules/policies; it may reference (attach, use as a
remote group, put in a policy) only what it sees, and never another project's security
group. Answers 404 for what a caller may not see, as Neutron does."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from portwall.api.auth import Caller
from portwall.api.errors import ApiError
from portwall.model import Model, NotFound
from portwall.model.resources import Resource


def visible(caller: Caller, kind: str, obj: Resource) -> bool:
    if caller.owns(obj.project_id):
        return True
    if kind == "network":
        return bool(getattr(obj, "shared", False) or getattr(obj, "router_external", False))
    if kind in ("firewall_rule", "firewall_policy"):
        return bool(getattr(obj, "shared", False))
    return False


def not_found(kind: str, ref: str, field: str | None = None) -> NotFound:
    nice = {"floatingip": "FloatingIP"}.get(kind) or "".join(
        p.capitalize() for p in kind.split("_"))
    return NotFound(f"{kind.replace('_', ' ')} '{ref}' could not be found", field=field,
                    resource=kind, neutron_type=f"{nice}NotFound")


def lookup(m: Model, caller: Caller, kind: str, ref: str, field: str | None = None,
           *, own: bool = False) -> Resource:
    """A resource by id (or unique visible name) that the caller may see (``own``: that it
    owns); 404 otherwise."""
    table = m.table(kind)
    obj = table.get(ref)
    if obj is None:
        named = [r for r in table.values() if r.name == ref and visible(caller, kind, r)]
        if len(named) == 1:
            obj = named[0]
    if obj is None or not visible(caller, kind, obj):
        raise not_found(kind, ref, field)
    if own and not caller.owns(obj.project_id):
        raise ApiError(403, f"Not allowed to change {kind} {obj.id} of another project",
                       "PolicyNotAuthorized")
    return obj


def _ref(m: Model, c: Caller, kind: str, value: Any, field: str, *, own: bool = False) -> Any:
    if not isinstance(value, str):
        return value  # the Model reports a wrong type
    obj = lookup(m, c, kind, value, field)
    if own and not c.owns(obj.project_id):
        raise not_found(kind, value, field)
    return obj.id


def check_body(m: Model, c: Caller, kind: str, body: dict[str, Any]) -> dict[str, Any]:
    """The body with the caller's project filled in and every reference checked (and
    resolved to an id) against what the caller may see. Admins may do anything."""
    out = dict(body)
    for key in ("project_id", "tenant_id"):
        if key in out and not c.is_admin and out[key] != c.project_id:
            raise ApiError(403, f"Not allowed to create a {kind} for project {out[key]}",
                           "PolicyNotAuthorized")
    if "tenant_id" in out and "project_id" in out and out["tenant_id"] != out["project_id"]:
        raise ApiError(400, "tenant_id and project_id do not match", "HTTPBadRequest")
    if "tenant_id" not in out:
        out.setdefault("project_id", c.project_id)
    if c.is_admin:
        return out
    return resolve_refs(m, c, kind, out)


def resolve_refs(m: Model, c: Caller, kind: str, out: dict[str, Any]) -> dict[str, Any]:
    if kind == "port":
        if "network_id" in out:
            out["network_id"] = _ref(m, c, "network", out["network_id"], "network_id")
        if isinstance(out.get("security_groups"), list):
            out["security_groups"] = [
                _ref(m, c, "security_group", g, f"security_groups[{i}]", own=True)
                for i, g in enumerate(out["security_groups"])]
        if isinstance(out.get("fixed_ips"), list):
            fixed = []
            for i, f in enumerate(out["fixed_ips"]):
                if isinstance(f, Mapping) and isinstance(f.get("subnet_id"), str):
                    sub = m.subnets.get(f["subnet_id"])
                    net = m.networks.get(sub.network_id) if sub else None
                    if sub is None or net is None or not visible(c, "network", net):
                        raise not_found("subnet", f["subnet_id"], f"fixed_ips[{i}].subnet_id")
                fixed.append(f)
            out["fixed_ips"] = fixed
    elif kind == "subnet" and "network_id" in out:
        out["network_id"] = _ref(m, c, "network", out["network_id"], "network_id", own=True)
    elif kind == "security_group_rule":
        for f in ("security_group_id", "remote_group_id"):
            if out.get(f) is not None:
                out[f] = _ref(m, c, "security_group", out[f], f, own=True)
    elif kind == "floatingip":
        if out.get("floating_network_id") is not None:
            out["floating_network_id"] = _ref(m, c, "network", out["floating_network_id"],
                                              "floating_network_id")
        if out.get("port_id") is not None:
            out["port_id"] = _ref(m, c, "port", out["port_id"], "port_id", own=True)
    elif kind == "router":
        gw = out.get("external_gateway_info")
        if isinstance(gw, Mapping) and isinstance(gw.get("network_id"), str):
            out["external_gateway_info"] = {
                **gw, "network_id": _ref(m, c, "network", gw["network_id"],
                                         "external_gateway_info.network_id")}
    elif kind == "router_interface":
        if "subnet_id" in out:
            out["subnet_id"] = _ref(m, c, "subnet", out["subnet_id"], "subnet_id", own=True)
        if "port_id" in out:
            out["port_id"] = _ref(m, c, "port", out["port_id"], "port_id", own=True)
    elif kind == "firewall_policy" and isinstance(out.get("firewall_rules"), list):
        out["firewall_rules"] = [_ref(m, c, "firewall_rule", r, f"firewall_rules[{i}]")
                                 for i, r in enumerate(out["firewall_rules"])]
    elif kind == "firewall_group":
        for f in ("ingress_firewall_policy_id", "egress_firewall_policy_id"):
            if out.get(f) is not None:
                out[f] = _ref(m, c, "firewall_policy", out[f], f)
        if isinstance(out.get("ports"), list):
            out["ports"] = [_ref(m, c, "port", p, f"ports[{i}]", own=True)
                            for i, p in enumerate(out["ports"])]
    return out
