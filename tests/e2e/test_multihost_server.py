"""The whole chain on three hosts: a real ``portwall server`` holds seed 001 (imported through
the API), ``lab up --server --hosts 3 --db`` builds the hosts and starts one agent per host
on the server's store, ``/v2.0/agents`` lists the three hosts, and a port update through the
API (a port on host B joins the remote group) opens a port on host A to it, with real packets.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from portwall.cli.io import Client, import_topology
from portwall.lab import hostagents, netns
from portwall.lab.multihost import MultiSandbox
from portwall.lab.sandbox import Sandbox
from portwall.lab.traffic import Server, probe

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SEED001_FIXED = EXAMPLES / "seed001-vip-nat-fixed.yaml"
TOKEN = "multihost-e2e-token"
PW = [sys.executable, "-c", "import sys; from portwall.cli import main; "
      "sys.argv[0] = 'portwall'; main()"]
pytestmark = [pytest.mark.e2e, pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*PW, *args], capture_output=True, text=True, timeout=300,
                          stdin=subprocess.DEVNULL)


def start_server(db: str, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    for _ in range(5):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        url = f"http://127.0.0.1:{port}"
        with open(log, "ab") as out:
            proc = subprocess.Popen([*PW, "server", "--port", str(port), "--db", db,
                                     "--admin-token", TOKEN], stdout=out,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                httpx.get(url + "/", timeout=1)
                return proc, url
            except httpx.HTTPError:
                time.sleep(0.1)
        proc.kill()
        proc.wait()
    raise RuntimeError(log.read_text())


def test_server_store_agents_on_three_hosts(tmp_path: Path, backend_name: str) -> None:
    if backend_name not in ("iptables", "nftables"):
        pytest.skip("multi-host joins Linux bridges (VXLAN): iptables and nftables")
    db = f"sqlite:///{tmp_path}/pw.db"
    srv, url = start_server(db, tmp_path / "server.log")
    name = netns.unique_name("pwt-mhs")
    client = Client(url, TOKEN)
    try:
        import_topology(str(SEED001_FIXED), client)
        up = subprocess.run([*PW, "lab", "up", "--server", url, "--token", TOKEN, "--hosts",
                             "3", "--db", db, "--backend", backend_name, "--name", name,
                             "--json"], capture_output=True, text=True, timeout=300)
        assert up.returncode == 0, up.stderr + up.stdout
        assert sorted(json.loads(up.stdout)["hosts"]) == ["host1", "host2", "host3"]
        box = Sandbox.open(name)
        assert isinstance(box, MultiSandbox) and box.state.store == db
        agents = client.call("GET", "/v2.0/agents")["agents"]
        assert {a["host"] for a in agents} >= {"host1", "host2", "host3"}, agents
        check = cli("lab", "check", str(SEED001_FIXED), "--name", name)
        assert check.returncode == 0 and "17/17 as expected" in check.stdout, check.stdout

        vms = box.state.vms
        b = vms["client"].host
        proxy = next(p for p in ("proxy-a", "proxy-b") if vms[p].host != b)  # on host A
        proxy_ip = vms[proxy].ports[0].addresses[0].split("/")[0]
        ports = {p["name"]: p for p in client.list("ports", "ports")}
        ssh = client.call("GET", "/v2.0/security-groups?name=ssh")["security_groups"][0]["id"]
        with Server(vms[proxy], tcp=[80]):
            assert probe(vms["client"], "tcp", proxy_ip, 80)[0] != "allow"
            client.call("PUT", f"/v2.0/ports/{ports['client-port']['id']}",
                        {"port": {"security_groups": [ssh]}})
            hostagents.wait_converged(box, timeout=30)
            assert probe(vms["client"], "tcp", proxy_ip, 80)[0] == "allow"
            # the port lives on host B; its address reached host A's agent through the store
            assert client.call("GET", f"/v2.0/ports/{ports['client-port']['id']}")[
                "port"]["binding:host_id"] == b
    finally:
        down = cli("lab", "down", "--name", name)
        srv.terminate()
        srv.wait(10)
    assert down.returncode == 0, down.stderr
