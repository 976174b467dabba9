"""A private ovsdb-server + ovs-vswitchd per namespace, and its integration bridge.

The daemons run *inside* the namespace with their own database, sockets, pid files and logs
under :func:`portwall.backends.ovs.ovsdb.run_dir`, so they never meet the machine's own Open
vSwitch or another namespace's. The bridge is ``br-int`` on the userspace ``netdev``
datapath (this machine has no OVS kernel module). The applier starts them when they are not
running (so any caller of the backend interface gets a bridge); the lab
(:mod:`portwall.lab.ovs_host`) also stops them and removes the directory on ``down``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from portwall.backends.ovs.ovsdb import BRIDGE, Ovsdb, OvsError, run_dir

SCHEMA = Path("/usr/share/openvswitch/vswitch.ovsschema")
DAEMONS = ("ovs-vswitchd", "ovsdb-server")


def _env(d: Path) -> dict[str, str]:
    return {**os.environ, "OVS_RUNDIR": str(d), "OVS_LOGDIR": str(d), "OVS_DBDIR": str(d),
            "OVS_SYSCONFDIR": str(d)}


def _run(argv: list[str], d: Path, ns: str | None = None) -> None:
    cmd = argv if ns is None else ["ip", "netns", "exec", ns, *argv]
    proc = subprocess.run(cmd, env=_env(d), capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise OvsError(f"{' '.join(argv[:2])} failed: {proc.stderr.strip()}")


def running(host_ns: str) -> bool:
    return (run_dir(host_ns) / f"{BRIDGE}.mgmt").exists() and (run_dir(host_ns) / "db.sock").exists()


def start(host_ns: str) -> Path:
    """Start the private daemons in ``host_ns`` and create the integration bridge."""
    if shutil.which("ovs-vswitchd") is None:
        raise OvsError("Open vSwitch is not installed (scripts/setup.sh installs "
                       "openvswitch-switch)")
    d = run_dir(host_ns)
    d.mkdir(parents=True, exist_ok=True)
    db = d / "conf.db"
    if not db.exists():
        _run(["ovsdb-tool", "create", str(db), str(SCHEMA)], d)
    common = ["--detach", "--no-chdir", f"--log-file={d}/%s.log"]
    _run(["ovsdb-server", str(db), f"--remote=punix:{d}/db.sock",
          f"--pidfile={d}/ovsdb-server.pid", f"--unixctl={d}/ovsdb-server.ctl",
          *(c.replace("%s", "ovsdb-server") for c in common)], d, host_ns)
    _run(["ovs-vsctl", f"--db=unix:{d}/db.sock", "--no-wait", "init"], d)
    _run(["ovs-vswitchd", f"unix:{d}/db.sock", f"--pidfile={d}/ovs-vswitchd.pid",
          f"--unixctl={d}/ovs-vswitchd.ctl",
          *(c.replace("%s", "ovs-vswitchd") for c in common)], d, host_ns)
    with Ovsdb(host_ns) as db_:
        db_.ensure_bridge(BRIDGE)
    deadline = time.monotonic() + 10
    while not (d / f"{BRIDGE}.mgmt").exists():
        if time.monotonic() > deadline:
            raise OvsError(f"ovs-vswitchd did not create {BRIDGE} in {host_ns}")
        time.sleep(0.02)
    return d


def stop(host_ns: str) -> None:
    """Stop the daemons (by their pid files) and remove their directory; missing is fine."""
    d = run_dir(host_ns)
    if not d.exists():
        return
    for name in DAEMONS:
        pidfile = d / f"{name}.pid"
        with contextlib.suppress(OSError, ValueError):
            pid = int(pidfile.read_text().strip())
            # only our own daemon: its command line names our directory
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
            if str(d) in cmdline:
                os.kill(pid, signal.SIGTERM)
                for _ in range(100):
                    if not Path(f"/proc/{pid}").exists():
                        break
                    time.sleep(0.01)
                else:
                    os.kill(pid, signal.SIGKILL)
    shutil.rmtree(d, ignore_errors=True)


def plug(host_ns: str, device: str) -> int:
    """Attach the host end of a VM's veth to the integration bridge; its port number."""
    with Ovsdb(host_ns) as db:
        return db.add_port(device, BRIDGE)


def unplug(host_ns: str, device: str) -> None:
    if not run_dir(host_ns).exists():
        return
    with Ovsdb(host_ns) as db:
        db.del_port(device, BRIDGE)


