"""Walk one packet through the *rendered* flows, the way ovs-vswitchd's classifier would.

Used by ``portwall trace --backend ovs`` to list the tables and flows (cookie -> rule) a
packet takes, so an operator can hold the explanation against ``ovs-appctl ofproto/trace``,
and by the tests to check the flows against the evaluator packet by packet without a
switch. It understands exactly the vocabulary :mod:`.render` writes (matches on in_port,
registers, L2-L4 fields, ct_state and conj_id; actions ct, resubmit, set_field, move,
conjunction, output, drop), with OpenFlow's rules: highest priority wins, a conjunction
completes when every clause matched at one priority, a table that matches nothing adds no
action. Conntrack is not simulated: the packet's state is given (as for the evaluator).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Any

from portwall.analyze.evaluate import Packet
from portwall.backends.ovs import flows as F
from portwall.backends.ovs.flows import Flow
from portwall.backends.ovs.render import OvsRuleset
from portwall.ir.types import CtState, PortPlan

_CT = {CtState.NEW: {"trk", "new"}, CtState.ESTABLISHED: {"trk", "est"},
       CtState.RELATED: {"trk", "rel"}, CtState.INVALID: {"trk", "inv"},
       CtState.UNTRACKED: set()}
_ETH = {"ip": "ip", "ipv6": "ipv6", "arp": "arp", "icmp6": "ipv6"}
_MAX_DEPTH = 64


@dataclass
class SimPacket:
    """The header fields the flows look at, plus the switch's registers."""

    in_port: str
    dl_src: str
    dl_dst: str
    eth: str  # "ip", "ipv6", "arp"
    fields: dict[str, Any] = field(default_factory=dict)
    ct: set[str] = field(default_factory=set)
    regs: dict[int, Any] = field(default_factory=dict)

    @classmethod
    def from_packet(cls, pkt: Packet, src: PortPlan, dst_mac: str) -> SimPacket:
        f: dict[str, Any] = {"nw_proto": pkt.protocol, "src": pkt.src, "dst": pkt.dst}
        for k in ("sport", "dport", "icmp_type", "icmp_code"):
            v = getattr(pkt, k)
            if v is not None:
                f[k] = v
        return cls(src.device, (pkt.src_mac or src.mac).lower(), dst_mac.lower(),
                   "ip" if pkt.family == 4 else "ipv6", f, set(_CT[pkt.ct]))


@dataclass(frozen=True)
class Hit:
    flow: Flow
    depth: int


@dataclass
class SimResult:
    hits: list[Hit] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    commits: list[int] = field(default_factory=list)


def _int(v: str) -> int:
    return int(v, 0)


def _masked(value: int, spec: str) -> bool:
    if "/" in spec:
        v, m = spec.split("/")
        return value & _int(m) == _int(v) & _int(m)
    return value == _int(spec)


def _mac_ok(mac: str, spec: str) -> bool:
    if "/" in spec:
        v, m = spec.split("/")
        a, b, c = (int(x.replace(":", ""), 16) for x in (mac, v, m))
        return a & c == b & c
    return mac == spec.lower()


def _addr_ok(addr: Any, spec: str) -> bool:
    if addr is None:
        return False
    try:
        return addr in ipaddress.ip_network(spec)
    except (ValueError, TypeError):
        return False


class Simulator:
    """The flows of one ruleset, indexed by table and sorted by priority."""

    def __init__(self, ruleset: OvsRuleset) -> None:
        self.ruleset = ruleset
        self.tables: dict[int, list[tuple[Flow, list[str]]]] = {}
        for f in ruleset.flows():
            self.tables.setdefault(f.table, []).append((f, f.match.split(",") if f.match else []))
        for fl in self.tables.values():
            fl.sort(key=lambda x: -x[0].priority)

    # -------------------------------------------------------------- matching
    def _field_ok(self, p: SimPacket, item: str) -> bool:
        if item in _ETH:
            if p.eth != _ETH[item]:
                return False
            return item != "icmp6" or p.fields.get("nw_proto") == 58
        k, _, v = item.partition("=")
        if k == "in_port":
            return p.in_port == v.strip("{}")
        if k == "reg7":
            return p.regs.get(7) == v.strip("{}")
        if k.startswith("reg"):
            return _masked(int(p.regs.get(int(k[3:]), 0)), v)
        if k == "dl_src":
            return p.dl_src == v
        if k == "dl_dst":
            return _mac_ok(p.dl_dst, v)
        if k == "nw_proto":
            return p.fields.get("nw_proto") == int(v)
        if k in ("nw_src", "ipv6_src"):
            return _addr_ok(p.fields.get("src"), v)
        if k in ("nw_dst", "ipv6_dst"):
            return _addr_ok(p.fields.get("dst"), v)
        if k in ("tp_src", "tp_dst"):
            port = p.fields.get("sport" if k == "tp_src" else "dport")
            return port is not None and _masked(port, v)
        if k in ("icmp_type", "icmp_code"):
            return p.fields.get(k) == int(v)
        if k == "ct_state":
            return all((flag in p.ct) == (sign == "+") for sign, flag in re.findall(r"([+-])([a-z]+)", v))
        if k in ("arp_spa", "nd_target"):
            return _addr_ok(p.fields.get(k), v)
        if k == "arp_sha":
            return p.fields.get("arp_sha") == v
        if k == "conj_id":
            return False  # only reached through a completed conjunction
        raise ValueError(f"simulator does not know match field {k}")

    def _lookup(self, table: int, p: SimPacket) -> Flow | None:
        flows = self.tables.get(table, [])
        conj: dict[int, dict[int, set[int]]] = {}  # priority -> id -> clauses matched
        need: dict[int, int] = {}
        for f, items in flows:
            if items and items[0].startswith("conj_id="):
                continue
            if not all(self._field_ok(p, it) for it in items):
                continue
            if f.actions.startswith("conjunction("):
                for cid, k, n in re.findall(r"conjunction\((\d+),(\d+)/(\d+)\)", f.actions):
                    conj.setdefault(f.priority, {}).setdefault(int(cid), set()).add(int(k))
                    need[int(cid)] = int(n)
                continue
            # a hard match: a conjunction completed at a higher priority would win
            return self._conj(table, conj, need, above=f.priority) or f
        return self._conj(table, conj, need, above=-1)

    def _conj(self, table: int, conj: dict[int, dict[int, set[int]]], need: dict[int, int],
              above: int) -> Flow | None:
        for prio in sorted(conj, reverse=True):
            if prio <= above:
                break
            for cid, clauses in sorted(conj[prio].items()):
                if len(clauses) == need[cid]:
                    for f, items in self.tables.get(table, []):
                        if items == [f"conj_id={cid}"]:
                            return f
        return None

    # -------------------------------------------------------------- actions
    def run(self, p: SimPacket, table: int = F.T_CLASSIFY) -> SimResult:
        res = SimResult()
        self._table(table, p, res, 0)
        return res

    def _table(self, table: int, p: SimPacket, res: SimResult, depth: int) -> None:
        if depth > _MAX_DEPTH:
            raise RecursionError("resubmit depth exceeded")
        f = self._lookup(table, p)
        if f is None:
            return
        res.hits.append(Hit(f, depth))
        for act in _split_actions(f.actions):
            self._action(act, p, res, depth)

    def _action(self, act: str, p: SimPacket, res: SimResult, depth: int) -> None:
        if act.startswith("resubmit(,"):
            self._table(int(act[10:-1]), p, res, depth + 1)
        elif act.startswith("ct(table="):
            m = re.match(r"ct\(table=(\d+)", act)
            assert m
            self._table(int(m.group(1)), p, res, depth + 1)
        elif act.startswith("ct(commit"):
            m = re.search(r"zone=(\d+)", act)
            res.commits.append(int(m.group(1)) if m else 0)
        elif act.startswith("set_field:"):
            val, reg = act[10:].split("->")
            n = int(reg[3:])
            if val.startswith("{"):
                p.regs[n] = val.strip("{}")
            elif "/" in val:
                v, mask = (_int(x) for x in val.split("/"))
                p.regs[n] = (int(p.regs.get(n, 0)) & ~mask) | (v & mask)
            else:
                p.regs[n] = _int(val)
        elif act.startswith("move:"):
            m = re.match(r"move:NXM_NX_REG(\d+)\[(\d+)\]->NXM_NX_REG(\d+)\[(\d+)\]", act)
            assert m
            sr, sb, dr, db = (int(x) for x in m.groups())
            bit = (int(p.regs.get(sr, 0)) >> sb) & 1
            p.regs[dr] = (int(p.regs.get(dr, 0)) & ~(1 << db)) | (bit << db)
        elif act.startswith("output:"):
            res.outputs.append(act[7:].strip("{}"))
        elif act == "drop" or not act:
            return
        else:
            raise ValueError(f"simulator does not know action {act}")


def _split_actions(actions: str) -> list[str]:
    out, depth, cur = [], 0, ""
    for ch in actions:
        if ch == "," and depth == 0:
            out.append(cur)
            cur = ""
            continue
        depth += ch == "("
        depth -= ch == ")"
        cur += ch
    if cur:
        out.append(cur)
    return out


def simulate_hop(ruleset: OvsRuleset | Simulator, pkt: Packet, src: PortPlan | None,
                 dst: PortPlan | None) -> SimResult:
    """The flows ``pkt`` meets from ``src``'s port to ``dst``'s (from the ingress start
    when the sender is not a port on this bridge). Pass a :class:`Simulator` to reuse its
    index over many packets."""
    sim = ruleset if isinstance(ruleset, Simulator) else Simulator(ruleset)
    if src is None:
        if dst is None:
            return SimResult()
        p = SimPacket("", (pkt.src_mac or "02:00:00:00:00:01"), dst.mac, "",
                      {}, set(_CT[pkt.ct]))
        sp = SimPacket.from_packet(pkt, dst, dst.mac)
        p.eth, p.fields = sp.eth, sp.fields
        p.regs = {6: dst.zone, 7: dst.device, 4: 0}
        return sim.run(p, F.T_INGRESS_START)
    return sim.run(SimPacket.from_packet(pkt, src, dst.mac if dst else "02:00:00:00:00:00"))


def explain(ruleset: OvsRuleset, result: SimResult, dst: PortPlan | None) -> list[str]:
    """Readable lines: each flow met (indented by resubmit depth), cookie -> owner / rule."""
    lines = []
    for hit in result.hits:
        f = hit.flow
        name = F.TABLE_NAMES.get(f.table, "")
        lines.append(f"{'  ' * min(hit.depth, 8)}table={f.table} ({name}) priority={f.priority} "
                     f"cookie={f.cookie:#x} [{ruleset.label_of(f.cookie)}]  "
                     f"{f.match or '(any)'} -> {f.actions}")
    if dst is not None:
        verdict = "delivered" if dst.device in result.outputs else "not delivered"
        commit = f", conntrack commit in zone {result.commits[0]}" if result.commits else ""
        lines.append(f"=> {verdict} to {dst.device}{commit}")
    return lines
