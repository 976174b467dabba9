"""kill -9 an etcd-fed agent (``--host h1``) mid-burst and restart it: it resyncs from
its host's view and converges, with real traffic probed all along (an allowed stream and
an established session lose nothing, a denied stream gets nothing through)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from etcdhelp import store_bound, wait_for
from serverproc import VENV_BIN

from portwall.ir import compile_plan
from portwall.lab.enforce import policy_drift
from portwall.lab.harness import Lab
from portwall.lab.traffic import Server, Session, finish, stream
from portwall.store import Store, agent_record_id, etcdtemp, open_store
from portwall.store.cache import ModelCache
from portwall.store.etcd import EtcdStore

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
pytestmark = [pytest.mark.e2e, pytest.mark.slow,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
              pytest.mark.skipif(bool(etcdtemp.unavailable()), reason="etcd not installed")]


@pytest.fixture
def lab() -> Iterator[Lab]:
    with Lab("pwt-ekill") as lab:
        yield lab


def applied(store: Store) -> int:
    rec = store.get("agent", agent_record_id("h1"))
    return -1 if rec is None else int(rec.body["applied_revision"])


def test_agent_kill9_converges(lab: Lab, etcd_cluster: etcdtemp.TempEtcd,
                               tmp_path: Path) -> None:
    box = lab.up(EXAMPLES / "seed000-router-vm.yaml", apply=False)
    url = etcd_cluster.url("pwt-" + uuid.uuid4().hex[:12])
    store = open_store(url)
    assert isinstance(store, EtcdStore)
    store_bound(store, box.topo.model, "h1")
    writer = ModelCache(store)
    argv = [str(VENV_BIN / "portwall"), "agent", "--host", "h1", "--db", url, "--netns",
            box.host_ns, "--resync-interval", "3600"]
    log = open(tmp_path / "agent.log", "ab")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL)
    try:
        wait_for(lambda: applied(store) >= store.last_commit, 60, "the first enforce")
        with Server(box.vm("vm0"), tcp=[22], udp=[5353]), \
                Server(box.vm("serverY"), udp=[5353]), \
                Session(box.vm("serverX"), box.ip("vm0", index=1), 22) as session:
            assert session.connected and session.send()
            allowed = stream(box.vm("serverX"), box.ip("vm0", index=1), 5353, 0.02)
            denied = stream(box.vm("serverX"), box.ip("serverY"), 5353, 0.02)
            try:
                for k in range(40):
                    writer.mutate(lambda m, k=k: m.update_port("vm0-net0", {
                        "allowed_address_pairs": [{"ip_address": f"192.168.{k}.0/24"}]}))
                    if k == 15:
                        proc.send_signal(signal.SIGKILL)
                        proc.wait(10)
                    if k == 25:
                        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                                stdin=subprocess.DEVNULL)
                    time.sleep(0.02)
                wait_for(lambda: applied(store) >= store.last_commit, 60, "convergence")
                assert session.send(), "the established session was cut"
            finally:
                ok, bad = finish(allowed), finish(denied)
        assert ok.sent > 25 and ok.missing == [], ok
        assert bad.sent > 25 and bad.received == 0, bad
        writer.sync()
        assert policy_drift(box.host_ns, compile_plan(writer.model, "h1")) == []
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(10)
        log.close()
        store.close()
