"""PW003's question: which security-group rules can go without changing any port's policy.

Neutron gives a port the *union* of the rules of all its groups (per direction and
ethertype). A rule of group G is therefore redundant when, for every port in G, the port's
other rules (G's own and those of the port's other groups) already allow everything it
allows. The answer only depends on the port's set of groups, so it is computed once per
distinct combination of rule sets (a "combo"), never per port: 10,000 ports in a few
hundred combos cost a few hundred coverage checks per rule set.

Every check is exact box coverage (:func:`portwall.analyze.intervals.covered`) over
(remote address, protocol, sport, dport, ICMP type, ICMP code). A remote group is a symbol
outside the address space: it is covered only by a rule for any address or for the same
remote group, never by prefixes that happen to contain today's members (membership
changes; advice to delete a rule must not depend on it).

Deleting every reported rule *together* keeps every port's policy: rules are examined in a
fixed order and a rule found redundant no longer counts as cover for later ones, so (by
induction from the last one reported) each is covered by rules that are never reported.
Rules redundant within their own group are found first; rules only redundant thanks to
other groups (``cross``) after, smallest groups first, so that of two groups with the same
rule, the one whose ports are all in the other is the one reported.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from portwall.analyze.intervals import Box, IntervalSet, covered
from portwall.ir.types import HostPlan, Jump, Match, PortPlan, Rule, RuleSet, SetRef

_SYM_BASE = {4: 2**32, 6: 2**128}
_SYM_SPAN = 2**20

__all__ = ["Redundant", "redundant_rules", "rule_box"]


def rule_box(m: Match, direction: str, symbols: dict[str, int]) -> Box:
    """A security-group rule as a box over (remote address, protocol, sport, dport, icmp
    type, icmp code); every dimension is a single span. ``symbols`` numbers remote groups
    (shared by all rules compared with each other)."""
    fam = m.family
    remote = m.src if direction == "ingress" else m.dst
    base = _SYM_BASE[fam]
    if remote is None:
        addr = IntervalSet.span(0, base + _SYM_SPAN)
    elif isinstance(remote, SetRef):
        k = symbols.setdefault(remote.set_id, len(symbols))
        addr = IntervalSet.point(base + k)
    else:
        addr = IntervalSet.of_network(remote)

    def rng(v: object, full: tuple[int, int]) -> IntervalSet:
        return IntervalSet.span(*full) if v is None else IntervalSet.span(
            v.lo, v.hi)  # type: ignore[attr-defined]

    proto = IntervalSet.span(0, 255) if m.protocol is None else IntervalSet.point(m.protocol)
    itype = IntervalSet.span(0, 255) if m.icmp_type is None else IntervalSet.point(m.icmp_type)
    icode = IntervalSet.span(0, 255) if m.icmp_code is None else IntervalSet.point(m.icmp_code)
    return (addr, proto, rng(m.sport, (0, 65535)), rng(m.dport, (0, 65535)), itype, icode)


class _Entry:
    """One rule of one rule set, with its box and the box's spans as plain integers (the
    overlap pre-filter runs millions of times at 10,000 ports; IntervalSet ops would not)."""

    __slots__ = ("box", "hi", "lo", "rs", "rule")

    def __init__(self, rs: RuleSet, rule: Rule, box: Box):
        self.rs, self.rule, self.box = rs, rule, box
        self.lo = tuple(d.spans[0][0] for d in box)
        self.hi = tuple(d.spans[0][1] for d in box)

    def overlaps(self, o: _Entry) -> bool:
        # unrolled, most selective dimensions first: dport, protocol, address
        a, b, c, d = self.lo, self.hi, o.lo, o.hi
        return (a[3] <= d[3] and c[3] <= b[3] and a[1] <= d[1] and c[1] <= b[1]
                and a[0] <= d[0] and c[0] <= b[0] and a[2] <= d[2] and c[2] <= b[2]
                and a[4] <= d[4] and c[4] <= b[4] and a[5] <= d[5] and c[5] <= b[5])


@dataclass(frozen=True)
class Redundant:
    """``rule`` of ``ruleset`` adds nothing; ``cover`` are the rules (with their rule sets)
    that already allow what it allows. ``cross``: some of them belong to other groups,
    so the finding holds only while every port of the group stays in those groups.
    ``ports`` are the ports of the group (what the answer was computed over)."""

    ruleset: RuleSet
    rule: Rule
    cover: tuple[tuple[Rule, RuleSet], ...]
    cross: bool
    ports: tuple[PortPlan, ...]


def _combos(ports: Sequence[PortPlan]) -> dict[str, list[tuple[str, ...]]]:
    """Rule-set id -> the distinct combinations (sorted rule-set ids of one direction) of
    the ports that jump to it."""
    seen: set[tuple[str, ...]] = set()
    for p in ports:
        for steps in (p.ingress, p.egress):
            seen.add(tuple(sorted({s.ruleset_id for s in steps if isinstance(s, Jump)})))
    out: dict[str, list[tuple[str, ...]]] = defaultdict(list)
    for c in sorted(seen):
        for rsid in c:
            out[rsid].append(c)
    return out


def redundant_rules(plan: HostPlan, ports_of_ruleset: dict[str, list[PortPlan]]
                    ) -> list[Redundant]:
    """Every redundant security-group rule of ``plan`` (see the module docstring).

    ``ports_of_ruleset`` maps a rule set id to the ports that jump to it; a rule set
    without ports is not examined (its rules allow nothing today, PW004's business)."""
    symbols: dict[int, dict[str, int]] = {4: {}, 6: {}}
    entries: dict[tuple[str, int], list[_Entry]] = defaultdict(list)
    for rs in plan.rulesets.values():
        for r in rs.rules:
            fam = r.match.family
            entries[(rs.id, fam)].append(_Entry(rs, r, rule_box(r.match, rs.direction,
                                                               symbols[fam])))
    dropped: set[int] = set()  # id() of dropped entries (alive: held by ``entries``)
    out: list[Redundant] = []

    def report(e: _Entry, cover: list[_Entry], cross: bool) -> None:
        dropped.add(id(e))
        out.append(Redundant(e.rs, e.rule, tuple((o.rule, o.rs) for o in cover), cross,
                             tuple(ports_of_ruleset.get(e.rs.id, ()))))

    pair_cache: dict[tuple[str, str, int], list[list[_Entry]]] = {}

    def overlapping(rsid: str, other: str, fam: int) -> list[list[_Entry]]:
        """Per rule of ``rsid``: the rules of ``other`` it overlaps (computed once per
        pair of rule sets, whatever the number of combos they share)."""
        key = (rsid, other, fam)
        hit = pair_cache.get(key)
        if hit is None:
            theirs = entries.get((other, fam), [])
            hit = pair_cache[key] = [[o for o in theirs if o is not e and e.overlaps(o)]
                                     for e in entries.get((rsid, fam), [])]
        return hit

    # 1. within one group: holds for every port of the group, whatever its other groups
    for rs in plan.rulesets.values():
        if not ports_of_ruleset.get(rs.id):
            continue
        for fam in (4, 6):
            for e, near in zip(entries.get((rs.id, fam), []), overlapping(rs.id, rs.id, fam),
                               strict=True):
                others = [o for o in near if id(o) not in dropped]
                if others and covered(e.box, (o.box for o in others)):
                    report(e, others, False)

    # 2. across groups: for every combination of groups the group's ports are in
    combos_of = _combos(plan.ports)

    order = sorted(plan.rulesets.values(), key=lambda rs: len(ports_of_ruleset.get(rs.id, ())))
    for rs in order:
        combos = combos_of.get(rs.id, [])
        if not combos or any(len(c) == 1 for c in combos):
            continue  # some port has only this group: step 1 already answered
        for fam in (4, 6):
            for i, e in enumerate(entries.get((rs.id, fam), [])):
                if id(e) in dropped:
                    continue
                cover: dict[int, _Entry] = {}
                for c in combos:
                    cands = [o for other in c for o in overlapping(rs.id, other, fam)[i]
                             if id(o) not in dropped]
                    if not cands or not covered(e.box, (o.box for o in cands)):
                        break
                    for o in cands:
                        cover.setdefault(id(o), o)
                else:
                    report(e, list(cover.values()), any(o.rs is not rs for o in cover.values()))
    return out
