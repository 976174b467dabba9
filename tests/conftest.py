"""Shared fixtures. End-to-end tests get throw-away network namespaces that are always removed."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from portwall.lab import netns

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


def _can_netns() -> bool:
    return os.geteuid() == 0 and shutil.which("ip") is not None


requires_netns = pytest.mark.skipif(not _can_netns(), reason="needs root and iproute2")


@pytest.fixture
def make_netns() -> Iterator[Callable[[str], str]]:
    """Factory: ``make_netns("prefix")`` creates a uniquely named namespace; all are deleted
    at teardown, whatever the test did."""
    made: list[str] = []

    def make(prefix: str = "pwt") -> str:
        name = netns.unique_name(prefix)
        netns.create(name)
        made.append(name)
        return name

    try:
        yield make
    finally:
        for name in made:
            netns.delete(name)


@pytest.fixture
def host_ns(make_netns: Callable[[str], str]) -> str:
    """One throw-away "compute host" namespace."""
    return make_netns("pwt-host")


def selected_backends() -> list[str]:
    """Backends the end-to-end suite runs on: every registered one, or the comma-separated
    list in ``PORTWALL_BACKENDS`` (e.g. ``PORTWALL_BACKENDS=nftables pytest tests/e2e``)."""
    from portwall import backends

    want = os.environ.get("PORTWALL_BACKENDS", "")
    chosen = [b.strip() for b in want.split(",") if b.strip()] or backends.names()
    for name in chosen:
        backends.get(name)  # an unknown name fails the run loudly, never silently skips
    return chosen


@pytest.fixture(scope="module", params=selected_backends())
def backend_name(request: pytest.FixtureRequest) -> str:
    """Parametrises a test over every dataplane backend: same assertions on each.

    Module-scoped so that a module's shared sandbox (``scope="module"`` fixtures) can be
    built once per backend; tests appear as ``test_x[iptables]``, ``test_x[nftables]``..."""
    return str(request.param)


@pytest.fixture(scope="module")
def backend_bridge(backend_name: str) -> str:
    """What the lab builds for the backend: "linux" bridges or an "ovs" bridge. Tests that
    look at Linux-bridge details (``master brq..``, bridge-nf sysctls, the kernel's
    conntrack table) do so only when this says "linux"."""
    from portwall import backends

    return backends.get(backend_name).bridge


@pytest.fixture(scope="session")
def etcd_cluster() -> Iterator[object]:
    """One private 1-member etcd per test worker (tests use their own key prefix in it);
    None when etcd is not installed. Always stopped and removed."""
    from portwall.store import etcdtemp

    if etcdtemp.unavailable():
        yield None
        return
    with etcdtemp.TempEtcd(1) as cluster:
        yield cluster


def l3_backends() -> list[str]:
    """The selected backends that render routers themselves (iptables, nftables)."""
    from portwall.lab.routers import l3_backend

    return [b for b in selected_backends() if l3_backend(b) == b]


@pytest.fixture(scope="module", params=l3_backends())
def l3_backend_name(request: pytest.FixtureRequest) -> str:
    """Parametrises a router test over the backends with an L3 renderer: same assertions
    on each (``test_x[iptables]``, ``test_x[nftables]``)."""
    return str(request.param)
