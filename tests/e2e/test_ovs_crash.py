"""Kill the applier mid-bundle, again and again, while watching the bridge: it only ever
holds the complete old or the complete new rule set (OpenFlow bundles are all or nothing,
and an uncommitted bundle dies with its connection); traffic both policies allow never
stops; and the next apply converges."""

from __future__ import annotations

import itertools
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from portwall.backends.ovs.ovsdb import mgmt
from portwall.lab.harness import Lab

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]


def topology(base: int) -> str:
    rules = [{"direction": "ingress", "protocol": "icmp"}] + [
        {"direction": "ingress", "protocol": "tcp", "port_range_min": p, "port_range_max": p}
        for p in range(base, base + 800)]
    return yaml.safe_dump({
        "project": "crash",
        "networks": [{"name": "net", "subnets": [{"name": "v4", "cidr": "10.7.0.0/24"}]}],
        "security_groups": [{"name": "srv", "security_group_rules": rules}],
        "ports": [{"name": "srv-port", "network_id": "net", "fixed_ips": ["10.7.0.10"],
                   "security_groups": ["srv"]},
                  {"name": "cli-port", "network_id": "net", "fixed_ips": ["10.7.0.20"]}],
        "lab": {"vms": {"srv": {"ports": ["srv-port"]}, "cli": {"ports": ["cli-port"]}}},
    })


APPLY = r"""
import sys
from portwall import backends
from portwall.ir import compile_plan
from portwall.topology import load_topology
plan = compile_plan(load_topology(sys.argv[2]).model)
b = backends.get("ovs")
ruleset = b.render(plan)
with b.applier(sys.argv[1]) as a:
    a.db.ofports()  # connected: what is left is diff + bundle
    print("ready", flush=True)
    a.apply(ruleset, plan)
print("done", flush=True)
"""


@pytest.fixture
def lab() -> Iterator[Lab]:
    with Lab("pwt-ovscrash", backend="ovs") as lab:
        yield lab


def _flows(target: str) -> frozenset[str]:
    out = subprocess.run(["ovs-ofctl", "-O", "OpenFlow15", "dump-flows", "--no-stats", target],
                         capture_output=True, text=True, check=True).stdout
    return frozenset(ln.strip() for ln in out.splitlines() if "cookie=" in ln)


def test_killed_mid_bundle_never_leaves_a_partial_rule_set(lab: Lab, tmp_path: Path) -> None:
    files = []
    for i, base in enumerate((1000, 2000)):
        f = tmp_path / f"p{i}.yaml"
        f.write_text(topology(base))
        files.append(f)
    box = lab.up(files[0])
    target = mgmt(box.host_ns)
    full = []
    for f in (files[1], files[0]):
        box.apply(f)
        full.append(_flows(target))
    states = set(full)
    assert len(states) == 2 and all(len(s) > 800 for s in states)

    seen: list[frozenset[str]] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            seen.append(_flows(target))

    ping = subprocess.Popen(["ip", "netns", "exec", box.vm("cli").netns, "ping", "-q", "-i",
                             "0.01", "-W", "1", box.ip("srv")], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    watcher = threading.Thread(target=watch)
    watcher.start()
    rng = random.Random(4)
    killed = finished = 0
    span = 0.0  # how long an apply takes from "ready" to done (measured un-killed first)
    try:
        now = full[1]
        for i in range(16):
            f = files[0] if now == full[0] else files[1]  # always a real change
            proc = subprocess.Popen([sys.executable, "-c", APPLY, box.host_ns, str(f)],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                    start_new_session=True)
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "ready"
            t0 = time.monotonic()
            if i == 0:
                proc.wait()
                span = time.monotonic() - t0
            time.sleep(rng.uniform(0.0, 1.2 * span))  # somewhere in the diff or the bundle
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)  # the applier and its ovs-ofctl
                killed += 1
            out, _ = proc.communicate()
            finished += "done" in out
            now = _flows(target)
    finally:
        stop.set()
        watcher.join()
        ping.send_signal(signal.SIGINT)
        pout, _ = ping.communicate(timeout=10)
    flips = sum(1 for a, b in itertools.pairwise(seen) if a != b)
    # kills before and after the commit point: some applies were cut, some went through
    assert killed >= 3 and flips >= 3, (killed, finished, flips)
    partial = [s for s in seen if s not in states]
    assert len(seen) > 20
    assert not partial, f"{len(partial)} of {len(seen)} dumps showed a partial rule set"
    # ICMP is allowed by both policies: no echo lost while applies were killed (but the
    # one in flight when ping was stopped)
    stats = next(ln for ln in pout.splitlines() if "packets transmitted" in ln)
    sent, got = (int(x.split()[0]) for x in stats.split(", ")[:2])
    assert sent > 100 and got >= sent - 1, stats
    # the next apply converges
    box.apply(files[0])
    assert box.drift() == []
    assert _flows(target) == full[1]
