"""Agent chaos: kill -9 the agent during a burst of API changes and restart it.

Probed continuously with real traffic the whole time: an allowed UDP stream and an
established TCP session must lose nothing, a denied stream must never get a packet
through; after the restart the agent converges to the store (no drift from a fresh
compile of the final model)."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from serverproc import VENV_BIN
from test_agent import store_model

from portwall.ir import compile_plan
from portwall.lab.enforce import policy_drift
from portwall.lab.harness import Lab
from portwall.lab.traffic import Server, Session, finish, stream
from portwall.store import Store, agent_record_id, open_store
from portwall.store.cache import ModelCache

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
pytestmark = [pytest.mark.e2e, pytest.mark.slow,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]


class AgentProc:
    def __init__(self, db: str, ns: str, log: Path) -> None:
        self.db, self.ns, self.log = db, ns, log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [str(VENV_BIN / "portwall"), "agent", "--db", self.db, "--netns", self.ns,
                 "--resync-interval", "3600"],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def applied(store: Store) -> int:
    rec = store.get("agent", agent_record_id("all"))
    return -1 if rec is None else int(rec.body["applied_revision"])


def wait_applied(store: Store, revision: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while applied(store) < revision:
        assert time.monotonic() < deadline, (applied(store), revision)
        time.sleep(0.05)


@pytest.fixture
def lab() -> Iterator[Lab]:
    with Lab("pwt-chaos") as lab:
        yield lab


def test_kill9_during_burst_converges_without_blink(lab: Lab, tmp_path: Path) -> None:
    box = lab.up(EXAMPLES / "seed000-router-vm.yaml", apply=False)
    db = f"sqlite:///{tmp_path}/pw.db"
    store = open_store(db)
    store_model(store, box.topo.model)
    writer = ModelCache(store)
    agent = AgentProc(db, box.host_ns, tmp_path / "agent.log")
    agent.start()
    try:
        wait_applied(store, writer.revision)
        with Server(box.vm("vm0"), tcp=[22], udp=[5353]), \
                Server(box.vm("serverY"), udp=[5353]), \
                Session(box.vm("serverX"), box.ip("vm0", index=1), 22) as session:
            assert session.connected and session.send()
            # 0.02 s apart: the echo servers' output pipe (read at the end) holds ~3,000
            # lines, far more than this test sends
            allowed = stream(box.vm("serverX"), box.ip("vm0", index=1), 5353, 0.02)
            denied = stream(box.vm("serverX"), box.ip("serverY"), 5353, 0.02)
            try:
                killed = threading.Event()

                def burst() -> None:
                    for k in range(40):
                        writer.mutate(lambda m, k=k: m.update_port("vm0-net0", {
                            "allowed_address_pairs": [{"ip_address": f"192.168.{k}.0/24"}]}))
                        if k == 15:
                            agent.kill9()
                            killed.set()
                        if k == 25:
                            agent.start()
                        time.sleep(0.02)

                burst()
                assert killed.is_set()
                wait_applied(store, writer.revision)
                assert session.send(), "the established session was cut"
            finally:
                ok, bad = finish(allowed), finish(denied)
        assert ok.sent > 25 and ok.missing == [], ok
        assert bad.sent > 25 and bad.received == 0, bad
        writer.sync()
        final = compile_plan(writer.model)
        assert policy_drift(box.host_ns, final, box.box.state.backend) == []
        pairs = writer.model.get("port", "vm0-net0").allowed_address_pairs
        assert [p.ip_address for p in pairs] == ["192.168.39.0/24"]
    finally:
        agent.stop()
        store.close()
