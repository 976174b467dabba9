"""The iptables backend's layer-2 guard: one nftables bridge table, ``bridge portwall_l2``.

iptables cannot see ARP, nor an ICMPv6 neighbour advertisement's target, nor a frame's
destination MAC before the bridge decides; a bridge-family table at prerouting (priority
-300, before bridge netfilter hands IP packets to iptables) can, and it stays one fixed set
of rules plus set elements, so a port adds elements, never rules. It does two things:

* **ARP / ND anti-spoofing** (``docs/architecture.md``): a filtered port may send ARP only
  when the ARP sender MAC is the frame's source MAC and (MAC, sender IP) is covered by one of
  its IPv4 :class:`~portwall.ir.types.SpoofEntry` (a MAC-only entry: any IP); a neighbour
  advertisement only when its target is covered by an IPv6 entry of the frame's source MAC
  (the link-local address of each MAC is one). Unfiltered ports are not checked.
* **Which hops conntrack sees**: a packet is tracked unless both ends are stateless ports
  (or a stateless port and something that is not a port). The ends are the in-port (by
  interface) and the destination MAC; an untracked hop gets mark bit :data:`MARK_NOTRACK`,
  which the raw table turns into ``CT --notrack``.

Elements are tuples of strings, the same whether rendered from a plan or read back from
``nft -j``, so the applier compares them as plain values.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from portwall.ir.types import Origin, OriginKind, PortPlan
from portwall.kernel.runner import Result, Runner

TABLE = "portwall_l2"
#: skb mark bit for "this hop is not tracked" (outside kube-proxy's and Neutron L3's bits,
#: next to the filter table's SEEN/ACCEPT bits).
MARK_NOTRACK = 0x400000

Element = tuple[str, ...]
#: set name -> nft type
SETS: dict[str, str] = {
    "filtered_if": "type ifname;",
    "tracked_if": "type ifname;",
    "tracked_mac": "type ether_addr;",
    "stateless_if": "type ifname;",
    "stateless_mac": "type ether_addr;",
    "arp4": "type ifname . ether_addr . ether_addr . ipv4_addr;",
    "arp4_net": "type ifname . ether_addr . ether_addr . ipv4_addr; flags interval;",
    "nd6": "typeof iifname . ether saddr . @th,64,128;",
    "nd6_net": "typeof iifname . ether saddr . @th,64,128; flags interval;",
}
_ND_TARGET = "@th,64,128"  # an NA's target address: bytes 8..23 of the ICMPv6 header
#: chain -> rules (each with a comment tag; provenance in :data:`ORIGINS`)
CHAINS: dict[str, list[str]] = {
    "arp_guard": [
        'iifname . ether saddr . arp saddr ether . arp saddr ip @arp4 return comment "pw-arp-ok"',
        'iifname . ether saddr . arp saddr ether . arp saddr ip @arp4_net return'
        ' comment "pw-arp-ok-net"',
        'drop comment "pw-arp-drop"',
    ],
    "nd_guard": [
        f'iifname . ether saddr . {_ND_TARGET} @nd6 return comment "pw-nd-ok"',
        f'iifname . ether saddr . {_ND_TARGET} @nd6_net return comment "pw-nd-ok-net"',
        'drop comment "pw-nd-drop"',
    ],
    "prerouting": [
        'iifname @filtered_if ether type arp jump arp_guard comment "pw-arp"',
        'iifname @filtered_if icmpv6 type nd-neighbor-advert jump nd_guard comment "pw-nd"',
        'iifname @tracked_if return comment "pw-track-src"',
        'ether daddr @tracked_mac return comment "pw-track-dst"',
        f'iifname @stateless_if meta mark set meta mark | {MARK_NOTRACK:#x} comment "pw-notrack-src"',
        f'ether daddr @stateless_mac meta mark set meta mark | {MARK_NOTRACK:#x}'
        ' comment "pw-notrack-dst"',
    ],
}
_HOOK = "type filter hook prerouting priority -300; policy accept;"


def _o(tag: str, detail: str, kind: OriginKind = OriginKind.PROVIDER) -> Origin:
    return Origin(kind, "provider", tag, tag, detail)


ORIGINS: dict[str, Origin] = {
    "pw-arp": _o("pw-arp", "ARP from a filtered port is checked against its anti-spoof list"),
    "pw-arp-ok": _o("pw-arp-ok", "ARP sender (MAC, IP) is a fixed IP / address pair of the port"),
    "pw-arp-ok-net": _o("pw-arp-ok-net", "ARP sender IP is in an address-pair CIDR of the port"),
    "pw-arp-drop": _o("pw-arp-drop", "ARP sender (MAC, IP) not among the port's allowed pairs",
                      OriginKind.SPOOF),
    "pw-nd": _o("pw-nd", "neighbour advertisements from a filtered port are checked"),
    "pw-nd-ok": _o("pw-nd-ok", "advertised target is an address of the port"),
    "pw-nd-ok-net": _o("pw-nd-ok-net", "advertised target is in an address pair of the port"),
    "pw-nd-drop": _o("pw-nd-drop", "neighbour advertisement for an address the port does not own",
                     OriginKind.SPOOF),
    "pw-track-src": _o("pw-track-src", "sent by a stateful port: conntrack sees it"),
    "pw-track-dst": _o("pw-track-dst", "sent to a stateful port: conntrack sees it"),
    "pw-notrack-src": _o("pw-notrack-src", "stateless port to a stateless port or a non-port"),
    "pw-notrack-dst": _o("pw-notrack-dst", "stateless port or non-port to a stateless port"),
}


def skeleton() -> str:
    """The table with its sets and chains and no elements (``nft -f`` input)."""
    lines = [f"table bridge {TABLE} {{"]
    lines += [f"  set {name} {{ {spec} }}" for name, spec in SETS.items()]
    for name, rules in CHAINS.items():
        lines.append(f"  chain {name} {{")
        if name == "prerouting":
            lines.append(f"    {_HOOK}")
        lines += [f"    {r}" for r in rules]
        lines.append("  }")
    lines.append("}")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ elements
class L2Port:
    """What one port puts into the bridge table: (set, element) pairs, deduplicated. The
    elements are worked out when first read (an applier reads only changed ports')."""

    __slots__ = ("_elements", "_plan", "device", "port_id")

    def __init__(self, plan: PortPlan) -> None:
        self.device, self.port_id, self._plan = plan.device, plan.id, plan
        self._elements: frozenset[tuple[str, Element]] | None = None

    @property
    def elements(self) -> frozenset[tuple[str, Element]]:
        if self._elements is None:
            self._elements = _elements_of(self._plan)
        return self._elements

    def __eq__(self, other: object) -> bool:
        return isinstance(other, L2Port) and (self is other or self.elements == other.elements)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"L2Port({self.device})"


def _nd(net: ipaddress.IPv6Network) -> Element:
    lo = int(net.network_address)
    if net.prefixlen == 128:
        return (f"0x{lo:032x}",)
    return (f"0x{lo:032x}-0x{int(net.broadcast_address):032x}",)


def port_elements(p: PortPlan) -> L2Port:
    """The bridge-table elements of one port (see the module docstring), lazily."""
    return L2Port(p)


def _elements_of(p: PortPlan) -> frozenset[tuple[str, Element]]:
    dev = p.device
    out: set[tuple[str, Element]] = set()
    macs = {p.mac.lower(), *(e.mac.lower() for e in p.spoof)} - {""}
    if p.filtered and not p.stateful:
        out.add(("stateless_if", (dev,)))
        out |= {("stateless_mac", (m,)) for m in macs}
    else:
        out.add(("tracked_if", (dev,)))
        out |= {("tracked_mac", (m,)) for m in macs}
    if p.filtered:
        out.add(("filtered_if", (dev,)))
        for e in p.spoof:
            mac = e.mac.lower()
            if e.family == 4:
                cidr = e.cidr or ipaddress.IPv4Network("0.0.0.0/0")
                if cidr.prefixlen == 32:
                    out.add(("arp4", (dev, mac, mac, str(cidr.network_address))))
                else:
                    out.add(("arp4_net", (dev, mac, mac, str(cidr))))
            else:
                net6 = e.cidr or ipaddress.IPv6Network("::/0")
                assert isinstance(net6, ipaddress.IPv6Network)
                out.add(("nd6" if net6.prefixlen == 128 else "nd6_net", (dev, mac, *_nd(net6))))
    return frozenset(out)


def element_text(elem: Element) -> str:
    return " . ".join(f'"{x}"' if i == 0 and not _is_mac(x) else x
                      for i, x in enumerate(elem))


def _is_mac(x: str) -> bool:
    return len(x) == 17 and x.count(":") == 5


def element_script(verb: str, elements: Iterable[tuple[str, Element]]) -> list[str]:
    """``add``/``delete element`` lines, one per set."""
    by_set: dict[str, list[str]] = {}
    for s, e in elements:
        by_set.setdefault(s, []).append(element_text(e))
    return [f"{verb} element bridge {TABLE} {s} {{ {', '.join(sorted(es))} }}"
            for s, es in sorted(by_set.items())]


# ------------------------------------------------------------------ reading
@dataclass
class L2State:
    """The bridge table as the kernel has it: whether its chains are portwall's current
    ones, and its elements."""

    skeleton_ok: bool
    elements: set[tuple[str, Element]]


def _json_value(v: object, set_name: str) -> str:
    if isinstance(v, dict) and "prefix" in v:
        return f"{v['prefix']['addr']}/{v['prefix']['len']}"
    if isinstance(v, dict) and "range" in v:
        lo, hi = v["range"]
        return f"0x{_int(lo):032x}-0x{_int(hi):032x}"
    if set_name.startswith("nd6") and isinstance(v, str | int) and (
            isinstance(v, int) or v.startswith("0x")):
        return f"0x{_int(v):032x}"
    return str(v)


def _int(v: object) -> int:
    return v if isinstance(v, int) else int(str(v), 16) if str(v).startswith("0x") else int(str(v))


def parse_table(doc: str) -> L2State:
    """``nft -j list table bridge portwall_l2`` -> :class:`L2State`."""
    objs = json.loads(doc).get("nftables", [])
    elements: set[tuple[str, Element]] = set()
    sets: set[str] = set()
    rules: dict[str, list[str]] = {}
    for o in objs:
        if "set" in o:
            s = o["set"]
            sets.add(s["name"])
            for e in s.get("elem", []) or []:
                e = e.get("elem", {}).get("val", e) if isinstance(e, dict) and "elem" in e else e
                parts = e["concat"] if isinstance(e, dict) and "concat" in e else [e]
                elements.add((s["name"], tuple(_json_value(x, s["name"]) for x in parts)))
        elif "rule" in o:
            r = o["rule"]
            rules.setdefault(r["chain"], []).append(r.get("comment", ""))
    want_rules = {c: [r.rsplit('comment "', 1)[1].rstrip('"') for r in rs]
                  for c, rs in CHAINS.items()}
    return L2State(sets == set(SETS) and rules == want_rules, elements)


def describe_drift(state: L2State | None, want: Mapping[str, L2Port]) -> list[str]:
    where = f"bridge {TABLE}"
    if state is None:
        return [f"{where}: table is missing"]
    out = [] if state.skeleton_ok else [f"{where}: sets or chains modified"]
    desired = {x for p in want.values() for x in p.elements}
    gone, extra = desired - state.elements, state.elements - desired
    if gone:
        ex = "; ".join(f"{s} {element_text(e)}" for s, e in sorted(gone)[:3])
        out.append(f"{where}: {len(gone)} elements missing: {ex}")
    if extra:
        ex = "; ".join(f"{s} {element_text(e)}" for s, e in sorted(extra)[:3])
        out.append(f"{where}: {len(extra)} unexpected elements: {ex}")
    return out


READ = ["nft", "-j", "list", "table", "bridge", TABLE]


def parse_result(res: Result) -> L2State | None:
    """The output of :data:`READ` (None when the table does not exist)."""
    return parse_table(res.stdout) if res.returncode == 0 else None


# ------------------------------------------------------------------ applying
@dataclass
class L2Change:
    """One planned write of the bridge table: ``script`` ("" when nothing to do), how to undo
    it (``undo``, "" if unknown) and the state to remember once it is committed."""

    script: str
    undo: str
    synced: dict[str, L2Port]
    count: dict[tuple[str, Element], int]
    added: int = 0
    removed: int = 0
    rebuilt: bool = False


class L2Sync:
    """Keeps the bridge table of one namespace equal to the desired per-port elements.

    Between applies it remembers what it wrote (per port, with a count per element, since
    two ports may add the same element): while the caller can prove nobody else changed
    nf_tables (the generation check of the iptables applier), a change costs the elements of
    the ports that changed. Otherwise it reads the table back and diffs it in full."""

    def __init__(self, runner: Runner) -> None:
        self.runner = runner
        self._synced: dict[str, L2Port] | None = None
        self._count: dict[tuple[str, Element], int] = {}

    def read(self) -> L2State | None:
        return parse_result(self.runner.run(READ))

    def forget(self) -> None:
        self._synced = None

    def plan(self, want: Mapping[str, L2Port], trusted: bool,
             state: L2State | object | None = ...) -> L2Change:
        """The change to make; ``state`` is the table as just read (None: missing), if the
        caller read it already, else it is read here when needed."""
        synced = self._synced
        if trusted and synced is not None:
            return self._delta(want, synced)
        return self._full(want, self.read() if state is ... else state)  # type: ignore[arg-type]

    def _delta(self, want: Mapping[str, L2Port], synced: dict[str, L2Port]) -> L2Change:
        changed = [d for d, p in want.items() if synced.get(d) is not p]
        if len(synced) + sum(d not in synced for d in changed) != len(want):
            changed += [d for d in synced.keys() - want.keys()]
        if not changed:
            return L2Change("", "", synced, self._count)
        count = dict(self._count)
        touched: dict[tuple[str, Element], bool] = {}
        for d in changed:
            was, now = synced.get(d), want.get(d)
            old_e = was.elements if was is not None else frozenset()
            new_e = now.elements if now is not None else frozenset()
            for e in old_e - new_e:
                touched.setdefault(e, count.get(e, 0) > 0)
                count[e] -= 1
                if not count[e]:
                    del count[e]
            for e in new_e - old_e:
                touched.setdefault(e, count.get(e, 0) > 0)
                count[e] = count.get(e, 0) + 1
        gone = [e for e, before in touched.items() if before and e not in count]
        new = [e for e, before in touched.items() if not before and e in count]
        script = "\n".join(element_script("delete", gone) + element_script("add", new))
        undo = "\n".join(element_script("delete", new) + element_script("add", gone))
        return L2Change(script + "\n" if script else "", undo + "\n" if undo else "",
                        dict(want), count, len(new), len(gone))

    def _full(self, want: Mapping[str, L2Port], state: L2State | None) -> L2Change:
        count: dict[tuple[str, Element], int] = {}
        for p in want.values():
            for e in p.elements:
                count[e] = count.get(e, 0) + 1
        if state is None or not state.skeleton_ok:
            lines = [f"add table bridge {TABLE}", f"delete table bridge {TABLE}", skeleton()]
            lines += element_script("add", count)
            return L2Change("\n".join(lines) + "\n", "", dict(want), count, len(count),
                            len(state.elements) if state else 0, rebuilt=True)
        gone = [e for e in state.elements if e not in count]
        new = [e for e in count if e not in state.elements]
        script = "\n".join(element_script("delete", gone) + element_script("add", new))
        undo = "\n".join(element_script("delete", new) + element_script("add", gone))
        return L2Change(script + "\n" if script else "", undo + "\n" if undo else "",
                        dict(want), count, len(new), len(gone))

    def commit(self, change: L2Change) -> Result | None:
        """Write ``change`` (one nft transaction: all of it or nothing). None when there was
        nothing to write; the failed Result otherwise (state then forgotten)."""
        if not change.script:
            self._synced, self._count = change.synced, change.count
            return None
        res = self.runner.run(["nft", "-f", "-"], input=change.script, write=True)
        if res.returncode != 0:
            self.forget()
            return res
        self._synced, self._count = change.synced, change.count
        return res

    def undo(self, change: L2Change) -> None:
        """Put the previous elements back after a later step of the same apply failed."""
        if change.undo:
            self.runner.run(["nft", "-f", "-"], input=change.undo, write=True)
        self.forget()

    def remove(self) -> None:
        self.runner.run(["nft", "-f", "-"], input=f"add table bridge {TABLE}\n"
                        f"delete table bridge {TABLE}\n", write=True)
        self.forget()


__all__ = ["CHAINS", "MARK_NOTRACK", "ORIGINS", "SETS", "TABLE", "L2Change", "L2Port", "L2State", "L2Sync",
           "describe_drift", "element_script", "element_text", "parse_table",
           "port_elements", "skeleton"]
