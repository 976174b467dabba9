"""One ipset's member list, kept sorted and updated from the compiler's member delta.

``ipset save`` lists a set's entries sorted; the renderer hands the applier that list. With
the AddressSet's :class:`~portwall.ir.types.SetDelta`, one address-pair change on a
10,000-member group is one or two bisect insertions/deletions instead of re-listing and
re-sorting every member. Without a usable delta (first render, a missed plan) the list is
built from all members.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable

from portwall.ir.types import AddressSet, IPNetwork

#: ((version, address, prefix length), text) as ``ipset save`` sorts and prints an entry
Entry = tuple[tuple[int, int, int], str]


class SetEntries:
    """The distinct entries of one set, sorted, each counted by the members that put it."""

    __slots__ = ("aset", "keys", "refs", "texts")

    def __init__(self) -> None:
        self.aset: AddressSet | None = None  # the AddressSet these entries are of
        self.keys: list[tuple[int, int, int]] = []
        self.texts: list[str] = []
        self.refs: dict[tuple[int, int, int], int] = {}

    def follow(self, aset: AddressSet, entries_of: Callable[[IPNetwork], tuple[Entry, ...]]
               ) -> list[str]:
        """The sorted entry texts of ``aset`` (a new list), from the delta when it starts
        at the set these entries were last brought to."""
        delta = aset.delta
        if self.aset is not None and delta is not None and delta.base is self.aset:
            for m in delta.removed:
                for key, _text in entries_of(m.cidr):
                    self._dec(key)
            for m in delta.added:
                for key, text in entries_of(m.cidr):
                    self._inc(key, text)
        else:
            by_key: dict[tuple[int, int, int], str] = {}
            refs: dict[tuple[int, int, int], int] = {}
            for m in aset.members:
                for key, text in entries_of(m.cidr):
                    by_key[key] = text
                    refs[key] = refs.get(key, 0) + 1
            self.keys = sorted(by_key)
            self.texts = [by_key[k] for k in self.keys]
            self.refs = refs
        self.aset = aset
        return list(self.texts)

    def _inc(self, key: tuple[int, int, int], text: str) -> None:
        n = self.refs.get(key, 0)
        self.refs[key] = n + 1
        if not n:
            i = bisect.bisect_left(self.keys, key)
            self.keys.insert(i, key)
            self.texts.insert(i, text)

    def _dec(self, key: tuple[int, int, int]) -> None:
        n = self.refs[key] - 1
        if n:
            self.refs[key] = n
            return
        del self.refs[key]
        i = bisect.bisect_left(self.keys, key)
        del self.keys[i], self.texts[i]
