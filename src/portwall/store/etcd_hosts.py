"""Host-scoped views: what one compute host's agent needs of the cloud, kept as derived keys.

A host needs its own ports (whole), their networks, subnets and security groups (whole,
with rules), the member ports of every group those rules name as ``remote_group_id``
(projected to what membership reads: addresses, pairs, groups), and the routers with an
interface on one of its networks, with their interface and gateway ports, floating IPs and
firewall groups. Nothing else: a change elsewhere in the cloud does not reach it.

:class:`HostIndex` keeps reverse indexes over every resource, so that for a write it finds
the hosts the write may concern, recomputes only their views, and returns per host the
derived keys to put and delete -- the server writes them in the same etcd transaction as
the write itself (Calico's calculation graph, in small). A view is a pure function of the
resources, so every server process computes the same one.
"""

from __future__ import annotations

import json
import zlib
from collections import Counter
from collections.abc import Iterable
from typing import Any

from portwall.store.base import Record

Key = tuple[str, str]
#: per host: (key -> value to put, keys to delete)
Diff = dict[str, tuple[dict[Key, str], set[Key]]]

FULL, MEMBER = "full", "member"
#: what a remote-group member port contributes (``_PortEntry`` reads nothing else)
MEMBER_FIELDS = ("id", "name", "project_id", "network_id", "mac_address", "fixed_ips",
                 "allowed_address_pairs", "port_security_enabled", "security_groups",
                 "device_owner", "binding:host_id")
FW_KINDS = ("firewall_rule", "firewall_policy", "firewall_group")


def encode(r: Record) -> str:
    return json.dumps({"p": r.project_id, "n": r.revision_number, "c": r.created_at,
                       "u": r.updated_at, "b": r.body}, separators=(",", ":"), sort_keys=True)


def decode(kind: str, rid: str, value: bytes | str) -> Record:
    d = json.loads(value)
    return Record(kind, rid, d["p"], d["b"], int(d["n"]), d["c"], d["u"])


def _member(r: Record) -> str:
    fields: tuple[str, ...] = MEMBER_FIELDS
    if r.kind == "security_group":  # a remote group: the set's name, not its rules
        fields = ("id", "name", "project_id")
    body = {k: r.body[k] for k in fields if k in r.body}
    text = json.dumps(body, separators=(",", ":"), sort_keys=True)
    # revision_number: changes exactly when the projection does (the incremental compiler
    # skips a port whose (id, revision_number) it has seen)
    return json.dumps({"p": r.project_id, "n": zlib.crc32(text.encode()) & 0x7FFFFFFF,
                       "c": "", "u": "", "b": body}, separators=(",", ":"), sort_keys=True)


class HostIndex:
    def __init__(self) -> None:
        self.recs: dict[Key, Record] = {}
        self.ports_by_host: dict[str, set[str]] = {}
        self.ports_by_group: dict[str, set[str]] = {}
        self.ports_by_net: dict[str, set[str]] = {}
        self.subnets_by_net: dict[str, set[str]] = {}
        self.group_hosts: dict[str, Counter[str]] = {}
        self.net_hosts: dict[str, Counter[str]] = {}
        self.refs_to: dict[str, set[str]] = {}  # group -> groups whose rules name it remote
        self.fips_by_router: dict[str, set[str]] = {}
        self.fips_by_port: dict[str, set[str]] = {}  # port -> floating IPs pointing at it
        self.routers_by_net: dict[str, set[str]] = {}
        self.router_nets: dict[str, set[str]] = {}
        self.gw_ports: dict[str, set[str]] = {}  # router -> its gateway port(s)
        self.by_kind: dict[str, set[str]] = {}  # firewall kinds -> ids (few)
        self.views: dict[str, dict[Key, str]] = {}
        self._values: dict[tuple[str, str, str], str] = {}
        self.revision = 0

    # ----------------------------------------------------------------- indexes
    def _body(self, kind: str, rid: str) -> dict[str, Any] | None:
        r = self.recs.get((kind, rid))
        return None if r is None else r.body

    def _index(self, kind: str, r: Record, sign: int) -> None:
        b = r.body
        if kind == "port":
            host, net = b.get("binding:host_id") or "", b.get("network_id", "")
            groups = b.get("security_groups") or []
            for idx, k in ((self.ports_by_host, host), (self.ports_by_net, net),
                           *((self.ports_by_group, g) for g in groups)):
                s = idx.setdefault(k, set())
                (s.add if sign > 0 else s.discard)(r.id)
            if b.get("device_owner") == "network:router_gateway":
                s = self.gw_ports.setdefault(b.get("device_id", ""), set())
                (s.add if sign > 0 else s.discard)(r.id)
            if host:
                for g in groups:
                    self.group_hosts.setdefault(g, Counter())[host] += sign
                self.net_hosts.setdefault(net, Counter())[host] += sign
        elif kind == "subnet":
            s = self.subnets_by_net.setdefault(b.get("network_id", ""), set())
            (s.add if sign > 0 else s.discard)(r.id)
        elif kind == "security_group":
            for rg in self._remotes(b):
                s = self.refs_to.setdefault(rg, set())
                (s.add if sign > 0 else s.discard)(r.id)
        elif kind in FW_KINDS:
            s = self.by_kind.setdefault(kind, set())
            (s.add if sign > 0 else s.discard)(r.id)
        elif kind == "floatingip":
            for idx, k in ((self.fips_by_router, b.get("router_id")),
                           (self.fips_by_port, b.get("port_id"))):
                if k:
                    s = idx.setdefault(k, set())
                    (s.add if sign > 0 else s.discard)(r.id)

    @staticmethod
    def _remotes(group: dict[str, Any]) -> set[str]:
        return {x["remote_group_id"] for x in group.get("security_group_rules") or []
                if x.get("remote_group_id")}

    def _reindex_routers(self) -> None:
        nets: dict[str, set[str]] = {}
        for (kind, rid), r in self.recs.items():
            if kind != "router":
                continue
            ns = nets.setdefault(rid, set())
            for pid in r.body.get("_interfaces") or []:
                p = self._body("port", pid)
                if p is not None:
                    ns.add(p.get("network_id", ""))
        self.router_nets = nets
        self.routers_by_net = {}
        for rid, ns in nets.items():
            for n in ns:
                self.routers_by_net.setdefault(n, set()).add(rid)

    # ---------------------------------------------------------------- concerns
    def _hosts_of_groups(self, groups: Iterable[str]) -> set[str]:
        return {h for g in groups for h, c in self.group_hosts.get(g, {}).items() if c > 0}

    def _hosts_of_nets(self, nets: Iterable[str]) -> set[str]:
        return {h for n in nets for h, c in self.net_hosts.get(n, {}).items() if c > 0}

    def _router_hosts(self, rid: str) -> set[str]:
        return self._hosts_of_nets(self.router_nets.get(rid, ()))

    def _concern(self, kind: str, r: Record | None) -> set[str]:
        """Hosts whose view may hold ``r`` (in the indexes' current state)."""
        if r is None:
            return set()
        b = r.body
        if kind == "port":
            groups = b.get("security_groups") or []
            out = {b.get("binding:host_id") or ""}
            out |= self._hosts_of_groups(g2 for g in groups for g2 in self.refs_to.get(g, ()))
            for fid in self.fips_by_port.get(r.id, ()):  # a floating IP's target
                out |= self._router_hosts((self._body("floatingip", fid) or {}).get(
                    "router_id") or "")
            if str(b.get("device_owner", "")).startswith("network:router"):
                out |= self._router_hosts(b.get("device_id", ""))
                out |= self._hosts_of_nets(self.routers_by_net.get(b.get("network_id", ""), ()))
            out.discard("")
            return out
        if kind == "security_group":
            return self._hosts_of_groups({r.id, *self.refs_to.get(r.id, ())})
        if kind in ("network", "subnet"):
            net = r.id if kind == "network" else b.get("network_id", "")
            out = self._hosts_of_nets([net])
            for rid in self.routers_by_net.get(net, ()):
                out |= self._router_hosts(rid)
            for rid, gws in self.gw_ports.items():  # routers with their gateway here
                if any((self._body("port", p) or {}).get("network_id") == net for p in gws):
                    out |= self._router_hosts(rid)
            return out
        if kind == "router":
            return self._router_hosts(r.id)
        if kind == "floatingip":
            return self._router_hosts(b.get("router_id") or "")
        if kind in FW_KINDS:
            return {h for rid in self.router_nets for h in self._router_hosts(rid)}
        return set()

    # ------------------------------------------------------------------- views
    def _value(self, kind: str, rid: str, mode: str) -> str:
        key = (kind, rid, mode)
        v = self._values.get(key)
        if v is None:
            r = self.recs[(kind, rid)]
            v = self._values[key] = encode(r) if mode == FULL else _member(r)
        return v

    def view(self, host: str) -> dict[Key, str]:
        """Every derived key of ``host`` and its value, from the resources as they are."""
        full: set[Key] = set()
        member: set[str] = set()
        nets: set[str] = set()
        groups: set[str] = set()
        for pid in self.ports_by_host.get(host, ()):
            b = self.recs[("port", pid)].body
            full.add(("port", pid))
            nets.add(b.get("network_id", ""))
            groups.update(b.get("security_groups") or [])
        groups = {g for g in groups if ("security_group", g) in self.recs}
        full.update(("security_group", g) for g in groups)
        remote: set[str] = set()
        for g in groups:
            for rg in self._remotes(self.recs[("security_group", g)].body):
                member.update(self.ports_by_group.get(rg, ()))
                remote.add(rg)
        routers = {rid for n in list(nets) for rid in self.routers_by_net.get(n, ())}
        rports: set[str] = set()
        for rid in routers:
            full.add(("router", rid))
            rb = self.recs[("router", rid)].body
            rports.update(p for p in rb.get("_interfaces") or [] if ("port", p) in self.recs)
            for fid in self.fips_by_router.get(rid, ()):
                full.add(("floatingip", fid))
                target = self._body("floatingip", fid) or {}
                if target.get("port_id") and ("port", target["port_id"]) in self.recs:
                    member.add(target["port_id"])
        for rid in routers:  # gateway ports (device_id = router), firewall groups
            rports.update(self.gw_ports.get(rid, ()))
        if rports:
            for fid in self.by_kind.get("firewall_group", ()):
                fw = self.recs[("firewall_group", fid)].body
                if set(fw.get("ports") or []) & rports:
                    full.add(("firewall_group", fid))
                    for pol in (fw.get("ingress_firewall_policy_id"),
                                fw.get("egress_firewall_policy_id")):
                        pb = self._body("firewall_policy", pol or "")
                        if pb is None:
                            continue
                        full.add(("firewall_policy", pol or ""))
                        full.update(("firewall_rule", x) for x in pb.get("firewall_rules") or []
                                    if ("firewall_rule", x) in self.recs)
        for pid in rports:
            full.add(("port", pid))
            nets.add(self.recs[("port", pid)].body.get("network_id", ""))
        for n in nets:
            if ("network", n) in self.recs:
                full.add(("network", n))
            full.update(("subnet", s) for s in self.subnets_by_net.get(n, ()))
        out = {k: self._value(k[0], k[1], FULL) for k in full}
        for g in remote - groups:
            if ("security_group", g) in self.recs:
                out[("security_group", g)] = self._value("security_group", g, MEMBER)
        for pid in member:
            if ("port", pid) not in out:
                out[("port", pid)] = self._value("port", pid, MEMBER)
        return out

    # ------------------------------------------------------------------ writes
    def apply(self, changes: list[tuple[str, str, Record | None]]) -> Diff:
        """Take resource changes (None: deleted); the derived keys that change, per host."""
        affected: set[str] = set()
        routers_moved = False
        for kind, rid, new in changes:
            old = self.recs.get((kind, rid))
            affected |= self._concern(kind, old)
            if old is not None:
                self._index(kind, old, -1)
                del self.recs[(kind, rid)]
            for mode in (FULL, MEMBER):
                self._values.pop((kind, rid, mode), None)
            if new is not None:
                self.recs[(kind, rid)] = new
                self._index(kind, new, +1)
            routers_moved |= kind == "router" or (kind == "port" and any(
                str((x.body if x else {}).get("device_owner", "")).startswith("network:router")
                for x in (old, new)))
        if routers_moved:
            before = self.router_nets
            self._reindex_routers()
            for rid in set(before) | set(self.router_nets):
                if before.get(rid) != self.router_nets.get(rid):
                    affected |= self._hosts_of_nets(before.get(rid, set()))
                    affected |= self._router_hosts(rid)
        for kind, _rid, new in changes:
            affected |= self._concern(kind, new)
        diff: Diff = {}
        for host in sorted(affected):
            seen = self.views.get(host, {})
            after = self.view(host)
            puts = {k: v for k, v in after.items() if seen.get(k) != v}
            dels = set(seen) - set(after)
            if after:
                self.views[host] = after
            else:
                self.views.pop(host, None)
            if puts or dels:
                diff[host] = (puts, dels)
        return diff

    def load(self, records: Iterable[Record]) -> None:
        """Start from a full listing (views are computed for every host)."""
        self.__init__()  # type: ignore[misc]
        for r in records:
            self.recs[(r.kind, r.id)] = r
            self._index(r.kind, r, +1)
        self._reindex_routers()
        for host in [h for h, ps in self.ports_by_host.items() if ps and h]:
            self.views[host] = self.view(host)
