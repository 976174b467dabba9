"""A remote group's two nftables sets, updated from the compiler's member delta.

The compiler hands every changed AddressSet a :class:`~portwall.ir.types.SetDelta` (the
members that came and went). With it, one address-pair change on a 10,000-member group
counts one element in or out and re-collapses only the group's few prefixes -- O(change).
Without a usable delta (first render, or the renderer missed a plan) the members are
diffed by their sorted common prefix and suffix, as before.
"""

from __future__ import annotations

from collections.abc import Callable

from portwall.backends.nftables.spell import addr, collapse
from portwall.backends.nftables.types import Counted
from portwall.ir.types import AddressSet, IPNetwork, SetMember

#: (sorted old members, sorted new members) -> lengths of their common prefix and suffix
Middle = Callable[[tuple[SetMember, ...], tuple[SetMember, ...]], tuple[int, int]]


class PrefixCounts:
    """Per address set: how many members put each prefix (non-host network) in it."""

    __slots__ = ("counts",)

    def __init__(self) -> None:
        self.counts: dict[str, dict[IPNetwork, int]] = {}

    def update(self, sid: str, hit: AddressSet | None, aset: AddressSet, hosts: Counted,
               nets: Counted, middle: Middle) -> None:
        """Bring ``hosts`` (host addresses, counted) and ``nets`` (collapsed prefixes) from
        the set ``hit`` rendered last to ``aset``."""
        if hit is None:  # new in this render: count every member
            new: dict[IPNetwork, int] = {}
            self.counts[sid] = new
            for m in aset.members:
                c = m.cidr
                if c.prefixlen == c.max_prefixlen:
                    hosts.inc(addr(c))
                else:
                    new[c] = new.get(c, 0) + 1
            nets.replace(frozenset(addr(n) for n in collapse(list(new))))
            return
        pc: dict[IPNetwork, int] | None = self.counts.get(sid)
        if pc is None:
            pc = self.counts[sid] = {}
            for m in hit.members:
                if m.cidr.prefixlen != m.cidr.max_prefixlen:
                    pc[m.cidr] = pc.get(m.cidr, 0) + 1
        delta = aset.delta
        gone: tuple[SetMember, ...]
        came: tuple[SetMember, ...]
        if delta is not None and delta.base is hit:
            gone, came = delta.removed, delta.added
        else:
            was = hit.members
            pre, suf = middle(was, aset.members)
            gone, came = was[pre:len(was) - suf], aset.members[pre:len(aset.members) - suf]
        moved = False
        for m in gone:
            c = m.cidr
            if c.prefixlen == c.max_prefixlen:
                hosts.dec(addr(c))
            else:
                moved = True
                n = pc[c] - 1
                if n:
                    pc[c] = n
                else:
                    del pc[c]
        for m in came:
            c = m.cidr
            if c.prefixlen == c.max_prefixlen:
                hosts.inc(addr(c))
            else:
                moved = True
                pc[c] = pc.get(c, 0) + 1
        if moved:
            nets.replace(frozenset(addr(n) for n in collapse(list(pc))))

    def forget(self, keep: set[str]) -> None:
        """Drop the counts of sets no longer rendered."""
        for sid in [s for s in self.counts if s not in keep]:
            del self.counts[sid]
