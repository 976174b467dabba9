"""The API server under load: port create and list latency at 1,000 and 10,000 ports, and
API change -> enforced by the agent.

A real ``portwall server`` process (SQLite file, or ``--pg`` for a throw-away PostgreSQL)
on a free loopback port; ``--clients`` threads create ports concurrently over HTTP (httpx,
one connection each). Then an agent (in this process, following the server's change feed
over HTTP) enforces the ``--host-ports`` ports bound to its host in a fresh network
namespace, and ``--changes`` address-pair updates are timed from the PUT until the agent
has applied the revision that PUT committed.

    .venv/bin/python bench/api.py                 # 1,000 and 10,000 ports, SQLite
    .venv/bin/python bench/api.py --pg --sizes 1000
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "api"))

from _progress import step
from serverproc import TOKEN, ServerProcess

from portwall import backends
from portwall.agent.httpstore import HttpStore
from portwall.agent.runner import Agent, AgentOptions
from portwall.lab import netns

H = {"X-Auth-Token": TOKEN}
HOST = "bench-host"


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(p / 100 * (len(xs) - 1)))] * 1000


def setup(url: str, subnets: int) -> tuple[str, list[str]]:
    c = httpx.Client(base_url=url, headers=H, timeout=60)
    net = c.post("/v2.0/networks", json={"network": {"name": "bench"}}).json()["network"]
    subs = []
    for i in range(subnets):
        s = c.post("/v2.0/subnets", json={"subnet": {
            "network_id": net["id"], "cidr": f"10.{i}.0.0/16"}}).json()["subnet"]
        subs.append(s["id"])
    sg = c.post("/v2.0/security-groups", json={"security_group": {"name": "web"}}).json()
    gid = sg["security_group"]["id"]
    for port in (22, 80, 443):
        c.post("/v2.0/security-group-rules", json={"security_group_rule": {
            "security_group_id": gid, "direction": "ingress", "protocol": "tcp",
            "port_range_min": port, "port_range_max": port}})
    c.post("/v2.0/security-group-rules", json={"security_group_rule": {
        "security_group_id": gid, "direction": "ingress", "remote_group_id": gid}})
    return net["id"], [gid]


def sdk_connection(url: str) -> Any:
    """openstacksdk against the server, as the tests drive it (admin token, no Keystone)."""
    import openstack

    return openstack.connect(auth_type="admin_token", auth={"endpoint": url, "token": TOKEN},
                             network_endpoint_override=url)


def create_ports(url: str, net: str, groups: list[str], start: int, stop: int, clients: int,
                 host_ports: int, sdk: bool = False) -> list[float]:
    lat: list[float] = []
    lock = threading.Lock()
    chunks = [range(start + k, stop, clients) for k in range(clients)]

    def work_sdk(idx: range) -> None:
        conn = sdk_connection(url)  # one per client thread, like separate users
        mine: list[float] = []
        for i in idx:
            host = HOST if i < host_ports else f"other-{i % 50}"
            t0 = time.perf_counter()
            conn.network.create_port(
                network_id=net, name=f"p{i}", security_group_ids=groups, binding_host_id=host,
                allowed_address_pairs=[{"ip_address": f"172.16.{i // 250}.{i % 250}"}])
            mine.append(time.perf_counter() - t0)
        with lock:
            lat.extend(mine)

    def work(idx: range) -> None:
        mine: list[float] = []
        with httpx.Client(base_url=url, headers=H, timeout=60) as c:
            for i in idx:
                host = HOST if i < host_ports else f"other-{i % 50}"
                body = {"port": {"network_id": net, "name": f"p{i}", "security_groups": groups,
                                 "binding:host_id": host,
                                 "allowed_address_pairs": [{"ip_address": f"172.16.{i // 250}.{i % 250}"}]}}
                t0 = time.perf_counter()
                r = c.post("/v2.0/ports", json=body)
                mine.append(time.perf_counter() - t0)
                if r.status_code != 201:
                    raise RuntimeError(r.text)
        with lock:
            lat.extend(mine)

    with ThreadPoolExecutor(clients) as ex:
        list(ex.map(work_sdk if sdk else work, chunks))
    return lat


def list_ports(url: str, reps: int, sdk: bool = False) -> tuple[list[float], int]:
    lat, n = [], 0
    if sdk:
        conn = sdk_connection(url)
        for _ in range(reps):
            t0 = time.perf_counter()
            n = len(list(conn.network.ports()))
            lat.append(time.perf_counter() - t0)
        return lat, n
    with httpx.Client(base_url=url, headers=H, timeout=120) as c:
        for _ in range(reps):
            t0 = time.perf_counter()
            r = c.get("/v2.0/ports")
            lat.append(time.perf_counter() - t0)
            n = len(r.json()["ports"])
    return lat, n


def timed_phases(agent: Agent) -> dict[str, list[float]]:
    """Wrap the running agent's compile, render and apply (after its full start-up build,
    so the figures are one change each) to time them."""
    out: dict[str, list[float]] = {"compile": [], "render": [], "apply": []}

    def wrap(obj: Any, meth: str, into: list[float]) -> None:
        inner = getattr(obj, meth)

        def timed(*a: Any, **k: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return inner(*a, **k)
            finally:
                into.append(time.perf_counter() - t0)
        setattr(obj, meth, timed)

    wrap(agent.compiler, "compile", out["compile"])
    wrap(agent.renderer, "render", out["render"])
    wrap(agent.applier, "apply", out["apply"])
    return out


def change_to_enforced(url: str, changes: int, backend: str | None = None
                       ) -> tuple[list[float], dict[str, Any]]:
    """PUT an address-pair change on a port of the agent's host; time until enforced."""
    ns = netns.unique_name("pwb-api")
    netns.create(ns)
    store = HttpStore(url, TOKEN)
    store.wait = 5.0
    agent = Agent(store, AgentOptions(host=HOST, netns=ns, poll_interval=0.0, backend=backend,
                                      resync_interval=3600, heartbeat_interval=3600))
    try:
        agent.start_thread()
        c = httpx.Client(base_url=url, headers=H, timeout=60)
        head = lambda: int(c.get("/v2.0/portwall/changes", params={"since": 2**31}  # noqa: E731
                               ).json()["head"])
        deadline = time.monotonic() + 300
        while agent.applied_revision < head():
            if time.monotonic() > deadline:
                raise RuntimeError(f"agent did not catch up: {agent.last_error}")
            time.sleep(0.05)
        ports = c.get("/v2.0/ports", params={"binding:host_id": HOST, "fields": "id"}
                      ).json()["ports"]
        phases = timed_phases(agent)
        lat, put_lat = [], []
        for k in range(changes):
            pid = ports[k % len(ports)]["id"]
            t0 = time.perf_counter()
            r = c.put(f"/v2.0/ports/{pid}", json={"port": {"allowed_address_pairs": [
                {"ip_address": f"192.168.{k % 250}.0/24"}]}})
            assert r.status_code == 200, r.text
            put_lat.append(time.perf_counter() - t0)
            want = head()
            while agent.applied_revision < want:
                time.sleep(0.0005)
            lat.append(time.perf_counter() - t0)
        rs = agent.ruleset
        counts: dict[str, Any] = dict(rs.counts()) if rs is not None else {}
        h = agent.metrics.apply_seconds
        total = sum(s.value for m in h.collect() for s in m.samples if s.name.endswith("_sum"))
        n = sum(s.value for m in h.collect() for s in m.samples if s.name.endswith("_count"))
        counts["apply_mean_us"] = int(total / max(n, 1) * 1e6)
        counts["phases"] = {"PUT (server)": put_lat, **phases}
        return lat, counts
    finally:
        agent.stop()
        store.close()
        netns.delete(ns)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sizes", default="1000,10000")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--host-ports", type=int, default=50,
                    help="ports bound to the agent's host (the rest to 50 other hosts)")
    ap.add_argument("--changes", type=int, default=50)
    ap.add_argument("--list-reps", type=int, default=10)
    ap.add_argument("--pg", action="store_true", help="PostgreSQL instead of SQLite")
    ap.add_argument("--backend", default=backends.DEFAULT, help="the agent's dataplane backend")
    ap.add_argument("--client", choices=("httpx", "sdk"), default="httpx",
                    help="create and list through openstacksdk, or plain httpx requests")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="pw-bench-api-"))
    pg = None
    if args.pg:
        from portwall.store.pgtemp import TempPostgres

        pg = TempPostgres().start()
        db = pg.create_database()
    else:
        db = f"sqlite:///{tmp}/bench.db"
    step(f"starting portwall server ({'PostgreSQL' if args.pg else 'SQLite'})")
    srv = ServerProcess(db).start(tmp)
    rows = []
    try:
        net, groups = setup(srv.url, subnets=1)
        have = 0
        for size in sizes:
            step(f"creating ports {have:,} -> {size:,} ({args.clients} clients)")
            lat = create_ports(srv.url, net, groups, have, size, args.clients, args.host_ports,
                               sdk=args.client == "sdk")
            window = lat[-min(1000, len(lat)):]
            have = size
            step(f"listing {size:,} ports x {args.list_reps}")
            llat, n = list_ports(srv.url, args.list_reps, sdk=args.client == "sdk")
            assert n == size, (n, size)
            rows.append((size, pct(window, 50), pct(window, 99), statistics.mean(window) * 1000,
                         pct(llat, 50), pct(llat, 99)))
        step(f"{args.changes} changes -> enforced by the agent ({args.backend})")
        clat, counts = change_to_enforced(srv.url, args.changes, args.backend)
    finally:
        srv.stop()
        if pg is not None:
            pg.stop()
    store = "PostgreSQL" if args.pg else "SQLite (WAL)"
    load = os.getloadavg()
    print(f"\nportwall server, {store}, {args.clients} concurrent clients ({args.client}); load"
          " average"
          f" at the end {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} (1 / 5 / 15 min)\n")
    print("| ports | create p50 ms | create p99 ms | create mean ms | list all p50 ms"
          " | list all p99 ms |")
    print("|---|---|---|---|---|---|")
    for size, c50, c99, cm, l50, l99 in rows:
        print(f"| {size:,} | {c50:.1f} | {c99:.1f} | {cm:.1f} | {l50:.0f} | {l99:.0f} |")
    print(f"\ncreate latencies: the last 1,000 creates before each size. API change -> "
          f"enforced ({args.changes} address-pair updates on the agent's {args.host_ports} "
          f"ports, {args.backend} in a namespace, {counts.get('rules', 0):,} rules; the agent's"
          f" compile+render+apply mean {counts['apply_mean_us'] / 1000:.1f} ms):")
    print(f"\n| change -> enforced p50 ms | p99 ms |\n|---|---|\n| {pct(clat, 50):.1f} |"
          f" {pct(clat, 99):.1f} |")
    print("\nOne change, phase by phase (the agent's compile, render and apply after its"
          " start-up build; PUT = the server's answer to the update):\n")
    print("| phase | p50 ms | p99 ms | mean ms |\n|---|---|---|---|")
    for name, xs in counts["phases"].items():
        if xs:
            print(f"| {name} | {pct(xs, 50):.2f} | {pct(xs, 99):.2f} |"
                  f" {statistics.mean(xs) * 1000:.2f} |")


if __name__ == "__main__":
    main()
