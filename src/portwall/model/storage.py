"""Where a deployment's resources live: tables keyed by id, the port indexes, a change journal
and the store revision of each resource.

The per-resource operations (``networks``, ``ports``, ``groups``, ``l3``, ``fwaas``) are
functions on a :class:`Storage` and never import each other in a circle; ``Model`` (in
``store.py``) puts them together behind one object. Code outside the model (the store
codec, the API) uses only the public methods here.

The journal records every table write (a resource added, replaced or removed) and every
in-place change an operation announces with :meth:`Storage.touch`, so a reader such as the
incremental compiler finds what changed since its last look in O(change) instead of
comparing every resource. A resource that came from a store also carries the store's
revision number; a write drops it until the store hands back the new one, so
(id, revision) identifies a resource's content even across a reload.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from typing import Any

from portwall.model.errors import Conflict, NotFound
from portwall.model.resources import (
    FirewallGroup,
    FirewallPolicy,
    FirewallRule,
    FloatingIP,
    Network,
    Port,
    Resource,
    Router,
    SecurityGroup,
    SecurityGroupRule,
    Subnet,
)

#: A function that makes the id of a new resource from its kind and name.
IdFactory = Callable[[str, str], str]

#: kind -> the Storage attribute of its table, in the order references go (a port after
#: its network, subnets and groups).
KINDS = {"network": "networks", "subnet": "subnets", "security_group": "security_groups",
         "port": "ports", "router": "routers", "floatingip": "floating_ips",
         "firewall_rule": "firewall_rules", "firewall_policy": "firewall_policies",
         "firewall_group": "firewall_groups"}

#: The journal keeps at most this many entries; a reader further behind compares everything.
JOURNAL_MAX = 1 << 16

_NAMESPACE = uuid.UUID("6d1f3c0e-4d5c-4e8e-9a55-70727477616c")  # "portwall" in the tail


def random_ids(kind: str, name: str) -> str:
    """Ids as Neutron makes them: random UUIDs."""
    return str(uuid.uuid4())


def stable_ids(scope: str = "") -> IdFactory:
    """Ids derived from (scope, kind, name, n): the same file always yields the same ids,
    which keeps rendered output byte-identical across runs."""
    seen: dict[tuple[str, str], int] = {}

    def make(kind: str, name: str) -> str:
        n = seen.get((kind, name), 0)
        seen[(kind, name)] = n + 1
        return str(uuid.uuid5(_NAMESPACE, f"{scope}/{kind}/{name}/{n}"))

    return make


class Journal:
    """(kind, id) of every change, numbered; old entries are dropped past JOURNAL_MAX."""

    __slots__ = ("base", "entries", "revisions")

    def __init__(self) -> None:
        self.base = 0  # number of the first entry kept
        self.entries: list[tuple[str, str]] = []
        self.revisions: dict[tuple[str, str], int] = {}

    def note(self, kind: str, rid: str) -> None:
        self.entries.append((kind, rid))
        self.revisions.pop((kind, rid), None)
        if len(self.entries) > 2 * JOURNAL_MAX:
            drop = len(self.entries) - JOURNAL_MAX
            del self.entries[:drop]
            self.base += drop


class Table(dict[str, Any]):
    """A resource table that writes every change to its storage's journal."""

    __slots__ = ("journal", "kind")

    def __init__(self, kind: str, journal: Journal, *a: Any) -> None:
        super().__init__(*a)
        self.kind, self.journal = kind, journal
        for k in self:
            journal.note(kind, k)

    def __setitem__(self, k: str, v: Any) -> None:
        self.journal.note(self.kind, k)
        super().__setitem__(k, v)

    def __delitem__(self, k: str) -> None:
        self.journal.note(self.kind, k)
        super().__delitem__(k)

    def pop(self, k: str, *default: Any) -> Any:
        if k in self:
            self.journal.note(self.kind, k)
        return super().pop(k, *default)

    def setdefault(self, k: str, v: Any = None) -> Any:
        if k not in self:
            self.journal.note(self.kind, k)
        return super().setdefault(k, v)

    def update(self, *a: Any, **kw: Any) -> None:
        for k, v in dict(*a, **kw).items():
            self[k] = v

    def popitem(self) -> tuple[str, Any]:
        k, v = super().popitem()
        self.journal.note(self.kind, k)
        return k, v

    def clear(self) -> None:
        for k in list(self):
            self.journal.note(self.kind, k)
        super().clear()


class _TableAttr:
    """A Storage attribute holding one Table: assigning a plain dict wraps it (callers that
    replace a whole table keep the journal right)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def __set_name__(self, owner: type, name: str) -> None:
        self.slot = "_t_" + name

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        if obj is None:
            return self
        return obj.__dict__[self.slot]

    def __set__(self, obj: Any, value: dict[str, Any]) -> None:
        old = obj.__dict__.get(self.slot)
        if old is not None:
            for k in old:
                obj._journal.note(self.kind, k)
        obj.__dict__[self.slot] = value if isinstance(value, Table) and \
            value.journal is obj._journal else Table(self.kind, obj._journal, value)


class Storage:
    """All resources of one deployment, keyed by id, with the indexes operations need."""

    networks: dict[str, Network] = _TableAttr("network")  # type: ignore[assignment]
    subnets: dict[str, Subnet] = _TableAttr("subnet")  # type: ignore[assignment]
    ports: dict[str, Port] = _TableAttr("port")  # type: ignore[assignment]
    security_groups: dict[str, SecurityGroup] = _TableAttr(  # type: ignore[assignment]
        "security_group")
    routers: dict[str, Router] = _TableAttr("router")  # type: ignore[assignment]
    floating_ips: dict[str, FloatingIP] = _TableAttr("floatingip")  # type: ignore[assignment]
    firewall_rules: dict[str, FirewallRule] = _TableAttr(  # type: ignore[assignment]
        "firewall_rule")
    firewall_policies: dict[str, FirewallPolicy] = _TableAttr(  # type: ignore[assignment]
        "firewall_policy")
    firewall_groups: dict[str, FirewallGroup] = _TableAttr(  # type: ignore[assignment]
        "firewall_group")

    def __init__(self, id_factory: IdFactory = random_ids) -> None:
        self._journal = Journal()
        self.new_id: IdFactory = id_factory
        for kind, attr in KINDS.items():
            setattr(self, attr, Table(kind, self._journal))
        self.router_interfaces: dict[str, list[str]] = {}  # router id -> port ids
        # Indexes kept by index_port/unindex_port so that creating a port stays O(1) in
        # the number of ports (scanning every port per create made 10,000 ports quadratic).
        self._ip_owner: dict[tuple[str | None, str | None], str] = {}  # (subnet, ip) -> port
        self._mac_owner: dict[tuple[str, str | None], str] = {}  # (network, mac) -> port
        self.alloc_hint: dict[str, int] = {}  # subnet id -> next address to try

    # ------------------------------------------------------------------ tables
    def table(self, kind: str) -> dict[str, Any]:
        """The table of one kind of resource (``"port"``, ``"firewall_rule"``, ...)."""
        return getattr(self, KINDS[kind])

    def get(self, kind: str, ref: str, *, field: str | None = None) -> Any:
        """A resource by id or (unique) name; :class:`NotFound` otherwise."""
        table = self.table(kind)
        if ref in table:
            return table[ref]
        named = [r for r in table.values() if r.name == ref]
        if len(named) == 1:
            return named[0]
        if len(named) > 1:
            raise Conflict(
                f"{len(named)} {kind}s are named '{ref}': use the id", field=field, resource=kind
            )
        nice = {"floatingip": "FloatingIP"}.get(kind) or "".join(
            p.capitalize() for p in kind.split("_"))
        raise NotFound(
            f"{kind.replace('_', ' ')} '{ref}' could not be found",
            field=field, resource=kind, neutron_type=f"{nice}NotFound",
        )

    def names(self, kind: str) -> list[str]:
        """The names in use for a kind of resource, sorted: for "did you mean" messages."""
        return sorted({r.name for r in self.table(kind).values() if r.name})

    def check_unique(self, kind: str, rid: str) -> None:
        """409 ``IdInUse`` when a resource of ``kind`` already has id ``rid``."""
        if rid in self.table(kind):
            raise Conflict(f"{kind} {rid} already exists", field="id", resource=kind,
                           neutron_type="IdInUse")

    def put(self, kind: str, obj: Resource, interfaces: list[str] | None = None) -> None:
        """Insert or replace one resource as it is (no checks: for a store loading what it
        holds, or an operation putting back what it took out); ports stay indexed, a
        router's interface list is set when given."""
        tab = self.table(kind)
        if kind == "port":
            old = tab.get(obj.id)
            if old is not None:
                self.unindex_port(old)
            self.index_port(obj)  # type: ignore[arg-type]
        tab[obj.id] = obj
        if kind == "router":
            self.router_interfaces[obj.id] = list(interfaces or [])

    def remove(self, kind: str, rid: str) -> Resource | None:
        """Take one resource out as it is (no checks); the removed object or None."""
        obj: Resource | None = self.table(kind).pop(rid, None)
        if kind == "port" and obj is not None:
            self.unindex_port(obj)  # type: ignore[arg-type]
        if kind == "router":
            self.router_interfaces.pop(rid, None)
        return obj

    def all_resources(self) -> Iterable[Resource]:
        for attr in KINDS.values():
            yield from getattr(self, attr).values()

    # ------------------------------------------------------- journal, revisions
    def touch(self, kind: str, rid: str) -> None:
        """Announce an in-place change of a stored object (a group's rule list, a floating
        IP's association, a router's interfaces)."""
        self._journal.note(kind, rid)

    @property
    def cursor(self) -> int:
        """The journal position now: pass it to :meth:`changes_since` later."""
        return self._journal.base + len(self._journal.entries)

    def changes_since(self, cursor: int) -> list[tuple[str, str]] | None:
        """(kind, id) changed since ``cursor`` (repeats possible, in order), or None when
        the journal no longer reaches back that far."""
        j = self._journal
        if cursor < j.base:
            return None
        return j.entries[cursor - j.base:]

    def revision(self, kind: str, rid: str) -> int | None:
        """The store revision of the resource as it is now (None if unknown or changed
        since it was loaded)."""
        return self._journal.revisions.get((kind, rid))

    def set_revision(self, kind: str, rid: str, revision: int) -> None:
        self._journal.revisions[(kind, rid)] = revision

    # ------------------------------------------------------------------ indexes
    def index_port(self, port: Port) -> None:
        self._mac_owner[(port.network_id, port.mac_address)] = port.id
        for f in port.fixed_ips:
            self._ip_owner[(f.subnet_id, f.ip_address)] = port.id

    def unindex_port(self, port: Port) -> None:
        self._mac_owner.pop((port.network_id, port.mac_address), None)
        for f in port.fixed_ips:
            if self._ip_owner.get((f.subnet_id, f.ip_address)) == port.id:
                del self._ip_owner[(f.subnet_id, f.ip_address)]

    def ip_owner(self, subnet_id: str | None, ip: str | None) -> str | None:
        """The port holding ``ip`` on ``subnet_id``, if any."""
        return self._ip_owner.get((subnet_id, ip))

    def mac_owner(self, network_id: str, mac: str | None) -> str | None:
        """The port holding ``mac`` on ``network_id``, if any."""
        return self._mac_owner.get((network_id, mac))

    def macs_in_use(self) -> set[str | None]:
        return {mac for (_, mac) in self._mac_owner}

    # ------------------------------------------------------------------ lookups
    def security_group_rule(self, rule_id: str) -> SecurityGroupRule:
        for sg in self.security_groups.values():
            for r in sg.security_group_rules:
                if r.id == rule_id:
                    return r
        raise NotFound(
            f"security group rule {rule_id} could not be found",
            resource="security_group_rule", neutron_type="SecurityGroupRuleNotFound",
        )

    def subnets_of(self, network_id: str) -> list[Subnet]:
        return [s for s in self.subnets.values() if s.network_id == network_id]

    def ports_in_group(self, sg_id: str) -> list[Port]:
        return [p for p in self.ports.values() if sg_id in (p.security_groups or ())]

    def default_group(self, project_id: str) -> SecurityGroup | None:
        for sg in self.security_groups.values():
            if sg.name == "default" and sg.project_id == project_id:
                return sg
        return None

    # Older spellings, kept so code written against the single-class Model still runs.
    def _new_id(self, kind: str, name: str) -> str:
        return self.new_id(kind, name)

    def _unique_id(self, kind: str, rid: str) -> None:
        self.check_unique(kind, rid)

    def _table(self, kind: str) -> dict[str, Any]:
        return self.table(kind)

    def _index(self, port: Port) -> None:
        self.index_port(port)

    def _unindex(self, port: Port) -> None:
        self.unindex_port(port)
