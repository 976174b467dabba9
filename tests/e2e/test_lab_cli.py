"""``portwall lab ...`` as a user runs it: up, status, exec, apply, check, down; two
sandboxes of one file side by side; nothing left behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from portwall.lab import netns
from portwall.lab import state as st

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SEED000 = str(EXAMPLES / "seed000-router-vm.yaml")
PORTWALL = [sys.executable, "-c", "from portwall.cli import main; main()"]
pytestmark = [pytest.mark.e2e, pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]


def pw(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*PORTWALL, *args], capture_output=True, text=True, timeout=120)


@pytest.fixture
def names() -> Iterator[list[str]]:
    """Sandbox names for this test; whatever the test did, they are brought down."""
    made: list[str] = []
    yield made
    for n in made:
        if n in st.names():
            pw("lab", "down", "--name", n)
        assert n not in st.names()


def _status(name: str) -> dict:  # type: ignore[type-arg]
    res = pw("lab", "status", "--name", name, "--json")
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)[0]  # type: ignore[no-any-return]


def test_up_status_exec_apply_check_down(names: list[str], backend_name: str) -> None:
    name = netns.unique_name("pwt-cli")
    names.append(name)
    res = pw("lab", "up", SEED000, "--name", name, "--backend", backend_name)
    assert res.returncode == 0, res.stderr
    assert "plugged vm0/eth2" in res.stdout and f"is up on {backend_name}" in res.stdout
    assert f"policy: {backend_name}: " in res.stdout, res.stdout

    s = _status(name)
    assert s["backend"] == backend_name
    text = pw("lab", "status", "--name", name)
    assert text.returncode == 0 and f"backend {backend_name}" in text.stdout, text.stdout
    assert s["alive"] and set(s["vms"]) == {"vm0", "serverX", "serverY"}
    vm0 = s["vms"]["vm0"]
    assert [p["ifname"] for p in vm0["ports"]] == ["eth0", "eth1", "eth2"]
    assert vm0["ports"][1]["addresses"] == ["10.0.1.1/24"] and vm0["forward"]
    namespaces = s["namespaces"]
    assert len(namespaces) == 4 and all(netns.exists(n) for n in namespaces)

    # exec: runs inside the VM, exit code passed through
    res = pw("lab", "exec", "--name", name, "serverX", "--", "ip", "-4", "-o", "addr", "show", "eth0")
    assert res.returncode == 0 and "10.0.1.100/24" in res.stdout
    assert pw("lab", "exec", "--name", name, "serverX", "--", "sh", "-c", "exit 7").returncode == 7
    res = pw("lab", "exec", "--name", name, "serverX", "--", "ping", "-c1", "-W1", "10.0.2.101")
    assert res.returncode == 1  # seed 000: blocked by vm0's anti-spoofing

    res = pw("lab", "apply", SEED000, "--name", name)
    assert res.returncode == 0 and "nothing to change" in res.stdout, res.stdout

    res = pw("lab", "check", SEED000, "--name", name)
    assert res.returncode == 0, res.stdout
    assert "4/4 as expected" in res.stdout and "MISMATCH" not in res.stdout

    res = pw("lab", "apply", str(EXAMPLES / "seed000-router-vm-fixed.yaml"), "--name", name)
    assert res.returncode == 0 and f"policy: {backend_name}: " in res.stdout, res.stdout
    res = pw("lab", "check", SEED000, "--name", name)  # old expectations no longer hold
    assert res.returncode == 1 and "MISMATCH" in res.stdout

    res = pw("lab", "down", "--name", name)
    assert res.returncode == 0, res.stderr
    assert not any(netns.exists(n) for n in namespaces)
    assert name not in st.names()


def test_check_without_a_sandbox_builds_and_removes_one(backend_name: str) -> None:
    res = pw("lab", "check", SEED000, "--name", netns.unique_name("pwt-none"),
             "--backend", backend_name)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "4/4 as expected" in res.stdout and f"on {backend_name}" in res.stdout
    tmp = res.stdout.split("temporary sandbox ")[1].split()[0]
    assert tmp not in st.names()


def test_two_sandboxes_of_one_file_do_not_collide(names: list[str], backend_name: str) -> None:
    a, b = netns.unique_name("pwt-a"), netns.unique_name("pwt-b")
    names += [a, b]
    procs = [subprocess.Popen([*PORTWALL, "lab", "up", SEED000, "--name", n,
                               "--backend", backend_name],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for n in (a, b)]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    sa, sb = _status(a), _status(b)
    assert not set(sa["namespaces"]) & set(sb["namespaces"])
    # same taps and bridges, but each in its own host namespace
    assert sa["bridges"] == sb["bridges"]
    for n in (a, b):
        res = pw("lab", "exec", "--name", n, "serverX", "--", "ping", "-c1", "-W1", "10.0.1.1")
        assert res.returncode == 0
    assert pw("lab", "down", "--name", a).returncode == 0
    assert all(netns.exists(ns) for ns in sb["namespaces"])  # b is untouched
    assert not any(netns.exists(ns) for ns in sa["namespaces"])
    res = pw("lab", "exec", "--name", b, "serverX", "--", "ping", "-c1", "-W1", "10.0.1.1")
    assert res.returncode == 0


def test_errors_are_reported_not_raised() -> None:
    res = pw("lab", "down", "--name", netns.unique_name("pwt-nope"))
    assert res.returncode != 0 and "no sandbox named" in res.stderr
    res = pw("lab", "up", SEED000, "--name", "bad name!")
    assert res.returncode == 2 and "invalid sandbox name" in res.stderr
    res = pw("lab", "up", SEED000, "--name", netns.unique_name("pwt-nob"), "--backend", "nope")
    assert res.returncode == 2 and "nope" in res.stderr  # click lists the registered ones
