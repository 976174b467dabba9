"""IR -> OpenFlow flows for one integration bridge (pipeline in :mod:`.flows`).

The IR's step lists are rendered literally, one priority per step, so the bridge decides
exactly as :mod:`portwall.analyze.evaluate` does:

* a :class:`Rule` -> flows (several when a port range needs value/mask pairs or a conntrack
  state set several ct_state values) at the step's priority: allow goes on, drop drops;
* a :class:`Jump` -> one flow testing the group's bit in reg2, which the direction's start
  table computed by evaluating each of the port's groups in the shared rule table; so
  rules are rendered once per group, never per port (flows grow with ports + rules);
* a :class:`SpoofCheck` -> one flow per (MAC, CIDR) entry continuing in the next segment
  table, then a drop.

Remote groups: a rule whose remote is an address set is a two-clause conjunction; the
conjunction id stands for (rule set, address set) as in Neutron, and every member address
is one flow carrying the conjunction actions of all (rule set, set) pairs that use it. A
member change touches one flow; a rule change the rule set's flows.

Everything is cached by the identity of the IR objects (a :class:`PlanCompiler` hands back
the same objects for what did not change), so re-rendering after a small change costs the
changed parts plus assembling the member and flood flows.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from portwall.backends.ovs import flows as F
from portwall.backends.ovs.flows import Flow, Owner, RenderError, Unrenderable
from portwall.backends.ovs.members import MemberFlows
from portwall.bulk import cached_build
from portwall.ir.types import (
    Action,
    AddressSet,
    HostPlan,
    Jump,
    Origin,
    OriginKind,
    PortPlan,
    Rule,
    RuleSet,
    SetRef,
    SpoofCheck,
    Step,
)


@dataclass
class OvsRuleset:
    """The bridge's desired flows, grouped by owner cookie."""

    owners: dict[int, Owner]
    bridge: str = "br-int"
    backend: str = "ovs"
    #: the cookies of the owners with warnings, when the renderer knows them (so that
    #: :meth:`warnings` need not look at every owner)
    warned: tuple[int, ...] | None = None

    def provenance(self) -> dict[str, Origin]:
        out: dict[str, Origin] = {}
        for o in self.owners.values():
            out.update(o.origins)
        return out

    def rid_of(self, cookie: int) -> str | None:
        o = self.owners.get(cookie & F.OWNER_MASK)
        return None if o is None else o.rids.get(cookie)

    def label_of(self, cookie: int) -> str:
        o = self.owners.get(cookie & F.OWNER_MASK)
        if o is None:
            return "(not portwall's)"
        rid = o.rids.get(cookie)
        return f"{o.label}" + (f" / {rid}" if rid else "")

    def flows(self) -> list[Flow]:
        return [f for o in self.owners.values() for f in o.flows]

    def warnings(self) -> list[str]:
        if self.warned is not None:
            return [w for c in self.warned for w in self.owners[c].warnings]
        return [w for o in self.owners.values() for w in o.warnings]

    def counts(self) -> dict[str, int]:
        flows = self.flows()
        conj = sum(1 for f in flows if f.match.startswith("conj_id="))
        members = sum(len(o.flows) for c, o in self.owners.items() if F.kind_of(c) == F.KIND_MEMBER)
        return {"flows": len(flows), "owners": len(self.owners), "conjunctions": conj,
                "member_flows": members}

    def sections(self) -> list[tuple[str, str]]:
        text = "\n".join(f.text() for f in self.flows()) + "\n"
        return [(f"ovs-ofctl -O OpenFlow15 --bundle replace-flows {self.bridge} - "
                 "(devices in {braces} become port numbers)", text)]


# ------------------------------------------------------------------ numbering
def set_number(rsid: str) -> int:
    """The rule set's value in reg3 (31 bits, stable)."""
    return F.h(f"rs:{rsid}", 31)


def conj_id(rsid: str, set_id: str) -> int:
    return F.h(f"conj:{rsid}:{set_id}", 31)


def _load(value: int, reg: str, bits: str = "") -> str:
    """``set_field`` (what OpenFlow 1.5 dumps print, so texts compare equal); ``bits`` one
    bit number or "" for the whole register."""
    name = "reg" + reg[-1]
    if bits == "":
        return f"set_field:{value:#x}->{name}"
    b = 1 << int(bits)
    return f"set_field:{value * b:#x}/{b:#x}->{name}"


#: table-miss flows, written so that ``dump-flows`` shows (and counts) what is dropped. A
#: table reached by ``resubmit`` that matches nothing adds no action and returns, so the
#: group rule tables need none.
_BASE_FLOWS = [
    (F.T_CLASSIFY, 0, "pw-unknown-port", "frames from a port portwall does not know"),
    (F.T_FORWARD, 0, "pw-unknown-destination", "unicast to a MAC not on the network"),
]


def base_owner() -> Owner:
    cookie = F.owner_cookie(F.KIND_BASE, "base")
    flows, rids, origins = [], {}, {}
    for i, (table, prio, rid, detail) in enumerate(_BASE_FLOWS):
        c = cookie | (i + 1)
        flows.append(Flow(table, prio, "", "drop", c))
        rids[c] = rid
        origins[rid] = Origin(OriginKind.PROVIDER, "provider", rid, rid, detail)
    return Owner(cookie, "pipeline", tuple(flows), rids, origins)


# ------------------------------------------------------------------ rule sets
@dataclass
class _RsOut:
    rs: RuleSet  # kept alive: cached by id()
    rsid: str
    owner: Owner
    conj: dict[str, int]  # address-set id -> conjunction id


def _render_ruleset(rsid: str, rs: RuleSet, sets: Mapping[str, AddressSet]) -> _RsOut:
    cookie = F.owner_cookie(F.KIND_RULESET, rsid)
    table = F.T_INGRESS_RULES if rs.direction == "ingress" else F.T_EGRESS_RULES
    regm = f"reg3={set_number(rsid)}"
    matched = _load(1, F.REG_BITS, "0")
    by_key: dict[tuple[int, int, str], Flow] = {}
    rids: dict[int, str] = {}
    origins: dict[str, Origin] = {}
    conj: dict[str, int] = {}
    warnings: list[str] = []
    for i, rule in enumerate(rs.rules):
        c = cookie | (i + 1)
        rids[c] = rule.rid
        origins[rule.rid] = rule.origin
        m = rule.match
        refs = [(a.set_id, side) for a, side in ((m.src, True), (m.dst, False))
                if isinstance(a, SetRef)]
        if len(refs) > 1:
            warnings.append(f"rule {rule.rid}: two remote groups in one rule are not rendered")
            continue
        try:
            variants = F.match_variants(m)
        except Unrenderable as e:
            warnings.append(f"rule {rule.rid} not rendered (matches nothing): {e}")
            continue
        if refs:
            sid = refs[0][0]
            if sid not in sets or not sets[sid].members:
                continue  # an empty remote group allows nothing
            cid = conj.setdefault(sid, conj_id(rsid, sid))
            action = f"conjunction({cid},1/2)"
        else:
            action = matched
        for v in variants:
            f = Flow(table, F.RULE_PRIORITY, ",".join([regm, *v]), action, c)
            old = by_key.get(f.key())
            if old is None:
                by_key[f.key()] = f
            elif old.actions == matched or action == matched:
                # a plain rule subsumes a conjunction clause on the same match
                by_key[f.key()] = f if action == matched else old
            elif action not in old.actions.split(","):
                by_key[f.key()] = Flow(table, F.RULE_PRIORITY, old.match,
                                       ",".join(sorted({*old.actions.split(","), action})),
                                       old.cookie)
    for j, (sid, cid) in enumerate(sorted(conj.items())):
        c = cookie | (len(rs.rules) + 1 + j)
        rids[c] = f"conj-{rsid}-{sid}"
        origins[rids[c]] = Origin(OriginKind.GROUP, "security_group", rs.group_id,
                                  rs.group_name, f"remote group {sid} as conjunction {cid}")
        by_key[(table, F.RULE_PRIORITY, f"conj_id={cid}")] = Flow(
            table, F.RULE_PRIORITY, f"conj_id={cid}", matched, c)
    label = f"security group {rs.group_name or rs.group_id} {rs.direction}"
    owner = Owner(cookie, label, tuple(by_key.values()), rids, origins, tuple(warnings))
    return _RsOut(rs, rsid, owner, conj)


# ------------------------------------------------------------------ ports
class _PortFlows:
    """Builds one port's flows; items number the rids that produced them."""

    def __init__(self, p: PortPlan) -> None:
        self.p = p
        self.dev = "{" + p.device + "}"
        self.cookie = F.owner_cookie(F.KIND_PORT, p.id)
        self.flows: dict[tuple[int, int, str], Flow] = {}
        self.rids: dict[int, str] = {}
        self.by_rid: dict[str, int] = {}
        self.origins: dict[str, Origin] = {}
        self.warnings: list[str] = []

    def item(self, rid: str, origin: Origin | None) -> int:
        c = self.by_rid.get(rid)
        if c is None:
            c = self.cookie | (len(self.by_rid) + 1)
            self.by_rid[rid] = c
            self.rids[c] = rid
            if origin is not None:
                self.origins.setdefault(rid, origin)
        return c

    def add(self, table: int, prio: int, match: Iterable[str], actions: str, rid: str,
            origin: Origin | None = None) -> None:
        m = ",".join(x for x in match if x)
        f = Flow(table, prio, m, actions, self.item(rid, origin))
        self.flows.setdefault(f.key(), f)

    def _port_origin(self, what: str) -> Origin:
        return Origin(OriginKind.PROVIDER, "port", self.p.id, self.p.name, what)

    def build(self) -> Owner:
        p, dev = self.p, self.dev
        zone = p.zone
        po = self._port_origin
        # classify: conntrack lookup for IP (no commit here), then egress start
        for fam in ("ip", "ipv6"):
            self.add(F.T_CLASSIFY, 100, [fam, f"in_port={dev}"],
                     f"ct(table={F.T_EGRESS_START},zone={zone})", f"classify-{p.id}",
                     po(f"traffic from {p.device} (conntrack zone {zone})"))
        self.add(F.T_CLASSIFY, 90, [f"in_port={dev}"], f"resubmit(,{F.T_EGRESS_START})",
                 f"classify-{p.id}")
        start = [_load(zone, F.REG_ZONE), _load(1 if p.stateful else 0, F.REG_FLAGS, "0")]
        out_rid = f"output-{p.id}"
        if not p.filtered:
            uo = Origin(OriginKind.UNFILTERED, "port", p.id, p.name, "port security disabled")
            self.add(F.T_EGRESS_START, 100, [f"in_port={dev}"],
                     ",".join([*start, f"resubmit(,{F.T_FORWARD})"]), f"unfiltered-{p.id}", uo)
            self.add(F.T_INGRESS_START, 100, [f"reg7={dev}"], f"resubmit(,{F.T_OUTPUT})",
                     f"unfiltered-{p.id}", uo)
        else:
            for direction in ("egress", "ingress"):
                self._direction(direction, start)
            self._guard()
        self._forward()
        self._output(out_rid)
        label = f"port {p.name or p.id} ({p.device})"
        return Owner(self.cookie, label, tuple(self.flows.values()), self.rids, self.origins,
                     tuple(self.warnings))

    def _direction(self, direction: str, start: list[str]) -> None:
        p, dev = self.p, self.dev
        egress = direction == "egress"
        steps = p.steps(direction)  # type: ignore[arg-type]
        jumps = [s for s in steps if isinstance(s, Jump)]
        if len(jumps) > F.MAX_GROUPS:
            raise RenderError(f"port {p.id}: more than {F.MAX_GROUPS} groups in {direction}")
        bit = {j.ruleset_id: k + 1 for k, j in enumerate(dict.fromkeys(jumps))}
        rules_t = F.T_EGRESS_RULES if egress else F.T_INGRESS_RULES
        seq = [_load(0, F.REG_BITS)]
        for rsid, k in bit.items():
            seq += [_load(set_number(rsid), F.REG_SET), f"resubmit(,{rules_t})",
                    f"move:{F.REG_BITS}[0]->{F.REG_BITS}[{k}]", _load(0, F.REG_BITS, "0")]
        first = F.T_EGRESS_GUARD if egress else F.T_INGRESS
        who = f"in_port={dev}" if egress else f"reg7={dev}"
        acts = [*(start if egress else []), *seq, f"resubmit(,{first})"]
        self.add(F.T_EGRESS_START if egress else F.T_INGRESS_START, 100, [who], ",".join(acts),
                 f"{direction}-start-{p.id}",
                 self._port_origin(f"{direction} of {p.device}: evaluate its groups"))
        base = F.T_EGRESS if egress else F.T_INGRESS
        allow = f"resubmit(,{F.T_FORWARD if egress else F.T_OUTPUT})"
        seg, prio = 0, F.STEP_TOP
        for step in steps:
            table = base + seg
            if isinstance(step, Rule):
                self._rule(table, prio, who, step, allow)
            elif isinstance(step, Jump):
                self.add(table, prio, [who, f"reg2={1 << bit[step.ruleset_id]:#x}/"
                                       f"{1 << bit[step.ruleset_id]:#x}"], allow,
                         step.ruleset_id, step.origin)
            elif isinstance(step, SpoofCheck):
                if seg + 1 >= F.SEGMENTS:
                    raise RenderError(f"port {p.id}: too many anti-spoof checks")
                self._spoof(table, prio, who, step, base + seg + 1)
                seg += 1
                prio = F.STEP_TOP
                continue
            prio -= F.STEP_GAP
            if prio <= 10:
                raise RenderError(f"port {p.id}: too many steps in {direction}")
        # end of the list (the compiler's fallback drops normally come first)
        table = base + seg
        fb = Origin(OriginKind.FALLBACK, "provider", "fallback", "fallback",
                    "end of chain: nothing allowed this traffic")
        for fam in ("ip", "ipv6"):
            self.add(table, 2, [who, fam], "drop", "fallback", fb)
        if not egress:
            # non-IP frames (ARP, ...) are not filtered on the way in, as on a Linux bridge
            self.add(F.T_INGRESS, 1, [who], allow, f"non-ip-{p.id}",
                     self._port_origin("non-IP frames to the port are not filtered"))

    def _rule(self, table: int, prio: int, who: str, rule: Rule, allow: str) -> None:
        m = rule.match
        if isinstance(m.src, SetRef) or isinstance(m.dst, SetRef):
            self.warnings.append(f"port step {rule.rid} with a remote group is not rendered")
            return
        try:
            variants = F.match_variants(m)
        except Unrenderable as e:
            self.warnings.append(f"rule {rule.rid} not rendered: {e}")
            return
        act = allow if rule.action is Action.ALLOW else "drop"
        for v in variants:
            self.add(table, prio, [who, *v], act, rule.rid, rule.origin)

    def _spoof(self, table: int, prio: int, who: str, step: SpoofCheck, nxt: int) -> None:
        for i, e in enumerate(self.p.spoof):
            fam, src_f, _ = ("ip", "nw_src", "") if e.family == 4 else ("ipv6", "ipv6_src", "")
            addr = (f"{src_f}={F.net_text(e.cidr)}"
                    if e.cidr is not None and e.cidr.prefixlen else "")
            self.add(table, prio, [who, fam, f"dl_src={e.mac.lower()}", addr],
                     f"resubmit(,{nxt})", f"spoof-{self.p.id}-{i}", e.origin)
        for fam in ("ip", "ipv6"):
            self.add(table, prio - 1, [who, fam], "drop", f"spoof-{self.p.id}", step.origin)

    def _guard(self) -> None:
        """ARP and ND anti-spoofing (the IR speaks of IP only; this is the L2 part)."""
        p, dev = self.p, self.dev
        who = f"in_port={dev}"
        fwd = f"resubmit(,{F.T_FORWARD})"
        for i, e in enumerate(p.spoof):
            mac = e.mac.lower()
            if e.family == 4:
                spa = f"arp_spa={F.net_text(e.cidr)}" if e.cidr is not None and e.cidr.prefixlen else ""
                self.add(F.T_EGRESS_GUARD, 100, [who, "arp", f"dl_src={mac}", f"arp_sha={mac}", spa],
                         fwd, f"spoof-{p.id}-{i}", e.origin)
            else:
                tgt = (f"nd_target={F.net_text(e.cidr)}"
                       if e.cidr is not None and e.cidr.prefixlen else "")
                self.add(F.T_EGRESS_GUARD, 100, [who, "icmp6", "icmp_type=136", "icmp_code=0", tgt],
                         f"resubmit(,{F.T_EGRESS})", f"spoof-{p.id}-{i}", e.origin)
        so = self._port_origin("ARP / neighbour advertisement not from the port's addresses")
        self.add(F.T_EGRESS_GUARD, 90, [who, "arp"], "drop", f"l2spoof-{p.id}", so)
        self.add(F.T_EGRESS_GUARD, 90, [who, "icmp6", "icmp_type=136"], "drop", f"l2spoof-{p.id}", so)
        for fam in ("ip", "ipv6"):
            self.add(F.T_EGRESS_GUARD, 50, [who, fam], f"resubmit(,{F.T_EGRESS})",
                     f"egress-start-{p.id}")
        self.add(F.T_EGRESS_GUARD, 1, [who], fwd, f"non-ip-{p.id}",
                 self._port_origin("other ethertypes are not filtered, as on a Linux bridge"))

    def _forward(self) -> None:
        p = self.p
        macs = dict.fromkeys([p.mac.lower(), *(e.mac.lower() for e in p.spoof)])
        for mac in macs:
            if not mac:
                continue
            self.add(F.T_FORWARD, 100, [f"reg6={p.zone}", f"dl_dst={mac}"],
                     f"set_field:{self.dev}->reg7,resubmit(,{F.T_INGRESS_START})",
                     f"forward-{p.id}", self._port_origin(f"frames to {mac} on its network"))

    def _output(self, rid: str) -> None:
        p, dev = self.p, self.dev
        o = self._port_origin(f"deliver to {p.device}; commit new connections")
        for fam in ("ip", "ipv6"):
            # a stateful receiver always commits; a stateless one only when the sender is
            # stateful (a packet is tracked unless both ends are stateless)
            cond = [] if p.stateful else ["reg4=0x1/0x1"]
            self.add(F.T_OUTPUT, 100, [f"reg7={dev}", fam, "ct_state=+new+trk", *cond],
                     f"ct(commit,zone={p.zone}),output:{dev}", rid, o)
        self.add(F.T_OUTPUT, 90, [f"reg7={dev}"], f"output:{dev}", rid, o)


# ------------------------------------------------------------------ the renderer
class OvsRenderer:
    """Renders plan after plan, re-rendering only ports and rule sets that changed."""

    def __init__(self, bridge: str = "br-int") -> None:
        self.bridge = bridge
        self._reset()

    def _reset(self) -> None:
        self._ports: dict[int, tuple[PortPlan, Owner]] = {}
        self._rulesets: dict[int, _RsOut] = {}
        self._sets_key: dict[str, int] = {}
        self._members = MemberFlows()
        self._floods: dict[int, tuple[tuple[str, ...], str, Owner]] = {}
        self._base = base_owner()
        # cookie -> owner of the ports, member flows and floods, kept between renders: a
        # change adds them to the ruleset with one dict update, not one call per owner
        self._port_map: dict[int, Owner] = {}
        self._flood_map: dict[int, Owner] = {}
        self._last_ports: tuple[PortPlan, ...] | None = None
        self._port_warned: list[int] = []

    def render(self, plan: HostPlan) -> OvsRuleset:
        with cached_build(self._reset):
            return self._render(plan)

    def _render(self, plan: HostPlan) -> OvsRuleset:
        owners: dict[int, Owner] = {self._base.cookie: self._base}
        self._add_rulesets(plan, owners)
        # the very same port plans as last time (a member or a rule changed): the ports'
        # and the floods' owners are the last ones; checked by identity at C speed
        last, ports = self._last_ports, plan.ports
        same = last is not None and (last is ports or (
            len(last) == len(ports) and all(map(operator.is_, last, ports))))
        if not same:
            self._add_ports(plan)
        self._put_all(owners, self._port_map)
        self._add_members(plan)
        self._put_all(owners, self._members.by_cookie)
        if not same:
            self._add_floods(plan)
        self._put_all(owners, self._flood_map)
        self._last_ports = ports
        # in the owners' order; the base, member and flood owners have no warnings
        warned = (*(r.owner.cookie for r in self._rulesets.values() if r.owner.warnings),
                  *self._port_warned)
        return OvsRuleset(owners, self.bridge, warned=warned)

    @staticmethod
    def _put(owners: dict[int, Owner], o: Owner) -> None:
        if o.cookie in owners:
            raise RenderError(f"cookie clash between {owners[o.cookie].label} and {o.label}")
        owners[o.cookie] = o

    @staticmethod
    def _put_all(owners: dict[int, Owner], more: dict[int, Owner]) -> None:
        if not owners.keys().isdisjoint(more):
            c = next(c for c in more if c in owners)
            raise RenderError(f"cookie clash between {owners[c].label} and {more[c].label}")
        owners.update(more)

    @staticmethod
    def _map(items: list[Owner]) -> dict[int, Owner]:
        """cookie -> owner; RenderError if two owners share a cookie."""
        out = {o.cookie: o for o in items}
        if len(out) != len(items):
            out = {}
            for o in items:
                OvsRenderer._put(out, o)  # raises at the clash
        return out

    def _add_rulesets(self, plan: HostPlan, owners: dict[int, Owner]) -> None:
        # a rule set's flows depend on whether its sets are empty: key on set identity too
        old, self._rulesets = self._rulesets, {}
        for rsid, rs in plan.rulesets.items():
            hit = old.get(id(rs))
            refs = {a.set_id for r in rs.rules for a in (r.match.src, r.match.dst)
                    if isinstance(a, SetRef)}
            if hit is not None and hit.rsid == rsid and all(
                    bool(plan.address_sets.get(s) and plan.address_sets[s].members)
                    == (s in hit.conj) for s in refs):
                out = hit
            else:
                out = _render_ruleset(rsid, rs, plan.address_sets)
            self._rulesets[id(rs)] = out
            self._put(owners, out.owner)

    def _add_ports(self, plan: HostPlan) -> None:
        old = self._ports
        self._ports = {id(p): old.get(id(p)) or (p, _PortFlows(p).build()) for p in plan.ports}
        self._port_map = self._map([o for _p, o in self._ports.values()])
        self._port_warned = [c for c, o in self._port_map.items() if o.warnings]

    def _add_members(self, plan: HostPlan) -> None:
        """One flow per (direction table, member address): the conjunction clauses 2/2 of
        every (rule set, address set) pair whose set holds that address.

        Incremental: each address set's contribution is kept (keyed by the AddressSet
        object and the conjunctions that use it) and only the addresses of a set that
        changed are re-counted and re-rendered, so one member more costs O(1) flows and,
        with the compiler's :class:`SetDelta`, O(1) work (O(that set) without one), not
        O(all members): :class:`.members.MemberFlows`."""
        users: dict[str, set[tuple[int, int, bool]]] = {}  # set id -> (table, conj, is src)
        for out in self._rulesets.values():
            ingress = out.rs.direction == "ingress"
            table = F.T_INGRESS_RULES if ingress else F.T_EGRESS_RULES
            for sid, cid in out.conj.items():
                users.setdefault(sid, set()).add((table, cid, ingress))
        self._members.update(users, plan.address_sets)

    def _add_floods(self, plan: HostPlan) -> None:
        """One flood flow per network; the same Owner object while the network's devices
        stay the same (its text is O(ports), and an unchanged object is what lets the
        applier skip resolving it again)."""
        nets: dict[int, list[PortPlan]] = {}
        for p in plan.ports:
            nets.setdefault(p.zone, []).append(p)
        old, self._floods = self._floods, {}
        for zone, ports in sorted(nets.items()):
            devices = tuple(p.device for p in ports)
            hit = old.get(zone)
            if hit is not None and hit[0] == devices and hit[1] == ports[0].network_id:
                self._floods[zone] = hit
                continue
            cookie = F.owner_cookie(F.KIND_NET, f"zone:{zone}")
            acts = "".join(map(F.flood_action, devices))
            rid = f"flood-{ports[0].network_id}"
            origin = Origin(OriginKind.PROVIDER, "network", ports[0].network_id, "",
                            "broadcast and multicast to every port of the network")
            owner = Owner(
                cookie, f"network {ports[0].network_id} (zone {zone})",
                (Flow(F.T_FORWARD, 50, f"reg6={zone},dl_dst=01:00:00:00:00:00/01:00:00:00:00:00",
                      acts, cookie | 1),), {cookie | 1: rid}, {rid: origin})
            self._floods[zone] = (devices, ports[0].network_id, owner)
        self._flood_map = self._map([o for _d, _n, o in self._floods.values()])


def render_ovs(plan: HostPlan) -> OvsRuleset:
    """One-shot render (a fresh renderer)."""
    return OvsRenderer().render(plan)


def steps_of(p: PortPlan) -> tuple[Step, ...]:
    return (*p.egress, *p.ingress)
