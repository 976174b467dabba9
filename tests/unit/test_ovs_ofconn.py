"""The OpenFlow transport without a switch: message encoding (the cached encoder against
whole os-ken objects, byte for byte), the bundle conversation with a fake switch on a unix
socket (open, adds, barrier, commit; discard on a refused add; echo; reconnect), and the
applier's decisions over the in-memory transport (what is sent, and when nothing is).

What Open vSwitch itself makes of the messages: ``tests/e2e/test_ovs_openflow.py``.
"""

from __future__ import annotations

import importlib.util
import socket
import struct
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from os_ken.ofproto import ofproto_parser

from portwall.backends.base import ApplyError
from portwall.backends.ovs import flows as F
from portwall.backends.ovs import ofmsg
from portwall.backends.ovs.apply import OvsApplier
from portwall.backends.ovs.ofconn import MemoryTransport, OpenFlowTransport
from portwall.backends.ovs.ofmsg import DP, ofp, parser
from portwall.backends.ovs.render import OvsRenderer, OvsRuleset
from portwall.ir import PlanCompiler, compile_plan
from portwall.model import Model
from portwall.topology import load_topology

ROOT = Path(__file__).resolve().parent.parent.parent


def _workload() -> Any:
    spec = importlib.util.spec_from_file_location("pw_workload", ROOT / "bench" / "workload.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def _texts(rs: OvsRuleset) -> list[str]:
    devs = sorted({d for o in rs.owners.values() for f in o.flows for d in f.devices()})
    ports = {d: i + 1 for i, d in enumerate(devs)}
    return [t for o in rs.owners.values() for f in o.flows if (t := F.resolve(f.text(), ports))]


def all_flow_texts() -> list[str]:
    """Every flow the renderer writes for the examples and a 40-port workload."""
    models = [load_topology(p).model for p in sorted((ROOT / "examples").glob("*.yaml"))]
    models.append(_workload().Workload(40).m)
    return [t for m in models for t in _texts(OvsRenderer().render(compile_plan(m)))]


# ------------------------------------------------------------------------- encoding
def test_cached_encoder_is_byte_identical_to_os_ken_objects() -> None:
    texts = all_flow_texts()
    assert len(texts) > 2000
    for t in texts:
        fast, key = ofmsg.add_mod(t)
        ref = ofmsg.flow_mod_oskenobj(t)
        assert fast == ref, t
        assert key == ofmsg.key_from_mod(ref)
        if "move:" in t:
            continue  # os-ken cannot parse its own OFPActionCopyField back (len(oxm_ids))
        # and os-ken parses it back to the same flow
        msg = ofproto_parser.msg(DP, *ofproto_parser.header(ref), ref)
        cookie, table, prio, _m, _a = ofmsg.parse(t)
        assert (msg.cookie, msg.table_id, msg.priority) == (cookie, table, prio)


def test_match_and_action_spelling() -> None:
    f = ofmsg.match_fields("in_port=3,ip,nw_proto=17,tp_dst=0x1000/0xf000,ct_state=+est-inv+trk,"
                           "reg2=0x2/0x2,nw_src=10.0.0.0/8")
    assert f == {"in_port": 3, "eth_type": 0x800, "ip_proto": 17, "udp_dst": (0x1000, 0xF000),
                 "ct_state": (0x22, 0x32), "reg2": (2, 2), "ipv4_src": ("10.0.0.0", "255.0.0.0")}
    assert ofmsg.match_fields("icmp6,icmp_type=136,nd_target=fe80::1") == {
        "eth_type": 0x86DD, "ip_proto": 58, "icmpv6_type": 136, "ipv6_nd_target": "fe80::1"}
    acts = ofmsg.actions("ct(commit,zone=7),move:NXM_NX_REG2[0]->NXM_NX_REG2[5],output:4")
    assert [type(a).__name__ for a in acts] == ["NXActionCT", "OFPActionCopyField",
                                                "OFPActionOutput"]
    assert acts[0].flags == 1 and acts[0].zone_ofs_nbits == 7 and acts[1].dst_offset == 5
    for bad in ("in_port=1,tp_dst=80", "vlan_tci=0x1000", "ip,ct_state=+bogus"):
        with pytest.raises(ofmsg.FlowSyntaxError):
            ofmsg.match_fields(bad)
    with pytest.raises(ofmsg.FlowSyntaxError):
        ofmsg.actions("learn(table=1)")


def test_a_dumped_packet_register_equals_the_register_sent() -> None:
    """Open vSwitch dumps reg2/reg3 as one 64-bit OXM_OF_PKT_REG1 (class 0x8001); the
    identity splits it back, and drops full masks."""
    _b, key = ofmsg.add_mod("cookie=0x5,table=2,priority=100,reg3=7,ip actions=drop")
    pkt_reg1 = struct.pack("!IQQ", 0x8001 << 16 | 1 << 9 | 0x100 | 16, 7, 0xFFFFFFFF)
    eth = struct.pack("!IH", 0x8000 << 16 | 5 << 9 | 2, 0x800)
    body = eth + pkt_reg1
    raw = struct.pack("!HH", 1, 4 + len(body)) + body
    canon, _ = ofmsg.canonical_match(raw + b"\0" * (-len(raw) % 8), 0)
    assert canon == key[3]
    full = struct.pack("!HHIII", 1, 12, 0x8000 << 16 | 1 << 9 | 0x100 | 8, 3, 0xFFFFFFFF)
    assert ofmsg.canonical_match(full + b"\0" * 4, 0)[0] == struct.pack("!II", 0x80000204, 3)


def test_fast_action_split_and_resolve_equal_the_plain_ones() -> None:
    """The one-regex action split and the split-based resolve (the flood flow names every
    port of its network) agree with the character loop and the regex substitution."""
    models = [load_topology(p).model for p in sorted((ROOT / "examples").glob("*.yaml"))]
    models.append(_workload().Workload(40).m)
    flows = [f for m in models for o in OvsRenderer().render(compile_plan(m)).owners.values()
             for f in o.flows]
    odd = ["a,b,", "a,,b", ",a", "(x),y", "ct(commit,exec(set_field:1->reg1)),output:1", ""]
    for acts in [f.actions for f in flows] + odd:
        assert ofmsg._split_actions(acts) == ofmsg._split_actions_slow(acts), acts
    devs = sorted({d for f in flows for d in f.devices()})
    every = {d: i + 1 for i, d in enumerate(devs)}
    some = {d: n for d, n in every.items() if n % 3}  # a third of the devices absent
    floods = 0
    for f in flows:
        floods += f.actions.count("->reg7,resubmit") > 1
        for ports in (every, some, {}):
            assert F.resolve(f.text(), ports) == F._resolve_slow(f.text(), ports), f.text()
    assert floods


# ----------------------------------------------------------------------- fake switch
class FakeSwitch:
    """Speaks just enough OpenFlow 1.5 on a unix socket: hello, bundle control, bundle
    adds (optionally refusing one), barrier, an echo request, and closing on demand."""

    def __init__(self, path: Path, refuse: str | None = None) -> None:
        self.path, self.refuse = str(path), refuse
        self.messages: list[Any] = []
        self.committed: list[list[Any]] = []
        self.connections = 0
        self.echo_replies = 0
        self.srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.srv.bind(self.path)
        self.srv.listen(4)
        self.conn: socket.socket | None = None
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _send(self, msg: Any, xid: int) -> None:
        msg.set_xid(xid)
        msg.serialize()
        assert self.conn is not None
        self.conn.sendall(bytes(msg.buf))

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.srv.accept()
            except OSError:
                return
            self.conn, self.connections = conn, self.connections + 1
            buf, pending = b"", []
            self._send(parser.OFPHello(DP), 1)
            while True:
                try:
                    chunk = conn.recv(65536)
                except OSError:
                    break
                if not chunk:
                    break
                buf += chunk
                while len(buf) >= 8 and len(buf) >= struct.unpack_from("!H", buf, 2)[0]:
                    n = struct.unpack_from("!H", buf, 2)[0]
                    raw, buf = buf[:n], buf[n:]
                    msg = self._parse(raw)
                    self.messages.append(msg)
                    pending = self._handle(msg, pending)

    @staticmethod
    def _parse(raw: bytes) -> Any:
        """os-ken parses what a switch sends; requests (barrier, bundle add) by hand."""
        _v, mtype, _n, xid = struct.unpack_from("!BBHI", raw)
        if mtype == ofp.OFPT_BUNDLE_ADD_MESSAGE:
            bid, flags = struct.unpack_from("!I2xH", raw, 8)
            inner = ofproto_parser.msg(DP, *ofproto_parser.header(raw[16:]), raw[16:])
            return parser.OFPBundleAddMsg(DP, bid, flags, inner, []), xid
        if mtype in (ofp.OFPT_BARRIER_REQUEST, ofp.OFPT_HELLO, ofp.OFPT_ECHO_REPLY):
            cls = {ofp.OFPT_BARRIER_REQUEST: parser.OFPBarrierRequest,
                   ofp.OFPT_HELLO: parser.OFPHello, ofp.OFPT_ECHO_REPLY: parser.OFPEchoReply}
            return cls[mtype](DP), xid
        return ofproto_parser.msg(DP, *ofproto_parser.header(raw), raw), xid

    def _handle(self, parsed: Any, pending: list[Any]) -> list[Any]:
        msg, xid = parsed
        msg.xid = xid
        if isinstance(msg, parser.OFPBundleCtrlMsg):
            reply = {ofp.OFPBCT_OPEN_REQUEST: ofp.OFPBCT_OPEN_REPLY,
                     ofp.OFPBCT_COMMIT_REQUEST: ofp.OFPBCT_COMMIT_REPLY,
                     ofp.OFPBCT_DISCARD_REQUEST: ofp.OFPBCT_DISCARD_REPLY}[msg.type]
            if msg.type == ofp.OFPBCT_COMMIT_REQUEST:
                self.committed.append(pending)
            if msg.type != ofp.OFPBCT_OPEN_REQUEST:
                pending = []
            self._send(parser.OFPBundleCtrlMsg(DP, msg.bundle_id, reply, msg.flags, []),
                       msg.xid)
        elif isinstance(msg, parser.OFPBundleAddMsg):
            assert msg.message.xid == xid  # OF 1.4 7.3.9.2
            inner = msg.message
            if self.refuse is not None and inner.cookie == int(self.refuse, 16):
                self._send(parser.OFPErrorMsg(DP, type_=ofp.OFPET_BAD_ACTION, code=10,
                                              data=b""), msg.xid)
            else:
                pending.append(inner)
        elif isinstance(msg, parser.OFPBarrierRequest):
            self._send(parser.OFPBarrierReply(DP), msg.xid)
        elif isinstance(msg, parser.OFPEchoReply):
            self.echo_replies += 1
        return pending

    def echo(self) -> None:
        self._send(parser.OFPEchoRequest(DP, data=b"hi"), 99)

    def drop_connection(self) -> None:
        assert self.conn is not None
        self.conn.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.srv.close()


@pytest.fixture
def switch(tmp_path: Path) -> Iterator[FakeSwitch]:
    sw = FakeSwitch(tmp_path / "br-int.mgmt")
    try:
        yield sw
    finally:
        sw.close()


A = "cookie=0x2000001,table=2,priority=100,reg3=5,ip actions=set_field:0x1/0x1->reg2"
B = "cookie=0x2000002,table=50,priority=90,reg7=3 actions=output:3"
BAD = "cookie=0x2000003,table=50,priority=80,reg7=4 actions=output:4"


def _types(msgs: list[Any]) -> list[str]:
    out = []
    for m, _xid in msgs:
        name = type(m).__name__.removeprefix("OFP")
        if isinstance(m, parser.OFPBundleCtrlMsg):
            name += {0: ":open", 4: ":commit", 6: ":discard"}[m.type]
        out.append(name)
    return out


def test_a_bundle_is_open_adds_barrier_commit(switch: FakeSwitch) -> None:
    t = OpenFlowTransport(switch.path, timeout=5)
    t.bundle([(0x2000000, F.OWNER_MASK)], [A, B])
    assert _types(switch.messages) == ["Hello", "BundleCtrlMsg:open", "BundleAddMsg",
                                       "BundleAddMsg", "BundleAddMsg", "BarrierRequest",
                                       "BundleCtrlMsg:commit"]
    opened = switch.messages[1][0]
    assert opened.flags == ofp.OFPBF_ATOMIC | ofp.OFPBF_ORDERED
    deleted, *added = switch.committed[0]
    assert deleted.command == ofp.OFPFC_DELETE and deleted.cookie_mask == F.OWNER_MASK
    assert deleted.table_id == ofp.OFPTT_ALL
    assert [(m.cookie, m.table_id, m.priority) for m in added] == [(0x2000001, 2, 100),
                                                                   (0x2000002, 50, 90)]
    assert "2 adds" in t.log[-1]
    t.close()


def test_a_refused_add_discards_the_whole_bundle(tmp_path: Path) -> None:
    sw = FakeSwitch(tmp_path / "s.mgmt", refuse="0x2000003")
    try:
        t = OpenFlowTransport(sw.path, timeout=5)
        with pytest.raises(ApplyError) as e:
            t.bundle([], [A, BAD, B])
        assert e.value.rolled_back and e.value.line == BAD
        assert _types(sw.messages)[-2:] == ["BarrierRequest", "BundleCtrlMsg:discard"]
        assert sw.committed == []
        t.bundle([], [A])  # the connection is still good
        assert len(sw.committed) == 1
    finally:
        sw.close()


def test_idle_connection_answers_echo_and_reconnects(switch: FakeSwitch) -> None:
    t = OpenFlowTransport(switch.path, timeout=5)
    t.bundle([], [A])
    switch.echo()
    t.bundle([], [B])  # the queued echo request is answered first
    assert switch.echo_replies == 1
    switch.drop_connection()
    t.bundle([], [A])  # the switch closed it while idle: a new connection, nothing lost
    assert switch.connections == 2 and len(switch.committed) == 3
    t.close()


# ---------------------------------------------------------------- applier decisions
def _applier(mem: MemoryTransport, ports: dict[str, int]) -> OvsApplier:
    return OvsApplier("unit", transport=mem, ofports=lambda: ports)


def _model() -> tuple[Any, Model, dict[str, int]]:
    w = _workload().Workload(12)
    rs = OvsRenderer().render(compile_plan(w.m))
    devs = sorted({d for o in rs.owners.values() for f in o.flows for d in f.devices()})
    return w, w.m, {d: i + 1 for i, d in enumerate(devs)}


def test_second_apply_and_fresh_applier_send_nothing() -> None:
    _w, m, ports = _model()
    mem = MemoryTransport()
    rs = OvsRenderer().render(compile_plan(m))
    first = _applier(mem, ports).apply(rs)
    assert len(mem.bundles) == 1 and first.changes["full_sync"] == 1
    assert len(mem.flows) == sum(len(o.flows) for o in rs.owners.values())
    a = _applier(mem, ports)
    assert a.apply(rs).noop and a.apply(rs).noop
    assert len(mem.bundles) == 1  # a fresh applier asked, found nothing to do
    assert a.drift(rs) == []


def test_one_member_is_one_owner_in_one_bundle_and_drift_names_owners() -> None:
    w, m, ports = _model()
    mem = MemoryTransport()
    comp, rend = PlanCompiler(), OvsRenderer()
    a = _applier(mem, ports)
    a.apply(rend.render(comp.compile(m)))
    pid = w.add_port(host="elsewhere")  # joins sg-all, a remote group: one member flow
    ip = m.ports[pid].fixed_ips[0].ip_address
    rep = a.apply(rend.render(comp.compile(m)))
    assert len(mem.bundles) == 2
    deletes, adds = mem.bundles[-1]
    assert deletes == [] and len(adds) == 1 and (f"={ip} " in adds[0] or f"={ip}," in adds[0])
    assert rep.changes == {"flows_added": 1, "flows_deleted": 0, "owners_changed": 1}
    # someone removes a flow and adds one: drift names both, apply repairs in one bundle
    rs = rend.render(comp.compile(m))
    victim = next(iter(mem.flows))
    del mem.flows[victim]
    mem.flows[("table=99", "priority=1", "")] = "cookie=0x0,table=99,priority=1 actions=drop"
    drift = _applier(mem, ports).drift(rs)
    assert len(drift) == 2 and any("missing on the bridge" in d for d in drift)
    assert any("not rendered (extra)" in d and "(no cookie)" in d for d in drift)
    fresh = _applier(mem, ports)
    rep = fresh.apply(rs)
    assert rep.changes["owners_changed"] == 2 and len(mem.bundles) == 3
    assert fresh.drift(rs) == []


def test_a_refused_bundle_leaves_the_table_and_the_next_apply_asks_again() -> None:
    w, m, ports = _model()
    mem = MemoryTransport()
    comp, rend = PlanCompiler(), OvsRenderer()
    a = _applier(mem, ports)
    a.apply(rend.render(comp.compile(m)))
    before = dict(mem.flows)
    w.change_rule(0)
    rs = rend.render(comp.compile(m))
    mem.refuse = True
    with pytest.raises(ApplyError):
        a.apply(rs)
    assert mem.flows == before
    rep = a.apply(rs)  # unknown state after an error: diff against the table, then write
    assert rep.changes.get("full_sync") == 1 and a.drift(rs) == []


def test_a_new_device_re_resolves_only_the_owners_that_name_it() -> None:
    w, m, ports = _model()
    comp, rend = PlanCompiler(), OvsRenderer()
    pid = w.add_port()  # its device is not on the bridge yet
    rs = rend.render(comp.compile(m))
    dev = next(p.device for p in comp.compile(m).ports if p.id == pid)
    live = dict(ports)
    a = OvsApplier("unit", transport=MemoryTransport(), ofports=lambda: live)
    before, warnings = a.resolved(rs)
    assert any(dev in w_ for w_ in warnings)
    live[dev] = max(live.values()) + 1  # ovs-vswitchd attached it
    after, warnings = a.resolved(rs)
    assert not warnings
    naming = {c for c, o in rs.owners.items() for f in o.flows if dev in f.devices()}
    assert len(naming) == 2  # the port itself and its network's flood flow
    assert {c for c in after if after[c] is not before[c]} == naming
    assert after[F.owner_cookie(F.KIND_PORT, pid)]  # its flows are written now
    fresh, _ = OvsApplier("unit", transport=MemoryTransport(), ofports=lambda: live).resolved(rs)
    assert after == fresh
    live[dev] += 1  # renumbered: the same two owners again
    again, _ = a.resolved(rs)
    assert {c for c in again if again[c] is not after[c]} == naming
    assert again == OvsApplier("unit", transport=MemoryTransport(),
                               ofports=lambda: live).resolved(rs)[0]


def test_unchanged_ports_keep_their_owners_and_the_render_equals_a_fresh_one() -> None:
    w = _workload().Workload(12, host="h1")
    m, comp, rend = w.m, PlanCompiler("h1"), OvsRenderer()

    def ports(rs: OvsRuleset) -> dict[int, Any]:
        return {c: o for c, o in rs.owners.items() if F.kind_of(c) in (F.KIND_PORT, F.KIND_NET)}

    def same_as_fresh(rs: OvsRuleset) -> None:
        fresh = OvsRenderer().render(compile_plan(m, "h1"))
        assert {c: o.flows for c, o in rs.owners.items()} == {
            c: o.flows for c, o in fresh.owners.items()}

    first = rend.render(comp.compile(m))
    for change in (lambda: w.add_port(host="elsewhere"), lambda: w.change_rule(0)):
        change()
        rs = rend.render(comp.compile(m))
        same_as_fresh(rs)
        assert {c: id(o) for c, o in ports(rs).items()} == {
            c: id(o) for c, o in ports(first).items()}
    w.add_port()  # a local port: one port owner more, its network's flood anew
    rs = rend.render(comp.compile(m))
    same_as_fresh(rs)
    assert len(ports(rs)) == len(ports(first)) + 1
    with pytest.raises(Exception):  # noqa: B017 - a failed render resets the caches ...
        rend.render(None)  # type: ignore[arg-type]
    same_as_fresh(rend.render(comp.compile(m)))  # ... and the next one starts afresh


def test_the_flood_owner_is_reused_while_the_networks_devices_stay() -> None:
    w = _workload().Workload(12, host="h1")
    m, comp, rend = w.m, PlanCompiler("h1"), OvsRenderer()

    def floods(rs: OvsRuleset) -> list[Any]:
        return [o for c, o in rs.owners.items() if F.kind_of(c) == F.KIND_NET]

    before = floods(rend.render(comp.compile(m)))
    w.add_port(host="elsewhere")  # a remote member: no device here
    same = floods(rend.render(comp.compile(m)))
    assert [id(o) for o in same] == [id(o) for o in before]
    pid = w.add_port()  # a local port: its device joins the flood
    grown = floods(rend.render(comp.compile(m)))
    assert [id(o) for o in grown] != [id(o) for o in before]
    dev = next(p.device for p in comp.compile(m).ports if p.id == pid)
    assert any(dev in f.actions for o in grown for f in o.flows)
    assert floods(OvsRenderer().render(compile_plan(m, "h1"))) == grown  # as a fresh render
