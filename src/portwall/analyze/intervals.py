"""Interval arithmetic over integers (addresses, ports, protocol numbers) and boxes of them.

Audit questions ("is tcp/22 reachable from *every* address?", "does this rule add anything
the others do not already allow?") must be answered for all packets, not a sample. An IPv4
or IPv6 network, a port range, a protocol are all integer intervals; a rule is a box (one
interval set per dimension); a union of rules is a list of boxes. Hand-rolled because the
only operations needed are union/intersection/difference of sorted integer intervals and box
subtraction, which are a few dozen lines, while an SMT solver would be a heavy dependency
for the same exact answers.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class IntervalSet:
    """An immutable set of integers stored as sorted, disjoint, non-adjacent [lo, hi] pairs."""

    __slots__ = ("spans",)

    def __init__(self, spans: Iterable[tuple[int, int]] = ()):
        merged: list[tuple[int, int]] = []
        for lo, hi in sorted(s for s in spans if s[0] <= s[1]):
            if merged and lo <= merged[-1][1] + 1:
                if hi > merged[-1][1]:
                    merged[-1] = (merged[-1][0], hi)
            else:
                merged.append((lo, hi))
        self.spans: tuple[tuple[int, int], ...] = tuple(merged)

    @classmethod
    def _raw(cls, spans: tuple[tuple[int, int], ...]) -> IntervalSet:
        """Wrap spans already sorted, disjoint and non-adjacent (no normalising pass)."""
        obj = object.__new__(cls)
        obj.spans = spans
        return obj

    @classmethod
    def span(cls, lo: int, hi: int) -> IntervalSet:
        return cls._raw(((lo, hi),) if lo <= hi else ())

    @classmethod
    def point(cls, v: int) -> IntervalSet:
        return cls._raw(((v, v),))

    @classmethod
    def of_network(cls, net: IPNetwork) -> IntervalSet:
        return cls._raw(((int(net.network_address), int(net.broadcast_address)),))

    @classmethod
    def of_networks(cls, nets: Iterable[IPNetwork]) -> IntervalSet:
        return cls((int(n.network_address), int(n.broadcast_address)) for n in nets)

    def __bool__(self) -> bool:
        return bool(self.spans)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, IntervalSet) and self.spans == other.spans

    def __hash__(self) -> int:
        return hash(self.spans)

    def __repr__(self) -> str:
        return f"IntervalSet({list(self.spans)})"

    def __contains__(self, v: object) -> bool:
        if not isinstance(v, int):
            return False
        for lo, hi in self.spans:
            if v < lo:
                return False
            if v <= hi:
                return True
        return False

    def size(self) -> int:
        return sum(hi - lo + 1 for lo, hi in self.spans)

    def union(self, other: IntervalSet) -> IntervalSet:
        if not other.spans:
            return self
        if not self.spans:
            return other
        return IntervalSet(self.spans + other.spans)

    __or__ = union

    def intersect(self, other: IntervalSet) -> IntervalSet:
        a, b = self.spans, other.spans
        if len(a) == 1 and len(b) == 1:  # the common case: one range each
            lo, hi = max(a[0][0], b[0][0]), min(a[0][1], b[0][1])
            return IntervalSet._raw(((lo, hi),) if lo <= hi else ())
        out: list[tuple[int, int]] = []
        i = j = 0
        while i < len(a) and j < len(b):
            lo, hi = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
            if lo <= hi:
                out.append((lo, hi))
            if a[i][1] < b[j][1]:
                i += 1
            else:
                j += 1
        return IntervalSet._raw(tuple(out))  # already sorted and disjoint

    __and__ = intersect

    def subtract(self, other: IntervalSet) -> IntervalSet:
        if not other.spans or not self.spans:
            return self
        out: list[tuple[int, int]] = []
        b = other.spans
        j = 0
        for lo, hi in self.spans:
            cur = lo
            while j < len(b) and b[j][1] < cur:
                j += 1
            k = j
            while k < len(b) and b[k][0] <= hi:
                if b[k][0] > cur:
                    out.append((cur, b[k][0] - 1))
                cur = max(cur, b[k][1] + 1)
                if cur > hi:
                    break
                k += 1
            if cur <= hi:
                out.append((cur, hi))
        return IntervalSet._raw(tuple(out))

    __sub__ = subtract

    def covers(self, other: IntervalSet) -> bool:
        """Is every integer of ``other`` in this set?"""
        return not other.subtract(self)


Box = tuple[IntervalSet, ...]


def box_empty(box: Box) -> bool:
    return any(not d for d in box)


def box_intersect(a: Box, b: Box) -> Box:
    return tuple(x & y for x, y in zip(a, b, strict=True))


def _meet(a: Box, b: Box) -> Box | None:
    """``a ∩ b``, or None as soon as one dimension is empty (the usual outcome)."""
    out = []
    for x, y in zip(a, b, strict=True):
        z = x & y
        if not z.spans:
            return None
        out.append(z)
    return tuple(out)


def box_contains(outer: Box, inner: Box) -> bool:
    return all(o.covers(i) for o, i in zip(outer, inner, strict=True))


def box_subtract(a: Box, b: Box) -> list[Box]:
    """``a`` minus ``b`` as disjoint boxes (peel one dimension at a time)."""
    inter = _meet(a, b)
    if inter is None:
        return [a]
    out: list[Box] = []
    rest = list(a)
    for i in range(len(a)):
        outside = rest[i] - inter[i]
        if outside:
            piece = list(rest)
            piece[i] = outside
            out.append(tuple(piece))
        rest[i] = inter[i]
    return out


def boxes_subtract(boxes: Sequence[Box], b: Box) -> list[Box]:
    out: list[Box] = []
    for a in boxes:
        out.extend(box_subtract(a, b))
    return out


def covered(box: Box, by: Iterable[Box]) -> bool:
    """Is every point of ``box`` inside the union of ``by``? Exact.

    Boxes disjoint from ``box`` are dropped first and a single box containing it answers at
    once; only what remains pays for box subtraction."""
    useful = [b for b in by if _meet(box, b) is not None]
    if any(box_contains(b, box) for b in useful):
        return True
    remaining: list[Box] = [box]
    for b in useful:
        remaining = boxes_subtract(remaining, b)
        if not remaining:
            return True
    return not remaining
