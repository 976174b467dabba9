"""Seed 002 with real packets: the web/db chain semantics (db reachable only from members of
group web, ssh only via the bastion), IPv4 and IPv6, and membership changes."""

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
    with Lab("pwt-s2", backend=backend_name) as lab:
        yield lab


def test_every_expectation_of_the_file_holds(lab: Lab) -> None:
    box = lab.up(EXAMPLES / "seed002-web-db.yaml")
    results = box.check()
    assert len(results) >= 20
    bad = [r for r in results if not r.ok]
    assert not bad, [(r.expect.describe(), r.observed) for r in bad]


def test_db_follows_membership_of_group_web(lab: Lab) -> None:
    box = lab.up(EXAMPLES / "seed002-web-db.yaml")
    with Server(box.vm("db-1"), tcp=[5432]) as srv:
        assert box.reach("web-2", "db-1", "tcp", 5432)
        assert not box.reach("client", "db-1", "tcp", 5432)
        # the client joins web (keeping its own default group): now a member
        report = box.update(lambda m: m.update_port(
            "client-port", {"security_groups": ["web", "default"]}))
        assert report.policy is not None and not report.policy.detail.noop
        # backends with address sets say so under the shared counter name
        assert report.policy.detail.changes.get("set_elements_added", 1) >= 1
        assert box.reach("client", "db-1", "tcp", 5432)
        # web-2 leaves web: its address leaves the set
        box.update(lambda m: m.update_port("web-2-port", {"security_groups": ["default"]}))
        assert not box.reach("web-2", "db-1", "tcp", 5432)
        seen = srv.stop()
    assert "tcp 5432 10.2.0.100" in seen and "tcp 5432 10.2.0.12" in seen
