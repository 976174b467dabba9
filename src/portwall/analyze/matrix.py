"""``portwall audit --matrix``: who may open connections to whom, per protocol and port.

Asking :func:`portwall.analyze.reach.pair_services` for every ordered pair of ports costs
O(ports^2) chain walks: hours at 1,000 ports. But what a pair gets depends on much less
than the two ports:

* on the receiver's ingress chain *as seen from its own address* (rules whose destination
  side does not contain it never apply; per-port DHCP rules then look alike), and on which
  of that chain's *source* matches (prefixes, remote groups) contain the sender's address;
* symmetrically on the sender's egress chain as seen from its address, and on which of its
  *destination* matches contain the receiver's address;
* on the protocols both chains name (they decide how the answer is worded).

So ports are grouped into *classes*: as senders by (egress chain, protocols, which ingress
source matches anywhere contain the address), as receivers by (ingress chain, protocols,
which egress destination matches anywhere contain the address). Spoof entries play no part
(a sender uses its genuine fixed IP). Each chain is walked once per distinct question, so
1,000 ports in a few hundred classes take a second or two, and the answer is the same as
pair by pair: the walks are the same :func:`portwall.analyze.reach.services_walk` on the
same addresses' equivalents, and combining them skips only boxes the result's wording
cannot see (``tests/unit/test_audit_matrix.py`` checks equality on random topologies).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from portwall.analyze.evaluate import plan_index
from portwall.analyze.intervals import Box, box_contains, box_empty, box_intersect
from portwall.analyze.l3matrix import RoutedMatrix, routed_key
from portwall.analyze.reach import (
    FULL_BOX,
    OTHER,
    Services,
    SetIntervals,
    chain_protocols,
    ct_new,
    services_text,
    services_walk,
)
from portwall.ir.types import (
    Direction,
    HostPlan,
    IPNetwork,
    Jump,
    PortPlan,
    Rule,
    SetRef,
    SpoofCheck,
)
from portwall.model.store import Model
from portwall.topology.spec import LabSpec

#: Up to this many ports the matrix is printed per pair of ports, as users read it best.
SMALL_MATRIX = 20
#: Port names shown in a class label before "and N more" (JSON always has them all).
MAX_LABEL = 20

__all__ = ["MAX_LABEL", "SMALL_MATRIX", "MatrixRow", "reachability_matrix"]


@dataclass(frozen=True)
class MatrixRow:
    """One answer: every port of ``src_ports`` may open ``services`` to every port of
    ``dst_ports`` (a port's traffic to itself is not part of the matrix). ``src``/``dst``
    label them: a port name, or ``{a, b, ...}`` for several."""

    src: str
    dst: str
    family: int
    services: str
    src_ports: tuple[str, ...] = field(default=())
    dst_ports: tuple[str, ...] = field(default=())
    #: a flow across routers: the path it was evaluated along (``via router r1 (NAT ...)``)
    path: str = ""

    def text(self) -> str:
        via = f" [{self.path}]" if self.path else ""
        return f"{self.src} -> {self.dst} (IPv{self.family}): {self.services}{via}"

    def to_json(self) -> dict[str, Any]:
        out = {"from": self.src, "to": self.dst, "family": self.family,
               "services": self.services, "from_ports": list(self.src_ports or (self.src,)),
               "to_ports": list(self.dst_ports or (self.dst,))}
        if self.path:
            out["path"] = self.path
        return out


def _natural(name: str) -> tuple[Any, ...]:
    """``p9`` before ``p10``: names in a class label are sorted as people count."""
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name))


def _label(names: Sequence[str]) -> str:
    if len(names) == 1:
        return names[0]
    shown = ", ".join(names[:MAX_LABEL])
    more = f" and {len(names) - MAX_LABEL} more" if len(names) > MAX_LABEL else ""
    return "{" + shown + more + "}"


# ------------------------------------------------------------------ address signatures
AddrMatch = IPNetwork | SetRef


class _SigIndex:
    """Which of a fixed collection of address matches contain an address, in one dict probe
    per distinct prefix length (networks and remote-group members bucketed by length), so
    signatures of 10,000 addresses cost no scan of 10,000-member sets."""

    def __init__(self, plan: HostPlan, matches: Iterable[AddrMatch]):
        self._buckets: dict[int, dict[int, dict[int, list[AddrMatch]]]] = {4: {}, 6: {}}
        for m in set(matches):
            if isinstance(m, SetRef):
                aset = plan.address_sets.get(m.set_id)
                nets: Iterable[IPNetwork] = () if aset is None else (x.cidr for x in aset.members)
            else:
                nets = (m,)
            for n in nets:
                bucket = self._buckets[n.version].setdefault(n.prefixlen, {})
                hits = bucket.setdefault(int(n.network_address), [])
                if m not in hits:
                    hits.append(m)

    def sig(self, family: int, addr: int) -> frozenset[AddrMatch]:
        bits = 32 if family == 4 else 128
        full = (1 << bits) - 1
        out: set[AddrMatch] = set()
        for plen, bucket in self._buckets[family].items():
            hits = bucket.get(addr & (full ^ ((1 << (bits - plen)) - 1)))
            if hits:
                out.update(hits)
        return frozenset(out)


# ------------------------------------------------------------------ canonical chains
RuleKey = tuple[Any, ...]
Canon = tuple[tuple[RuleKey, ...], ...]


class _Chains:
    """A port's chain in one direction and family as the walk sees it: rules that can apply
    to a NEW packet of the family whose fixed side (ingress: destination, egress: source)
    is the port's own address, grouped by step, reduced to what the walk reads. Two ports
    with equal canonical chains answer every question alike."""

    def __init__(self, plan: HostPlan):
        self.plan = plan
        self._idx = plan_index(plan)
        self._cache: dict[tuple[Any, ...], tuple[RuleKey, ...]] = {}
        self._fixed_side: dict[tuple[str, str], bool] = {}

    def _fixed_holds(self, m: AddrMatch, family: int, addr: int) -> bool:
        if isinstance(m, SetRef):
            sidx = self._idx.set_index(m.set_id)
            return sidx is not None and sidx.lookup(addr) is not None
        return m.version == family and int(m.network_address) <= addr <= int(
            m.broadcast_address)

    def _group(self, rules: Sequence[Rule], direction: Direction, family: int,
               addr: int) -> tuple[RuleKey, ...]:
        out = []
        for r in rules:
            m = r.match
            if m.family != family or not ct_new(m):
                continue
            fixed, var = (m.dst, m.src) if direction == "ingress" else (m.src, m.dst)
            if fixed is not None and not self._fixed_holds(fixed, family, addr):
                continue
            out.append((m.protocol, r.action, var, m.sport, m.dport, m.icmp_type, m.icmp_code))
        return tuple(out)

    def _cached(self, key: Any, rules: Sequence[Rule], direction: Direction, family: int,
                addr: int) -> tuple[RuleKey, ...]:
        """The group of a shared step, once per plan unless a rule names the fixed side."""
        side = "dst" if direction == "ingress" else "src"
        fixed = self._fixed_side.get((key, side))
        if fixed is None:
            fixed = self._fixed_side[(key, side)] = any(
                getattr(r.match, side) is not None for r in rules)
        if fixed:
            return self._group(rules, direction, family, addr)
        k = (key, direction, family)
        hit = self._cache.get(k)
        if hit is None:
            hit = self._cache[k] = self._group(rules, direction, family, addr)
        return hit

    def canon(self, port: PortPlan, direction: Direction, family: int, addr: int) -> Canon:
        groups = []
        for step in port.steps(direction):
            if isinstance(step, SpoofCheck):
                continue  # the walk skips it: the sender uses its genuine fixed IP
            if isinstance(step, Jump):
                rs = self.plan.rulesets.get(step.ruleset_id)
                g = self._cached(("J", step.ruleset_id), rs.rules if rs else (), direction,
                                 family, addr)
            else:
                g = self._cached(("R", step.rid, step.match), (step,), direction, family, addr)
            if g:
                groups.append(g)
        return tuple(groups)


# ------------------------------------------------------------------ classes
@dataclass
class _Class:
    """Ports that behave alike in one role (sender or receiver) and family."""

    chain: int | None  # interned canonical chain; None: port security disabled
    protos: frozenset[int]
    sig: frozenset[AddrMatch]  # the address's matches on the other side's chains
    rel: frozenset[AddrMatch]  # this chain's own varying-side matches
    port: PortPlan  # a representative and its address
    addr: int
    ports: list[PortPlan] = field(default_factory=list)


def _first_addr(p: PortPlan, family: int) -> int | None:
    a = next((x for x in p.addresses if x.version == family), None)
    return None if a is None else int(a.network_address)


class _Matrix:
    """Classes of the ports of one matrix, and the walks and answers shared between them."""

    def __init__(self, plan: HostPlan, ports: Sequence[PortPlan]):
        self.plan, self.ports = plan, ports
        self.sets = SetIntervals(plan)
        chains = _Chains(plan)
        interned: dict[tuple[str, Canon], int] = {}
        self.rel_of: dict[int, frozenset[AddrMatch]] = {}
        # per (port id, role, family): (interned chain, protocols)
        info: dict[tuple[str, str, int], tuple[int | None, frozenset[int]]] = {}
        var: dict[str, set[AddrMatch]] = {"ingress": set(), "egress": set()}
        roles: tuple[tuple[str, Direction], ...] = (("src", "egress"), ("dst", "ingress"))
        for p in ports:
            for role, d in roles:
                protos = frozenset(chain_protocols(plan, p.steps(d)))
                for fam in (4, 6):
                    addr = _first_addr(p, fam)
                    if addr is None:
                        continue
                    cid = None
                    if p.filtered:
                        c = chains.canon(p, d, fam, addr)
                        cid = interned.setdefault((d, c), len(interned))
                        if cid not in self.rel_of:
                            self.rel_of[cid] = frozenset(
                                k[2] for g in c for k in g if k[2] is not None)
                            var[d] |= self.rel_of[cid]
                    info[(p.id, role, fam)] = (cid, protos)
        # a sender's address is read by receivers' ingress source matches, and vice versa
        sig_idx = {"src": _SigIndex(plan, var["ingress"]), "dst": _SigIndex(plan, var["egress"])}
        self.classes: dict[tuple[str, int], dict[tuple[Any, ...], _Class]] = {}
        self.class_of: dict[tuple[str, str, int], _Class] = {}
        for p in ports:
            for role in ("src", "dst"):
                for fam in (4, 6):
                    got = info.get((p.id, role, fam))
                    if got is None:
                        continue
                    addr = _first_addr(p, fam)
                    assert addr is not None
                    cid, protos = got
                    sig = sig_idx[role].sig(fam, addr)
                    bucket = self.classes.setdefault((role, fam), {})
                    cls = bucket.get((cid, protos, sig))
                    if cls is None:
                        rel = self.rel_of.get(cid, frozenset()) if cid is not None else frozenset()
                        cls = bucket[(cid, protos, sig)] = _Class(cid, protos, sig, rel, p, addr)
                    cls.ports.append(p)
                    self.class_of[(p.id, role, fam)] = cls
        self._walks: dict[tuple[Any, ...], Services] = {}
        self._interned: dict[tuple[Any, ...], Services] = {}
        self._texts: dict[tuple[Any, ...], str] = {}

    def _walk(self, cls: _Class, direction: Direction, family: int, other: _Class) -> Services:
        """``cls``'s chain for a peer whose address has ``other.sig``: only the matches the
        chain itself uses (``cls.rel``) can tell peers apart."""
        keys = set(cls.protos) | {OTHER}
        if cls.chain is None:  # unfiltered; kept too, the text cache relies on id()s
            key: tuple[Any, ...] = (None, frozenset(keys))
            hit = self._walks.get(key)
            if hit is None:
                hit = self._walks[key] = {k: [FULL_BOX] for k in keys}
            return hit
        key = (cls.chain, direction, family, other.sig & cls.rel)
        hit = self._walks.get(key)
        if hit is None:
            src, dst = (other.addr, cls.addr) if direction == "ingress" else (cls.addr, other.addr)
            sv = _absorbed(services_walk(self.plan, cls.port, direction, family, src, dst, keys,
                                         self.sets))
            # equal answers become one object, so the text cache below hits across classes
            hit = self._walks[key] = self._interned.setdefault(_content(sv), sv)
        return hit

    def services(self, s: _Class, d: _Class, family: int) -> str:
        ing = self._walk(d, "ingress", family, s)
        eg = self._walk(s, "egress", family, d)
        keys = s.protos | d.protos | {OTHER}
        tkey = (id(ing), id(eg), keys)  # both live in self._walks: ids are not reused
        text = self._texts.get(tkey)
        if text is None:
            text = self._texts[tkey] = services_text(combine(ing, eg, keys))
        return text


def _absorbed(sv: Services) -> Services:
    """``sv`` without boxes that lie inside another box of the same entry: the same
    packets (all ``services_text`` reads), fewer boxes to intersect."""
    out: Services = {}
    for k, boxes in sv.items():
        keep: list[Box] = []
        for i, x in enumerate(boxes):
            if not any(box_contains(y, x) and (not box_contains(x, y) or j < i)
                       for j, y in enumerate(boxes) if j != i):
                keep.append(x)
        out[k] = keep
    return out


def _content(sv: Services) -> tuple[Any, ...]:
    """A hashable value of a services map, for interning."""
    return tuple(sorted((k, tuple(sorted(tuple(d.spans for d in b) for b in v)))
                        for k, v in sv.items()))


def _meet(a: list[Box], b: list[Box]) -> list[Box]:
    """Boxes covering exactly ``a ∩ b``. When one side has the full box the other side's
    list is that set already (``services_text`` reads only the set, not its boxes)."""
    if any(x == FULL_BOX for x in b):
        return a
    if any(x == FULL_BOX for x in a):
        return b
    both = (box_intersect(x, y) for x in a for y in b)
    return [z for z in both if not box_empty(z)]


def combine(ing: Services, eg: Services, keys: Iterable[int]) -> Services:
    """The receiver's ingress answer met with the sender's egress answer, per protocol.
    A protocol one chain never names behaves there as every other unnamed one (OTHER)."""
    return {k: _meet(ing.get(k, ing[OTHER]), eg.get(k, eg[OTHER])) for k in keys}


def reachability_matrix(model: Model, plan: HostPlan, ports: Iterable[PortPlan] | None = None,
                        per_port: bool | None = None, lab: LabSpec | None = None
                        ) -> list[MatrixRow]:
    """Who can open connections to whom, per protocol and destination port, for every
    ordered pair of distinct ports with an address of the same family, exhaustively.

    Without routers this is pure policy (routing is not considered). With routers in the
    plan, a pair on different networks is answered along the path trace walks, through
    FWaaS and NAT (:mod:`portwall.analyze.l3matrix`), and, when the lab has an outside
    host, rows from it to every floating IP and from every port to it are added.

    Computed over classes of equivalent ports (module docstring). ``per_port`` (default:
    at most :data:`SMALL_MATRIX` ports) lists every pair; otherwise one row per sender
    class and answer, naming every receiver with that answer."""
    plist = list(plan.ports if ports is None else ports)
    mx = _Matrix(plan, plist)
    routed = RoutedMatrix(model, plan, lab) if plan.routers else None

    def answer(a: PortPlan, b: PortPlan, fam: int) -> tuple[str, str] | None:
        if routed is None or not routed_key(a, b) or routed.same_vm(a, b):
            return None
        ans = routed.pair(a, b, fam, (mx.class_of[(a.id, "src", fam)],
                                      mx.class_of[(b.id, "dst", fam)]))
        return None if ans is None else (ans.text, ans.path)

    out: list[MatrixRow] = []
    if per_port if per_port is not None else len(plist) <= SMALL_MATRIX:
        for a in plist:
            for b in plist:
                if a is b:
                    continue
                for fam in (4, 6):
                    s = mx.class_of.get((a.id, "src", fam))
                    d = mx.class_of.get((b.id, "dst", fam))
                    if s is not None and d is not None:
                        got = answer(a, b, fam)
                        text, path = got if got is not None else (mx.services(s, d, fam), "")
                        out.append(MatrixRow(a.name, b.name, fam, text, (a.name,), (b.name,),
                                             path))
        return out + _outside_rows(routed, plist)
    for fam in (4, 6):
        dsts = list(mx.classes.get(("dst", fam), {}).values())
        for s in mx.classes.get(("src", fam), {}).values():
            by_text: dict[str, list[str]] = {}
            by_pair: dict[tuple[str, str, str], list[str]] = {}
            for d in dsts:
                names = []
                for b in d.ports:
                    if len(s.ports) == 1 and b is s.ports[0]:
                        continue
                    if routed is None or not any(routed_key(a, b) for a in s.ports):
                        names.append(b.name)
                        continue
                    for a in s.ports:  # across routers: each pair along its own path
                        if a is b:
                            continue
                        got = answer(a, b, fam)
                        if got is None:
                            got = (mx.services(s, d, fam), "")
                        by_pair.setdefault((a.name, *got), []).append(b.name)
                if names:
                    by_text.setdefault(mx.services(s, d, fam), []).extend(names)
            src_names = tuple(sorted((a.name for a in s.ports), key=_natural))
            for text, names in by_text.items():
                names.sort(key=_natural)
                out.append(MatrixRow(_label(src_names), _label(names), fam, text, src_names,
                                     tuple(names)))
            for (a_name, text, path), names in by_pair.items():
                names.sort(key=_natural)
                out.append(MatrixRow(a_name, _label(names), fam, text, (a_name,),
                                     tuple(names), path))
    return out + _outside_rows(routed, plist)


def _outside_rows(routed: RoutedMatrix | None, plist: Sequence[PortPlan]) -> list[MatrixRow]:
    """The lab's outside host to every floating IP, and every port to the outside."""
    if routed is None:
        return []
    out_addr = routed.outside()
    if out_addr is None:
        return []
    names = {p.id: p.name for p in plist}
    label = f"outside ({out_addr})"
    rows = []
    for r in routed.plan.routers.values():
        for f in r.floating_ips:
            if f.port_id not in names or f.floating.version != out_addr.version:
                continue
            ans = routed.answer("outside", str(f.floating), f.floating.version)
            if ans is not None:
                dst = f"{f.floating} ({names[f.port_id]})"
                rows.append(MatrixRow(label, dst, f.floating.version, ans.text, (label,),
                                      (dst,), ans.path))
    for p in plist:
        if not any(a.version == out_addr.version for a in p.addresses):
            continue
        ans = routed.answer(p.id, "outside", out_addr.version)
        if ans is not None:
            rows.append(MatrixRow(p.name, label, out_addr.version, ans.text, (p.name,),
                                  (label,), ans.path))
    return rows
