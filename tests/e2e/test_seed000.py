"""Seed 000 with real packets: a VM routing between two subnets is blocked by its own
anti-spoof check until its ports carry CIDR allowed-address-pairs (and it forwards)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from portwall.lab.harness import Lab
from portwall.lab.traffic import Server

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
pytestmark = [pytest.mark.e2e, pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]


@pytest.fixture
def lab(backend_name: str) -> Iterator[Lab]:
    with Lab("pwt-s0", backend=backend_name) as lab:
        yield lab


def test_blocked_without_pairs_then_routed_with_them(lab: Lab) -> None:
    box = lab.up(EXAMPLES / "seed000-router-vm.yaml")
    y = box.ip("serverY")
    with Server(box.vm("serverY"), tcp=[22], udp=[5353]) as srv:
        assert box.reach("serverX", "vm0")  # the first hop is fine
        assert not box.reach("serverX", "serverY")
        assert not box.reach("serverX", "serverY", "tcp", 22)
        seen = srv.stop()
    # dropped on vm0's egress towards serverY: nothing arrived there
    assert not [ln for ln in seen if ln.startswith("tcp 22")]

    report = box.apply(EXAMPLES / "seed000-router-vm-fixed.yaml")
    assert report.policy is not None and report.policy.changed
    assert not report.changes, "only policy changed: no interface may be re-plugged"
    with Server(box.vm("serverY"), tcp=[22], udp=[5353]) as srv:
        assert box.reach("serverX", "serverY")
        assert box.reach("serverX", "serverY", "tcp", 22)
        assert box.reach("serverX", "serverY", "udp", 5353)
        seen = srv.stop()
    assert "tcp 22 10.0.1.100" in seen, seen  # the source survived the hop: routed, no NAT
    assert y == "10.0.2.101"


def test_pairs_alone_are_not_enough_without_ip_forward(lab: Lab) -> None:
    text = (EXAMPLES / "seed000-router-vm-fixed.yaml").read_text()
    box = lab.up(text.replace("forward: true", "forward: false"))
    assert box.reach("serverX", "vm0")
    assert not box.reach("serverX", "serverY")
    box.apply(text)  # forwarding switched on in place
    assert box.reach("serverX", "serverY")


def test_expectations_of_both_files_hold(lab: Lab) -> None:
    box = lab.up(EXAMPLES / "seed000-router-vm.yaml")
    bad = [r for r in box.check() if not r.ok]
    assert not bad, [(r.expect.describe(), r.observed) for r in bad]
    box.apply(EXAMPLES / "seed000-router-vm-fixed.yaml")
    bad = [r for r in box.check() if not r.ok]
    assert not bad, [(r.expect.describe(), r.observed) for r in bad]
