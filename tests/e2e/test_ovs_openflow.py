"""The persistent OpenFlow connection against a real ovs-vswitchd: every flow the renderer
writes, sent as os-ken-encoded messages, is what ``ovs-ofctl`` makes of the same text (its
own diff finds nothing) and what the connection's dump reads back (no false drift); a
refused add leaves the bridge exactly as it was; a slot delete removes one flow only."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from portwall.backends.base import ApplyError
from portwall.backends.ovs import daemon
from portwall.backends.ovs import flows as F
from portwall.backends.ovs.ofconn import OfctlTransport, OpenFlowTransport
from portwall.backends.ovs.ovsdb import mgmt
from portwall.backends.ovs.render import OvsRenderer
from portwall.ir import compile_plan
from portwall.topology import load_topology

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]
ROOT = Path(__file__).resolve().parent.parent.parent


@pytest.fixture
def bridge(make_netns: Callable[[str], str]) -> Iterator[str]:
    ns = make_netns("pwt-ofconn")
    try:
        daemon.start(ns)
        yield mgmt(ns)
    finally:
        daemon.stop(ns)


def _workload_model(n: int) -> object:
    spec = importlib.util.spec_from_file_location("pw_workload_e2e", ROOT / "bench" / "workload.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod.Workload(n).m


def _flow_sets() -> list[list[str]]:
    models = [load_topology(p).model for p in sorted((ROOT / "examples").glob("*.yaml"))]
    models.append(_workload_model(30))
    out = []
    for m in models:
        rs = OvsRenderer().render(compile_plan(m))  # type: ignore[arg-type]
        devs = sorted({d for o in rs.owners.values() for f in o.flows for d in f.devices()})
        ports = {d: i + 1 for i, d in enumerate(devs)}
        out.append([t for o in rs.owners.values() for f in o.flows
                    if (t := F.resolve(f.text(), ports))])
    return out


def _dump(target: str) -> list[str]:
    out = subprocess.run(["ovs-ofctl", "-O", "OpenFlow15", "dump-flows", "--no-stats", target],
                         capture_output=True, text=True, check=True).stdout
    return sorted(ln.strip() for ln in out.splitlines() if "cookie=" in ln)


def test_openflow_messages_mean_what_ovs_ofctl_means(bridge: str) -> None:
    of, ctl = OpenFlowTransport(bridge.removeprefix("unix:")), OfctlTransport(bridge)
    try:
        for flows in _flow_sets():
            of.bundle([(0, 0)], flows)
            assert len(_dump(bridge)) == len(flows)
            assert ctl.diff(flows) == []  # ovs-ofctl parses the texts: same flows
            assert of.diff(flows) == []  # read back over the connection: same identities
            # and the identity is sharp: one flow with another action is drift, both ways
            t0 = next(t for t in flows if t.endswith(" actions=drop"))
            alt = t0.replace(" actions=drop", f" actions=resubmit(,{F.T_FORWARD})")
            lines = of.diff([alt if t == t0 else t for t in flows])
            assert sorted(ln.sign for ln in lines) == ["+", "-"]
            assert len(ctl.diff([alt if t == t0 else t for t in flows])) == 2
    finally:
        of.close()


def test_a_refused_add_leaves_the_bridge_as_it_was(bridge: str) -> None:
    flows = _flow_sets()[-1]
    of = OpenFlowTransport(bridge.removeprefix("unix:"))
    try:
        of.bundle([(0, 0)], flows)
        before = _dump(bridge)
        # ct(commit) needs an IP match: Open vSwitch refuses this add, after valid ones
        bad = "cookie=0x7000001,table=50,priority=1,in_port=1 actions=ct(commit,zone=1)"
        new = "cookie=0x7000002,table=50,priority=2,in_port=1 actions=drop"
        with pytest.raises(ApplyError) as e:
            of.bundle([(0, 0)], [new, bad])
        assert e.value.rolled_back and e.value.line == bad
        assert _dump(bridge) == before
        # the connection goes on: a slot delete removes exactly one flow
        of.bundle([], [], [flows[-1]])
        after = _dump(bridge)
        assert len(after) == len(before) - 1
        assert of.diff(flows[:-1]) == []
    finally:
        of.close()


def test_the_ovs_ofctl_fallback_writes_the_same_bundles(bridge: str) -> None:
    flows = _flow_sets()[-1]
    ctl = OfctlTransport(bridge)
    ctl.bundle([(0, 0)], flows)
    assert ctl.diff(flows) == []
    ctl.bundle([], [], [flows[0]])  # delete_strict by slot
    assert [ln.sign for ln in ctl.diff(flows)] == ["+"]
    with pytest.raises(ApplyError) as e:
        ctl.bundle([], [flows[0], "cookie=0x7,table=50,priority=1,in_port=1 "
                                  "actions=ct(commit,zone=1)"])
    assert e.value.rolled_back
    assert [ln.sign for ln in ctl.diff(flows)] == ["+"]  # nothing of the refused bundle


def test_port_numbers_read_from_raw_rows_equal_the_attribute_walk(
        make_netns: Callable[[str], str]) -> None:
    """OVSDB port numbers are read from the rows' server data and, after the first read,
    only from the rows the server changed: the same as through the IDL's row attributes,
    per bridge, as ports come and go."""
    from portwall.backends.ovs.ovsdb import BRIDGE, Ovsdb

    ns = make_netns("pwt-ofports")
    try:
        daemon.start(ns)
        with Ovsdb(ns) as db:

            def walk(bridge: str) -> dict[str, int]:
                return {i.name: int(i.ofport[0]) for b in db._rows("Bridge") if b.name == bridge
                        for p in b.ports for i in p.interfaces if i.ofport and i.ofport[0] > 0}

            def settled(want: set[str], gone: set[str] = frozenset()) -> dict[str, int]:
                for _ in range(200):
                    got = db.ofports()
                    if want <= set(got) and not gone & set(got):
                        return got
                    time.sleep(0.05)
                raise AssertionError(f"not attached: {want - set(db.ofports())}")

            def add(names: list[str], bridge: str = BRIDGE) -> None:
                with db.api.transaction(check_error=True) as txn:
                    for n in names:
                        txn.add(db.api.add_port(bridge, n, type="patch",
                                                options={"peer": f"nope-{n}"}))

            with db.api.transaction(check_error=True) as txn:
                txn.add(db.api.add_br("br-other", datapath_type="netdev"))
            add([f"pwp{i}" for i in (1, 2, 4, 5)])
            add(["pwp0", "pwp3"], "br-other")
            got = settled({"pwp1", "pwp2", "pwp4", "pwp5"})
            assert not {"pwp0", "pwp3"} & set(got)
            state = db._ports_of
            assert state is not None
            for bridge in (BRIDGE, "br-other"):
                assert db._ofports_raw(bridge) == walk(bridge) == db.ofports(bridge)
            db.ofports()  # back to br-int: read afresh once
            state = db._ports_of
            for step in range(3):  # ports come and go: read from the changed rows only
                add([f"pwn{step}"])
                db.del_port(f"pwp{step + 1}" if step < 2 else "pwp5")
                got = settled({f"pwn{step}"}, {f"pwp{step + 1}" if step < 2 else "pwp5"})
                assert db._ports_of is state  # updated, not rebuilt
                assert got == walk(BRIDGE) == db._ofports_raw(BRIDGE)
            add(["pwq"], "br-other")  # another bridge's port: nothing here changes
            time.sleep(0.3)
            assert db.ofports() == walk(BRIDGE) and "pwq" not in db.ofports()
    finally:
        daemon.stop(ns)
