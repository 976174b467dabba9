"""Two hosts' agents on one etcd cluster behind a real ``portwall server``: each reports
its status and last applied revision in ``/v2.0/agents``; a change to one host's port
reaches that host's agent and sends the other nothing."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from etcdhelp import wait_for
from serverproc import TOKEN, ServerProcess

from portwall.agent.runner import Agent, AgentOptions
from portwall.store import etcdtemp, open_store

pytestmark = [pytest.mark.e2e,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
              pytest.mark.skipif(bool(etcdtemp.unavailable()), reason="etcd not installed")]


def test_agents_report_per_host(etcd_cluster: etcdtemp.TempEtcd, tmp_path: Path,
                                make_netns: Callable[[str], str]) -> None:
    url = etcd_cluster.url("pwt-" + uuid.uuid4().hex[:12])
    srv = ServerProcess(url).start(tmp_path)
    h = {"X-Auth-Token": TOKEN}
    agents: dict[str, Agent] = {}
    try:
        api = httpx.Client(base_url=srv.url, headers=h, timeout=30)
        net = api.post("/v2.0/networks", json={"network": {"name": "n"}}).json()["network"]
        api.post("/v2.0/subnets", json={"subnet": {"network_id": net["id"],
                                                   "cidr": "10.0.0.0/24"}}).raise_for_status()
        # one group per host (the default group admits its own members: that would tie
        # the hosts together, rightly)
        groups = {host: api.post("/v2.0/security-groups", json={"security_group": {
            "name": f"g-{host}"}}).json()["security_group"] for host in ("h1", "h2")}
        ports = {host: api.post("/v2.0/ports", json={"port": {
            "network_id": net["id"], "binding:host_id": host,
            "security_groups": [groups[host]["id"]]}}).json()["port"]
            for host in ("h1", "h2")}
        for host in ("h1", "h2"):
            agents[host] = Agent(open_store(url, host=host), AgentOptions(
                host=host, backend="nftables", netns=make_netns("pwt-eh"),
                resync_interval=3600, heartbeat_interval=0.3))
            agents[host].start_thread()

        def listed() -> dict[str, dict]:
            return {a["host"]: a for a in api.get("/v2.0/agents").json()["agents"]}

        wait_for(lambda: set(listed()) == {"h1", "h2"} and all(
            a["configurations"]["ports"] == 1 for a in listed().values()), 30, "reports")
        first = listed()
        assert all(a["alive"] and not a["configurations"]["stale"] for a in first.values())
        api.put(f"/v2.0/ports/{ports['h1']['id']}", json={"port": {
            "allowed_address_pairs": [{"ip_address": "10.0.0.200"}]}}).raise_for_status()
        wait_for(lambda: listed()["h1"]["configurations"]["applied_revision"]
                 > first["h1"]["configurations"]["applied_revision"], 30, "h1 to apply")
        wait_for(lambda: listed()["h2"]["heartbeat_timestamp"]
                 != first["h2"]["heartbeat_timestamp"], 30, "h2 to report again")
        now = listed()
        assert now["h1"]["configurations"]["watch_events"] > \
            first["h1"]["configurations"]["watch_events"]
        assert now["h2"]["configurations"]["watch_events"] == \
            first["h2"]["configurations"]["watch_events"]
        assert now["h2"]["configurations"]["applied_revision"] == \
            first["h2"]["configurations"]["applied_revision"]
    finally:
        for a in agents.values():
            a.stop()
            a.store.close()
        srv.stop()
