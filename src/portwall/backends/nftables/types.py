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


@dataclass(frozen=True, slots=True)
class NftSet:
    """A set or map: ``decl`` is its body (``type ...; flags ...;``), ``elements`` canonical
    element strings (``key`` or ``key : value``)."""

    family: str
    name: str
    decl: str
    elements: frozenset[str]
    is_map: bool = False

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
        """Each rule's comment: what the kernel listing is compared by."""
        out = []
        for r in self.rules:
            m = _COMMENT.search(r)
            out.append(m.group(1) if m else "")
        return tuple(out)


def element_key(element: str) -> str:
    """The key part of a map element (what ``delete element`` takes)."""
    return element.split(" : ", 1)[0]


@dataclass
class NftRuleset:
    """Everything portwall writes for one host: ``table inet portwall`` (filtering, zones,
    notrack) and ``table bridge portwall`` (port ids, ARP/ND checks)."""

    backend = "nftables"
    sets: dict[SetKey, NftSet] = field(default_factory=dict)
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
                "set_elements": sum(len(s.elements) for s in sets),
                "map_elements": sum(len(s.elements) for s in maps)}

    def sections(self) -> list[tuple[str, str]]:
        from portwall.backends.nftables.text import full_text

        return [("nft -f (replaces portwall's own tables: table inet portwall, "
                 "table bridge portwall)", full_text(self))]
