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

and in the raw table ``PREROUTING -> pw-PREROUTING``: a conntrack zone per network (or
``CT --notrack`` for stateless ports).

Rules are stored without ``-A <chain>`` and in ``iptables-save``'s canonical spelling
(checked against iptables 1.8.9, nft and legacy backends, by ``tests/e2e/test_render_loads.py``)
so the applier can compare desired and actual chains as plain strings. Every rule carries a
comment: the IR rule's ``rid`` or a stable tag for structural rules.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import re
import socket
from collections.abc import Iterable, Mapping

from portwall.ir.compile import gc_paused
from portwall.ir.types import (
    Action,
    AddressSet,
    CtState,
    Family,
    HostPlan,
    IPNetwork,
    Jump,
    Match,
    PortPlan,
    PortRange,
    Rule,
    RuleSet,
    SetRef,
    SpoofCheck,
    SpoofEntry,
)
from portwall.render.iptables_types import (
    PREFIX,
    SET_PREFIX,
    Chain,
    Hook,
    IpFamily,
    IpSet,
    IptablesRuleset,
    Table,
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
COMMENT_MAX = 256
DEFAULT_MAXELEM = 65536


class RenderError(ValueError):
    """The plan cannot be expressed in iptables (e.g. two ports share a device name)."""


# --------------------------------------------------------------------------- names
_SAFE = re.compile(r"[A-Za-z0-9_-]+")
_UNSAFE_COMMENT = re.compile(r"[\"'\\\x00-\x1f\x7f]")


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


# ------------------------------------------------------------------------ spelling
def _comment(text: str) -> str:
    """``-m comment`` as iptables-save prints it: quoted unless plain (xtables_save_string).
    Quotes and backslashes, which iptables would escape, are replaced instead."""
    text = _UNSAFE_COMMENT.sub("_", text)[:COMMENT_MAX] or "-"
    if _SAFE.fullmatch(text):
        return f"-m comment --comment {text}"
    return f'-m comment --comment "{text}"'


class _ProtoEnt(ctypes.Structure):
    _fields_ = [("p_name", ctypes.c_char_p), ("p_aliases", ctypes.c_void_p),
                ("p_proto", ctypes.c_int)]


# iptables' own table (xtables_chain_protos), consulted after the system's protocol database.
_XTABLES_PROTOS = {6: "tcp", 132: "sctp", 17: "udp", 136: "udplite", 1: "icmp",
                   58: "ipv6-icmp", 50: "esp", 51: "ah", 135: "ipv6-mh"}


@functools.cache
def protocol_spelling(number: int) -> str:
    """How iptables-save prints ``-p <number>``: the name libc's ``getprotobynumber`` gives
    (that is what iptables calls, so /etc/protocols decides), then iptables' built-in names,
    else the number. "" for 0, which iptables treats as "any protocol" and does not print."""
    if number == 0:
        return ""
    try:
        fn = ctypes.CDLL(None).getprotobynumber
        fn.restype = ctypes.POINTER(_ProtoEnt)
        fn.argtypes = [ctypes.c_int]
        ent = fn(number)
        if ent and ent.contents.p_name:
            return str(ent.contents.p_name.decode())
    except (OSError, AttributeError):  # no libc symbol: fall back like iptables does
        pass
    return _XTABLES_PROTOS.get(number, str(number))


def _net(net: IPNetwork) -> str:
    """An address as iptables prints it: always with the prefix length; IPv6 through
    inet_ntop (as iptables does), which differs from Python for e.g. ::ffff:a.b.c.d."""
    if net.version == 6:
        return f"{socket.inet_ntop(socket.AF_INET6, net.network_address.packed)}/{net.prefixlen}"
    return str(net)


def _range(r: PortRange) -> str:
    return str(r.lo) if r.lo == r.hi else f"{r.lo}:{r.hi}"


_PORT_MODULES = {6: "tcp", 17: "udp", 132: "sctp", 33: "dccp"}
_CT_ORDER = (CtState.INVALID, CtState.NEW, CtState.RELATED, CtState.ESTABLISHED,
             CtState.UNTRACKED)


def match_spec(m: Match, sets: Mapping[str, str]) -> list[str]:
    """The match part of a rule, in iptables-save's order: addresses, protocol, then the
    match modules in the order portwall always adds them (mac, set, ports, icmp, conntrack).

    ``sets`` maps IR set ids to ipset names.
    """
    out: list[str] = []
    set_parts: list[str] = []
    for flag, direction, addr in (("-s", "src", m.src), ("-d", "dst", m.dst)):
        if isinstance(addr, SetRef):
            try:
                set_parts.append(f"-m set --match-set {sets[addr.set_id]} {direction}")
            except KeyError:
                raise RenderError(f"rule refers to unknown address set {addr.set_id}") from None
        elif addr is not None and addr.prefixlen:  # iptables prints no -s/-d for a /0
            out.append(f"{flag} {_net(addr)}")
    proto = m.protocol
    if proto:
        out.append(f"-p {protocol_spelling(proto)}")
    if m.src_mac:
        out.append(f"-m mac --mac-source {m.src_mac.lower()}")
    out += set_parts
    if m.sport is not None or m.dport is not None:
        out += _port_match(m)
    if m.icmp_type is not None:
        code = "" if m.icmp_code is None else f"/{m.icmp_code}"
        if proto == 1 and m.family == 4:
            out.append(f"-m icmp --icmp-type {m.icmp_type}{code}")
        elif proto == 58 and m.family == 6:
            out.append(f"-m icmp6 --icmpv6-type {m.icmp_type}{code}")
        else:
            raise RenderError(f"ICMP type on protocol {proto} in IPv{m.family}")
    if m.ct:
        out.append("-m conntrack --ctstate " + ",".join(s.name for s in _CT_ORDER if s in m.ct))
    return out


def _port_match(m: Match) -> list[str]:
    proto = m.protocol or 0
    module = _PORT_MODULES.get(proto)
    if module is not None:
        spec = f"-m {module}"
        if m.sport is not None:
            spec += f" --sport {_range(m.sport)}"
        if m.dport is not None:
            spec += f" --dport {_range(m.dport)}"
        return [spec]
    if proto == 136:  # udplite has no match module of its own; multiport takes one option
        return [f"-m multiport --{k} {_range(r)}"
                for k, r in (("sports", m.sport), ("dports", m.dport)) if r is not None]
    raise RenderError(f"port match on protocol {proto or 'any'}")


def _mark(bits: int, mask: int) -> str:
    return f"-j MARK --set-xmark {bits:#x}/{mask:#x}"


def _has_mark(bits: int) -> str:
    return f"-m mark --mark {bits:#x}/{bits:#x}"


# -------------------------------------------------------------------- structure
_ACTION_TARGET = {Action.ALLOW: "-j RETURN", Action.DROP: "-j DROP"}
_PORT_MARK = f"{_comment('pw-port-mark')} {_mark(MARK_SEEN, MARK_MASK)}"
_GROUP_ACCEPT = f"{_has_mark(MARK_ACCEPT)} {_comment('pw-group-accept')} -j RETURN"
_SPOOF_DROP = f"{_comment('pw-spoof-drop')} -j DROP"


class _Renderer:
    """One render call: caches the spelling of rules shared by many ports (provider rules,
    security-group chains), which is what keeps 10,000 ports fast."""

    def __init__(self, plan: HostPlan):
        self.plan = plan
        self.sets = {sid: set_name(s.group_id, s.family) for sid, s in plan.address_sets.items()}
        self._rule_cache: dict[int, tuple[Rule, str]] = {}
        self.names: dict[str, tuple[str, str, str]] = {}
        seen: dict[str, str] = {c: "portwall" for c in
                                (SG_CHAIN, DISPATCH_CHAIN, FORWARD_CHAIN, INPUT_CHAIN,
                                 PREROUTING_CHAIN)}
        for p in plan.ports:
            names = (ingress_chain(p), egress_chain(p), spoof_chain(p))
            for name in names:
                if name in seen:
                    raise RenderError(f"ports {seen[name]} and {p.id} map to the same chain "
                                      f"{name}: their devices ({p.device}) collide")
                seen[name] = p.id
            self.names[p.id] = names
        self.groups: dict[str, str] = {}
        taken: dict[str, str] = {}
        for rsid, rs in plan.rulesets.items():
            name = group_chain(rs)
            if taken.setdefault(name, rsid) != rsid:
                raise RenderError(f"rule sets {taken[name]} and {rsid} map to chain {name}")
            self.groups[rsid] = name

    def rule(self, rule: Rule, target: str) -> str:
        """Match + comment, cached per IR rule object, then the target."""
        hit = self._rule_cache.get(id(rule))
        if hit is None:
            text = " ".join([*match_spec(rule.match, self.sets), _comment(rule.rid)])
            hit = self._rule_cache[id(rule)] = (rule, text)  # keeps the rule alive: id stays valid
        return f"{hit[1]} {target}"

    # ---------------------------------------------------------------- filter
    def filter_table(self, family: IpFamily) -> Table:
        plan = self.plan
        table = Table("filter")
        group_jump: dict[str, tuple[str, str] | None] = {}
        group_chains: dict[str, Chain] = {}
        for rsid, rs in plan.rulesets.items():
            rules = [r for r in rs.rules if r.match.family == family]
            if not rules:
                group_jump[rsid] = None
                continue
            name = self.groups[rsid]
            set_accept = _mark(MARK_ACCEPT, MARK_ACCEPT)
            group_chains[name] = Chain(name, [self.rule(r, set_accept) for r in rules])
            group_jump[rsid] = (f"{_comment(rsid)} -j {name}", _GROUP_ACCEPT)
        for name in sorted(group_chains):
            table.chains[name] = group_chains[name]

        dispatch: list[str] = []
        inp: list[str] = []
        seen = _mark(MARK_SEEN, MARK_SEEN)
        for p in plan.ports:
            if not p.filtered:
                tag = _comment(f"unfiltered-{p.id}")
                dispatch += [
                    f"-m physdev --physdev-out {p.device} --physdev-is-bridged {tag} {seen}",
                    f"-m physdev --physdev-in {p.device} --physdev-is-bridged {tag} {seen}",
                ]
                continue
            ich, och, sch = self.names[p.id]
            table.chains[sch] = Chain(sch, self._spoof_rules(p.spoof, family))
            table.chains[ich] = Chain(ich, self._port_rules(p, p.ingress, family, group_jump))
            table.chains[och] = Chain(och, self._port_rules(p, p.egress, family, group_jump))
            tag = _comment(f"port-{p.id}")
            dispatch += [
                f"-m physdev --physdev-out {p.device} --physdev-is-bridged {tag} -j {ich}",
                f"-m physdev --physdev-in {p.device} --physdev-is-bridged {tag} -j {och}"]
            inp.append(f"-m physdev --physdev-in {p.device} {tag} -j {och}")
        table.chains[DISPATCH_CHAIN] = Chain(DISPATCH_CHAIN, dispatch, ordered=False)
        table.chains[SG_CHAIN] = Chain(SG_CHAIN, [
            f"{_comment('pw-mark-reset')} {_mark(0, MARK_MASK)}",
            f"{_comment('pw-dispatch')} -j {DISPATCH_CHAIN}",
            f"{_has_mark(MARK_SEEN)} {_comment('pw-seen-accept')} -j ACCEPT",
        ])
        table.chains[INPUT_CHAIN] = Chain(INPUT_CHAIN, inp, ordered=False)
        table.chains[FORWARD_CHAIN] = Chain(FORWARD_CHAIN, [
            f"-o {bridge} -m physdev --physdev-is-bridged {_comment(f'net-{nid}')} -j {SG_CHAIN}"
            for bridge, (nid, _zone) in self._bridges().items()
        ])
        table.hooks = [Hook("FORWARD", f"{_comment('pw-hook')} -j {FORWARD_CHAIN}"),
                       Hook("INPUT", f"{_comment('pw-hook')} -j {INPUT_CHAIN}")]
        return table

    def _port_rules(self, port: PortPlan, steps: Iterable[object], family: IpFamily,
                    group_jump: Mapping[str, tuple[str, str] | None]) -> list[str]:
        out = [_PORT_MARK]
        for step in steps:
            if isinstance(step, Rule):
                if step.match.family == family:
                    out.append(self.rule(step, _ACTION_TARGET[step.action]))
            elif isinstance(step, Jump):
                jump = group_jump.get(step.ruleset_id)
                if jump is not None:
                    out += jump
                elif step.ruleset_id not in group_jump:
                    raise RenderError(f"port {port.id} jumps to unknown rule set {step.ruleset_id}")
            elif isinstance(step, SpoofCheck):
                out.append(f"{_comment('pw-spoof-check')} -j {self.names[port.id][2]}")
            else:  # pragma: no cover - the IR has exactly three step kinds
                raise RenderError(f"unknown step {step!r}")
        return out

    @staticmethod
    def _spoof_rules(entries: Iterable[SpoofEntry], family: IpFamily) -> list[str]:
        out = []
        for e in entries:
            if e.family != family:
                continue
            src = "" if e.cidr is None or not e.cidr.prefixlen else f"-s {_net(e.cidr)} "
            out.append(f"{src}-m mac --mac-source {e.mac.lower()} "
                       f"{_comment(f'spoof-{e.origin.kind.value}')} -j RETURN")
        out.append(_SPOOF_DROP)
        return out

    def _bridges(self) -> dict[str, tuple[str, int]]:
        """Each bridge once (sorted), with its network and conntrack zone."""
        found: dict[str, tuple[str, int]] = {}
        for p in self.plan.ports:
            found.setdefault(p.bridge, (p.network_id, p.zone))
        return dict(sorted(found.items()))

    # ------------------------------------------------------------------- raw
    def raw_table(self) -> Table:
        """Conntrack zones, one per network, by bridge: with bridge netfilter a bridged
        packet's in-interface is the bridge, so one rule per bridge zones every port of the
        network (and the host's own traffic into it). Only stateless ports get a rule of their
        own (NOTRACK), placed first because the first CT target a packet meets wins. Keeping
        stateful ports out of this table means adding one leaves the raw table untouched."""
        rules = [
            f"-m physdev --physdev-in {p.device} {_comment(f'port-{p.id}')} -j CT --notrack"
            for p in self.plan.ports if p.filtered and not p.stateful
        ]
        for bridge, (nid, zone) in self._bridges().items():
            rules.append(f"-i {bridge} {_comment(f'net-{nid}')} -j CT --zone {zone}")
        table = Table("raw")
        table.chains[PREROUTING_CHAIN] = Chain(PREROUTING_CHAIN, rules)
        table.hooks = [Hook("PREROUTING", f"{_comment('pw-hook')} -j {PREROUTING_CHAIN}")]
        return table

    # ----------------------------------------------------------------- ipsets
    def ipsets(self) -> dict[str, IpSet]:
        out: dict[str, IpSet] = {}
        for sid in sorted(self.plan.address_sets):
            aset = self.plan.address_sets[sid]
            name = self.sets[sid]
            if name in out:
                raise RenderError(f"address sets {out[name].comment} and {sid} map to ipset {name}")
            members = set_members(aset)
            maxelem = DEFAULT_MAXELEM
            while maxelem < 2 * len(members):  # headroom for incremental adds
                maxelem *= 2
            out[name] = IpSet(name, aset.family, "hash:net", members,
                              comment=f"{aset.group_name} {aset.group_id} IPv{aset.family}",
                              maxelem=maxelem)
        return out


def set_members(aset: AddressSet) -> list[str]:
    """The members ``ipset save`` would list (sorted): host routes without a prefix length,
    and /0, which hash:net cannot hold, as the two /1 halves."""
    nets: set[IPNetwork] = set()
    for c in {m.cidr for m in aset.members}:
        if c.prefixlen == 0:
            nets.update(c.subnets(prefixlen_diff=1))
        else:
            nets.add(c)
    out = []
    for n in sorted(nets, key=lambda n: (n.version, int(n.network_address), n.prefixlen)):
        text = _net(n)
        out.append(text.rsplit("/", 1)[0] if n.prefixlen == n.max_prefixlen else text)
    return out


# ---------------------------------------------------------------------- public API
def render_iptables(plan: HostPlan) -> IptablesRuleset:
    """The whole iptables + ipset state for ``plan``: filter and raw tables for IPv4 and IPv6
    (chains in dependency order: callees before their callers) and the ipsets they use."""
    with gc_paused():
        r = _Renderer(plan)
        ruleset = IptablesRuleset()
        for family in (4, 6):
            ruleset.tables[family] = {"filter": r.filter_table(family), "raw": r.raw_table()}
        ruleset.ipsets = r.ipsets()
    return ruleset


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
