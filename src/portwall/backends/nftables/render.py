"""IR -> portwall's nftables tables (layout in :mod:`.layout`), incrementally.

Ports share chains: a port's steps are turned into the lines of its direction chains with
everything port-specific moved into set elements keyed by the port's mark id (its anti-spoof
pairs; rules on the port's own addresses such as "DHCP reply to my fixed IP" become one
template rule ``meta mark . ip daddr @t_...`` plus one element per address). Ports whose
lines are equal -- the same groups, flags and provider rules -- use one chain, named by a
digest of its lines. So a new port adds elements (and a chain only for a new group
combination), a new member adds one element, a changed rule rewrites one group chain.
"""

from __future__ import annotations

import ipaddress
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

from portwall.backends.nftables.layout import BASE_CHAINS, BRIDGE_SETS, INET_SETS, SPOOF_CHAIN
from portwall.backends.nftables.notes import group_note, rule_note
from portwall.backends.nftables.setdelta import PrefixCounts
from portwall.backends.nftables.spell import (
    MAX_COMBO_ID,
    MAX_PORT_ID,
    VERDICT,
    RenderError,
    addr,
    collapse,
    comment,
    digest,
    ident,
    mark_of,
    match_variants,
    quote,
    set_names,
)
from portwall.backends.nftables.types import (
    BRIDGE,
    INET,
    Counted,
    NftChain,
    NftRuleset,
    NftSet,
    SetKey,
)
from portwall.bulk import cached_build
from portwall.ir.types import (
    AddressSet,
    HostPlan,
    IPNetwork,
    Jump,
    Origin,
    OriginKind,
    PortPlan,
    Rule,
    RuleSet,
    SpoofCheck,
    Step,
)

_NETS = (ipaddress.IPv4Network, ipaddress.IPv6Network)
_SPOOF_ORIGIN = Origin(OriginKind.SPOOF, "provider", "spoof", "spoof",
                       "source IP/MAC not among the port's anti-spoof entries")


def group_chain(rs: RuleSet) -> str:
    return f"g{'i' if rs.direction == 'ingress' else 'e'}_{ident(rs.group_id, 48)}"


def _middle(old: tuple[object, ...], new: tuple[object, ...]) -> tuple[int, int]:
    """Lengths of the common prefix and suffix of two sorted tuples (the compiler keeps ports
    and set members sorted, so one change leaves a short middle). Binary search over slice
    comparisons: C loops that stop at an identical object, so 10,000 ports cost ~0.1 ms
    instead of a Python pass."""
    lo, hi = 0, min(len(old), len(new))
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if old[:mid] == new[:mid]:
            lo = mid
        else:
            hi = mid - 1
    pre = lo
    lo, hi = 0, min(len(old), len(new)) - pre
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if old[len(old) - mid:] == new[len(new) - mid:]:
            lo = mid
        else:
            hi = mid - 1
    return pre, lo


@dataclass(slots=True)
class _PortOut:
    plan: PortPlan
    device: str
    chains: tuple[NftChain, ...]  # its direction chains (shared by equal ports)
    needs: dict[str, str]  # template set name -> declaration
    elements: list[tuple[SetKey, str]]
    combo: tuple[str, str] | None = None  # (ingress chain, egress chain) of a filtered port


class NftRenderer:
    """Renders plan after plan; unchanged ports and groups cost one identity check.

    The returned ruleset shares frozen element sets and chains with earlier ones (copy on
    write), which lets the applier skip unchanged sets by identity."""

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self._ports: dict[str, _PortOut] = {}  # device -> its output
        self._plan_ports: tuple[PortPlan, ...] = ()  # the ports of the last render
        self._groups: dict[int, tuple[RuleSet, str, NftChain]] = {}
        self._asets: dict[str, AddressSet] = {}  # address set id -> last rendered
        self._prefixes = PrefixCounts()  # address set id -> its prefixes, counted
        self._counted: dict[SetKey, Counted] = {}
        self._rule_text: dict[int, tuple[Rule, int]] = {}  # id(rule) -> (rule, text id)
        self._text_ids: dict[tuple[str, ...], int] = {}
        self._texts: dict[int, tuple[str, ...]] = {}
        self._templates: dict[tuple[object, ...], tuple[str, tuple[str, ...], str]] = {}
        self._shapes: dict[tuple[object, ...], NftChain] = {}
        self._owner = object()
        self._serial = 0
        self._chains: dict[str, NftChain] = {}  # port (group-combination) chains
        self._chain_refs: dict[str, int] = {}
        self._tmpl: dict[str, str] = {}  # template set -> declaration
        self._tmpl_refs: dict[str, int] = {}
        self._ids: dict[str, list[int]] = {}  # device -> [id, refs]
        self._used_ids: set[int] = set()
        self._combos: dict[tuple[str, str], list[int]] = {}  # chain pair -> [id, refs]
        self._used_combos: set[int] = set()

    def render(self, plan: HostPlan) -> NftRuleset:
        with cached_build(self._reset):
            return self._render(plan)

    # ------------------------------------------------------------- bookkeeping
    def _port_id(self, device: str) -> int:
        hit = self._ids.get(device)
        if hit is not None:
            hit[1] += 1
            return hit[0]
        if len(self._used_ids) >= MAX_PORT_ID:
            raise RenderError(f"more than {MAX_PORT_ID} ports on one host")
        pid = 1 + zlib.crc32(device.encode()) % MAX_PORT_ID
        while pid in self._used_ids:
            pid = pid % MAX_PORT_ID + 1
        self._used_ids.add(pid)
        self._ids[device] = [pid, 1]
        return pid

    def _release_id(self, device: str) -> None:
        hit = self._ids[device]
        hit[1] -= 1
        if hit[1] == 0:
            self._used_ids.discard(hit[0])
            del self._ids[device]

    def _combo_id(self, combo: tuple[str, str]) -> int:
        """The id of a (ingress, egress) chain pair: the verdict maps' key. Derived from the
        chain names (probing on a clash), so a restarted renderer mostly agrees with the
        kernel and its first diff stays small."""
        hit = self._combos.get(combo)
        if hit is not None:
            hit[1] += 1
            return hit[0]
        if len(self._used_combos) >= MAX_COMBO_ID:
            raise RenderError(f"more than {MAX_COMBO_ID} chain combinations on one host")
        cid = 1 + zlib.crc32("|".join(combo).encode()) % MAX_COMBO_ID
        while cid in self._used_combos:
            cid = cid % MAX_COMBO_ID + 1
        self._used_combos.add(cid)
        self._combos[combo] = [cid, 1]
        return cid

    def _release_combo(self, combo: tuple[str, str]) -> None:
        hit = self._combos[combo]
        hit[1] -= 1
        if hit[1] == 0:
            self._used_combos.discard(hit[0])
            del self._combos[combo]

    def _count(self, out: _PortOut, delta: int) -> None:
        counted = self._counted
        for key, el in out.elements:
            c = counted.get(key)
            if c is None:
                c = counted[key] = Counted()
            if delta > 0:
                c.inc(el)
            else:
                c.dec(el)
        for ch in out.chains:
            n = self._chain_refs.get(ch.name, 0) + delta
            if n:
                self._chain_refs[ch.name] = n
                self._chains.setdefault(ch.name, ch)
            else:
                del self._chain_refs[ch.name], self._chains[ch.name]
        for name, decl in out.needs.items():
            n = self._tmpl_refs.get(name, 0) + delta
            if n:
                self._tmpl_refs[name] = n
                self._tmpl.setdefault(name, decl)
            else:
                del self._tmpl_refs[name], self._tmpl[name]

    # ------------------------------------------------------------------ ports
    def _render_port(self, p: PortPlan, sets: Mapping[str, tuple[str, str]]) -> _PortOut:
        pid = self._port_id(p.device)
        dev = quote(p.device)
        needs: dict[str, str] = {}
        chains: list[NftChain] = []
        owned: list[tuple[str, IPNetwork]] = []  # (template set, one of the port's addresses)
        combo = None
        cid = 0
        if p.filtered:
            for direction, steps in (("i", p.ingress), ("e", p.egress)):
                shape = (direction, *self._port_lines(p, steps, sets, owned, needs))
                chain = self._shapes.get(shape)
                if chain is None:
                    lines = self._shape_lines(shape[1:])
                    chain = self._shapes[shape] = NftChain(
                        INET, f"p{direction}_{digest(lines)}", tuple(lines))
                chains.append(chain)
            combo = (chains[0].name, chains[1].name)
            cid = self._combo_id(combo)
        mark = mark_of(pid, cid)
        els: list[tuple[SetKey, str]] = [((BRIDGE, "ports"), f"{dev} : {mark}"),
                                         ((BRIDGE, "ids"), str(mark))]
        macs = sorted({p.mac.lower(), *(e.mac.lower() for e in p.spoof)} - {""})
        side = "tracked" if (p.stateful or not p.filtered) else "stateless"
        els.append(((INET, f"{side}_ids"), str(mark)))
        els += [((INET, f"{side}_macs"), m) for m in macs]
        if p.bridge:
            els.append(((INET, "zones"), f"{quote(p.bridge)} : {p.zone}"))
        if combo is None:
            return _PortOut(p, p.device, (), {}, els)
        els += [((INET, "ingress"), f"{cid} : goto {combo[0]}"),
                ((INET, "egress"), f"{cid} : goto {combo[1]}")]
        els += self._spoof_elements(p, mark, dev)
        els += [((INET, tmpl), f"{mark} . {addr(a)}") for tmpl, a in owned]
        return _PortOut(p, p.device, tuple(chains), needs, els, combo)

    @staticmethod
    def _spoof_elements(p: PortPlan, mark: int, dev: str) -> list[tuple[SetKey, str]]:
        els: list[tuple[SetKey, str]] = []
        pairs: dict[tuple[int, str], list[IPNetwork]] = {}
        for e in p.spoof:
            mac = e.mac.lower()
            fam: int = e.family
            if e.cidr is None:
                els.append(((INET, f"sp{fam}m"), f"{mark} . {mac}"))
                if fam == 4:
                    els.append(((BRIDGE, "arp_m"), f"{dev} . {mac} . {mac}"))
                else:
                    els.append(((BRIDGE, "nd_m"), f"{dev} . {mac}"))
            elif e.cidr.prefixlen == e.cidr.max_prefixlen:
                a = addr(e.cidr)
                els.append(((INET, f"sp{fam}h"), f"{mark} . {mac} . {a}"))
                if fam == 4:
                    els.append(((BRIDGE, "arp_h"), f"{dev} . {mac} . {mac} . {a}"))
                else:
                    els.append(((BRIDGE, "nd_h"),
                                f"{dev} . {mac} . {int(e.cidr.network_address)}"))
            else:
                pairs.setdefault((fam, mac), []).append(e.cidr)
        for (fam, mac), nets in sorted(pairs.items()):
            for net in collapse(nets):
                els.append(((INET, f"sp{fam}n"), f"{mark} . {mac} . {addr(net)}"))
                if fam == 4:
                    els.append(((BRIDGE, "arp_n"), f"{dev} . {mac} . {mac} . {addr(net)}"))
                else:
                    lo, hi = int(net.network_address), int(net.broadcast_address)
                    els.append(((BRIDGE, "nd_n"), f"{dev} . {mac} . {lo}-{hi}"))
        return els

    def _port_lines(self, p: PortPlan, steps: Iterable[Step],
                    sets: Mapping[str, tuple[str, str]], owned: list[tuple[str, IPNetwork]],
                    needs: dict[str, str]) -> tuple[str, ...]:
        """The port's direction chain as a shape (one token per step, cached texts); equal
        shapes are one chain. Rules on the port's own addresses go to ``owned``."""
        shape: list[object] = []
        own = p.addresses
        last_tmpl = ""
        rule_text = self._rule_text
        for step in steps:
            if isinstance(step, Rule):
                hit = rule_text.get(id(step))
                if hit is not None:  # a rule already met (provider rules are shared objects)
                    last_tmpl = ""
                    shape.append(hit[1])
                    continue
                m = step.match
                field_ = ("d" if m.dst is not None and m.dst in own
                          else "s" if m.src is not None and m.src in own else None)
                if field_ is None:
                    last_tmpl = ""
                    if hit is None:
                        text = tuple(f"{v} {VERDICT[step.action]} {comment(step.rid)}"
                                     for v in match_variants(m, sets))
                        # equal rules of different ports (e.g. each port's fallback drop)
                        # get one token, so their ports can share a chain
                        tid = self._text_ids.setdefault(text, len(self._text_ids))
                        hit = rule_text[id(step)] = (step, tid)
                        self._texts[tid] = text
                    shape.append(hit[1])
                    continue
                # A rule on one of the port's own addresses: a shared template + an element.
                a = m.dst if field_ == "d" else m.src
                assert isinstance(a, _NETS)
                # the match without the port's own address (a plain tuple: no new Match
                # object per port)
                fast = (field_, m.family, m.protocol, m.src if field_ == "d" else m.dst,
                        m.src_mac, m.sport, m.dport, m.icmp_type, m.icmp_code, m.ct,
                        step.action)
                tmpl = self._templates.get(fast)
                if tmpl is None:
                    tkey = (field_, replace(m, dst=None) if field_ == "d"
                            else replace(m, src=None), step.action)
                    rest = match_variants(m, sets, skip=field_)
                    ip = "ip" if m.family == 4 else "ip6"
                    name = f"t_{digest([repr(tkey)])}"
                    tmpl = self._templates[fast] = (name, tuple(
                        f"{v} meta mark . {ip} {field_}addr @{name} {VERDICT[step.action]} "
                        f"{comment(name)}" for v in rest), f"type mark . ipv{m.family}_addr;")
                if tmpl[0] != last_tmpl:  # consecutive equal templates are one rule
                    shape.append(tmpl[0])
                    last_tmpl = tmpl[0]
                needs[tmpl[0]] = tmpl[2]
                owned.append((tmpl[0], a))
            elif isinstance(step, Jump):
                last_tmpl = ""
                target = self._group_names.get(step.ruleset_id)
                if target is None:
                    raise RenderError(f"port {p.id} jumps to unknown rule set {step.ruleset_id}")
                shape.append(("j", *target, step.ruleset_id))
            elif isinstance(step, SpoofCheck):
                last_tmpl = ""
                shape.append("S")
            else:  # pragma: no cover - the IR has exactly three step kinds
                raise RenderError(f"unknown step {step!r}")
        return tuple(shape)  # type: ignore[arg-type]

    def _shape_lines(self, shape: tuple[object, ...]) -> list[str]:
        lines: list[str] = []
        tmpl_lines = {t[0]: t[1] for t in self._templates.values()}
        for tok in shape:
            if isinstance(tok, int):
                lines += self._texts[tok]
            elif tok == "S":
                lines.append(f"jump {SPOOF_CHAIN} {comment('pw-spoof-check')}")
            elif isinstance(tok, tuple):
                lines.append(f"jump {tok[1]} {comment(str(tok[3]), str(tok[2]))}")
            else:
                lines += tmpl_lines[str(tok)]
        return lines

    # ----------------------------------------------------------------- groups
    def _group(self, rsid: str, rs: RuleSet, sets: Mapping[str, tuple[str, str]]) -> NftChain:
        hit = self._groups.get(id(rs))
        if hit is not None and hit[1] == rsid:
            self._new_groups[id(rs)] = hit
            return hit[2]
        lines = [f"{v} accept {comment(r.rid, rule_note(rs, r))}" for r in rs.rules
                 for v in match_variants(r.match, sets)]
        chain = NftChain(INET, group_chain(rs), tuple(lines))
        self._new_groups[id(rs)] = (rs, rsid, chain)
        return chain

    def _address_sets(self, plan: HostPlan) -> list[NftSet]:
        """Two sets per remote group: host addresses counted per member object (one new
        member is one element, however big the group), prefixes collapsed (few)."""
        old, self._asets = self._asets, {}
        out = []
        for sid, aset in plan.address_sets.items():
            hname, nname = set_names(sid, aset.family)
            hkey, nkey = (INET, hname), (INET, nname)
            hc = self._counted.setdefault(hkey, Counted())
            nc = self._counted.setdefault(nkey, Counted())
            hit = old.get(sid)
            if hit is not aset:  # O(change) with the compiler's delta (setdelta.py)
                self._prefixes.update(sid, hit, aset, hc, nc, _middle)
            self._asets[sid] = aset
            t = f"ipv{aset.family}_addr"
            out += [NftSet(INET, hname, f"type {t};", hc),
                    NftSet(INET, nname, f"type {t}; flags interval;", nc)]
        self._prefixes.forget(set(self._asets))
        return out

    # ----------------------------------------------------------------- render
    def _render(self, plan: HostPlan) -> NftRuleset:
        sets = {sid: set_names(sid, s.family) for sid, s in plan.address_sets.items()}
        self._new_groups: dict[int, tuple[RuleSet, str, NftChain]] = {}
        group_chains = [self._group(rsid, rs, sets) for rsid, rs in plan.rulesets.items()]
        # rule set id -> (its chain, the words after the rid in a jump's comment)
        self._group_names = {rsid: (group_chain(rs), group_note(rs))
                             for rsid, rs in plan.rulesets.items()}
        if len({c.name for c in group_chains}) != len(group_chains):
            raise RenderError("two rule sets map to one chain name")
        self._groups = self._new_groups
        # Which ports came and went: only the middle where the (sorted) port tuples differ
        # is looked at, so an unchanged port costs nothing (O(change), not O(ports)).
        old, new = self._plan_ports, plan.ports
        if old is not new:
            pre, suf = _middle(old, new)
            ports = self._ports
            gone = {p.device: p for p in old[pre:len(old) - suf]}
            came = []
            for p in new[pre:len(new) - suf]:
                was = gone.get(p.device)
                if was is not None and was == p:
                    del gone[p.device]  # moved in the order only
                else:
                    came.append(p)
            gone_outs = [ports.pop(d) for d in gone]
            for p in came:  # new first: what a replaced port keeps is never removed
                if p.device in ports:
                    raise RenderError("two ports share a device name")
                out = self._render_port(p, sets)
                self._count(out, +1)
                ports[p.device] = out
            for out in gone_outs:
                self._count(out, -1)
                self._release_id(out.device)
                if out.combo is not None:
                    self._release_combo(out.combo)
            self._plan_ports = new

        self._serial += 1
        rs = NftRuleset(owner=self._owner, serial=self._serial, parent=self._serial - 1)
        for fam, table in ((BRIDGE, BRIDGE_SETS), (INET, INET_SETS)):
            for name, (is_map, decl) in table.items():
                rs.sets[(fam, name)] = NftSet(fam, name, decl, self._count_of((fam, name)),
                                              is_map)
        for name, decl in sorted(self._tmpl.items()):
            rs.sets[(INET, name)] = NftSet(INET, name, decl, self._count_of((INET, name)))
        for s in self._address_sets(plan):
            rs.sets[s.key] = s
        for c in BASE_CHAINS:
            rs.chains[c.key] = c
        for c in group_chains:
            rs.chains[c.key] = c
        for name in sorted(self._chains):
            rs.chains[(INET, name)] = self._chains[name]
        for key in [k for k in self._counted if k not in rs.sets]:
            del self._counted[key]  # a template set or remote group that went away
        for key, cnt in self._counted.items():
            if cnt.added or cnt.removed:
                rs.deltas[key] = cnt.take_delta()
        if len(self._rule_text) > 4 * len(plan.ports) + 10_000:
            self._rule_text.clear()  # rules of deleted ports pile up: refill on demand
            self._shapes.clear()
        rs._provenance = lambda: provenance(plan)
        return rs

    _group_names: dict[str, tuple[str, str]]
    _new_groups: dict[int, tuple[RuleSet, str, NftChain]]

    def _count_of(self, key: SetKey) -> Counted:
        c = self._counted.get(key)
        if c is None:
            c = self._counted[key] = Counted()
        return c


def provenance(plan: HostPlan) -> dict[str, Origin]:
    """rid -> Origin of every rule and anti-spoof entry the ruleset of ``plan`` writes
    (template rules' elements carry their port rule's rid, spoof elements
    ``spoof-<port>-<index>``)."""
    prov: dict[str, Origin] = {"pw-spoof-drop": _SPOOF_ORIGIN}
    for rs in plan.rulesets.values():
        for r in rs.rules:
            prov[r.rid] = r.origin
    for p in plan.ports:
        for step in (*p.ingress, *p.egress):
            if isinstance(step, Rule):
                prov[step.rid] = step.origin
            elif isinstance(step, Jump):
                prov[step.ruleset_id] = step.origin
        for i, e in enumerate(p.spoof):
            prov[f"spoof-{p.id}-{i}"] = e.origin
    return prov


def render_nftables(plan: HostPlan) -> NftRuleset:
    """One-shot render (a long-running process keeps an :class:`NftRenderer`)."""
    return NftRenderer().render(plan)
