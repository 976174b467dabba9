"""The portwall server: Neutron's v2.0 API on FastAPI, resources in a :mod:`portwall.store`.

``create_app(config)`` builds the ASGI app; ``portwall server`` runs it under uvicorn.
Besides Neutron's collections it serves the versions document (``/``), extensions,
``/v2.0/agents`` (status reported by each host's agent) and the change feed agents follow
(``/v2.0/portwall/changes``, admin only)."""

from __future__ import annotations

import threading
import time
from dataclasses import asdict
from typing import Any

from fastapi import FastAPI, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from portwall import __version__
from portwall.api import errors, extensions, query, resources
from portwall.api.auth import authenticate
from portwall.api.config import Config
from portwall.api.errors import ApiError
from portwall.api.resources import json_response, read_json
from portwall.api.views import Views
from portwall.store import Record, Store, agent_record_id, open_store
from portwall.store.cache import ModelCache

#: An agent whose last report is older than this is shown ``alive: false``.
AGENT_DOWN_AFTER = 75.0


class Server:
    """What the request handlers share: config, store, the Model cache, rendered views."""

    def __init__(self, config: Config, store: Store | None = None) -> None:
        self.config = config
        self.store = store or open_store(config.db)
        self.cache = ModelCache(self.store)
        self.views = Views()
        self.cond = threading.Condition()
        self.generation = 0  # bumped after every commit (under ``cond``)

    def changed(self) -> None:
        """Wake followers (long-polling agents, ``--with-agent``) after a commit."""
        with self.cond:
            self.generation += 1
            self.cond.notify_all()

    def close(self) -> None:
        self.store.close()


def agent_view(r: Record) -> dict[str, Any]:
    b = r.body
    beat = float(b.get("heartbeat", 0))
    return {
        "id": r.id, "agent_type": "portwall agent", "binary": "portwall-agent",
        "host": b.get("host"), "topic": "N/A", "admin_state_up": True,
        "alive": time.time() - beat < AGENT_DOWN_AFTER,
        "heartbeat_timestamp": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(beat)),
        "started_at": b.get("started_at", ""), "created_at": r.created_at,
        "description": "", "availability_zone": None,
        "configurations": {k: v for k, v in b.items() if k not in ("host", "heartbeat")},
        "revision_number": r.revision_number, "tenant_id": r.project_id,
        "project_id": r.project_id,
    }


def agent_id(host: str) -> str:
    return agent_record_id(host)


def create_app(config: Config, store: Store | None = None) -> FastAPI:
    server = Server(config, store)
    app = FastAPI(title="portwall", version=__version__,
                  description="Neutron v2.0-compatible networking API served by portwall.")
    app.state.server = server
    errors.install(app)

    @app.get("/", tags=["versions"])
    async def versions(request: Request) -> Response:
        base = str(request.base_url).rstrip("/")
        return json_response({"versions": [{"id": "v2.0", "status": "CURRENT", "links": [
            {"rel": "self", "href": f"{base}/v2.0/"}]}]})

    @app.get("/v2.0", tags=["versions"])
    @app.get("/v2.0/", tags=["versions"], include_in_schema=False)
    async def v2(request: Request) -> Response:
        authenticate(config, request)
        base = str(request.base_url).rstrip("/")
        names = [s.collection for s in resources.SPECS] + ["security_group_rules"]
        return json_response({"resources": [
            {"name": n, "collection": n, "links": [{"rel": "self",
                                                     "href": f"{base}/v2.0/{n}"}]}
            for n in names]})

    @app.get("/v2.0/extensions", tags=["extensions"])
    async def list_extensions(request: Request) -> Response:
        authenticate(config, request)
        return json_response({"extensions": extensions.all_extensions()})

    @app.get("/v2.0/extensions/{alias}", tags=["extensions"])
    async def show_extension(request: Request, alias: str) -> Response:
        authenticate(config, request)
        if alias not in extensions.EXTENSIONS:
            raise ApiError(404, f"Extension with alias {alias} does not exist",
                           "ExtensionNotFound")
        return json_response({"extension": extensions.extension(alias)})

    # --------------------------------------------------------------- agents
    @app.get("/v2.0/agents", tags=["agents"])
    async def list_agents(request: Request) -> Response:
        authenticate(config, request)

        def read() -> list[dict[str, Any]]:
            with server.cache.lock:
                server.cache.sync()
                return [agent_view(r) for (k, _), r in server.cache.meta.items()
                        if k == "agent"]

        items = await run_in_threadpool(read)
        return json_response(query.apply(request, "agents", items))

    @app.get("/v2.0/agents/{rid}", tags=["agents"])
    async def show_agent(request: Request, rid: str) -> Response:
        authenticate(config, request)
        await run_in_threadpool(server.cache.sync)
        r = server.cache.meta.get(("agent", rid))
        if r is None:
            raise ApiError(404, f"Agent {rid} could not be found", "AgentNotFound")
        return json_response({"agent": agent_view(r)})

    @app.put("/v2.0/agents/{host}/status", tags=["agents"])
    async def report_agent(request: Request, host: str) -> Response:
        """An agent (``--server`` mode) reports its status here (admin token)."""
        if not authenticate(config, request).is_admin:
            raise ApiError(403, "Only the admin may report agent status", "PolicyNotAuthorized")
        data = await read_json(request)
        if not isinstance(data, dict):
            raise ApiError(400, "Agent status must be an object")
        rec = Record("agent", agent_id(host), "admin", {**data, "host": host})
        await run_in_threadpool(server.cache.write_records, [rec])
        return json_response({"agent": agent_view(server.cache.meta[("agent", rec.id)])})

    # ----------------------------------------------------------- change feed
    @app.get("/v2.0/portwall/changes", tags=["portwall"])
    async def changes(request: Request, since: int = 0, wait: float = 0.0) -> Response:
        """What changed after revision ``since``; with ``wait`` seconds, long-polls."""
        if not authenticate(config, request).is_admin:
            raise ApiError(403, "Only the admin may follow the change feed",
                           "PolicyNotAuthorized")

        def feed() -> dict[str, Any]:
            deadline = time.monotonic() + min(max(wait, 0.0), 30.0)
            while True:
                with server.cond:
                    gen = server.generation
                cs = server.store.changes(since)
                if cs.changes or cs.reset or time.monotonic() >= deadline:
                    return {"since": cs.since, "head": cs.head, "reset": cs.reset,
                            "changes": [{"revision": c.revision, "kind": c.kind, "id": c.id,
                                         "record": None if c.record is None
                                         else asdict(c.record)} for c in cs.changes]}
                with server.cond:
                    if server.generation == gen:  # no commit since the query: sleep
                        server.cond.wait(timeout=min(1.0, max(deadline - time.monotonic(),
                                                              0.01)))

        return json_response(await run_in_threadpool(feed))

    @app.get("/v2.0/portwall/snapshot", tags=["portwall"])
    async def snapshot(request: Request) -> Response:
        if not authenticate(config, request).is_admin:
            raise ApiError(403, "Only the admin may read the snapshot", "PolicyNotAuthorized")
        records, head = await run_in_threadpool(server.store.list)
        return json_response({"head": head, "records": [asdict(r) for r in records]})

    resources.install(app, server)
    return app
