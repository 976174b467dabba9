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


class TrackedDict(dict[Any, Any]):
    """A Model table that remembers which keys were set or removed since :meth:`reset`,
    so finding what one operation changed costs O(change), not O(resources)."""

    def __init__(self, *a: Any) -> None:
        super().__init__(*a)
        self.touched: set[Any] = set()

    def reset(self) -> None:
        self.touched = set()

    def __setitem__(self, k: Any, v: Any) -> None:
        self.touched.add(k)
        super().__setitem__(k, v)

    def __delitem__(self, k: Any) -> None:
        self.touched.add(k)
        super().__delitem__(k)

    def pop(self, k: Any, *default: Any) -> Any:
        self.touched.add(k)
        return super().pop(k, *default)

    def setdefault(self, k: Any, v: Any = None) -> Any:
        self.touched.add(k)
        return super().setdefault(k, v)

    def update(self, *a: Any, **kw: Any) -> None:
        other = dict(*a, **kw)
        self.touched |= set(other)
        super().update(other)

    def popitem(self) -> tuple[Any, Any]:
        k, v = super().popitem()
        self.touched.add(k)
        return k, v

    def clear(self) -> None:
        self.touched |= set(self)
        super().clear()


def track(m: Model) -> None:
    """Make the Model's tables :class:`TrackedDict` (once)."""
    for kind in KINDS:
        attr = _ATTR[kind]
        if not isinstance(getattr(m, attr), TrackedDict):
            setattr(m, attr, TrackedDict(getattr(m, attr)))


def tracked(m: Model, kind: str) -> TrackedDict:
    tab = table(m, kind)
    assert isinstance(tab, TrackedDict)
    return tab


_ATTR = {"network": "networks", "subnet": "subnets", "port": "ports",
         "security_group": "security_groups", "router": "routers",
         "floatingip": "floating_ips", "firewall_rule": "firewall_rules",
         "firewall_policy": "firewall_policies", "firewall_group": "firewall_groups"}


class Snapshot:
    """What a Model held before an operation, to find what the operation changed.

    Stored objects are replaced on change (tracked by the tables), except a group's rule
    list (rules are appended), a floating IP's association fields and a router's
    interface list, which are compared by value (few of them)."""

    def __init__(self, m: Model) -> None:
        track(m)
        for kind in KINDS:
            tracked(m, kind).reset()
        self.rules = {g: tuple(id(r) for r in sg.security_group_rules)
                      for g, sg in m.security_groups.items()}
        self.fips = {f: _fip_key(x) for f, x in m.floating_ips.items()}
        self.interfaces = {r: tuple(p) for r, p in m.router_interfaces.items()}

    def diff(self, m: Model) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
        """(changed or new, deleted) as (kind, id)."""
        changed: set[tuple[str, str]] = set()
        deleted: set[tuple[str, str]] = set()
        for kind in KINDS:
            tab = tracked(m, kind)
            for rid in tab.touched:
                (changed if rid in tab else deleted).add((kind, rid))
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
