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
    return m._table(kind)


def to_body(m: Model, kind: str, obj: Resource) -> dict[str, Any]:
    body = obj.model_dump(by_alias=True, mode="json")
    if kind == "router":
        body[INTERFACES] = list(m.router_interfaces.get(obj.id, []))
    return body


def from_body(kind: str, body: dict[str, Any]) -> tuple[Resource, list[str] | None]:
    data = dict(body)
    interfaces = data.pop(INTERFACES, None) if kind == "router" else None
    return KINDS[kind].model_validate(data), interfaces


def put(m: Model, kind: str, body: dict[str, Any]) -> None:
    """Insert or replace one resource (keeping the port indexes right)."""
    obj, interfaces = from_body(kind, body)
    tab = table(m, kind)
    if kind == "port":
        old = tab.get(obj.id)
        if old is not None:
            m._unindex(old)
        m._index(obj)  # type: ignore[arg-type]
    tab[obj.id] = obj
    if kind == "router":
        m.router_interfaces[obj.id] = list(interfaces or [])


def remove(m: Model, kind: str, rid: str) -> None:
    tab = table(m, kind)
    obj = tab.pop(rid, None)
    if kind == "port" and obj is not None:
        m._unindex(obj)
    if kind == "router":
        m.router_interfaces.pop(rid, None)


class Snapshot:
    """What a Model held before an operation, to find what the operation changed.

    Stored objects are replaced on change, except a group's rule list (rules are appended)
    and a floating IP's association fields, which are compared by value."""

    def __init__(self, m: Model) -> None:
        self.tables = {k: dict(table(m, k)) for k in KINDS}
        self.rules = {g: tuple(id(r) for r in sg.security_group_rules)
                      for g, sg in m.security_groups.items()}
        self.fips = {f: _fip_key(x) for f, x in m.floating_ips.items()}
        self.interfaces = {r: tuple(p) for r, p in m.router_interfaces.items()}

    def diff(self, m: Model) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
        """(changed or new, deleted) as (kind, id)."""
        changed: list[tuple[str, str]] = []
        deleted: list[tuple[str, str]] = []
        for kind, before in self.tables.items():
            now = table(m, kind)
            for rid, obj in now.items():
                old: Any = before.get(rid)
                if old is not obj or (
                    kind == "security_group"
                    and self.rules.get(rid) != tuple(id(r) for r in obj.security_group_rules)
                ) or (kind == "floatingip" and self.fips.get(rid) != _fip_key(obj)) or (
                    kind == "router"
                    and self.interfaces.get(rid) != tuple(m.router_interfaces.get(rid, ()))
                ):
                    changed.append((kind, rid))
            if len(before) != len(now) or any(r not in now for r in before):
                deleted += [(kind, rid) for rid in before if rid not in now]
        return changed, deleted


def _fip_key(f: FloatingIP) -> tuple[object, ...]:
    return (f.port_id, f.fixed_ip_address, f.router_id, f.status, f.description)
