"""API test fixtures: the same suite runs on SQLite and on a throw-away PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from apihelp import ADMIN, TOKENS, Api
from fastapi.testclient import TestClient

from portwall.api.app import create_app
from portwall.api.config import Config
from portwall.store import pgtemp


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[pgtemp.TempPostgres | None]:
    """One PostgreSQL per test worker (each test gets its own database in it)."""
    why = pgtemp.unavailable()
    if why:
        yield None
        return
    with pgtemp.TempPostgres() as pg:
        yield pg


@pytest.fixture(params=["sqlite", "postgresql", "etcd"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path,
              pg_cluster: pgtemp.TempPostgres | None) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/portwall.db"
    if request.param == "etcd":
        cluster = request.getfixturevalue("etcd_cluster")
        if cluster is None:
            pytest.skip("etcd is not installed (bash scripts/etcd.sh install)")
        return str(cluster.url("pwt-" + uuid.uuid4().hex[:12]))
    if pg_cluster is None:
        pytest.skip(f"PostgreSQL unavailable: {pgtemp.unavailable()}")
    return pg_cluster.create_database()


@pytest.fixture
def api(store_url: str) -> Iterator[Api]:
    app = create_app(Config(db=store_url, admin_token=ADMIN, project_tokens=dict(TOKENS)))
    with TestClient(app) as client:
        yield Api(client)
    app.state.server.close()


@pytest.fixture
def net(api: Api) -> dict[str, Any]:
    """A network with an IPv4 and an IPv6 subnet, owned by project-a."""
    a = api.as_("tok-a")
    n = a.make("networks", "network", name="net")
    a.make("subnets", "subnet", name="v4", network_id=n["id"], cidr="10.0.0.0/24")
    a.make("subnets", "subnet", name="v6", network_id=n["id"], cidr="fd00::/64", ip_version=6)
    return n
