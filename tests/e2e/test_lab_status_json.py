"""``lab status NAME`` shows only the sandboxes asked for (scripts need not filter other
users' sandboxes), and every lab command speaks JSON."""

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
PORTWALL = [sys.executable, "-c", "from portwall.cli import main; main()"]
NEEDS_ROOT = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)")
pytestmark = [pytest.mark.e2e, NEEDS_ROOT]


def pw(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*PORTWALL, *args], capture_output=True, text=True, timeout=180)


@pytest.fixture
def two() -> Iterator[list[str]]:
    base = netns.unique_name("pwt-st")
    made = [f"{base}-a", f"{base}-b"]
    try:
        yield made
    finally:
        for n in made:
            if n in st.names():
                pw("lab", "down", "--name", n)


def test_status_filters_by_name_and_pattern(two: list[str]) -> None:
    a, b = two
    f = str(EXAMPLES / "seed000-router-vm.yaml")
    for n in two:
        r = pw("lab", "up", f, "--name", n, "--json")
        assert r.returncode == 0, r.stderr
        doc = json.loads(r.stdout)
        assert doc["name"] == n and doc["policy"]["changed"] is True
    only_a = json.loads(pw("lab", "status", a, "--json").stdout)
    assert [s["name"] for s in only_a] == [a]
    both = json.loads(pw("lab", "status", a[:-2] + "-*", "--json").stdout)
    assert sorted(s["name"] for s in both) == sorted(two)
    text = pw("lab", "status", b).stdout
    assert b in text and a not in text
    assert all(len(line) <= 100 for line in text.splitlines())
    missing = pw("lab", "status", "pwt-no-such-sandbox-zz")
    assert missing.returncode == 2 and "no sandbox matches" in missing.stderr

    r = pw("lab", "check", f, "--name", a, "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    rows = json.loads(r.stdout)["results"]
    assert rows and all(row["ok"] for row in rows)
    assert {"from", "to", "expected", "observed", "line"} <= set(rows[0])

    down = json.loads(pw("lab", "down", "--name", a, "--json").stdout)
    assert down[0]["name"] == a and any(ns.startswith("pwh-") for ns in down[0]["removed"])
    assert a not in st.names()
