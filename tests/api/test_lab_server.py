"""``portwall lab up --server URL``: a sandbox built from a server's resources (not a file)
enforces the same policy as the file they were imported from, with real packets."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from serverproc import TOKEN, VENV_BIN, ServerProcess

from portwall.cli.io import Client, import_topology
from portwall.lab import netns

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
pytestmark = [pytest.mark.e2e, pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(VENV_BIN / "portwall"), *args], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PORTWALL_ADMIN_TOKEN": TOKEN})


def test_lab_up_from_a_server_enforces_what_the_server_holds(tmp_path: Path) -> None:
    seed = EXAMPLES / "seed000-router-vm.yaml"
    srv = ServerProcess(f"sqlite:///{tmp_path}/pw.db").start(tmp_path)
    name = netns.unique_name("pwt-lsrv")
    try:
        import_topology(str(seed), Client(srv.url, TOKEN))
        up = cli("lab", "up", "--server", srv.url, "--name", name, "--json")
        assert up.returncode == 0, up.stderr + up.stdout
        status = cli("lab", "status", name, "--json")
        assert status.returncode == 0, status.stderr
        # the VMs are the file's (device_id carries the VM), wired the way the file wires them
        exported = (Path(os.environ.get("PORTWALL_LAB_STATE_DIR", "/run/portwall/lab"))
                    / f"{name}.server.yaml").read_text()
        assert "vm0:" in exported and "forward: true" in exported
        assert "serverX:" in exported and "gateway: 10.0.1.1" in exported
        # the seed's expectations hold on the server-built sandbox: serverX reaches vm0, and
        # vm0 cannot forward serverX's packets to serverY (no allowed address pair)
        check = cli("lab", "check", str(seed), "--name", name)
        assert check.returncode == 0, check.stdout + check.stderr
        assert "4/4" in check.stdout or "4 of 4" in check.stdout, check.stdout
    finally:
        down = cli("lab", "down", "--name", name)
        srv.stop()
    assert down.returncode == 0, down.stderr
    assert not (Path("/run/portwall/lab") / f"{name}.server.yaml").exists()
