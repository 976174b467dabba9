"""kill -9 one etcd member of three during a burst of API changes sent to two
``portwall server`` processes on the cluster: every acknowledged change is there at the
end (read from a fresh store), and the cluster and both servers keep serving."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from serverproc import TOKEN, ServerProcess

from portwall.store import etcdtemp, open_store

pytestmark = [pytest.mark.skipif(bool(etcdtemp.unavailable()), reason="etcd not installed")]


@pytest.fixture
def cluster() -> Iterator[etcdtemp.TempEtcd]:
    with etcdtemp.TempEtcd(3) as c:
        yield c


def test_kill9_member_loses_no_acknowledged_change(cluster: etcdtemp.TempEtcd,
                                                   tmp_path: Path) -> None:
    url = cluster.url("kill9")
    servers = [ServerProcess(url).start(tmp_path) for _ in range(2)]
    h = {"X-Auth-Token": TOKEN}
    acked: list[str] = []
    failed: list[str] = []
    lock = threading.Lock()
    try:
        net = httpx.post(f"{servers[0].url}/v2.0/networks", headers=h,
                         json={"network": {"name": "burst"}}).json()["network"]
        httpx.post(f"{servers[0].url}/v2.0/subnets", headers=h, json={"subnet": {
            "network_id": net["id"], "cidr": "10.0.0.0/16"}}).raise_for_status()

        def burst(k: int) -> None:
            with httpx.Client(base_url=servers[k % 2].url, headers=h, timeout=30) as c:
                for i in range(40):
                    try:
                        r = c.post("/v2.0/ports", json={"port": {
                            "network_id": net["id"], "name": f"p{k}-{i}",
                            "binding:host_id": f"h{k}"}})
                        ok = r.status_code == 201
                    except httpx.HTTPError:
                        ok = False
                    with lock:
                        (acked if ok else failed).append(
                            r.json()["port"]["id"] if ok else f"p{k}-{i}")
                    time.sleep(0.01)

        threads = [threading.Thread(target=burst, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        while len(acked) < 30:
            time.sleep(0.01)
        leader = _leader(cluster)
        cluster.kill(leader)  # SIGKILL the leader: an election during the burst
        for t in threads:
            t.join(120)
        assert len(acked) + len(failed) == 160
        assert len(acked) >= 150, failed  # a few may fail over; most are served
        # the surviving members serve, both servers answer
        for s in servers:
            r = httpx.get(f"{s.url}/v2.0/ports", headers=h, timeout=30)
            assert r.status_code == 200
            assert {p["id"] for p in r.json()["ports"]} >= set(acked)
        fresh = open_store(url)
        try:
            stored = {r.id for r in fresh.list("port")[0]}
            assert set(acked) <= stored, set(acked) - stored
            ips = [r.body["fixed_ips"][0]["ip_address"] for r in fresh.list("port")[0]]
            assert len(ips) == len(set(ips))  # two servers, one allocator: no duplicate IP
        finally:
            fresh.close()
    finally:
        for s in servers:
            s.stop()


def _leader(cluster: etcdtemp.TempEtcd) -> int:
    for i, ep in enumerate(cluster.endpoints()):
        st = httpx.post(f"http://{ep}/v3/maintenance/status", json={}, timeout=2).json()
        if st.get("leader") == st.get("header", {}).get("member_id"):
            return i
    return 0
