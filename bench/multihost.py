"""Many hosts on one etcd cluster: change -> enforced, what an agent receives, resync.

    .venv/bin/python bench/multihost.py [--hosts 10] [--ports 1000] [--members 3]
                                        [--backend nftables] [--changes 100]

A 3-member etcd cluster on loopback (scripts' TempEtcd), one writer (the API server's
store path: ModelCache on EtcdStore) and one ``portwall agent --host hN --db etcd://...``
process per host, each enforcing in its own private network namespace (hosts without VMs).
Host hN has its own network and group gN (ingress tcp/22 from gN: remote-group members are
hN's ports); one port of h1 is also in g0, so a change to it concerns h0 and h1.

Measured from the agents' own reports (watched in etcd):
* change -> enforced on every host it concerns, p50/p99 (local changes and cross-host ones)
* events and bytes each agent's watch received while 50 changes hit another host's ports
* per-change work of h0 (events, bytes, compile+render+apply ms) with 1,000 and then
  10,000 ports elsewhere in the cloud
* full resync of one agent (process start -> enforced, and the agent's own load+apply)
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from portwall.lab import netns
from portwall.model import Model
from portwall.store import etcd_client as ec
from portwall.store import etcdtemp, open_store
from portwall.store.cache import ModelCache
from portwall.store.etcd import EtcdStore
from portwall.store.etcd_hosts import decode

VENV_BIN = Path(sys.executable).parent
BATCH = 250


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


@dataclass
class Reports:
    """Every agent report seen in etcd, per host: (applied_revision, heartbeat, body)."""

    by_host: dict[str, list[tuple[int, float, dict[str, Any]]]] = field(default_factory=dict)
    cond: threading.Condition = field(default_factory=threading.Condition)

    def on_events(self, kvs: list[ec.KV], _rev: int) -> None:
        with self.cond:
            for kv in kvs:
                if kv.value is None:
                    continue
                body = decode("agent", "", kv.value).body
                self.by_host.setdefault(body["host"], []).append(
                    (int(body["applied_revision"]), float(body["heartbeat"]), body))
            self.cond.notify_all()

    def first_at(self, host: str, revision: int, timeout: float = 30.0) -> float | None:
        """Heartbeat (wall clock) of ``host``'s first report at or past ``revision``."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for rev, beat, _ in self.by_host.get(host, ()):
                    if rev >= revision:
                        return beat
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.cond.wait(left)

    def last(self, host: str) -> dict[str, Any]:
        with self.cond:
            return self.by_host[host][-1][2]

    def fresh(self, hosts: list[str], after: float, timeout: float = 30.0) -> dict[str, dict]:
        """Each host's first report with a heartbeat after ``after`` (wall clock)."""
        out: dict[str, dict[str, Any]] = {}
        deadline = time.monotonic() + timeout
        with self.cond:
            while len(out) < len(hosts) and time.monotonic() < deadline:
                for h in hosts:
                    for _, beat, body in self.by_host.get(h, ()):
                        if beat > after and h not in out:
                            out[h] = body
                self.cond.wait(0.2)
        return out


class Cloud:
    def __init__(self, store: EtcdStore) -> None:
        self.store = store
        self.cache = ModelCache(store)
        self.ports: dict[str, list[str]] = {}
        self.groups: dict[str, str] = {}
        self.nets: dict[str, str] = {}

    def add_host(self, host: str, index: int, n: int) -> None:
        def setup(m: Model) -> None:
            net = m.create_network({"name": f"net-{host}"})
            m.create_subnet({"network_id": net.id, "cidr": f"10.{index}.0.0/16"})
            g = m.create_security_group({"name": f"g-{host}"})
            m.create_security_group_rule({"security_group_id": g.id, "direction": "ingress",
                                          "protocol": "tcp", "port_range_min": 22,
                                          "port_range_max": 22, "remote_group_id": g.id})
            self.nets[host], self.groups[host] = net.id, g.id

        self.cache.mutate(setup)
        self.ports[host] = []
        for start in range(0, n, BATCH):
            made = self.cache.mutate(lambda m, s=start: [m.create_port({
                "network_id": self.nets[host], "name": f"{host}-p{i}",
                "binding:host_id": host, "security_groups": [self.groups[host]]})
                for i in range(s, min(s + BATCH, n))])
            self.ports[host] += [p.id for p in made]

    def change_pair(self, pid: str, k: int) -> int:
        """A new allowed address pair on ``pid``; the commit's revision."""
        self.cache.mutate(lambda m: m.update_port(pid, {"allowed_address_pairs": [
            {"ip_address": f"172.{16 + k // 65536 % 16}.{k // 256 % 256}.{k % 256}"}]}))
        return self.store.last_commit


class Agents:
    def __init__(self, url: str, backend: str, workdir: Path) -> None:
        self.url, self.backend, self.dir = url, backend, workdir
        self.cfg = workdir / "agent.toml"
        self.cfg.write_text("[agent]\nheartbeat_interval = 1.0\n")
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.ns: dict[str, str] = {}

    def start(self, host: str) -> None:
        if host not in self.ns:
            self.ns[host] = netns.unique_name("pwb-mh")
            netns.create(self.ns[host])
        with open(self.dir / f"agent-{host}.log", "ab") as log:
            self.procs[host] = subprocess.Popen(
                [str(VENV_BIN / "portwall"), "agent", "--host", host, "--db", self.url,
                 "--backend", self.backend, "--netns", self.ns[host], "--config",
                 str(self.cfg), "--resync-interval", "3600"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def stop(self, host: str) -> None:
        p = self.procs.pop(host)
        p.terminate()
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(10)

    def close(self) -> None:
        for h in list(self.procs):
            self.stop(h)
        for ns in self.ns.values():
            netns.delete(ns)


def pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[min(len(s) - 1, round(q / 100 * (len(s) - 1)))]


def latency_run(cloud: Cloud, reports: Reports, changes: list[tuple[str, list[str]]],
                offset: int) -> tuple[list[float], list[float]]:
    """Each change: (port, hosts it concerns) -> enforced-on-all latency (ms), apply ms."""
    lat, work = [], []
    for k, (pid, hosts) in enumerate(changes):
        t0 = time.time()
        rev = cloud.change_pair(pid, offset + k)
        beats = [reports.first_at(h, rev) for h in hosts]
        if any(b is None for b in beats):
            say(f"change {k}: not enforced on {hosts} within 30 s")
            continue
        lat.append((max(b for b in beats if b is not None) - t0) * 1000)
        work.append(float(reports.last(hosts[0]).get("apply_ms", 0.0)))
        time.sleep(0.02)
    return lat, work


def counters(reports: Reports, hosts: list[str]) -> dict[str, dict[str, Any]]:
    return reports.fresh(hosts, time.time())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--hosts", type=int, default=10)
    ap.add_argument("--ports", type=int, default=1000)
    ap.add_argument("--members", type=int, default=3)
    ap.add_argument("--backend", default="nftables")
    ap.add_argument("--changes", type=int, default=100)
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("multihost.py: needs root (agents enforce in private namespaces)")
    if etcdtemp.unavailable():
        sys.exit(f"multihost.py: {etcdtemp.unavailable()}")
    hosts = [f"h{i}" for i in range(args.hosts)]
    rows: list[tuple[str, str, str]] = []
    work = Path(tempfile.mkdtemp(prefix="pw-mh-"))
    with etcdtemp.TempEtcd(args.members) as cluster:
        url = cluster.url("bench")
        store = open_store(url)
        assert isinstance(store, EtcdStore)
        reports = Reports()
        watch = ec.Watch(store.gw, store.rp + "agent/", store.feed.delivered,
                         reports.on_events, lambda: store.feed.delivered)
        agents = Agents(url, args.backend, work)
        try:
            cloud = Cloud(store)
            say(f"etcd: {args.members} members; populating h0, h1 ({args.ports} ports each)")
            for i, h in enumerate(hosts[:2]):
                cloud.add_host(h, i, args.ports)
            # the cross-host port: on h1, also a member of g0 (so h0 admits it)
            x = cloud.ports["h1"][0]
            cloud.cache.mutate(lambda m: m.update_port(x, {"security_groups": [
                cloud.groups["h1"], cloud.groups["h0"]]}))
            say(f"starting {len(hosts)} agents ({args.backend})")
            for h in hosts:
                agents.start(h)
            head = store.head()
            for h in hosts[:2]:
                if reports.first_at(h, head, 120) is None:
                    sys.exit(f"agent {h} did not enforce: see {work}/agent-{h}.log")

            def own(n: int, host: str) -> list[tuple[str, list[str]]]:
                return [(random.choice(cloud.ports[host][1:]), [host]) for _ in range(n)]

            def h0_phase(label: str, seed: int) -> tuple[list[float], list[float], float, float, int]:
                """30 changes on h0's own ports: latencies, work, events and bytes per
                change, and how many ports live elsewhere in the cloud meanwhile."""
                elsewhere = sum(len(v) for k, v in cloud.ports.items() if k != "h0")
                say(f"phase {label}: h0's per-change work with {elsewhere:,} ports elsewhere")
                before = counters(reports, ["h0"])["h0"]
                lat, work = latency_run(cloud, reports, own(30, "h0"), seed)
                after = counters(reports, ["h0"])["h0"]
                return (lat, work, (after["watch_events"] - before["watch_events"]) / 30,
                        (after["watch_event_bytes"] - before["watch_event_bytes"]) / 30,
                        elsewhere)

            lat_a, work_a, ev_a, by_a, elsewhere_a = h0_phase("A", 0)

            say(f"phase B: populating h2..h{args.hosts - 1} and an agentless host")
            for i, h in enumerate(hosts[2:], start=2):
                cloud.add_host(h, i, args.ports)
            cloud.add_host("hx", 200, 1000 if args.hosts >= 10 else args.ports)
            head = store.head()
            for h in hosts:
                if reports.first_at(h, 0, 120) is None:
                    sys.exit(f"agent {h} never reported")
            lat_b, work_b, ev_b, by_b, elsewhere = h0_phase("B", 1000)

            say(f"latency: {args.changes} changes on random hosts (1 in 5 cross-host)")
            mix: list[tuple[str, list[str]]] = []
            for k in range(args.changes):
                if k % 5 == 4:
                    mix.append((x, ["h0", "h1"]))
                else:
                    mix += own(1, random.choice(hosts))
            lat, _ = latency_run(cloud, reports, mix, 5000)
            cross = [v for v, (_, hs) in zip(lat, mix, strict=False) if len(hs) == 2]

            last = hosts[-1]
            say(f"isolation: 50 changes on {last}'s ports; what the other agents received")
            c0 = counters(reports, hosts)
            latency_run(cloud, reports, own(50, last), 9000)
            c1 = counters(reports, hosts)
            others = [h for h in hosts if h != last]
            ev_other = [c1[h]["watch_events"] - c0[h]["watch_events"] for h in others]
            by_other = [c1[h]["watch_event_bytes"] - c0[h]["watch_event_bytes"] for h in others]
            ev_last = c1[last]["watch_events"] - c0[last]["watch_events"]

            say("full resync: restart h0's agent")
            agents.stop("h0")
            head = store.head()
            t0 = time.time()
            agents.start("h0")
            beat = reports.first_at("h0", head, 120)
            resync_wall = ((beat or t0) - t0) * 1000
            resync_in = float(reports.last("h0").get("resync_ms", 0.0))
            ports_h0 = int(reports.last("h0").get("ports", 0))

            total = sum(len(v) for v in cloud.ports.values())
            rows += [
                ("cloud", f"{len(hosts)} agents + 1 agentless host, {total:,} ports, etcd x"
                 f"{args.members}", ""),
                ("change -> enforced, all concerned hosts", f"p50 {pct(lat, 50):.1f} ms / p99 "
                 f"{pct(lat, 99):.1f} ms", f"{len(lat)} changes"),
                ("  cross-host changes (h1 port in g0)", f"p50 {pct(cross, 50):.1f} / p99 "
                 f"{pct(cross, 99):.1f} ms", f"{len(cross)} changes"),
                (f"events to each other agent, 50 changes on {last}",
                 f"max {max(ev_other)} events, max {max(by_other)} bytes",
                 f"{last} itself: {ev_last} events"),
                (f"h0 per change, {elsewhere_a:,} ports elsewhere", f"{ev_a:.1f} events, {by_a:.0f} B, "
                 f"apply {statistics.median(work_a):.1f} ms", f"p50 {pct(lat_a, 50):.1f} ms"),
                (f"h0 per change, {elsewhere:,} ports elsewhere", f"{ev_b:.1f} events, "
                 f"{by_b:.0f} B, apply {statistics.median(work_b):.1f} ms",
                 f"p50 {pct(lat_b, 50):.1f} ms"),
                ("full resync of h0", f"{resync_wall:.0f} ms start -> enforced",
                 f"load+compile+apply {resync_in:.0f} ms, {ports_h0} ports"),
            ]
        finally:
            watch.stop()
            agents.close()
            store.close()
    load = os.getloadavg()
    print(f"\nbench/multihost.py  backend {args.backend}  load average "
          f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}  ({os.cpu_count()} cores)\n")
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    print(f"| {'measure':<{w0}} | {'value':<{w1}} | note |")
    print(f"|{'-' * (w0 + 2)}|{'-' * (w1 + 2)}|------|")
    for a, b, c in rows:
        print(f"| {a:<{w0}} | {b:<{w1}} | {c} |")
    shutil.rmtree(work, ignore_errors=True)  # agent logs (kept when the run fails)


if __name__ == "__main__":
    main()
