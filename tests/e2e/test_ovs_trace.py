"""``portwall trace --backend ovs`` lists the flows a packet takes; ovs-vswitchd's own
``ofproto/trace`` on the live bridge must take the same flows (same cookies, same order)
and reach the same verdict."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from portwall.analyze.evaluate import Packet, evaluate_hop
from portwall.backends.ovs.apply import OvsApplier
from portwall.backends.ovs.ovsdb import vswitchd_ctl
from portwall.backends.ovs.render import render_ovs
from portwall.backends.ovs.sim import simulate_hop
from portwall.ir import compile_plan
from portwall.ir.types import CtState
from portwall.lab import netns
from portwall.lab.harness import Lab

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]

ROOT = Path(__file__).resolve().parent.parent.parent
SEED = ROOT / "examples" / "seed004-ovs-stateful.yaml"
_CT = {CtState.NEW: "trk,new", CtState.ESTABLISHED: "trk,est", CtState.INVALID: "trk,inv"}


@pytest.fixture
def lab() -> Iterator[Lab]:
    with Lab("pwt-ovstrace", backend="ovs") as lab:
        yield lab


CASES = [
    ("tap2", "tap4", 6, 22, CtState.NEW),
    ("tap4", "tap2", 6, 23, CtState.NEW),
    ("tap4", "tap2", 6, 23, CtState.ESTABLISHED),
    ("tap2", "tap4", 17, 53, CtState.NEW),
    ("tap2", "tap4", 1, None, CtState.NEW),
    ("tap4", "tap2", 1, None, CtState.INVALID),
]


@pytest.mark.parametrize("case", CASES, ids=[f"{c[0]}-{c[1]}-{c[2]}-{c[4]}" for c in CASES])
def test_simulated_path_is_ofproto_trace(lab: Lab, case: tuple) -> None:  # type: ignore[type-arg]
    src_name, dst_name, proto, dport, state = case
    box = lab.up(SEED)
    plan = compile_plan(box.topo.model)
    src, dst = plan.port(src_name), plan.port(dst_name)
    s_ip, d_ip = src.addresses[0].network_address, dst.addresses[0].network_address
    pkt = Packet(4, s_ip, d_ip, proto, 40000 if dport else None, dport,
                 8 if proto == 1 else None, 0 if proto == 1 else None, src.mac, state)
    ruleset = render_ovs(plan)
    sim = simulate_hop(ruleset, pkt, src, dst)
    want = evaluate_hop(plan, pkt, src, dst).allowed
    assert (dst.device in sim.outputs) == want

    with OvsApplier(box.host_ns) as a:
        ofports = a.db.ofports()
    kind, l4 = {6: ("ip,nw_proto=6", f"tp_src=40000,tp_dst={dport}"),
                17: ("ip,nw_proto=17", f"udp_src=40000,udp_dst={dport}"),
                1: ("icmp", "icmp_type=8,icmp_code=0")}[proto]
    flow = (f"in_port={ofports[src.device]},{kind},dl_src={src.mac},dl_dst={dst.mac},"
            f"nw_src={s_ip},nw_dst={d_ip},{l4}")
    out = netns.run(None, ["ovs-appctl", "-t", vswitchd_ctl(box.host_ns), "ofproto/trace",
                           "br-int", flow, "--ct-next", _CT[state]]).stdout
    theirs = [int(c, 16) for c in re.findall(r"cookie (0x[0-9a-f]+)", out)]
    ours = [h.flow.cookie for h in sim.hits]
    assert theirs == ours, out
    # after the conntrack recirculation, the last pass decides: out of a port, or drop
    last = re.findall(r"Datapath actions: (.*)", out)[-1].strip()
    assert (last != "drop") == want, out
