"""Exhaustive reachability over the IR: which sources, protocols and ports a chain lets in.

Where the evaluator answers for one packet, these walks answer for *every* packet of a slice
at once, by carrying the not-yet-decided region through the same ordered steps:
an ALLOW rule moves ``remaining ∩ match`` to ``allowed``, a DROP rule removes ``match`` from
``remaining``, a Jump is the union of its rule set's matches. The semantics are the
evaluator's (``evaluate.py``); only the representation differs (interval sets instead of
points).

Fields the question does not fix (the source port of a connection, an ICMP type, a source
MAC) are read as "for some value": a rule constrained on them still counts as allowing the
slice, and a DROP constrained on them does not remove it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from portwall.analyze.intervals import Box, IntervalSet, box_empty, box_intersect, boxes_subtract, covered
from portwall.ir.types import (
    Action,
    CtState,
    Direction,
    HostPlan,
    IPNetwork,
    Jump,
    Match,
    PortPlan,
    Rule,
    SetRef,
    SpoofCheck,
    Step,
)

FULL_PORTS = IntervalSet.span(0, 65535)
_EMPTY = IntervalSet()
OTHER = -1  # stands for every protocol no rule names (they all behave the same)


def full_space(family: int) -> IntervalSet:
    return IntervalSet.span(0, 2 ** (32 if family == 4 else 128) - 1)


class SetIntervals:
    """Address sets as interval sets, built once per plan (remote groups of 10k members)."""

    def __init__(self, plan: HostPlan):
        self.plan = plan
        self._cache: dict[str, IntervalSet] = {}

    def of(self, ref: SetRef) -> IntervalSet:
        iv = self._cache.get(ref.set_id)
        if iv is None:
            aset = self.plan.address_sets.get(ref.set_id)
            iv = IntervalSet() if aset is None else IntervalSet.of_networks(
                m.cidr for m in aset.members)
            self._cache[ref.set_id] = iv
        return iv

    def addr(self, a: IPNetwork | SetRef | None, family: int) -> IntervalSet:
        if a is None:
            return full_space(family)
        if isinstance(a, SetRef):
            return self.of(a)
        return IntervalSet.of_network(a)


# ------------------------------------------------------------------ service slices
@dataclass(frozen=True)
class Slice:
    """One (family, protocol, destination port) question: who may open it?"""

    family: int
    protocol: int
    dport: int | None


@dataclass
class SliceResult:
    allowed: IntervalSet
    contributors: list[tuple[Rule, Jump | None, IntervalSet]] = field(default_factory=list)


def ct_new(m: Match) -> bool:
    return m.ct is None or CtState.NEW in m.ct


def _addr_has(iv: IntervalSet, addrs: Sequence[int]) -> bool:
    return any(a in iv for a in addrs)


def rule_sources(m: Match, s: Slice, own: Sequence[int], sets: SetIntervals
                 ) -> tuple[IntervalSet, bool]:
    """The source addresses for which ``m`` holds on ``s`` (ingress to a port whose addresses
    are ``own``), and whether the match is exact (False: only "for some" sport/MAC/type)."""
    if m.family != s.family or not ct_new(m):
        return _EMPTY, True
    if m.protocol is not None and m.protocol != s.protocol:
        return _EMPTY, True
    if m.dport is not None and (s.dport is None or s.dport not in m.dport):
        return _EMPTY, True
    if m.dst is not None and not _addr_has(sets.addr(m.dst, s.family), own):
        return _EMPTY, True
    exact = m.sport is None and m.src_mac is None and m.icmp_type is None and m.icmp_code is None
    return sets.addr(m.src, s.family), exact


def allowed_sources(plan: HostPlan, steps: Iterable[Step], s: Slice, own: Sequence[int],
                    sets: SetIntervals) -> SliceResult:
    """Every source address a NEW packet of slice ``s`` may come from, through ``steps``
    (an ingress chain), with the rules that let some of it in."""
    remaining = full_space(s.family)
    res = SliceResult(IntervalSet())
    for step in steps:
        if not remaining:
            break
        if isinstance(step, Rule):
            region, exact = rule_sources(step.match, s, own, sets)
            if not region:
                continue
            if step.action is Action.ALLOW:
                gained = remaining & region
                if gained:
                    res.allowed = res.allowed | gained
                    res.contributors.append((step, None, gained))
                if exact:
                    remaining = remaining - region
            elif exact:
                remaining = remaining - region
        elif isinstance(step, Jump):
            rs = plan.rulesets.get(step.ruleset_id)
            union = IntervalSet()
            for rule in rs.rules if rs else ():
                region, exact = rule_sources(rule.match, s, own, sets)
                if not region:
                    continue
                gained = remaining & region
                if gained:
                    res.allowed = res.allowed | gained
                    res.contributors.append((rule, step, gained))
                if exact:
                    union = union | region
            remaining = remaining - union
        # a SpoofCheck only filters what the port itself sends: not part of ingress
    return res


# ------------------------------------------------------------------ pair services
#: protocol (or OTHER) -> boxes over (sport, dport, icmp type, icmp code). Source ports are a
#: dimension of their own so that an egress allowing "any sport" and an ingress allowing only
#: "sport 67" intersect to exactly what one packet could pass through both.
Services = dict[int, list[Box]]
FULL_BOX: Box = (FULL_PORTS, FULL_PORTS, IntervalSet.span(0, 255), IntervalSet.span(0, 255))


def chain_protocols(plan: HostPlan, steps: Iterable[Step]) -> set[int]:
    out: set[int] = set()
    for step in steps:
        rules: Iterable[Rule]
        if isinstance(step, Rule):
            rules = (step,)
        elif isinstance(step, Jump):
            rs = plan.rulesets.get(step.ruleset_id)
            rules = rs.rules if rs else ()
        else:
            continue
        for r in rules:
            if r.match.protocol is not None:
                out.add(r.match.protocol)
    return out


def _match_box(m: Match) -> Box:
    def rng(v: object, full: IntervalSet) -> IntervalSet:
        return full if v is None else IntervalSet.span(v.lo, v.hi)  # type: ignore[attr-defined]

    itype = FULL_BOX[2] if m.icmp_type is None else IntervalSet.point(m.icmp_type)
    icode = FULL_BOX[3] if m.icmp_code is None else IntervalSet.point(m.icmp_code)
    return (rng(m.sport, FULL_PORTS), rng(m.dport, FULL_PORTS), itype, icode)


def services_walk(plan: HostPlan, port: PortPlan, direction: Direction, family: int,
                   src: int, dst: int, keys: set[int], sets: SetIntervals) -> Services:
    """(protocol -> boxes) a NEW packet src -> dst may use through one chain."""
    remaining: Services = {k: [FULL_BOX] for k in keys}
    allowed: Services = {k: [] for k in keys}

    def applies(m: Match) -> bool:
        if m.family != family or not ct_new(m):
            return False
        if m.src is not None and src not in sets.addr(m.src, family):
            return False
        return not (m.dst is not None and dst not in sets.addr(m.dst, family))

    for step in port.steps(direction):
        if isinstance(step, SpoofCheck):
            continue  # the genuine source (a fixed IP with the port's MAC) passes
        rules: Sequence[Rule] = (step,) if isinstance(step, Rule) else (
            plan.rulesets[step.ruleset_id].rules if step.ruleset_id in plan.rulesets else ())
        cut: list[tuple[int, Box]] = []
        for r in rules:
            if not applies(r.match):
                continue
            box = _match_box(r.match)
            for k in (keys if r.match.protocol is None else (r.match.protocol,)):
                if r.action is Action.ALLOW:
                    for rem in remaining[k]:
                        got = box_intersect(rem, box)
                        if not box_empty(got):
                            allowed[k].append(got)
                cut.append((k, box))
        for k, box in cut:  # a rule set decides as a whole: cut after all its rules
            remaining[k] = boxes_subtract(remaining[k], box)
    return allowed


def pair_services(plan: HostPlan, src: PortPlan | None, dst: PortPlan, family: int,
                  src_addr: int, dst_addr: int, sets: SetIntervals) -> Services:
    """What a NEW connection from ``src`` (its fixed IP ``src_addr``) to ``dst`` may use:
    the sender's egress intersected with the receiver's ingress, exactly."""
    steps = list(dst.ingress) + (list(src.egress) if src is not None else [])
    keys = chain_protocols(plan, steps) | {OTHER}
    full: Services = {k: [FULL_BOX] for k in keys}
    ing = services_walk(plan, dst, "ingress", family, src_addr, dst_addr, keys, sets) \
        if dst.filtered else full
    eg = services_walk(plan, src, "egress", family, src_addr, dst_addr, keys, sets) \
        if src is not None and src.filtered else full
    out: Services = {}
    for k in keys:
        both = [box_intersect(a, b) for a in ing[k] for b in eg[k]]
        out[k] = [b for b in both if not box_empty(b)]
    return out


def _every_sport(dports: IntervalSet, boxes: Sequence[Box]) -> bool:
    """Is every allowed destination port allowed from every source port? Boxes that
    already have every source port usually answer it; exact coverage decides the rest."""
    whole = IntervalSet()
    for b in boxes:
        if b[0] == FULL_PORTS and b[2] == FULL_BOX[2] and b[3] == FULL_BOX[3]:
            whole = whole | b[1]
    return whole.covers(dports) or covered((FULL_PORTS, dports, FULL_BOX[2], FULL_BOX[3]),
                                           boxes)


def services_text(sv: Services) -> str:
    """``any`` / ``tcp 22,80-90; icmp`` for a services map (empty entries = not allowed).

    Depends only on the set of packets each entry's boxes cover (and on which protocols
    the map names), never on how that set is cut into boxes."""
    from portwall.model.protocols import PORT_PROTOCOLS, protocol_name

    live = {k: v for k, v in sv.items() if v}
    if not live:
        return "nothing"
    if len(live) == len(sv) and all(covered(FULL_BOX, v) for v in live.values()):
        return "any"
    parts = []
    for k in sorted(live, key=lambda k: (k == OTHER, k)):
        if k == OTHER:
            parts.append("other protocols")
            continue
        name = protocol_name(k)
        boxes = live[k]
        if k in PORT_PROTOCOLS:
            dports = IntervalSet()
            for b in boxes:
                dports = dports | b[1]
            text = name if dports == FULL_PORTS else name + " " + ",".join(
                str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in dports.spans)
            # exact, not "some box has every source port": a drop of one source port
            # (the DHCP server replies) splits boxes without restricting anything else
            if not _every_sport(dports, boxes):
                text += " (from some source ports only)"
            parts.append(text)
        else:
            types = IntervalSet()
            for b in boxes:
                types = types | b[2]
            if types == FULL_BOX[2]:
                parts.append(name)
            else:  # e.g. only neighbour discovery (ICMPv6 135/136) from the fixed rules
                parts.append(f"{name} type " + ",".join(
                    str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in types.spans))
    return "; ".join(parts)
