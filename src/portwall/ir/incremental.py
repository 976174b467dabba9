"""The incremental compiler: model -> HostPlan again and again, at the cost of the change.

What each piece of the plan depends on, and so when a cached piece is reused:

* a port's parsed addresses and address-set contributions: the Port object alone;
* a PortPlan: the Port object, its network's conntrack zone, and the name and stateful flag
  of each of its groups (the Jumps name the group; ``stateful`` decides the conntrack steps).
  Nothing else: rules live in the shared RuleSets;
* a RuleSet: its group's name and stateful flag and the group's rule objects of its direction;
* an AddressSet: the contributions of the ports in the group, and the group's name.

A compile must not grow with the number of ports when one port changed, so nothing here
walks every port in Python: changed ports are found with one identity pass over the
model's port dict, ports affected by a group or zone change through per-group / per-network
indexes, rule sets in use through reference counts, and remote-group members are kept
sorted (bisect) so one new member is one insertion, not a re-sort of the whole set.

The model replaces a Port or SecurityGroup object when it is updated and never mutates a
rule once it is in a group, so object identity is an exact O(1) fingerprint. A resource
that carries a ``revision_number`` (a model loaded again from a database, issue 10) is also
recognised as unchanged when its id and revision match, even as a new object. Every cache
entry keeps the objects its key was made from alive, so an id() can never be reused by
another object while it is part of a key.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from portwall.bulk import cached_build
from portwall.ir import compile as c
from portwall.ir.l3 import RouterCompiler
from portwall.ir.types import (
    AddressSet,
    HostPlan,
    IPNetwork,
    Jump,
    Origin,
    OriginKind,
    PortPlan,
    RuleSet,
    SetDelta,
    SetMember,
    SetRef,
)
from portwall.model.resources import Port, SecurityGroup, SecurityGroupRule
from portwall.model.store import Model


def same_revision(old: object, new: object) -> bool:
    """True when two objects are the same revision of one resource (both carry an id and a
    non-None ``revision_number``, and they are equal)."""
    r_old = getattr(old, "revision_number", None)
    return (r_old is not None and r_old == getattr(new, "revision_number", None)
            and getattr(old, "id", None) == getattr(new, "id", None))


@dataclass(slots=True)
class _PortEntry:
    """What was derived from one Port object, which it keeps (``entry.port is port``)."""

    port: Port
    on_host: bool  # gets a PortPlan: not a network-owned port, and bound to the host
    fixed: tuple[IPNetwork, ...]
    pair_nets: tuple[IPNetwork, ...]
    contributes: dict[str, tuple[SetMember, ...]]  # address-set id -> this port's members
    plan: PortPlan | None = None
    # (rule-set id, group id, direction) of every Jump of the plan
    rulesets: tuple[tuple[str, str, str], ...] = ()


@dataclass(slots=True)
class _RuleSetEntry:
    key: tuple[object, ...]  # group name, stateful, ids of its rule objects (this direction)
    rules_alive: tuple[SecurityGroupRule, ...]  # keeps the ids in ``key`` valid
    ruleset: RuleSet
    sets: frozenset[str]  # address sets its rules match on
    revision: int | None = None  # the group's store revision it was built from


def _member_key(m: SetMember) -> tuple[int, int, str]:
    # Sorted as ipaddress would (one family per set, so the integer orders the same).
    return (int(m.cidr.network_address), m.cidr.prefixlen, m.port_id)


#: Up to this many additions in one compile are inserted one by one (bisect); more are
#: appended and sorted once, so a first compile of 10,000 ports is not quadratic.
BULK = 64


class _SortedMembers:
    """One address set's members, kept in the order an AddressSet lists them."""

    __slots__ = ("added", "keys", "members", "pending", "removed")

    def __init__(self) -> None:
        self.keys: list[tuple[int, int, str]] = []
        self.members: list[SetMember] = []
        self.pending: list[SetMember] = []  # added this compile, placed by settle()
        # what came and went since the last AddressSet was made of these members
        self.added: list[SetMember] = []
        self.removed: list[SetMember] = []

    def add(self, m: SetMember) -> None:
        self.pending.append(m)
        self.added.append(m)

    def settle(self) -> None:
        new, self.pending = self.pending, []
        if len(new) > BULK:
            # stable: a port's members (equal keys) stay in the order it contributed them
            pairs = sorted(zip(self.keys + [_member_key(m) for m in new],
                               self.members + new, strict=True), key=lambda kv: kv[0])
            self.keys = [k for k, _ in pairs]
            self.members = [m for _, m in pairs]
            return
        for m in new:
            k = _member_key(m)
            i = bisect.bisect_right(self.keys, k)  # after equal keys: a port's order kept
            self.keys.insert(i, k)
            self.members.insert(i, m)

    def remove(self, m: SetMember) -> None:
        k = _member_key(m)
        i = bisect.bisect_left(self.keys, k)
        while self.members[i] is not m:
            i += 1
        del self.keys[i], self.members[i]
        self.removed.append(m)

    def take_delta(self) -> tuple[tuple[SetMember, ...], tuple[SetMember, ...]]:
        """(added, removed) since the last call; a member added and removed again in
        between is in neither."""
        added, removed = self.added, self.removed
        self.added, self.removed = [], []
        if added and removed:
            gone = {id(m) for m in removed}
            came = {id(m) for m in added}
            added = [m for m in added if id(m) not in gone]
            removed = [m for m in removed if id(m) not in came]
        return tuple(added), tuple(removed)


class PlanCompiler:
    """Compiles a model into a :class:`HostPlan` again and again, redoing only what changed.

    Keep one per host in a long-running process and call :meth:`compile` after every model
    change. The result is always equal to a fresh :func:`portwall.ir.compile_plan` of the
    same model, and unchanged parts are the *same objects* as in the previous plan, so a
    renderer can cache by identity too.
    """

    def __init__(self, host: str | None = None) -> None:
        self.host = host
        self._reset()

    def _reset(self) -> None:
        self._ports: dict[str, _PortEntry] = {}
        self._seen: dict[str, Port] = {}  # the model's port dict as of the last compile
        self._seen_vals: list[Port] | None = []  # its values, in order (None: journal)
        self._source: Model | None = None  # the model compiled last, and its journal cursor
        self._cursor = 0
        self._revs: dict[str, int] = {}  # port id -> store revision it was compiled at
        self._members: dict[str, _SortedMembers] = {}
        self._dirty_sets: set[str] = set()
        self._sets: dict[str, AddressSet] = {}
        self._rulesets: dict[str, _RuleSetEntry] = {}
        self._rs_refs: dict[str, int] = {}  # rule-set id -> on-host ports jumping to it
        self._rs_group: dict[str, tuple[str, str]] = {}  # rule-set id -> (group, direction)
        self._jumps: dict[str, Jump] = {}
        self._group_sig: dict[str, tuple[str, bool]] = {}  # group id -> (name, stateful)
        self._by_group: dict[str, set[str]] = {}  # group id -> on-host port ids
        self._by_net: dict[str, set[str]] = {}  # network id -> on-host port ids
        self._zones_key: tuple[str, ...] | None = None
        self._zones: dict[str, int] = {}
        self._order: list[str] = []  # on-host port ids, sorted
        self._plans: list[PortPlan] = []  # their plans, in that order
        self._new_plans: list[tuple[str, PortPlan]] = []  # added this compile (see _settle)
        self._routers = RouterCompiler()
        self._revision: Callable[[str], int | None] = lambda gid: None

    def compile(self, model: Model) -> HostPlan:
        """The plan for the model as it is now (see :func:`portwall.ir.compile_plan`)."""
        with cached_build(self._reset):
            return self._compile(model)

    # ----------------------------------------------------------------- ports
    def _changed_ports(self, model: Model) -> list[str]:
        """Ids of ports added, replaced or deleted since the last compile.

        From the model's change journal when this compiler saw the same model last time
        (O(change)); otherwise one identity pass over the port dict (a comprehension: the
        only per-port work of such a compile). Either way a port whose store revision is
        the one it was compiled at counts as unchanged, even as a new object (a model
        rebuilt from the store)."""
        seen, ports = self._seen, model.ports
        journal = None
        if self._source is model:
            journal = model.changes_since(self._cursor)
        self._source, self._cursor = model, model.cursor
        if journal is not None:
            changed = list(dict.fromkeys(rid for kind, rid in journal if kind == "port"))
            self._seen_vals = None
        else:
            vals, before = list(ports.values()), self._seen_vals
            self._seen_vals = vals
            if before is not None and len(vals) >= len(before) and \
                    vals[:len(before)] == before:
                # Only appended (a dict keeps insertion order, and the model replaces an
                # updated port in place): the new ports are the tail. Compared in C.
                changed = list(itertools.islice(ports, len(before), None))
            else:
                changed = [pid for pid, p in ports.items() if seen.get(pid) is not p]
                if len(seen) + sum(pid not in seen for pid in changed) != len(ports):
                    changed += [pid for pid in seen.keys() - ports.keys()]
        revs = self._revs
        out = []
        for pid in changed:
            new, old = ports.get(pid), seen.get(pid)
            rev = model.revision("port", pid) if new is not None else None
            if new is not None and old is not None and (
                    new is old or (rev is not None and revs.get(pid) == rev)
                    or same_revision(old, new)):
                seen[pid] = self._ports[pid].port = new  # same content, maybe a new object
                continue
            out.append(pid)
            if new is None:
                seen.pop(pid, None)
                revs.pop(pid, None)
            else:
                seen[pid] = new
                if rev is None:
                    revs.pop(pid, None)
                else:
                    revs[pid] = rev
        return out

    def _port_entry(self, port: Port) -> _PortEntry:
        fixed, pair_nets = c._port_nets(port)
        contributes: dict[str, tuple[SetMember, ...]] = {}
        if port.port_security_enabled:
            contrib: list[tuple[IPNetwork, OriginKind]] = [
                (n, OriginKind.FIXED_IP) for n in fixed
            ] + [(n, OriginKind.ADDRESS_PAIR) for n in pair_nets]
            for gid in port.security_groups or ():
                for net, kind in contrib:
                    sid = c.set_id(gid, net.version)
                    contributes[sid] = (*contributes.get(sid, ()),
                                        SetMember(net, port.id, port.name, kind))
        on_host = not port.is_trusted and self.host in (None, port.binding_host_id)
        return _PortEntry(port, on_host, fixed, pair_nets, contributes)

    def _drop_port(self, pid: str) -> None:
        """Forget a port: its set members, rule-set references, indexes and plan."""
        entry = self._ports.pop(pid, None)
        if entry is None:
            return
        for sid, mems in entry.contributes.items():
            sm = self._members[sid]
            for m in mems:
                sm.remove(m)
            self._dirty_sets.add(sid)
        if entry.on_host:
            self._unplace(pid, entry)

    def _unplace(self, pid: str, entry: _PortEntry) -> None:
        """Take an on-host port out of the ordered plan list and the indexes."""
        for rsid, _g, _d in entry.rulesets:
            self._rs_refs[rsid] -= 1
        entry.rulesets = ()
        plan = entry.plan
        if plan is not None:
            i = bisect.bisect_left(self._order, pid)
            del self._order[i], self._plans[i]
            for gid in plan.groups:
                self._by_group[gid].discard(pid)
            self._by_net[plan.network_id].discard(pid)
            entry.plan = None

    def _add_port(self, port: Port, groups: Mapping[str, SecurityGroup],
                  zones: Mapping[str, int]) -> None:
        entry = self._ports[port.id] = self._port_entry(port)
        for sid, mems in entry.contributes.items():
            sm = self._members.get(sid)
            if sm is None:
                sm = self._members[sid] = _SortedMembers()
            for m in mems:
                sm.add(m)
            self._dirty_sets.add(sid)
        if entry.on_host:
            plan = self._port_plan(entry, groups, zones)
            self._new_plans.append((port.id, plan))
            for gid in plan.groups:
                self._by_group.setdefault(gid, set()).add(port.id)
            self._by_net.setdefault(plan.network_id, set()).add(port.id)

    def _settle(self) -> None:
        """Place this compile's new plans and set members in their sorted lists."""
        for sid in self._dirty_sets:
            sm = self._members.get(sid)
            if sm is not None and sm.pending:
                sm.settle()
        new, self._new_plans = self._new_plans, []
        if len(new) > BULK:
            pairs = sorted([*zip(self._order, self._plans, strict=True), *new],
                           key=lambda kv: kv[0])
            self._order = [k for k, _ in pairs]
            self._plans = [p for _, p in pairs]
            return
        for pid, plan in new:
            i = bisect.bisect_left(self._order, pid)
            self._order.insert(i, pid)
            self._plans.insert(i, plan)

    def _replan(self, pid: str, groups: Mapping[str, SecurityGroup],
                zones: Mapping[str, int]) -> None:
        """Compile an unchanged on-host port again (a group or its zone changed)."""
        entry = self._ports[pid]
        old = entry.plan
        assert old is not None
        for rsid, _g, _d in entry.rulesets:
            self._rs_refs[rsid] -= 1
        plan = self._port_plan(entry, groups, zones)
        self._plans[bisect.bisect_left(self._order, pid)] = plan
        if plan.network_id != old.network_id or plan.groups != old.groups:  # pragma: no cover
            raise AssertionError("a port's groups and network change only with the port")

    def _zone_map(self, model: Model) -> tuple[dict[str, int], set[str]]:
        """The zone of every network, and the networks whose zone changed."""
        key = tuple(model.networks)
        if key == self._zones_key:
            return self._zones, set()
        old = self._zones
        self._zones_key, self._zones = key, c.zone_for(key)
        return self._zones, {n for n, z in self._zones.items() if old.get(n, z) != z}

    def _changed_groups(self, groups: Mapping[str, SecurityGroup]) -> set[str]:
        """Groups whose name or stateful flag (what a PortPlan reads) changed, or that
        appeared or went away, since the last compile."""
        sig = {gid: (g.name, g.stateful) for gid, g in groups.items()}
        old, self._group_sig = self._group_sig, sig
        if sig == old:
            return set()
        return {gid for gid in sig.keys() | old.keys() if sig.get(gid) != old.get(gid)}

    # ------------------------------------------------------------- rule sets
    def _ruleset(self, groups: Mapping[str, SecurityGroup], rsid: str, gid: str,
                 direction: str) -> _RuleSetEntry:
        g = groups[gid]
        rules = tuple(r for r in g.security_group_rules if r.direction == direction)
        key = (g.name, g.stateful, tuple(map(id, rules)))
        cached = self._rulesets.get(rsid)
        if cached is not None and cached.key == key:
            return cached
        rev = self._revision(gid)
        if cached is not None and rev is not None and cached.revision == rev \
                and cached.key[:2] == key[:2]:
            # the same revision of the group, as new objects (a model reloaded from the
            # store): keep the rule set, and know the new rule objects by identity from now
            cached.key, cached.rules_alive = key, rules
            return cached
        compiled = tuple(c.compile_rule(r, g) for r in rules)
        refs = frozenset(a.set_id for r in compiled for a in (r.match.src, r.match.dst)
                         if isinstance(a, SetRef))
        ruleset = RuleSet(rsid, gid, g.name, direction, g.stateful, compiled)  # type: ignore[arg-type]
        entry = self._rulesets[rsid] = _RuleSetEntry(key, rules, ruleset, refs, rev)
        return entry

    def _jump(self, group: SecurityGroup, rsid: str) -> Jump:
        """One Jump per rule set, shared by its ports (as a fresh compile shares it)."""
        j = self._jumps.get(rsid)
        if j is None or j.origin.resource_name != group.name:
            j = self._jumps[rsid] = Jump(rsid, Origin(
                OriginKind.GROUP, "security_group", group.id, group.name,
                f"port is in group {group.label()}"))
        return j

    # ---------------------------------------------------------------- compile
    def _compile(self, model: Model) -> HostPlan:
        self._revision = lambda gid: model.revision("security_group", gid)
        groups = model.security_groups
        zones, moved_nets = self._zone_map(model)
        changed_groups = self._changed_groups(groups)
        added: set[str] = set()  # compiled just now: up to date whatever else changed
        for pid in self._changed_ports(model):
            self._drop_port(pid)
            port = model.ports.get(pid)
            if port is not None:
                self._add_port(port, groups, zones)
                added.add(pid)
        self._settle()
        stale: set[str] = set()
        for gid in changed_groups:
            stale |= self._by_group.get(gid, set())
        for nid in moved_nets:
            stale |= self._by_net.get(nid, set())
        for pid in sorted(stale - added):
            self._replan(pid, groups, zones)

        rulesets: dict[str, RuleSet] = {}
        referenced_sets: set[str] = set()
        for rsid in sorted(self._rs_refs):
            if not self._rs_refs[rsid]:
                del self._rs_refs[rsid], self._rs_group[rsid]
                self._rulesets.pop(rsid, None)
                self._jumps.pop(rsid, None)
                continue
            gid, direction = self._rs_group[rsid]
            rs = self._ruleset(groups, rsid, gid, direction)
            rulesets[rsid] = rs.ruleset
            referenced_sets |= rs.sets
        address_sets = {sid: self._address_set(sid, groups) for sid in sorted(referenced_sets)}
        # Forget sets no longer in the plan (rebuilt if they come back); a set outside the
        # plan needs no dirty flag either.
        for sid in self._dirty_sets - address_sets.keys():
            sm = self._members.get(sid)
            if sm is not None:  # not in the plan: no delta to keep for it
                sm.added.clear()
                sm.removed.clear()
        self._dirty_sets.clear()
        for sid in [s for s in self._sets if s not in address_sets]:
            del self._sets[sid]
        return HostPlan(host=self.host, ports=tuple(self._plans), rulesets=rulesets,
                        address_sets=address_sets, routers=self._routers.compile(model))

    def _port_plan(self, entry: _PortEntry, groups: Mapping[str, SecurityGroup],
                   zones: Mapping[str, int]) -> PortPlan:
        """Compile one port (and count the rule sets it jumps to)."""
        port = entry.port
        gids = tuple(port.security_groups or ())
        filtered = bool(port.port_security_enabled)
        stateful = all(groups[g].stateful for g in gids)
        rsids: tuple[tuple[str, str, str], ...] = ()
        if filtered:
            rsids = tuple((c.ruleset_id(g, d), g, d) for d in ("ingress", "egress") for g in gids)
            jumps = {d: [self._jump(groups[g], rsid) for rsid, g, dd in rsids if dd == d]
                     for d in ("ingress", "egress")}
            ingress, egress = c._port_steps(port, jumps["ingress"], jumps["egress"], stateful,
                                            entry.fixed)
            spoof = c._spoof_entries(port, entry.fixed, entry.pair_nets)
        else:
            ingress = egress = ()
            spoof = ()
        entry.plan = PortPlan(
            id=port.id, name=port.name, device=c.tap_name(port.id),
            bridge=c.bridge_name(port.network_id), mac=port.mac_address or "",
            network_id=port.network_id, zone=zones[port.network_id], filtered=filtered,
            stateful=stateful, addresses=entry.fixed, spoof=spoof, ingress=ingress,
            egress=egress, groups=gids,
        )
        entry.rulesets = rsids
        for rsid, g, d in rsids:
            self._rs_refs[rsid] = self._rs_refs.get(rsid, 0) + 1
            self._rs_group[rsid] = (g, d)
        return entry.plan

    def _address_set(self, sid: str, groups: Mapping[str, SecurityGroup]) -> AddressSet:
        """The set, rebuilt only if a member port changed since the last compile."""
        gid, fam = sid[3:-3], int(sid[-1])
        name = groups[gid].name
        cached = self._sets.get(sid)
        if cached is not None and sid not in self._dirty_sets and cached.group_name == name:
            return cached
        sm = self._members.get(sid)
        mem = tuple(sm.members) if sm is not None else ()
        delta = None
        if sm is not None:
            added, removed = sm.take_delta()
            if cached is not None:
                if cached.delta is not None:
                    cached.delta.base = None  # deltas never chain (see SetDelta)
                delta = SetDelta(cached, added, removed)
        aset = self._sets[sid] = AddressSet(sid, fam, gid, name, mem,  # type: ignore[arg-type]
                                            delta)
        return aset
