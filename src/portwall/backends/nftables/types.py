"""The nftables backend's rendered objects: sets/maps with their elements, and chains."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from portwall.ir.types import Origin

INET = "inet"
BRIDGE = "bridge"
TABLE = "portwall"

SetKey = tuple[str, str]  # (family, name)

_COMMENT = re.compile(r'comment "([^"]*)"$')
#: appended to a rule's tag when the rule carries a ``counter`` (a quote never occurs in a
#: comment), so a kernel rule without its counter differs from the rendered one
COUNTED = '"counter'


class Counted:
    """A set's elements as reference counts (several ports may add the same element), with
    the elements that appeared and vanished since the last :meth:`mark`. ``version`` moves
    on every change, so a lazily taken snapshot can tell whether it is still current."""

    __slots__ = ("added", "refs", "removed", "snap", "version")

    def __init__(self) -> None:
        self.refs: dict[str, int] = {}
        self.added: set[str] = set()
        self.removed: set[str] = set()
        self.version = 0
        self.snap: frozenset[str] | None = None

    def inc(self, el: str) -> None:
        n = self.refs.get(el, 0)
        self.refs[el] = n + 1
        if not n:
            self.version += 1
            self.snap = None
            if el in self.removed:
                self.removed.discard(el)
            else:
                self.added.add(el)

    def dec(self, el: str) -> None:
        n = self.refs[el] - 1
        if n:
            self.refs[el] = n
            return
        del self.refs[el]
        self.version += 1
        self.snap = None
        if el in self.added:
            self.added.discard(el)
        else:
            self.removed.add(el)

    def replace(self, elements: frozenset[str]) -> None:
        """Make the set exactly ``elements`` (each counted once)."""
        for el in [e for e in self.refs if e not in elements]:
            while el in self.refs:
                self.dec(el)
        for el in elements:
            if el not in self.refs:
                self.inc(el)

    def take_delta(self) -> tuple[frozenset[str], frozenset[str]]:
        out = (frozenset(self.added), frozenset(self.removed))
        self.added.clear()
        self.removed.clear()
        return out


class NftSet:
    """A set or map: ``decl`` is its body (``type ...; flags ...;``), ``elements`` canonical
    element strings (``key`` or ``key : value``), taken from the renderer's counts on first
    use (a set of 20,000 elements is not copied on every render)."""

    __slots__ = ("_elements", "_src", "_version", "decl", "family", "is_map", "name")

    def __init__(self, family: str, name: str, decl: str,
                 elements: frozenset[str] | Counted = frozenset(), is_map: bool = False) -> None:
        self.family, self.name, self.decl, self.is_map = family, name, decl, is_map
        if isinstance(elements, Counted):
            self._src: Counted | None = elements
            self._version = elements.version
            self._elements: frozenset[str] | None = elements.snap
        else:
            self._src, self._version, self._elements = None, 0, elements

    @property
    def elements(self) -> frozenset[str]:
        if self._elements is None:
            src = self._src
            assert src is not None
            if src.version != self._version:
                raise RuntimeError(f"set {self.name}: the renderer has rendered again since; "
                                   "apply the newest ruleset")
            if src.snap is None:
                src.snap = frozenset(src.refs)
            self._elements = src.snap
        return self._elements

    def __len__(self) -> int:
        if self._elements is None and self._src is not None and \
                self._src.version == self._version:
            return len(self._src.refs)
        return len(self.elements)

    @property
    def key(self) -> SetKey:
        return (self.family, self.name)


@dataclass(frozen=True, slots=True)
class NftChain:
    """A chain and its rules (each ending in ``comment "<rid or tag>"``); ``hook`` is the
    base-chain spec (``type filter hook ... priority ...;``) or None."""

    family: str
    name: str
    rules: tuple[str, ...]
    hook: str | None = None

    @property
    def key(self) -> SetKey:
        return (self.family, self.name)

    def tags(self) -> tuple[str, ...]:
        """Each rule's comment."""
        out = []
        for r in self.rules:
            m = _COMMENT.search(r)
            out.append(m.group(1) if m else "")
        return tuple(out)

    def signature(self) -> tuple[str, ...]:
        """What a kernel chain is compared by (:attr:`.state.KernelState.chains`): each
        rule's comment, plus :data:`COUNTED` when the rule counts."""
        return tuple(t + COUNTED if _counts(r) else t
                     for r, t in zip(self.rules, self.tags(), strict=True))


def _counts(rule: str) -> bool:
    """Whether a rule's statements (its text before the comment) include ``counter``."""
    m = _COMMENT.search(rule)
    head = rule[:m.start()] if m else rule
    return head.startswith("counter ") or " counter " in head


def element_key(element: str) -> str:
    """The key part of a map element (what ``delete element`` takes)."""
    return element.split(" : ", 1)[0]


@dataclass
class NftRuleset:
    """Everything portwall writes for one host: ``table inet portwall`` (filtering, zones,
    notrack) and ``table bridge portwall`` (port ids, ARP/ND checks)."""

    backend = "nftables"
    sets: dict[SetKey, NftSet] = field(default_factory=dict)
    #: which render this is (``owner`` names the renderer instance, ``serial`` the render,
    #: ``parent`` the render before it) and what changed since the parent: set -> (added,
    #: removed). An applier that applied the parent applies just these.
    owner: object = None
    serial: int = 0
    parent: int = -1
    deltas: dict[SetKey, tuple[frozenset[str], frozenset[str]]] = field(default_factory=dict)
    chains: dict[SetKey, NftChain] = field(default_factory=dict)
    _provenance: Callable[[], Mapping[str, Origin]] | None = None
    _prov_cache: Mapping[str, Origin] | None = None

    def provenance(self) -> Mapping[str, Origin]:
        if self._prov_cache is None:
            self._prov_cache = self._provenance() if self._provenance else {}
        return self._prov_cache

    def counts(self) -> dict[str, int]:
        maps = [s for s in self.sets.values() if s.is_map]
        sets = [s for s in self.sets.values() if not s.is_map]
        return {"rules": sum(len(c.rules) for c in self.chains.values()),
                "chains": len(self.chains),
                "sets": len(sets), "maps": len(maps),
                "set_elements": sum(len(s) for s in sets),
                "map_elements": sum(len(s) for s in maps)}

    def sections(self) -> list[tuple[str, str]]:
        from portwall.backends.nftables.text import full_text

        return [("nft -f - (replaces portwall's own tables: table inet portwall, "
                 "table bridge portwall)", full_text(self))]
