"""Packet counters of portwall's nftables rules, and where a port's drops are counted.

Every rule that drops (a port chain's fallback and invalid drops, provider drops, the
anti-spoof drops of ``inet portwall spoof`` and of the bridge's ARP/ND checks, the router
table's firewall rules) carries a ``counter``. The lab proves a denied probe by the counter
of the rule the evaluator names rising while the probe ran; it reads them here, in-process
through libnftables (:class:`.worker.NftWorker`, one JSON listing per table).

Port chains are shared by every port with the same lines (named by a digest of them), so
the chain a port's drop is counted in is looked up in the kernel's dispatch maps
(:func:`kernel_port_chains`): the counter is the kernel rule's, shared with those ports,
which is what the lab's probe scheduling keys on.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from portwall.backends.nftables.spell import COMBO_MASK, rid_of
from portwall.backends.nftables.state import KernelState, parse
from portwall.backends.nftables.types import (
    BRIDGE,
    INET,
    TABLE,
    SetKey,
    element_key,
)
from portwall.backends.nftables.worker import NftWorker

#: (family 4/6, chain, rid) -> packets
Counters = dict[tuple[int, str, str], int]
#: the host tables (the router table is :mod:`.l3`'s ``inet portwall_l3``)
HOST_TABLES: tuple[tuple[str, str], ...] = ((INET, TABLE), (BRIDGE, TABLE))
#: the chain every port's anti-spoof drop is counted in, and that rule's tag
SPOOF_DROP = ("spoof", "pw-spoof-drop")


def families(expr: list[dict[str, Any]]) -> tuple[int, ...]:
    """The IP families a rule matches (both when it does not say)."""
    for e in expr:
        m = e.get("match") if isinstance(e, dict) else None
        if m and m.get("left", {}).get("meta", {}).get("key") == "nfproto":
            return (4,) if m.get("right") == "ipv4" else (6,)
        if m and "payload" in m.get("left", {}):
            proto = m["left"]["payload"].get("protocol")
            if proto in ("ip", "ip6"):
                return (4,) if proto == "ip" else (6,)
    return (4, 6)


def parse_counters(items: list[dict[str, Any]] | None, table: str | None = None) -> Counters:
    """(family, chain, rid) -> packets of the counting rules in a JSON listing (rules of
    another ``table``, and rules without a comment or counter, are left out)."""
    out: Counters = {}
    for item in items or ():
        rule = item.get("rule")
        if not rule or not rule.get("comment") or (table and rule.get("table") != table):
            continue
        expr = rule.get("expr", [])
        counters = [e["counter"] for e in expr
                    if isinstance(e, dict) and isinstance(e.get("counter"), dict)]
        if not counters:
            continue
        packets = sum(int(c.get("packets", 0)) for c in counters)
        rid = rid_of(str(rule["comment"]))
        for fam in families(expr):
            key = (fam, str(rule["chain"]), rid)
            out[key] = out.get(key, 0) + packets
    return out


def read_counters(netns: str | None,
                  tables: tuple[tuple[str, str], ...] = HOST_TABLES) -> Counters:
    """The rule counters of ``tables`` in ``netns`` (empty for a missing namespace or
    table), through libnftables in this process."""
    try:
        worker = NftWorker(netns)
    except OSError:
        return {}
    out: Counters = {}
    try:
        for family, table in tables:
            for key, n in parse_counters(
                    worker.list_json(f"table {family} {table}", stateful=True), table).items():
                out[key] = out.get(key, 0) + n
    finally:
        worker.close()
    return out


def _chains(sets: Mapping[SetKey, frozenset[str]]) -> dict[str, tuple[str, str]]:
    """device -> (ingress chain, egress chain) from the ``ports`` map (a port's mark, whose
    low bits key the verdict maps) and the two verdict maps."""
    by_combo: dict[str, dict[int, str]] = {}
    for direction in ("ingress", "egress"):
        by_combo[direction] = {int(element_key(el)): el.rsplit(" ", 1)[1]
                               for el in sets.get((INET, direction), ())}
    out: dict[str, tuple[str, str]] = {}
    for el in sets.get((BRIDGE, "ports"), ()):
        dev, mark = el.split(" : ", 1)
        combo = int(mark) & COMBO_MASK
        ingress, egress = by_combo["ingress"].get(combo), by_combo["egress"].get(combo)
        if ingress and egress:
            out[dev.strip('"')] = (ingress, egress)
    return out


_MAPS = ((BRIDGE, "ports"), (INET, "ingress"), (INET, "egress"))


def kernel_port_chains(netns: str | None) -> dict[str, tuple[str, str]]:
    """device -> (ingress chain, egress chain) its drops are counted in, as the kernel of
    ``netns`` holds them (its three dispatch maps; empty without portwall's tables). Read
    from the kernel, not re-rendered: a chain's name is a digest of its lines, which name
    group ids, so only the kernel knows the chain of a policy it got from elsewhere (an
    agent following a store)."""
    try:
        worker = NftWorker(netns)
    except OSError:
        return {}
    state = KernelState()
    try:
        for family, name in _MAPS:
            parse(worker.list_json(f"map {family} {TABLE} {name}"), family, state)
    finally:
        worker.close()
    return _chains({k: v.elements for k, v in state.sets.items()})
