"""An agent on etcd with real packets: it enforces its host's view, hears nothing of other
hosts' changes, and fails static -- with every etcd member stopped it keeps the kernel as
it was (allowed streams and an established session go on, denied packets stay out) and
reports itself stale; when etcd is back it converges to changes made since."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from etcdhelp import store_bound, wait_for

from portwall.agent.runner import Agent, AgentOptions
from portwall.ir import compile_plan
from portwall.lab.enforce import policy_drift
from portwall.lab.harness import Lab
from portwall.lab.traffic import Server, Session, finish, stream
from portwall.store import agent_record_id, etcdtemp, open_store
from portwall.store.cache import ModelCache
from portwall.store.etcd import EtcdHostStore, EtcdStore

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
pytestmark = [pytest.mark.e2e,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
              pytest.mark.skipif(bool(etcdtemp.unavailable()), reason="etcd not installed")]


@pytest.fixture
def lab() -> Iterator[Lab]:
    with Lab("pwt-etcd") as lab:
        yield lab


@pytest.fixture
def cluster() -> Iterator[etcdtemp.TempEtcd]:
    with etcdtemp.TempEtcd(3) as c:
        yield c


def test_agent_fails_static_and_converges(lab: Lab, cluster: etcdtemp.TempEtcd) -> None:
    box = lab.up(EXAMPLES / "seed000-router-vm.yaml", apply=False)
    url = cluster.url("failstatic")
    store = open_store(url)
    assert isinstance(store, EtcdStore)
    store_bound(store, box.topo.model, "h1")
    writer = ModelCache(store)
    # another host's tenant: its changes must not reach h1
    other = writer.mutate(lambda m: m.create_network({"name": "elsewhere"}))
    writer.mutate(lambda m: m.create_subnet({"network_id": other.id, "cidr": "10.99.0.0/24"}))
    decoy = writer.mutate(lambda m: m.create_port({"network_id": other.id,
                                                   "binding:host_id": "h2"}))
    view = open_store(url, host="h1")
    assert isinstance(view, EtcdHostStore)
    agent = Agent(view, AgentOptions(host="h1", netns=box.host_ns, resync_interval=3600,
                                     heartbeat_interval=0.5))
    agent.start_thread()
    try:
        wait_for(lambda: agent.applied_revision >= store.last_commit, what="first enforce")
        assert box.reach("serverX", "vm0") and not box.reach("serverX", "serverY")
        assert decoy.id not in agent.cache.model.ports  # type: ignore[union-attr]

        before = view.stats()
        writer.mutate(lambda m: m.update_port(decoy.id, {"allowed_address_pairs": [
            {"ip_address": "10.99.7.0/24"}]}))
        time.sleep(0.3)
        after = view.stats()
        assert after["watch_events"] == before["watch_events"]
        assert after["watch_event_bytes"] == before["watch_event_bytes"]

        writer.mutate(lambda m: m.update_port("vm0-net0", {"allowed_address_pairs": [
            {"ip_address": "192.168.1.0/24"}]}))
        wait_for(lambda: agent.applied_revision >= store.last_commit, what="a change")
        assert view.stats()["watch_events"] > after["watch_events"]

        def reported() -> int:
            rec = store.get("agent", agent_record_id("h1"))
            return -1 if rec is None else int(rec.body["applied_revision"])

        wait_for(lambda: reported() >= store.last_commit, 10, "the status report")

        with Server(box.vm("vm0"), tcp=[22], udp=[5353]), \
                Server(box.vm("serverY"), udp=[5353]), \
                Session(box.vm("serverX"), box.ip("vm0", index=1), 22) as session:
            assert session.connected and session.send()
            allowed = stream(box.vm("serverX"), box.ip("vm0", index=1), 5353, 0.02)
            denied = stream(box.vm("serverX"), box.ip("serverY"), 5353, 0.02)
            try:
                time.sleep(0.5)
                cluster.stop()  # every member: etcd is gone
                wait_for(lambda: agent.status()["stale"] and agent.metrics.stale._value.get()
                         == 1, 10, "the agent to say stale")  # type: ignore[attr-defined]
                time.sleep(2.0)  # the outage, probed all along
                plan = compile_plan(writer.model, "h1")
                assert policy_drift(box.host_ns, plan) == []  # the kernel is untouched
                assert session.send(), "an established session was cut during the outage"

                for i in range(cluster.n):
                    cluster.start_member(i)
                cluster.wait_healthy()
                wait_for(lambda: not agent.status()["stale"], 20, "the agent to reconnect")
                writer.mutate(lambda m: m.update_port("vm0-net0", {"allowed_address_pairs": [
                    {"ip_address": "192.168.2.0/24"}]}))
                wait_for(lambda: agent.applied_revision >= store.last_commit, 30,
                         "convergence after the restart")
                assert session.send(), "the established session was cut"
            finally:
                ok, bad = finish(allowed), finish(denied)
        assert ok.sent > 50 and ok.missing == [], ok
        assert bad.sent > 50 and bad.received == 0, bad
        writer.sync()
        assert policy_drift(box.host_ns, compile_plan(writer.model, "h1")) == []
    finally:
        agent.stop()
        view.close()
        store.close()
