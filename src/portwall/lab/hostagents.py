"""One real ``portwall agent --host H`` per compute host of a multi-host sandbox.

With ``lab up --hosts N --db URL`` the lab enforces nothing itself: it makes sure the store
holds the resources (written from the file into an empty store, or already there when built
``--server``) with every VM port's ``binding:host_id`` naming the host the VM landed on, then
starts one agent process per host (``--netns`` its host namespace, so the store URL is
reached from the machine's own network: SQLite, PostgreSQL or etcd on loopback alike).
Processes are recorded in the sandbox state and stopped on ``lab down``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import TYPE_CHECKING, Any

from portwall.lab import state as st
from portwall.lab.state import LabError, VMState
from portwall.topology import Topology

if TYPE_CHECKING:
    from portwall.lab.multihost import MultiSandbox

_PROCS: dict[int, subprocess.Popen[bytes]] = {}  # agents this process started (to reap)
_CLI = "import sys; from portwall.cli import main; sys.argv[0] = 'portwall'; main()"


def prepare_store(url: str, topo: Topology, vms: dict[str, VMState], *, seed: bool) -> int:
    """Resources in the store and ports bound to their VMs' hosts; returns the revision
    agents must reach. ``seed``: copy the file's resources into an empty store."""
    from portwall.store import codec, open_store
    from portwall.store.cache import ModelCache

    store = open_store(url)
    try:
        cache = ModelCache(store)
        if seed:
            if any(codec.table(cache.model, k) for k in ("network", "port")):
                raise LabError(f"store {url} already holds resources: build from them with "
                               "--server URL, or give an empty store")
            src = topo.model

            def copy(m: Any) -> None:
                for kind in codec.KINDS:
                    for obj in codec.table(src, kind).values():
                        codec.put(m, kind, codec.to_body(src, kind, obj))
            cache.mutate(copy)
        binding = {p.id: vm.host for vm in vms.values() for p in vm.ports}

        def bind(m: Any) -> None:
            for pid, host in binding.items():
                port = m.ports.get(pid)
                if port is None:
                    raise LabError(f"port {pid} is not in store {url}")
                if port.binding_host_id != host:
                    m.update_port(pid, {"binding:host_id": host})
        cache.mutate(bind)
        return store.head()
    finally:
        store.close()


def _argv(box: MultiSandbox, host: str) -> list[str]:
    h = box.state.hosts[host]
    return [sys.executable, "-c", _CLI, "agent", "--host", host, "--db", box.state.store or "",
            "--backend", box.state.backend, "--netns", h.netns, "--resync-interval", "5"]


def start_agent(box: MultiSandbox, host: str) -> str:
    h = box.state.hosts[host]
    log = st.state_dir() / f"{box.name}.{host}.agent.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(_argv(box, host), stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
    _PROCS[proc.pid] = proc
    h.agent_pid, h.agent_log = proc.pid, str(log)
    st.save(box.state)
    return f"{host}: agent pid {proc.pid} (log {log})"


def start_agents(box: MultiSandbox) -> list[str]:
    return [start_agent(box, h) for h in box.state.hosts]


def agent_alive(box: MultiSandbox, host: str) -> bool:
    """The recorded pid still runs *our* agent (not a reused pid)."""
    pid = box.state.hosts[host].agent_pid
    if not pid:
        return False
    proc = _PROCS.get(pid)
    if proc is not None and proc.poll() is not None:
        return False
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            cmd = fh.read().split(b"\0")
    except OSError:
        return False
    return b"agent" in cmd and box.state.hosts[host].netns.encode() in cmd


def kill_agent(box: MultiSandbox, host: str, sig: int = signal.SIGKILL) -> None:
    """Signal a host's agent (kill -9 by default: the crash the tests inject)."""
    pid = box.state.hosts[host].agent_pid
    if pid and agent_alive(box, host):
        os.kill(pid, sig)
        proc = _PROCS.pop(pid, None)
        if proc is not None:
            proc.wait(10)


def stop_agents(box: MultiSandbox) -> None:
    for host, h in box.state.hosts.items():
        if not h.agent_pid or not agent_alive(box, host):
            continue
        os.kill(h.agent_pid, signal.SIGTERM)
        deadline = time.monotonic() + 5
        while agent_alive(box, host) and time.monotonic() < deadline:
            time.sleep(0.05)
        if agent_alive(box, host):
            os.kill(h.agent_pid, signal.SIGKILL)
        proc = _PROCS.pop(h.agent_pid, None)
        if proc is not None:
            proc.wait(10)
        h.agent_pid = None


def applied_revisions(url: str, store: Any = None) -> dict[str, int]:
    """Host -> the revision its agent last reported as applied (``/v2.0/agents``)."""
    from portwall.store import open_store

    own = store is None
    store = open_store(url) if own else store
    try:
        records, _ = store.list()
    finally:
        if own:
            store.close()
    return {str(r.body.get("host")): int(r.body.get("applied_revision", -1))
            for r in records if r.kind == "agent"}


def resource_head(store: Any) -> int:
    """The revision of the last resource change: agents' own status reports also move the
    store's head, and waiting for those would chase a moving target."""
    cs = store.changes(0)
    if cs.reset:
        return int(store.head())
    return max((c.revision for c in cs.changes if c.kind != "agent"), default=0)


def wait_converged(box: MultiSandbox, revision: int | None = None,
                   timeout: float = 60.0) -> dict[str, int]:
    """Wait until every host's agent applied ``revision`` (default: the last resource
    change in the store)."""
    from portwall.store import open_store

    url = box.state.store or ""
    store = open_store(url)
    try:
        if revision is None:
            revision = resource_head(store)
        deadline = time.monotonic() + timeout
        while True:
            got = applied_revisions(url, store)
            late = [h for h in box.state.hosts if got.get(h, -1) < revision]
            if not late:
                return got
            dead = [h for h in late if not agent_alive(box, h)]
            if dead or time.monotonic() > deadline:
                logs = "".join(_tail(box.state.hosts[h].agent_log) for h in late)
                raise LabError(f"agents of {', '.join(late)} did not apply revision "
                               f"{revision}{' (not running)' if dead else ''}:\n{logs}")
            time.sleep(0.01)
    finally:
        store.close()


def _tail(path: str, lines: int = 15) -> str:
    try:
        with open(path, errors="replace") as fh:
            return "".join(fh.readlines()[-lines:])
    except OSError:
        return ""
