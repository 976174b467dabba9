"""The agent with real packets: it enforces what the store holds, follows changes, resyncs
on restart without rewriting a kernel that already matches, repairs drift, and reports
status and Prometheus metrics; ``portwall server --with-agent`` does it in one process."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from serverproc import TOKEN, VENV_BIN, ServerProcess

from portwall.agent.runner import Agent, AgentOptions
from portwall.lab import netns
from portwall.lab.harness import Lab, LabBox
from portwall.model import Model
from portwall.store import Record, Store, agent_record_id, codec, open_store
from portwall.store.cache import ModelCache

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
pytestmark = [pytest.mark.e2e, pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]


def store_model(store: Store, m: Model) -> None:
    """Write every resource of ``m`` into ``store`` in one transaction (ids kept)."""
    with store.transaction() as txn:
        for kind in codec.KINDS:
            for obj in codec.table(m, kind).values():
                txn.put(Record(kind, obj.id, obj.project_id, codec.to_body(m, kind, obj)))


#: someone else's command that empties portwall's port dispatch, per backend
FLUSH_DISPATCH = {"iptables": ["iptables", "-F", "pw-dispatch"],
                  "nftables": ["nft", "flush", "chain", "inet", "portwall", "egress_hook"]}


@pytest.fixture
def lab() -> Iterator[Lab]:
    with Lab("pwt-ag") as lab:
        yield lab


def test_agent_follows_resyncs_repairs_and_reports(lab: Lab, tmp_path: Path) -> None:
    box: LabBox = lab.up(EXAMPLES / "seed000-router-vm.yaml", apply=False)
    store = open_store(f"sqlite:///{tmp_path}/pw.db")
    store_model(store, box.topo.model)
    opts = AgentOptions(host=None, netns=box.host_ns, metrics_port=0)
    agent = Agent(store, opts)
    try:
        resources_at = store.head()
        assert agent.step()
        assert agent.applied_revision == resources_at  # its own status report comes after
        assert box.reach("serverX", "vm0")
        assert not box.reach("serverX", "serverY")  # anti-spoof on vm0's forwarded packets
        # status lands in the store as the host's agent record
        rec = store.get("agent", agent_record_id("all"))
        assert rec is not None and rec.body["applied_revision"] == agent.applied_revision
        assert rec.body["rules"] > 0

        # a change through the store (as the API makes it) is followed
        writer = ModelCache(store)
        for port, cidr in (("vm0-net1", "10.0.2.0/24"), ("vm0-net2", "10.0.1.0/24")):
            writer.mutate(lambda m, p=port, c=cidr: m.update_port(
                p, {"allowed_address_pairs": [{"ip_address": c}]}))
        changed_at = store.head()
        assert agent.step()
        assert agent.applied_revision == changed_at
        if agent.backend.name == "nftables":  # nothing else wrote since the resync's apply
            # (the host-NAT guard writes before it): the change was applied as a delta
            assert agent.last_report is not None and agent.last_report.native.cached
        assert box.reach("serverX", "serverY")

        # drift: someone flushes portwall's dispatch chain; the agent notices and repairs
        netns.run(box.host_ns, FLUSH_DISPATCH[agent.backend.name])
        assert agent.repair_drift()
        assert agent.drift_repairs == 1
        assert agent.repair_drift() == []
        assert box.reach("serverX", "serverY")
        port = agent.serve_metrics()
        text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
        assert "portwall_agent_drift_repairs_total 1.0" in text
        assert "portwall_agent_apply_seconds_count" in text
        assert "portwall_agent_applied_revision" in text
    finally:
        agent.stop()

    # restart: the resync finds the kernel already right and writes nothing
    again = Agent(store, AgentOptions(host=None, netns=box.host_ns))
    try:
        again.step()
        assert again.metrics.applies._value.get() == 0  # type: ignore[attr-defined]
        assert box.reach("serverX", "serverY")
    finally:
        again.stop()
        store.close()


def test_server_with_agent_and_import(lab: Lab, tmp_path: Path) -> None:
    box = lab.up(EXAMPLES / "seed000-router-vm.yaml", apply=False)
    srv = ServerProcess(f"sqlite:///{tmp_path}/pw.db", "--with-agent", "--host", "h1",
                        "--netns", box.host_ns).start(tmp_path)
    try:
        r = subprocess.run([str(VENV_BIN / "portwall"), "import",
                            str(EXAMPLES / "seed000-router-vm.yaml"), "--server", srv.url,
                            "--token", TOKEN, "--bind-host", "h1"],
                           capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60)
        assert r.returncode == 0, r.stderr
        h = {"X-Auth-Token": TOKEN}
        head = httpx.get(f"{srv.url}/v2.0/portwall/changes?since={2**31}", headers=h
                         ).json()["head"]
        deadline = time.monotonic() + 30
        while True:
            agents = httpx.get(f"{srv.url}/v2.0/agents", headers=h).json()["agents"]
            conf = agents[0]["configurations"] if agents else {}
            if conf.get("applied_revision", -1) >= head - 1 and conf.get("ports") == 5:
                break
            assert time.monotonic() < deadline, agents
            time.sleep(0.1)
        assert agents[0]["host"] == "h1" and agents[0]["alive"]
        assert box.reach("serverX", "vm0")
        assert not box.reach("serverX", "serverY")
    finally:
        srv.stop()


def _postrouting(ns: str) -> list[str]:
    out = netns.run(ns, ["iptables-save", "-t", "nat"]).stdout
    return [ln for ln in out.splitlines() if ln.startswith("-A POSTROUTING ")]


def test_agent_keeps_the_host_nat_guard_first(lab: Lab, tmp_path: Path) -> None:
    """Seed 003 on an agent-run host: docker's MASQUERADE is there before the agent starts,
    and is flushed and re-added later; the agent's guard ends up first both times."""
    box: LabBox = lab.up(EXAMPLES / "seed000-router-vm.yaml", apply=False)
    masq = ["-s", "172.17.0.0/16", "!", "-o", "docker0", "-j", "MASQUERADE"]
    netns.run(box.host_ns, ["iptables", "-t", "nat", "-A", "POSTROUTING", *masq])
    store = open_store(f"sqlite:///{tmp_path}/pw.db")
    store_model(store, box.topo.model)
    agent = Agent(store, AgentOptions(host=None, netns=box.host_ns))
    try:
        assert agent.step()
        rules = _postrouting(box.host_ns)
        assert rules[0] == "-A POSTROUTING -j pwguard-nat" and "MASQUERADE" in rules[1], rules
        # docker restarts: flushes POSTROUTING and puts its rule back on top
        netns.run(box.host_ns, ["iptables", "-t", "nat", "-F", "POSTROUTING"])
        netns.run(box.host_ns, ["iptables", "-t", "nat", "-I", "POSTROUTING", "1", *masq])
        assert "MASQUERADE" in _postrouting(box.host_ns)[0]
        agent.repair_drift()  # the periodic check
        rules = _postrouting(box.host_ns)
        assert rules[0] == "-A POSTROUTING -j pwguard-nat" and len(rules) == 2, rules
    finally:
        agent.stop()
        store.close()
