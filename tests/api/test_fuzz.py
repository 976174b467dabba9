"""Schema-driven fuzzing (schemathesis) of every operation in the OpenAPI document: no
request may get a 500, and after each one the store must still hold exactly what the
server's in-memory model holds (a refused request changed nothing, an accepted one was
committed whole)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import schemathesis
from apihelp import ADMIN, TOKENS
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

from portwall.api.app import create_app
from portwall.api.config import Config
from portwall.store import codec
from portwall.store.cache import ModelCache


def snapshot(cache: ModelCache) -> dict[str, Any]:
    m = cache.model
    return {k: {i: codec.to_body(m, k, o) for i, o in codec.table(m, k).items()}
            for k in codec.KINDS}


def make_schema(tmp_path: Path) -> tuple[Any, Any]:
    app = create_app(Config(db=f"sqlite:///{tmp_path}/fuzz.db", admin_token=ADMIN,
                            project_tokens=dict(TOKENS)))
    srv = app.state.server
    # Something to find, so that fuzzed ids and names sometimes hit real resources.
    net = srv.cache.mutate(lambda m: m.create_network({"name": "n", "project_id": "admin"}))
    srv.cache.mutate(lambda m: m.create_subnet({"network_id": net.id, "cidr": "10.0.0.0/24",
                                                "project_id": "admin"}))
    return schemathesis.openapi.from_asgi("/openapi.json", app), srv


def test_no_server_error_and_store_consistent(tmp_path: Path) -> None:
    schema, srv = make_schema(tmp_path)
    operations = [r.ok() for r in schema.get_all_operations()]
    assert len(operations) > 40
    calls = 0
    for op in operations:

        @given(case=op.as_strategy())
        @settings(max_examples=8, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        def run(case: Any) -> None:
            nonlocal calls
            response = case.call(headers={"X-Auth-Token": ADMIN})
            case.validate_response(response, checks=[not_a_server_error])
            calls += 1
            with srv.cache.lock:
                fresh = ModelCache(srv.store)
                assert snapshot(fresh) == snapshot(srv.cache), (
                    f"store and model disagree after {case.method} {case.path}")

        run()
    assert calls >= len(operations)
