"""``nft -f`` text: the whole ruleset, or one incremental batch (both one transaction).

Commands are ordered so that every reference resolves inside the batch: tables, sets and
chains are declared first, then chains are filled, then elements (verdict-map elements name
chains), and removed chains and sets go last, once nothing refers to them.
"""

from __future__ import annotations

from collections.abc import Iterable

from portwall.backends.nftables.types import TABLE, NftChain, NftRuleset, NftSet, element_key

#: elements per ``add element`` command: big enough to be fast, small enough for one message
CHUNK = 4096


def _set_decl(s: NftSet) -> str:
    return f"add {'map' if s.is_map else 'set'} {s.family} {TABLE} {s.name} {{ {s.decl} }}"


def _chain_decl(c: NftChain) -> str:
    body = f" {{ {c.hook} }}" if c.hook else ""
    return f"add chain {c.family} {TABLE} {c.name}{body}"


def _rules(c: NftChain) -> list[str]:
    head = f"add rule {c.family} {TABLE} {c.name} "
    return [head + r for r in c.rules]


def _elements(verb: str, s: NftSet, elements: Iterable[str], order: bool = False) -> list[str]:
    items = list(elements if verb == "add" or not s.is_map else map(element_key, elements))
    if order:  # for people (render output); the kernel does not care
        items.sort()
    head = f"{verb} element {s.family} {TABLE} {s.name} {{ "
    return [head + ", ".join(items[i:i + CHUNK]) + " }" for i in range(0, len(items), CHUNK)]


def full_text(rs: NftRuleset, *, replace: bool = True) -> str:
    """Both tables from scratch; with ``replace`` the file first deletes portwall's tables
    (creating them first, so the delete never fails): ``nft -f`` of it is a full sync."""
    lines: list[str] = []
    families = sorted({k[0] for k in (*rs.sets, *rs.chains)})
    for fam in families:
        if replace:
            lines += [f"add table {fam} {TABLE}", f"delete table {fam} {TABLE}"]
        lines.append(f"add table {fam} {TABLE}")
    lines += [_set_decl(s) for s in rs.sets.values()]
    lines += [_chain_decl(c) for c in rs.chains.values()]
    for c in rs.chains.values():
        lines += _rules(c)
    for s in rs.sets.values():
        if s.elements:
            lines += _elements("add", s, s.elements, order=True)
    return "\n".join(lines) + "\n"


def batch_text(*, new_sets: list[NftSet], new_chains: list[NftChain],
               rewrite: list[NftChain], removed: list[tuple[NftSet, frozenset[str]]],
               added: list[tuple[NftSet, frozenset[str]]], drop_chains: list[NftChain],
               drop_sets: list[NftSet], tables: Iterable[str] = ()) -> str:
    """One incremental transaction (see the module docstring for the order)."""
    lines = [f"add table {fam} {TABLE}" for fam in tables]
    lines += [_set_decl(s) for s in new_sets]
    lines += [_chain_decl(c) for c in new_chains]
    for c in new_chains:
        lines += _rules(c)
    for c in rewrite:
        lines.append(f"flush chain {c.family} {TABLE} {c.name}")
        lines += _rules(c)
    for s, els in removed:
        lines += _elements("delete", s, els)
    for s, els in added:
        lines += _elements("add", s, els)
    for c in drop_chains:
        lines.append(f"delete chain {c.family} {TABLE} {c.name}")
    for s in drop_sets:
        lines.append(f"delete {'map' if s.is_map else 'set'} {s.family} {TABLE} {s.name}")
    return "\n".join(lines) + "\n" if lines else ""
