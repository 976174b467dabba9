"""The member flows of remote groups, kept up to date render after render.

One flow per (direction table, member address) carries the conjunction clauses 2/2 of every
(rule set, address set) pair whose set holds that address. Each address set's contribution
is kept (keyed by the AddressSet object and the conjunctions that use it) and only the
addresses of a set that changed are re-counted and re-rendered: one member more costs one
flow and, with the compiler's :class:`~portwall.ir.types.SetDelta`, O(1) work (O(that set)
without one), never O(all members).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from portwall.backends.ovs import flows as F
from portwall.backends.ovs.flows import Flow, Owner, RenderError
from portwall.ir.types import AddressSet, IPNetwork, Origin, OriginKind

#: (rule table, conjunction id, the set is the source) of one use of an address set
Use = tuple[int, int, bool]


class MemberFlows:
    """The member flows of one renderer (``by_cookie`` is what goes into a ruleset)."""

    def __init__(self) -> None:
        # set id -> (its AddressSet, the conjunctions using it, its addresses: how many
        # members put each one in the set)
        self.contrib: dict[str, tuple[AddressSet, tuple[Use, ...], dict[IPNetwork, int]]] = {}
        self.acc: dict[tuple[int, str], dict[tuple[int, str], int]] = {}  # -> (conj, set): n
        self.owners: dict[tuple[int, str], Owner] = {}  # (table, match) -> its flow's owner
        self.by_cookie: dict[int, Owner] = {}

    def update(self, users: Mapping[str, set[Use]], address_sets: Mapping[str, AddressSet]
               ) -> None:
        """Bring the flows to the sets ``users`` (set id -> its uses) names."""
        changed: set[tuple[int, str]] = set()
        for sid in [s for s in self.contrib if s not in users]:
            _aset, uses_, cidrs_ = self.contrib.pop(sid)
            changed |= self._count(sid, uses_, cidrs_, -1)
        for sid, uses in users.items():
            aset = address_sets[sid]
            ident = tuple(sorted(uses))
            hit = self.contrib.get(sid)
            if hit is not None and hit[0] is aset and hit[1] == ident:
                continue
            moved = self._moved(hit, aset) if hit is not None and hit[1] == ident else None
            if moved is not None:
                # the compiler's delta from the set rendered last: O(change), where
                # hashing a thousand members' networks again cost a millisecond
                now, gone, came = moved
                changed |= self._count(sid, ident, gone, -1)
                changed |= self._count(sid, ident, came, +1)
                self.contrib[sid] = (aset, ident, now)
                continue
            counts: dict[IPNetwork, int] = {}
            for mem in aset.members:
                counts[mem.cidr] = counts.get(mem.cidr, 0) + 1
            if hit is not None and hit[1] == ident:  # same users: only the members moved
                old = hit[2]
                changed |= self._count(sid, ident, [c for c in old if c not in counts], -1)
                changed |= self._count(sid, ident, [c for c in counts if c not in old], +1)
            else:
                if hit is not None:
                    changed |= self._count(sid, hit[1], hit[2], -1)
                changed |= self._count(sid, ident, counts, +1)
            self.contrib[sid] = (aset, ident, counts)
        for key in changed:
            cnt = self.acc.get(key)
            table, m = key
            cookie = F.owner_cookie(F.KIND_MEMBER, f"{table}:{m}")
            if not cnt:
                self.acc.pop(key, None)
                if self.owners.pop(key, None) is not None:
                    self.by_cookie.pop(cookie, None)
                continue
            a = ",".join(f"conjunction({c},2/2)" for c in sorted({c for c, _ in cnt}))
            rid = f"member-{m.split('=')[-1] if '=' in m else 'any'}"
            srcs = sorted({sid for _, sid in cnt})
            origin = Origin(OriginKind.GROUP, "address_set", srcs[0], ", ".join(srcs),
                            f"remote-group member {m}")
            o = Owner(cookie, f"member {m} of {', '.join(srcs)}",
                      (Flow(table, F.RULE_PRIORITY, m, a, cookie | 1),), {cookie | 1: rid},
                      {rid: origin})
            was = self.owners.get(key)
            if was is None and cookie in self.by_cookie:
                raise RenderError(f"cookie clash between {self.by_cookie[cookie].label} "
                                  f"and {o.label}")
            self.owners[key] = self.by_cookie[cookie] = o

    @staticmethod
    def _moved(hit: tuple[AddressSet, object, dict[IPNetwork, int]], aset: AddressSet
               ) -> tuple[dict[IPNetwork, int], list[IPNetwork], list[IPNetwork]] | None:
        """With the compiler's delta from ``hit``'s set (the one rendered last, its address
        counts): the new counts and the addresses that left and came; None without a
        usable delta."""
        delta = aset.delta
        if delta is None or delta.base is not hit[0]:
            return None
        counts = dict(hit[2])  # copies the stored hashes, computes none
        touched = {m.cidr for m in (*delta.removed, *delta.added)}
        before = {c for c in touched if c in counts}
        for m in delta.removed:
            n = counts.get(m.cidr, 0) - 1
            if n < 0:
                return None  # not the members counted: recount
            if n:
                counts[m.cidr] = n
            else:
                del counts[m.cidr]
        for m in delta.added:
            counts[m.cidr] = counts.get(m.cidr, 0) + 1
        after = {c for c in touched if c in counts}
        return counts, sorted(before - after, key=str), sorted(after - before, key=str)

    def _count(self, sid: str, uses: tuple[tuple[int, int, bool], ...],
               cidrs: Iterable[IPNetwork], delta: int) -> set[tuple[int, str]]:
        """Add (+1) or remove (-1) the clauses ``sid`` puts on each address; the keys
        (table, match) whose flow must be re-rendered."""
        keys = set()
        for c in cidrs:
            fam = "ip" if c.version == 4 else "ipv6"
            addr = F.net_text(c) if c.prefixlen else ""
            for table, cid, is_src in uses:
                fld = F.set_field(is_src, c.version)
                key = (table, f"{fam},{fld}={addr}" if addr else fam)
                cnt = self.acc.setdefault(key, {})
                n = cnt.get((cid, sid), 0) + delta
                if n:
                    cnt[(cid, sid)] = n
                else:
                    cnt.pop((cid, sid), None)
                keys.add(key)
        return keys
