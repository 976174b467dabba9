"""IR -> iptables + ipset, spelled exactly as ``iptables-save`` / ``ipset save`` print it.

The layout (``docs/architecture.md``) per family, filter table::

    FORWARD -> pw-FORWARD: per bridge, bridged traffic -> pw-sg
    pw-sg: clear portwall's mark bits; -> pw-dispatch; finally ACCEPT what a port chain
           (or an unfiltered port) marked as seen (anything else, e.g. docker0's traffic,
           returns to FORWARD untouched so other programs' rules still apply)
    pw-dispatch: per filtered port --physdev-out TAP -> pw-i<port>, --physdev-in TAP ->
           pw-o<port>; ports without port security only mark the packet as seen. No rule
           here is terminal (a port chain drops or returns), so the order of ports does not
           matter and a new port is appended (Chain.ordered = False)
    INPUT -> pw-INPUT: per filtered port --physdev-in TAP -> pw-o<port> (VM -> host),
           also order-free
    pw-i/pw-o<port>: set "seen", clear "accept", then the IR steps in order
    pw-s<port>: one RETURN per anti-spoof entry, then DROP
    pw-gi/pw-ge<group>: one chain per security group and direction, shared by its ports;
           a match sets the "accept" mark bit and the port chain RETURNs on it (Calico style),
           so the rule count grows with ports + rules, never ports x rules

and in the raw table ``PREROUTING -> pw-PREROUTING``: one fixed ``CT --notrack`` for hops the
bridge table marked untracked, then a conntrack zone per network. The bridge table itself
(ARP/ND anti-spoofing, which hops are tracked) is :mod:`.l2`: per port only set elements.

Rules are stored without ``-A <chain>`` and in ``iptables-save``'s canonical spelling
(checked against iptables 1.8.9, nft and legacy backends, by ``tests/e2e/test_render_loads.py``)
so the applier can compare desired and actual chains as plain strings. Every rule carries a
comment: the IR rule's ``rid`` or a stable tag for structural rules, as its first token; rules
of a security group, a group jump or a port add the names behind them for people
(``sgr-<id> group web ingress tcp/22``, ``port-<id> port web-1``; :func:`.spelling.name_token`).
"""

from __future__ import annotations

import hashlib
import itertools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from portwall.backends.iptables.l2 import MARK_NOTRACK, L2Port, port_elements
from portwall.backends.iptables.l2 import ORIGINS as L2_ORIGINS
from portwall.backends.iptables.notes import group_note, port_note, rule_note
from portwall.backends.iptables.setdelta import SetEntries
from portwall.backends.iptables.spelling import (
    _SAFE,
    RenderError,
    _comment,
    _has_mark,
    _mark,
    _net,
    match_spec,
    protocol_spelling,
)
from portwall.backends.iptables.types import (
    PREFIX,
    SET_PREFIX,
    Chain,
    Hook,
    IpFamily,
    IpSet,
    IptablesRuleset,
    Provenance,
    Table,
)
from portwall.bulk import cached_build
from portwall.ir.types import (
    Action,
    AddressSet,
    Family,
    HostPlan,
    IPNetwork,
    Jump,
    Origin,
    OriginKind,
    PortPlan,
    Rule,
    RuleSet,
    SpoofCheck,
)

# Mark bits portwall owns. SEEN: a portwall port chain handled the packet (pw-sg accepts
# only those). ACCEPT: a security-group chain matched (the port chain RETURNs on it).
# Chosen outside kube-proxy's 0x4000/0x8000 and Neutron L3's low 16 bits.
MARK_SEEN = 0x100000
MARK_ACCEPT = 0x200000
MARK_MASK = MARK_SEEN | MARK_ACCEPT

FORWARD_CHAIN = f"{PREFIX}FORWARD"
INPUT_CHAIN = f"{PREFIX}INPUT"
SG_CHAIN = f"{PREFIX}sg"
DISPATCH_CHAIN = f"{PREFIX}dispatch"
PREROUTING_CHAIN = f"{PREFIX}PREROUTING"

#: iptables' limit on chain names.
CHAIN_NAME_MAX = 28
#: ipset allows 31 characters; portwall's names stay within 27 so that an applier can add a
#: 4-character suffix (e.g. ``-new``) for a temporary set it swaps in.
SET_NAME_MAX = 27
DEFAULT_MAXELEM = 65536


# --------------------------------------------------------------------------- names


def _ident(text: str, room: int) -> str:
    """``text`` itself when it fits ``room`` and is plain; otherwise a readable prefix plus a
    hash of the whole text, so distinct ids never end up with the same name."""
    if len(text) <= room and _SAFE.fullmatch(text):
        return text
    digest = hashlib.sha1(text.encode()).hexdigest()[:6]
    clean = re.sub(r"[^A-Za-z0-9_-]", "", text)[: room - 7]
    return f"{clean}-{digest}" if clean else digest


def _port_key(port: PortPlan) -> str:
    # The device is unique on a host, so chains derived from it are too; ``tap`` + 11
    # characters of the port id gives ``pw-i<11 chars of the port id>``.
    dev = port.device[3:] if port.device.startswith("tap") and len(port.device) > 3 else port.device
    return _ident(dev, 15)


def ingress_chain(port: PortPlan) -> str:
    """Traffic to the VM."""
    return f"{PREFIX}i{_port_key(port)}"


def egress_chain(port: PortPlan) -> str:
    """Traffic from the VM (forwarded or to the host)."""
    return f"{PREFIX}o{_port_key(port)}"


def spoof_chain(port: PortPlan) -> str:
    return f"{PREFIX}s{_port_key(port)}"


def group_chain(ruleset: RuleSet) -> str:
    """The shared chain of one security group and direction: ``pw-gi...`` / ``pw-ge...``."""
    d = "i" if ruleset.direction == "ingress" else "e"
    return f"{PREFIX}g{d}{_ident(ruleset.group_id, CHAIN_NAME_MAX - len(PREFIX) - 2)}"


def set_name(group_id: str, family: Family) -> str:
    """The ipset of a remote group's addresses: ``pw4-...`` / ``pw6-...``."""
    head = f"{SET_PREFIX}{family}-"
    return head + _ident(group_id, SET_NAME_MAX - len(head))


# -------------------------------------------------------------------- structure
_ACTION_TARGET = {Action.ALLOW: "-j RETURN", Action.DROP: "-j DROP"}
_PORT_MARK = f"{_comment('pw-port-mark')} {_mark(MARK_SEEN, MARK_MASK)}"
_GROUP_ACCEPT = f"{_has_mark(MARK_ACCEPT)} {_comment('pw-group-accept')} -j RETURN"
_SPOOF_DROP = f"{_comment('pw-spoof-drop')} -j DROP"


_NOTRACK = f"{_has_mark(MARK_NOTRACK)} {_comment('pw-notrack')} -j CT --notrack"


def _structural(tag: str, detail: str, kind: OriginKind = OriginKind.PROVIDER) -> Origin:
    return Origin(kind, "provider", tag, tag, detail)


#: Origins of the comment tags that every host's ruleset carries (not tied to a resource).
STRUCTURAL_ORIGINS: dict[str, Origin] = {
    "pw-hook": _structural("pw-hook", "portwall's hook in a built-in chain"),
    "pw-mark-reset": _structural("pw-mark-reset", "clears portwall's mark bits"),
    "pw-dispatch": _structural("pw-dispatch", "per-port dispatch of bridged traffic"),
    "pw-seen-accept": _structural("pw-seen-accept", "accepts what a port chain allowed"),
    "pw-port-mark": _structural("pw-port-mark", "marks a packet as handled by a port chain"),
    "pw-group-accept": _structural("pw-group-accept",
                                   "returns when a security-group chain allowed the packet"),
    "pw-notrack": _structural("pw-notrack", "a hop between stateless ports (or a stateless port"
                              " and a non-port) is not tracked"),
    "pw-spoof-drop": _structural("pw-spoof-drop", "source IP/MAC not on the port's allow-list",
                                 OriginKind.SPOOF),
}


def spoof_rid(port: PortPlan, family: int, index: int) -> str:
    """The comment of a port's ``index``-th anti-spoof entry of ``family``: names the port,
    so a failing or drifting spoof line is traced to it (numbered per family, so a new IPv4
    pair leaves the IPv6 chain's text alone)."""
    return f"spoof-{port.id}-v{family}-{index}"


def _net_origin(network_id: str, zone: int) -> Origin:
    return Origin(OriginKind.PROVIDER, "network", network_id, "",
                  f"bridged traffic of network {network_id} (conntrack zone {zone})")


def port_origins(ports: Iterable[PortPlan]) -> dict[str, Origin]:
    """rid -> Origin of every line the renderer writes for ``ports`` (their chains, spoof
    entries, dispatch and bridge-table elements), in the renderer's own naming. Computed
    when provenance is read, not on every render."""
    out: dict[str, Origin] = {}
    for p in ports:
        if not p.filtered:
            out[f"unfiltered-{p.id}"] = Origin(OriginKind.UNFILTERED, "port", p.id, p.name,
                                               "port security disabled")
            out[f"l2-{p.device}"] = Origin(OriginKind.UNFILTERED, "port", p.id, p.name,
                                           f"bridge-table elements of port {p.device}")
            continue
        out[f"port-{p.id}"] = Origin(OriginKind.PROVIDER, "port", p.id, p.name,
                                     f"dispatch of port {p.device}")
        out[f"l2-{p.device}"] = Origin(OriginKind.SPOOF, "port", p.id, p.name,
                                       f"ARP/ND guard and tracking of port {p.device}")
        for step in (*p.ingress, *p.egress):
            if isinstance(step, Rule):
                out.setdefault(step.rid, step.origin)
            elif isinstance(step, Jump):
                out.setdefault(step.ruleset_id, step.origin)
            elif isinstance(step, SpoofCheck):
                out[f"spoof-{p.id}"] = step.origin
        for family in (4, 6):
            entries = [e for e in p.spoof if e.family == family]
            for i, e in enumerate(entries):
                out[spoof_rid(p, family, i)] = e.origin
    return out


_MISSING = ("<unknown rule set>",)  # a Jump's rule set absent from the plan


@dataclass(slots=True)
class _PortOut:
    """One port's rendering, reused while the port's IR object and the group jumps it
    uses are unchanged."""

    plan: PortPlan  # kept alive: the cache is keyed on id(plan)
    rulesets: frozenset[str]  # rule sets the port jumps to
    chains: dict[int, tuple[tuple[str, Chain], ...]]  # family -> (name, chain), in order
    dispatch: tuple[str, ...]
    inp: tuple[str, ...]
    l2: L2Port  # the port's elements in the bridge table (l2.py)


@dataclass(slots=True)
class _GroupOut:
    """One rule set's chain per family and the two rules a port uses to jump to it (None
    when the group has no rule of that family: ports then skip it)."""

    ruleset: RuleSet  # kept alive: the cache is keyed on id(ruleset)
    rsid: str  # the plan's key for it (written into the jump's comment)
    name: str
    chain: dict[int, Chain | None]
    jump: dict[int, tuple[str, str] | None]


class IptablesRenderer:
    """Renders plan after plan, re-rendering only the ports and rule sets that changed.

    A long-running process keeps one (per host) next to a :class:`portwall.ir.PlanCompiler`,
    which hands back the *same* PortPlan/RuleSet/AddressSet objects for what did not change:
    their rendering is cached by identity, so a small change costs O(changed ports) plus
    assembling the dispatch/INPUT chains. The output always equals
    :func:`render_iptables` of the same plan; the returned ruleset shares chain and set
    objects with earlier ones and must be treated as read-only.
    """

    #: The rule-text cache may grow to twice its size after a refill plus this many
    #: entries before it is cleared (see _sync_sets).
    RULE_TEXT_SLACK = 10_000

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self.sets: dict[str, str] = {}  # IR set id -> ipset name, as of the last render
        # id(rule) -> (rule, note, match + comment); the note (names) is checked on a hit
        self._rule_text: dict[int, tuple[Rule, str, str]] = {}
        self._rule_text_limit = 0
        self._names: dict[int, tuple[PortPlan, tuple[str, str, str]]] = {}
        self._groups: dict[int, _GroupOut] = {}
        self._jumps: dict[int, dict[str, tuple[str, str] | None]] = {4: {}, 6: {}}
        self._ports: dict[int, _PortOut] = {}
        self._ipsets: dict[int, tuple[AddressSet, str, IpSet]] = {}
        # ipset name -> its sorted entries, followed by member deltas: see _members_of
        self._member_text: dict[str, SetEntries] = {}

    def render(self, plan: HostPlan) -> IptablesRuleset:
        """The whole iptables + ipset state for ``plan`` (see :func:`render_iptables`)."""
        with cached_build(self._reset):
            return self._render(plan)

    # --------------------------------------------------------------- caches
    def _sync_sets(self, plan: HostPlan) -> None:
        """Rule text names ipsets: when the names change, every cached rendering may."""
        sets = {sid: set_name(s.group_id, s.family) for sid, s in plan.address_sets.items()}
        if sets != self.sets:
            self._reset()
            self.sets = sets
        if len(self._rule_text) > self._rule_text_limit:
            # Rules of deleted ports and groups pile up in a long-running process: start
            # afresh now and then (it refills with what the next renders use).
            self._rule_text.clear()
            self._rule_text_limit = 0

    def rule(self, rule: Rule, target: str, note: str = "") -> str:
        """Match + comment (rid, then ``note``), cached per IR rule object, then the target."""
        hit = self._rule_text.get(id(rule))
        if hit is None or hit[1] != note:
            text = " ".join([*match_spec(rule.match, self.sets), _comment(rule.rid, note)])
            # keeps the rule alive: id stays valid
            hit = self._rule_text[id(rule)] = (rule, note, text)
        return f"{hit[2]} {target}"

    def _port_names(self, plan: HostPlan) -> dict[str, tuple[str, str, str]]:
        """Each port's (ingress, egress, spoof) chain; refuses two ports on one name."""
        old = self._names
        hits = [old.get(id(p)) or (p, (ingress_chain(p), egress_chain(p), spoof_chain(p)))
                for p in plan.ports]
        self._names = {id(h[0]): h for h in hits}
        taken = (SG_CHAIN, DISPATCH_CHAIN, FORWARD_CHAIN, INPUT_CHAIN, PREROUTING_CHAIN)
        count = len(taken) + 3 * len(hits)
        if len({*taken, *(n for _p, names in hits for n in names)}) != count:
            self._name_clash(hits, taken)
        return {p.id: names for p, names in hits}

    @staticmethod
    def _name_clash(hits: list[tuple[PortPlan, tuple[str, str, str]]],
                    taken: tuple[str, ...]) -> None:
        """Name the first two ports (or port and portwall chain) on one chain name."""
        seen = dict.fromkeys(taken, "portwall")
        for p, names in hits:
            for name in names:
                if name in seen:
                    raise RenderError(f"ports {seen[name]} and {p.id} map to the same chain "
                                      f"{name}: their devices ({p.device}) collide")
                seen[name] = p.id

    def _group_outs(self, plan: HostPlan) -> list[_GroupOut]:
        """Every rule set's chains and jumps; refuses two rule sets on one chain name."""
        old, self._groups = self._groups, {}
        taken: dict[str, str] = {}
        outs = []
        for rsid, rs in plan.rulesets.items():
            out = old.get(id(rs))
            if out is None or out.rsid != rsid:
                out = self._render_group(rsid, rs)
            self._groups[id(rs)] = out
            if taken.setdefault(out.name, rsid) != rsid:
                raise RenderError(f"rule sets {taken[out.name]} and {rsid} map to chain "
                                  f"{out.name}")
            outs.append(out)
        return outs

    def _render_group(self, rsid: str, rs: RuleSet) -> _GroupOut:
        name = group_chain(rs)
        out = _GroupOut(rs, rsid, name, {}, {})
        set_accept = _mark(MARK_ACCEPT, MARK_ACCEPT)
        for family in (4, 6):
            rules = [r for r in rs.rules if r.match.family == family]
            if rules:
                out.chain[family] = Chain(name, [self.rule(r, set_accept, rule_note(rs, r))
                                                 for r in rules])
                out.jump[family] = (f"{_comment(rsid, group_note(rs))} -j {name}", _GROUP_ACCEPT)
            else:
                out.chain[family] = out.jump[family] = None
        return out

    def _changed_jumps(self, plan: HostPlan, groups: list[_GroupOut]) -> set[str]:
        """Rule sets whose jump rules (or existence) changed since the last render: the
        only way a port's rendering can change while its IR object stays the same."""
        changed: set[str] = set()
        for family in (4, 6):
            new = {rsid: g.jump[family] for rsid, g in zip(plan.rulesets, groups, strict=True)}
            old, self._jumps[family] = self._jumps[family], new
            if new != old:
                changed |= {r for r in new.keys() | old.keys() if new.get(r, _MISSING) !=
                            old.get(r, _MISSING)}
        return changed

    def _port_outs(self, plan: HostPlan, names: Mapping[str, tuple[str, str, str]],
                   changed_jumps: set[str]) -> list[_PortOut]:
        old, self._ports = self._ports, {}
        outs = []
        for p in plan.ports:
            out = old.get(id(p))
            if out is None or (changed_jumps and not changed_jumps.isdisjoint(out.rulesets)):
                out = self._render_port(p, names[p.id])
            self._ports[id(p)] = out
            outs.append(out)
        return outs

    def _render_port(self, p: PortPlan, names: tuple[str, str, str]) -> _PortOut:
        seen = _mark(MARK_SEEN, MARK_SEEN)
        if not p.filtered:
            tag = _comment(f"unfiltered-{p.id}", port_note(p))
            return _PortOut(p, frozenset(), {4: (), 6: ()}, (
                f"-m physdev --physdev-out {p.device} --physdev-is-bridged {tag} {seen}",
                f"-m physdev --physdev-in {p.device} --physdev-is-bridged {tag} {seen}",
            ), (), port_elements(p))
        ich, och, sch = names
        chains: dict[int, tuple[tuple[str, Chain], ...]] = {}
        used: set[str] = set()  # rule sets the port jumps to (filled while rendering)
        for family in (4, 6):
            jumps = self._jumps[family]
            chains[family] = (
                (sch, Chain(sch, self._spoof_rules(p, family))),
                (ich, Chain(ich, self._port_rules(p, p.ingress, family, jumps, sch, used))),
                (och, Chain(och, self._port_rules(p, p.egress, family, jumps, sch, used))),
            )
        tag = _comment(f"port-{p.id}", port_note(p))
        return _PortOut(
            p, frozenset(used), chains,
            (f"-m physdev --physdev-out {p.device} --physdev-is-bridged {tag} -j {ich}",
             f"-m physdev --physdev-in {p.device} --physdev-is-bridged {tag} -j {och}"),
            (f"-m physdev --physdev-in {p.device} {tag} -j {och}",), port_elements(p))

    def _port_rules(self, port: PortPlan, steps: Iterable[object], family: IpFamily,
                    group_jump: Mapping[str, tuple[str, str] | None], spoof: str,
                    used: set[str]) -> list[str]:
        out = [_PORT_MARK]
        for step in steps:
            if isinstance(step, Rule):
                if step.match.family == family:
                    out.append(self.rule(step, _ACTION_TARGET[step.action]))
            elif isinstance(step, Jump):
                used.add(step.ruleset_id)
                jump = group_jump.get(step.ruleset_id)
                if jump is not None:
                    out += jump
                elif step.ruleset_id not in group_jump:
                    raise RenderError(f"port {port.id} jumps to unknown rule set {step.ruleset_id}")
            elif isinstance(step, SpoofCheck):
                out.append(f"{_comment(f'spoof-{port.id}', port_note(port))} -j {spoof}")
            else:  # pragma: no cover - the IR has exactly three step kinds
                raise RenderError(f"unknown step {step!r}")
        return out

    @staticmethod
    def _spoof_rules(port: PortPlan, family: IpFamily) -> list[str]:
        out: list[str] = []
        for e in port.spoof:
            if e.family != family:
                continue
            src = "" if e.cidr is None or not e.cidr.prefixlen else f"-s {_net(e.cidr)} "
            rid = spoof_rid(port, family, len(out))
            out.append(f"{src}-m mac --mac-source {e.mac.lower()} "
                       f"{_comment(rid, port_note(port))} -j RETURN")
        out.append(_SPOOF_DROP)
        return out

    # --------------------------------------------------------------- render
    def _render(self, plan: HostPlan) -> IptablesRuleset:
        self._sync_sets(plan)
        names = self._port_names(plan)
        groups = self._group_outs(plan)
        ports = self._port_outs(plan, names, self._changed_jumps(plan, groups))
        if not self._rule_text_limit:
            self._rule_text_limit = 2 * len(self._rule_text) + self.RULE_TEXT_SLACK
        bridges: dict[str, tuple[str, int]] = {}  # each bridge once, with network and zone
        for p in plan.ports:
            bridges.setdefault(p.bridge, (p.network_id, p.zone))
        bridges = dict(sorted(bridges.items()))
        ruleset = IptablesRuleset()
        for family in (4, 6):
            ruleset.tables[family] = {"filter": self._filter_table(family, groups, ports, bridges),
                                      "raw": self._raw_table(ports, bridges)}
        ruleset.ipsets = self._ipsets_of(plan)
        ruleset.l2 = {out.plan.device: out.l2 for out in ports}
        ruleset.provenance = Provenance([
            STRUCTURAL_ORIGINS, L2_ORIGINS,
            {f"net-{nid}": _net_origin(nid, zone) for nid, zone in bridges.values()},
            lambda: {r.rid: r.origin for g in groups for r in g.ruleset.rules},
            lambda: port_origins(out.plan for out in ports)])
        return ruleset

    @staticmethod
    def _filter_table(family: IpFamily, groups: list[_GroupOut], ports: list[_PortOut],
                      bridges: Mapping[str, tuple[str, int]]) -> Table:
        table = Table("filter")
        group_chains = [c for g in groups if (c := g.chain[family]) is not None]
        for gc in sorted(group_chains, key=lambda c: c.name):
            table.chains[gc.name] = gc
        # Flattened in C (itertools.chain): this is the only per-port work left when
        # nothing changed, so it sets the floor of an incremental render.
        table.chains.update(itertools.chain.from_iterable(out.chains[family] for out in ports))
        dispatch = list(itertools.chain.from_iterable(out.dispatch for out in ports))
        inp = list(itertools.chain.from_iterable(out.inp for out in ports))
        table.chains[DISPATCH_CHAIN] = Chain(DISPATCH_CHAIN, dispatch, ordered=False)
        table.chains[SG_CHAIN] = Chain(SG_CHAIN, [
            f"{_comment('pw-mark-reset')} {_mark(0, MARK_MASK)}",
            f"{_comment('pw-dispatch')} -j {DISPATCH_CHAIN}",
            f"{_has_mark(MARK_SEEN)} {_comment('pw-seen-accept')} -j ACCEPT",
        ])
        table.chains[INPUT_CHAIN] = Chain(INPUT_CHAIN, inp, ordered=False)
        table.chains[FORWARD_CHAIN] = Chain(FORWARD_CHAIN, [
            f"-o {bridge} -m physdev --physdev-is-bridged {_comment(f'net-{nid}')} -j {SG_CHAIN}"
            for bridge, (nid, _zone) in bridges.items()
        ])
        table.hooks = [Hook("FORWARD", f"{_comment('pw-hook')} -j {FORWARD_CHAIN}"),
                       Hook("INPUT", f"{_comment('pw-hook')} -j {INPUT_CHAIN}")]
        return table

    @staticmethod
    def _raw_table(ports: list[_PortOut], bridges: Mapping[str, tuple[str, int]]) -> Table:
        """Conntrack zones, one per network, by bridge: with bridge netfilter a bridged
        packet's in-interface is the bridge, so one rule per bridge zones every port of the
        network (and the host's own traffic into it). Before them (the first CT target a
        packet meets wins) one fixed NOTRACK rule for hops the bridge table marked untracked
        (both ends stateless, or stateless and not a port: see l2.py). No port has a rule
        here, so adding one, stateless or not, leaves the raw table untouched."""
        rules = [_NOTRACK]
        for bridge, (nid, zone) in bridges.items():
            rules.append(f"-i {bridge} {_comment(f'net-{nid}')} -j CT --zone {zone}")
        table = Table("raw")
        table.chains[PREROUTING_CHAIN] = Chain(PREROUTING_CHAIN, rules)
        table.hooks = [Hook("PREROUTING", f"{_comment('pw-hook')} -j {PREROUTING_CHAIN}")]
        return table

    def _ipsets_of(self, plan: HostPlan) -> dict[str, IpSet]:
        """One set per address set, re-listed only when the AddressSet object changed."""
        old, self._ipsets = self._ipsets, {}
        out: dict[str, IpSet] = {}
        for sid in sorted(plan.address_sets):
            aset = plan.address_sets[sid]
            name = self.sets[sid]
            if name in out:
                raise RenderError(f"address sets {out[name].comment} and {sid} map to ipset {name}")
            hit = old.get(id(aset))
            if hit is None or hit[1] != name:
                hit = (aset, name, _ipset(aset, name, self._members_of(name, aset)))
            self._ipsets[id(aset)] = hit
            out[name] = hit[2]
        for name in [n for n in self._member_text if n not in out]:
            del self._member_text[name]
        return out

    def _members_of(self, name: str, aset: AddressSet) -> list[str]:
        """:func:`set_members`, updated from the AddressSet's member delta when it follows
        the set rendered last (``setdelta.py``): one new member in a set of thousands is
        one sorted insertion, not a re-sort."""
        entries = self._member_text.get(name)
        if entries is None:
            entries = self._member_text[name] = SetEntries()
        return entries.follow(aset, _member_entries)


def _ipset(aset: AddressSet, name: str, members: list[str]) -> IpSet:
    maxelem = DEFAULT_MAXELEM
    while maxelem < 2 * len(members):  # headroom for incremental adds
        maxelem *= 2
    return IpSet(name, aset.family, "hash:net", members,
                 comment=f"{aset.group_name} {aset.group_id} IPv{aset.family}", maxelem=maxelem)


def set_members(aset: AddressSet) -> list[str]:
    """The members ``ipset save`` would list (sorted): host routes without a prefix length,
    and /0, which hash:net cannot hold, as the two /1 halves."""
    return _listed(e for m in aset.members for e in _member_entries(m.cidr))


_MemberEntry = tuple[tuple[int, int, int], str]  # (version, address, prefix length), text


def _member_entries(cidr: IPNetwork) -> tuple[_MemberEntry, ...]:
    """What one member network puts in a set, with the key ``ipset save`` sorts it by."""
    nets: tuple[IPNetwork, ...] = (
        tuple(cidr.subnets(prefixlen_diff=1)) if cidr.prefixlen == 0 else (cidr,))
    out = []
    for n in nets:
        text = _net(n)
        text = text.rsplit("/", 1)[0] if n.prefixlen == n.max_prefixlen else text
        out.append(((n.version, int(n.network_address), n.prefixlen), text))
    return tuple(out)


def _listed(entries: Iterable[_MemberEntry]) -> list[str]:
    """Distinct entries (equal keys are equal networks), sorted."""
    by_key = dict(entries)
    return [by_key[k] for k in sorted(by_key)]


# ---------------------------------------------------------------------- public API
def render_iptables(plan: HostPlan) -> IptablesRuleset:
    """The whole iptables + ipset state for ``plan``: filter and raw tables for IPv4 and IPv6
    (chains in dependency order: callees before their callers) and the ipsets they use.
    One-shot; a long-running process keeps an :class:`IptablesRenderer` instead."""
    return IptablesRenderer().render(plan)


def restore_text(ruleset: IptablesRuleset, family: IpFamily, *, hooks: bool = True) -> str:
    """``iptables-restore --noflush`` input (``ip6tables-restore`` for family 6).

    Declaring a chain flushes it under --noflush, so the file replaces every portwall chain
    and leaves other programs' chains and the built-in chains' policies alone. Hooks are
    written as ``-I <builtin> 1 ...``: right for a fresh host; an applier that finds the hook
    already present passes ``hooks=False`` (it manages ``Table.hooks`` itself).
    """
    lines: list[str] = []
    for tname, table in ruleset.tables.get(family, {}).items():
        lines.append(f"*{tname}")
        lines += [f":{name} - [0:0]" for name in table.chains]
        for name, chain in table.chains.items():
            head = f"-A {name} "
            lines += [head + spec for spec in chain.rules]
        if hooks:
            # Inserting at position 1 in reverse keeps several hooks of one chain in order.
            lines += [f"-I {h.builtin} 1 {h.rule}" for h in reversed(table.hooks)]
        lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def ipset_restore_text(ruleset: IptablesRuleset) -> str:
    """``ipset restore`` input creating (or keeping) every set and adding its members."""
    lines: list[str] = []
    for name in sorted(ruleset.ipsets):
        s = ruleset.ipsets[name]
        fam = "inet" if s.family == 4 else "inet6"
        lines.append(f"create {name} {s.set_type} family {fam} hashsize 1024 "
                     f"maxelem {s.maxelem} -exist")
        lines += [f"add {name} {m} -exist" for m in s.members]
    return "\n".join(lines) + "\n" if lines else ""


__all__ = [
    "CHAIN_NAME_MAX",
    "DISPATCH_CHAIN",
    "FORWARD_CHAIN",
    "INPUT_CHAIN",
    "MARK_ACCEPT",
    "MARK_SEEN",
    "PREROUTING_CHAIN",
    "SET_NAME_MAX",
    "SG_CHAIN",
    "IptablesRenderer",
    "RenderError",
    "egress_chain",
    "group_chain",
    "ingress_chain",
    "ipset_restore_text",
    "match_spec",
    "protocol_spelling",
    "render_iptables",
    "restore_text",
    "set_members",
    "set_name",
    "spoof_chain",
]
