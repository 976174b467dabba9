"""A remote-group member change on host B -> what host A allows, with real packets.

Seed 001 (fixed) on three compute hosts joined by VXLAN. Each round moves ``client-port``
(on host B) into group ``ssh`` and out again; ``proxy`` (on host A) allows port 80 from the
members of ``ssh``. A prober inside the client VM opens a new TCP connection to the proxy
every ~10 ms (50 ms timeout) and timestamps each attempt, so "enforced" means the first
attempt started after the change that behaves the new way.

Modes: ``agents`` (one ``portwall agent --host H`` process per host following a SQLite
store; the change is one store transaction, "applied" = every agent reported the revision)
and ``inproc`` (``lab apply``: compile per host + the backend's apply in each namespace,
serially). Prints a table; run as root:

    .venv/bin/python bench/multihost_lab.py --backend nftables --rounds 20
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from portwall import backends

ROOT = Path(__file__).resolve().parents[1]
SEED = ROOT / "examples" / "seed001-vip-nat-fixed.yaml"
PROBER = """
import socket, sys, time
target = (sys.argv[1], int(sys.argv[2]))
while True:
    t = time.time()
    try:
        with socket.create_connection(target, timeout=0.05) as s:
            s.sendall(b"x\\n"); s.settimeout(0.05); ok = bool(s.recv(16))
    except OSError:
        ok = False
    print(f"{t:.6f} {int(ok)}", flush=True)
    time.sleep(0.01)
"""


class Prober:
    def __init__(self, ns: str, ip: str, port: int) -> None:
        self.proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", PROBER,
                                      ip, str(port)], stdout=subprocess.PIPE, text=True)
        self.seen: list[tuple[float, bool]] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            t, ok = line.split()
            with self.lock:
                self.seen.append((float(t), ok == "1"))

    def flip(self, after: float, want: bool, timeout: float = 10.0) -> float:
        """Seconds from ``after`` to the start of the first attempt that gave ``want``."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            with self.lock:
                hit = next((t for t, ok in self.seen if t >= after and ok == want), None)
            if hit is not None:
                return hit - after
            time.sleep(0.005)
        raise TimeoutError(f"traffic did not become {'allowed' if want else 'denied'}")

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))] * 1000


def run(mode: str, backend: str, rounds: int) -> dict[str, Any]:
    from portwall.lab import hostagents, netns
    from portwall.lab.multihost import MultiSandbox
    from portwall.lab.traffic import Server
    from portwall.store import open_store
    from portwall.store.cache import ModelCache
    from portwall.topology import load_topology

    topo = load_topology(SEED)
    tmp = tempfile.mkdtemp(prefix="pw-mhbench-")
    url = f"sqlite:///{tmp}/pw.db" if mode == "agents" else None
    box, _ = MultiSandbox.up_hosts(topo, netns.unique_name("pwb-mh"), hosts=3,
                                   backend=backend, store=url)
    applied: list[float] = []
    flips: list[float] = []
    try:
        vms = box.state.vms
        b = vms["client"].host
        proxy = next(p for p in ("proxy-a", "proxy-b") if vms[p].host != b)
        ip = vms[proxy].ports[0].addresses[0].split("/")[0]
        store = open_store(url) if url else None
        cache = ModelCache(store) if store else None
        with Server(vms[proxy], tcp=[80]):
            prober = Prober(vms["client"].netns, ip, 80)
            try:
                prober.flip(time.time(), False)
                for i in range(rounds * 2):
                    join = i % 2 == 0
                    groups = ["ssh"] if join else []

                    def op(m: Any, groups: list[str] = groups) -> None:
                        m.update_port("client-port", {"security_groups": groups})
                    t0 = time.time()
                    if cache is not None:
                        cache.mutate(op)
                        hostagents.wait_converged(box, cache.revision, timeout=30)
                    else:
                        op(topo.model)
                        box.apply(topo)
                    applied.append(time.time() - t0)
                    flips.append(prober.flip(t0, join))
                    time.sleep(0.1)
            finally:
                prober.stop()
        if store is not None:
            store.close()
    finally:
        box.down()
    return {"mode": mode, "backend": backend, "changes": len(applied),
            "applied": (pct(applied, 0.5), pct(applied, 0.99)),
            "flip": (pct(flips, 0.5), pct(flips, 0.99)),
            "mean_flip": statistics.mean(flips) * 1000}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", default=backends.DEFAULT)
    ap.add_argument("--rounds", type=int, default=10, help="join + leave pairs")
    ap.add_argument("--modes", default="agents,inproc")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root (network namespaces)")
    rows = [run(m, args.backend, args.rounds) for m in args.modes.split(",")]
    print(f"\nseed 001 on 3 hosts (VXLAN), client on host B joins/leaves group ssh, proxy on "
          f"host A; load: {os.getloadavg()[0]:.2f}")
    print("| mode | backend | changes | change -> applied on all hosts p50 / p99 ms "
          "| change -> host A's verdict flips (real TCP) p50 / p99 ms |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['mode']} | {r['backend']} | {r['changes']} | {r['applied'][0]:.0f} / "
              f"{r['applied'][1]:.0f} | {r['flip'][0]:.0f} / {r['flip'][1]:.0f} |")


if __name__ == "__main__":
    main()
