"""Packet counters of portwall's nftables rules, and where a port's drops are counted.

Every rule that drops (a port chain's fallback and invalid drops, provider drops, the
anti-spoof drops of ``inet portwall spoof`` and of the bridge's ARP/ND checks, the router
table's firewall rules) carries a ``counter``. The lab proves a denied probe by the counter
of the rule the evaluator names rising while the probe ran; it reads them here, in-process
through libnftables (:class:`.worker.NftWorker`, one JSON listing per table).

Port chains are shared by every port with the same lines (named by a digest of them), so
the chain a port's drop is counted in comes from rendering the port's plan
(:func:`port_chains`): the counter is the kernel rule's, shared with those ports, which is
what the lab's probe scheduling keys on.
"""

from __future__ import annotations

from typing import Any

from portwall.backends.nftables.spell import COMBO_MASK, rid_of
from portwall.backends.nftables.types import BRIDGE, INET, TABLE, NftRuleset, element_key
from portwall.backends.nftables.worker import NftWorker
from portwall.ir.types import HostPlan

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


def chains_of(rs: NftRuleset) -> dict[str, tuple[str, str]]:
    """device -> (ingress chain, egress chain) of every filtered port of a rendered ruleset
    (the ``ports`` map gives the port's mark, whose low bits key the verdict maps)."""
    by_combo: dict[str, dict[int, str]] = {}
    for direction in ("ingress", "egress"):
        vmap = rs.sets.get((INET, direction))
        by_combo[direction] = {} if vmap is None else {
            int(element_key(el)): el.rsplit(" ", 1)[1] for el in vmap.elements}
    out: dict[str, tuple[str, str]] = {}
    ports = rs.sets.get((BRIDGE, "ports"))
    for el in ports.elements if ports is not None else ():
        dev, mark = el.split(" : ", 1)
        combo = int(mark) & COMBO_MASK
        ingress, egress = by_combo["ingress"].get(combo), by_combo["egress"].get(combo)
        if ingress and egress:
            out[dev.strip('"')] = (ingress, egress)
    return out


def port_chains(plan: HostPlan) -> dict[str, tuple[str, str]]:
    """port id -> (ingress chain, egress chain) its drops are counted in (rendered afresh:
    a chain's name is a digest of its lines, so it is the same on every host)."""
    from portwall.backends.nftables.render import render_nftables

    by_dev = chains_of(render_nftables(plan))
    return {p.id: by_dev[p.device] for p in plan.ports if p.device in by_dev}
