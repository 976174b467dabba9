"""Model <-> store records: each Model resource is one JSON document.

A security group's rules live inside its document (they change with it); a router's
document also carries its interface port ids (``Model.router_interfaces``).
"""

from __future__ import annotations

from typing import Any

from portwall.model import (
    FirewallGroup,
    FirewallPolicy,
    FirewallRule,
    FloatingIP,
    Model,
    Network,
    Port,
    Router,
    SecurityGroup,
    Subnet,
)
from portwall.model.resources import Resource

#: kind -> resource class, in the order a model is rebuilt (references first).
KINDS: dict[str, type[Resource]] = {
    "network": Network,
    "subnet": Subnet,
    "security_group": SecurityGroup,
    "port": Port,
    "router": Router,
    "floatingip": FloatingIP,
    "firewall_rule": FirewallRule,
    "firewall_policy": FirewallPolicy,
    "firewall_group": FirewallGroup,
}
INTERFACES = "_interfaces"


def table(m: Model, kind: str) -> dict[str, Any]:
    return m.table(kind)


def to_body(m: Model, kind: str, obj: Resource) -> dict[str, Any]:
    body = obj.model_dump(by_alias=True, mode="json")
    if kind == "router":
        body[INTERFACES] = list(m.router_interfaces.get(obj.id, []))
    return body


def from_body(kind: str, body: dict[str, Any]) -> tuple[Resource, list[str] | None]:
    data = dict(body)
    interfaces = data.pop(INTERFACES, None) if kind == "router" else None
    return KINDS[kind].model_validate(data), interfaces


def put(m: Model, kind: str, body: dict[str, Any], revision: int | None = None) -> None:
    """Insert or replace one resource (the storage keeps the port indexes right); with
    ``revision``, the store revision it has, by which the compiler knows it again."""
    obj, interfaces = from_body(kind, body)
    m.put(kind, obj, interfaces)
    if revision is not None:
        m.set_revision(kind, obj.id, revision)


def remove(m: Model, kind: str, rid: str) -> None:
    m.remove(kind, rid)


class Snapshot:
    """Where a Model's change journal stood before an operation, to find what the
    operation changed in O(change).

    The journal has every table write and every in-place change an operation announces;
    a group's rule list, a floating IP's association fields and a router's interface list
    are also compared by value (few of them), in case a caller edited them in place."""

    def __init__(self, m: Model) -> None:
        self.cursor = m.cursor
        self.rules = {g: tuple(id(r) for r in sg.security_group_rules)
                      for g, sg in m.security_groups.items()}
        self.fips = {f: _fip_key(x) for f, x in m.floating_ips.items()}
        self.interfaces = {r: tuple(p) for r, p in m.router_interfaces.items()}

    def diff(self, m: Model) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
        """(changed or new, deleted) as (kind, id)."""
        changed: set[tuple[str, str]] = set()
        deleted: set[tuple[str, str]] = set()
        journal = m.changes_since(self.cursor)
        if journal is None:  # more changes than the journal keeps: every resource
            journal = [(k, r) for k in KINDS for r in m.table(k)]
        for kind, rid in journal:
            (changed if rid in m.table(kind) else deleted).add((kind, rid))
        for gid, sg in m.security_groups.items():
            if self.rules.get(gid) != tuple(id(r) for r in sg.security_group_rules):
                changed.add(("security_group", gid))
        for fid, fip in m.floating_ips.items():
            if self.fips.get(fid) != _fip_key(fip):
                changed.add(("floatingip", fid))
        for rid, ports in m.router_interfaces.items():
            if self.interfaces.get(rid) != tuple(ports) and rid in m.routers:
                changed.add(("router", rid))
        deleted = {d for d in deleted if d not in changed}
        return sorted(changed), sorted(deleted)


def _fip_key(f: FloatingIP) -> tuple[object, ...]:
    return (f.port_id, f.fixed_ip_address, f.router_id, f.status, f.description)
