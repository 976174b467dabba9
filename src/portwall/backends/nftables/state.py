"""What portwall's tables hold in the kernel, from ``nft -j list table``, in the renderer's
canonical spelling (element strings, chain rule tags), so it compares with a ruleset."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from typing import Any

from portwall.backends.nftables.spell import quote
from portwall.backends.nftables.types import COUNTED, TABLE, SetKey


@dataclass
class KernelSet:
    is_map: bool
    elements: frozenset[str]


@dataclass
class KernelState:
    tables: set[str] = field(default_factory=set)
    sets: dict[SetKey, KernelSet] = field(default_factory=dict)
    #: chain -> its rules' tags (comment, plus COUNTED when the rule counts):
    #: :meth:`.types.NftChain.signature`
    chains: dict[SetKey, tuple[str, ...]] = field(default_factory=dict)


def _ip6(text: str) -> str:
    return socket.inet_ntop(socket.AF_INET6, socket.inet_pton(socket.AF_INET6, text))


def _atom(v: Any, typ: str) -> str:
    if isinstance(v, dict):
        if "prefix" in v:
            p = v["prefix"]
            return f"{_atom(p['addr'], typ)}/{p['len']}"
        if "range" in v:
            lo, hi = v["range"]
            return f"{_atom(lo, typ)}-{_atom(hi, typ)}"
        if "goto" in v:
            return f"goto {v['goto']['target']}"
        if "jump" in v:
            return f"jump {v['jump']['target']}"
        return str(v)
    if typ == "ifname":
        return quote(str(v))
    if typ == "ipv6_addr" and isinstance(v, str):
        return _ip6(v)
    if typ == "ether_addr" and isinstance(v, str):
        return v.lower()
    if isinstance(v, str) and v.startswith("0x"):
        return str(int(v, 16))
    return str(v)


def _key(v: Any, types: list[str]) -> str:
    if isinstance(v, dict) and "concat" in v:
        return " . ".join(_atom(x, t) for x, t in zip(v["concat"], types, strict=False))
    if isinstance(v, dict) and "elem" in v:  # an element with a comment or timeout
        return _key(v["elem"]["val"], types)
    return _atom(v, types[0] if types else "")


def _types(t: Any) -> list[str]:
    if isinstance(t, list):
        return [str(x) for x in t]
    return [str(t)]


def parse(items: list[dict[str, Any]] | None, family: str, state: KernelState) -> None:
    """Add one table's listing (None: the table does not exist) to ``state``."""
    if items is None:
        return
    for item in items:
        if "table" in item and item["table"].get("name") == TABLE:
            state.tables.add(family)
        for kind in ("set", "map"):
            s = item.get(kind)
            if s is None or s.get("table") != TABLE:
                continue
            types = _types(s.get("type", ""))
            els = []
            for e in s.get("elem", []):
                if kind == "map":
                    k, val = e
                    els.append(f"{_key(k, types)} : {_atom(val, str(s.get('map', '')))}")
                else:
                    els.append(_key(e, types))
            state.sets[(family, s["name"])] = KernelSet(kind == "map", frozenset(els))
        c = item.get("chain")
        if c is not None and c.get("table") == TABLE:
            state.chains.setdefault((family, c["name"]), ())
        r = item.get("rule")
        if r is not None and r.get("table") == TABLE:
            key = (family, r["chain"])
            tag = str(r.get("comment", ""))
            if any(isinstance(e, dict) and "counter" in e for e in r.get("expr", ())):
                tag += COUNTED
            state.chains[key] = (*state.chains.get(key, ()), tag)
