"""Three compute hosts, each enforced by its own ``portwall agent --host H`` process following
one store: a SQLite file, and a 3-member etcd cluster on loopback (each agent then watches
only its host's keys; one etcd member is killed with SIGKILL halfway and the rest go on).

Seed 001's expectations hold with real packets; a change written to the store (a port on
host B joins the remote group) reaches host A's agent and opens proxy-a to it; host A's
agent is killed with SIGKILL right after the next change (leaving the group), restarted, and
converges: new connections refused, the open one cut, every host's kernel equal to its plan
(nothing leaked), and ``down`` stops every agent."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from portwall.ir import compile_plan
from portwall.lab import hostagents, netns
from portwall.lab.enforce import policy_drift
from portwall.lab.harness import LabBox, as_topology
from portwall.lab.multihost import MultiSandbox
from portwall.lab.traffic import Server, Session
from portwall.model.store import Model

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SEED001_FIXED = EXAMPLES / "seed001-vip-nat-fixed.yaml"
pytestmark = [pytest.mark.e2e, pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]


def store_model(url: str) -> Model:
    from portwall.store import open_store
    from portwall.store.cache import ModelCache

    store = open_store(url)
    try:
        return ModelCache(store).model
    finally:
        store.close()


def change(url: str, op: Callable[[Model], Any]) -> int:
    """One API-like write to the store; returns the revision it committed as."""
    from portwall.store import open_store
    from portwall.store.cache import ModelCache

    store = open_store(url)
    try:
        cache = ModelCache(store)
        cache.mutate(op)
        return cache.revision
    finally:
        store.close()


def drift(box: MultiSandbox, url: str) -> dict[str, list[str]]:
    model = store_model(url)
    return {h.name: policy_drift(h.netns, compile_plan(model, h.name), box.state.backend)
            for h in box.state.hosts.values()}


@pytest.fixture(params=["sqlite", "etcd"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The store the agents follow; for etcd a private 3-member cluster, always removed."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/pw.db"
        return
    from portwall.store import etcdtemp

    why = etcdtemp.unavailable()
    if why:
        pytest.skip(why)
    with etcdtemp.TempEtcd(3) as cluster:
        request.node.etcd = cluster  # the test kills a member
        yield cluster.url(netns.unique_name("pwmh"))


@pytest.fixture
def agents_box(backend_name: str, store_url: str) -> Iterator[tuple[LabBox, str]]:
    if backend_name not in ("iptables", "nftables"):
        pytest.skip("multi-host joins Linux bridges (VXLAN): iptables and nftables")
    url = store_url
    topo = as_topology(SEED001_FIXED)
    box, _ = MultiSandbox.up_hosts(topo, netns.unique_name("pwt-mha"), hosts=3,
                                   backend=backend_name, store=url)
    lb = LabBox(box, topo)
    names = lb.namespaces()
    pids = [h.agent_pid for h in box.state.hosts.values()]
    try:
        yield lb, url
    finally:
        box.down()
        assert not [n for n in names if netns.exists(n)], "namespaces survived `lab down`"
        assert not [p for p in pids if p and os.path.exists(f"/proc/{p}/cmdline")
                    and b"agent" in Path(f"/proc/{p}/cmdline").read_bytes()], \
            "an agent survived `lab down`"


def test_agents_enforce_each_host_and_converge_after_kill9(
        agents_box: tuple[LabBox, str], request: pytest.FixtureRequest) -> None:
    lb, url = agents_box
    etcd = getattr(request.node, "etcd", None)
    box = lb.box
    assert isinstance(box, MultiSandbox)
    assert all(hostagents.agent_alive(box, h) for h in box.state.hosts)
    # the store carries each VM port's host: each agent enforces only its host's ports
    model = store_model(url)
    for vm in box.state.vms.values():
        for p in vm.ports:
            assert model.ports[p.id].binding_host_id == vm.host
    results = lb.check()
    assert all(r.ok for r in results), [(r.expect.describe(), r.observed, r.why)
                                        for r in results if not r.ok]
    a, b = lb.vm("proxy-a").host, lb.vm("client").host
    assert a != b

    with Server(lb.vm("proxy-a"), tcp=[80]), \
            Session(lb.vm("admin"), lb.ip("proxy-a"), 80) as admin:
        assert admin.connected and admin.send()  # allowed all along: must survive restarts
        assert not lb.reach("client", "proxy-a", "tcp", 80)
        rev = change(url, lambda m: m.update_port("client-port", {"security_groups": ["ssh"]}))
        hostagents.wait_converged(box, rev, timeout=30)
        assert lb.reach("client", "proxy-a", "tcp", 80), "host A did not learn host B's member"

        with Session(lb.vm("client"), lb.ip("proxy-a"), 80) as s:
            assert s.connected and s.send()
            rev = change(url, lambda m: m.update_port("client-port", {"security_groups": []}))
            time.sleep(0.03)  # the agent polls every 50 ms: kill it in the middle of its work
            hostagents.kill_agent(box, a)
            assert not hostagents.agent_alive(box, a)
            hostagents.start_agent(box, a)
            got = hostagents.wait_converged(box, rev, timeout=60)
            assert all(got[h] >= rev for h in box.state.hosts)
            assert not s.send(), "the restarted agent left a connection the policy refuses"
        assert not lb.reach("client", "proxy-a", "tcp", 80)
        assert lb.reach("admin", "proxy-a", "tcp", 80)
        assert admin.send(), "the agent's restart cut an allowed established connection"

        if etcd is not None:  # one member of three dies: the cluster and the agents go on
            etcd.kill(0)
        # more crashes at other moments of the change (before the poll, during the apply)
        for i, delay in enumerate((0.0, 0.08, 0.15)):
            join = i % 2 == 0
            rev = change(url, lambda m, j=join: m.update_port(
                "client-port", {"security_groups": ["ssh"] if j else []}))
            time.sleep(delay)
            hostagents.kill_agent(box, a)
            hostagents.start_agent(box, a)
            hostagents.wait_converged(box, rev, timeout=60)
            assert lb.reach("client", "proxy-a", "tcp", 80) == join, (delay, join)
            assert admin.send(), f"restart {i} cut an allowed established connection"
            assert drift(box, url) == {h: [] for h in box.state.hosts}, delay
    assert all(hostagents.agent_alive(box, h) for h in box.state.hosts)
    assert drift(box, url) == {h: [] for h in box.state.hosts}
