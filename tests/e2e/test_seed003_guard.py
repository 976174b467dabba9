"""Seed 003 with real packets: docker's MASQUERADE on the compute host rewrites the source
of bridged tenant traffic on 172.17.0.0/16 unless portwall's nat guard comes first, and
the guard is put back first after docker flushes and re-adds its rules."""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from portwall.cli import main
from portwall.lab.harness import Lab, LabBox
from portwall.lab.traffic import Server, probe

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
pytestmark = [pytest.mark.e2e, pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]
DOCKER = ["-s", "172.17.0.0/16", "!", "-o", "docker0", "-j", "MASQUERADE"]
HOST_ADDR = "10.10.0.10"


@pytest.fixture
def box() -> Iterator[LabBox]:
    with Lab("pwt-s3") as lab:
        b = lab.up(EXAMPLES / "seed003-docker-overlap.yaml")
        # the compute host's own address and docker0, inside the sandbox's host namespace
        b.host(["ip", "link", "add", "mgmt0", "type", "bridge"])
        b.host(["ip", "addr", "add", f"{HOST_ADDR}/24", "dev", "mgmt0"])
        b.host(["ip", "link", "set", "mgmt0", "up"])
        b.host(["ip", "link", "add", "docker0", "type", "bridge"])
        yield b


def _source_seen(box: LabBox) -> list[str]:
    """The source of the first SYN to web-1:80 from the client, captured on web-1's eth0
    (a hijacked connection never completes: web-1 cannot answer the host's address)."""
    cap = subprocess.Popen(
        ["ip", "netns", "exec", box.vm("web-1").netns, "tcpdump", "-i", "eth0", "-n", "-l",
         "-c", "1", "tcp dst port 80 and tcp[tcpflags] & tcp-syn != 0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert cap.stderr is not None
        while "listening" not in (line := cap.stderr.readline()):
            assert line, "tcpdump did not start"
        with Server(box.vm("web-1"), tcp=[80]):
            probe(box.vm("client"), "tcp", "172.17.0.10", 80, 1.0)
        out, _ = cap.communicate(timeout=10)
    finally:
        if cap.poll() is None:
            cap.kill()
            cap.communicate()
    return [m.group(1) for m in re.finditer(r"IP (\d+\.\d+\.\d+\.\d+)\.\d+ > ", out)]


def _post(box: LabBox) -> list[str]:
    return [ln for ln in box.host(["iptables-save", "-t", "nat"]).splitlines()
            if ln.startswith("-A POSTROUTING")]


def test_guard_keeps_the_tenant_source_and_survives_docker(box: LabBox) -> None:
    assert _post(box)[0] == "-A POSTROUTING -j pwguard-nat"
    # docker starts after portwall and inserts its rule above everything: hijacked
    box.host(["iptables", "-t", "nat", "-I", "POSTROUTING", "1", *DOCKER])
    assert _source_seen(box) == [HOST_ADDR]
    # the next apply puts the guard back first: the VM's own address again
    report = box.apply()
    assert report.policy is not None
    assert any("back to the top" in t for t in report.policy.detail.touched)
    assert _post(box)[0] == "-A POSTROUTING -j pwguard-nat"
    assert _source_seen(box) == ["172.17.5.20"]
    # docker restarts: flushes POSTROUTING and re-adds its rule
    box.host(["iptables", "-t", "nat", "-F", "POSTROUTING"])
    box.host(["iptables", "-t", "nat", "-A", "POSTROUTING", *DOCKER])
    assert _source_seen(box) == [HOST_ADDR]
    box.apply()
    post = _post(box)
    assert post[0] == "-A POSTROUTING -j pwguard-nat" and "MASQUERADE" in post[1]
    assert _source_seen(box) == ["172.17.5.20"]
    again = box.apply().policy
    assert again is not None and again.detail.touched == []  # in place: nothing rewritten


def test_audit_keeps_reporting_the_overlap_with_the_guard(box: LabBox) -> None:
    box.host(["iptables", "-t", "nat", "-A", "POSTROUTING", *DOCKER])
    box.apply()
    r = CliRunner().invoke(main, ["audit", str(EXAMPLES / "seed003-docker-overlap.yaml"),
                                  "--json", "--host-netns", box.host_ns])
    pw8 = [f for f in json.loads(r.output)["findings"]
           if f["code"] == "PW008" and "MASQUERADE" in f["title"]]
    assert pw8 and "app-v4" in pw8[0]["title"]


def test_seed003_guarded_file_expectations_hold() -> None:
    with Lab("pwt-s3g") as lab:
        box = lab.up(EXAMPLES / "seed003-docker-guarded.yaml")
        box.host(["ip", "link", "add", "docker0", "type", "bridge"])
        box.host(["iptables", "-t", "nat", "-I", "POSTROUTING", "1", *DOCKER])
        box.apply()  # the guard goes back above docker's rule
        results = box.check()
        bad = [(r.expect.describe(), r.observed, r.why) for r in results if not r.ok]
        assert not bad, bad
        with Server(box.vm("web-1"), tcp=[80]) as srv:  # the outside through the FIP
            assert probe(box.box.state.vms["client"], "tcp", "172.17.0.10", 80)[0] == "allow"
            seen = srv.stop()
        assert [ln.split()[2] for ln in seen] == ["172.17.5.20"]
