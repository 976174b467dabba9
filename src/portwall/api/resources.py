"""The Neutron v2.0 collections: one spec per resource, one set of handlers for all.

A request runs entirely inside :meth:`ModelCache.mutate` (writes) or under its lock
(reads): the Model applies Neutron's checks, what it changed is committed in one store
transaction, and a failure leaves both the store and the Model as they were."""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.security import APIKeyHeader
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from portwall.api import ops, query, tenancy
from portwall.api.auth import Caller, authenticate
from portwall.api.errors import ApiError
from portwall.api.views import rule_view
from portwall.model import Model, l3
from portwall.model.resources import Resource

Create = Callable[[Model, dict[str, Any]], Any]
Update = Callable[[Model, str, dict[str, Any]], Any]
Delete = Callable[[Model, str], None]


@dataclass(frozen=True)
class Spec:
    path: str  # URL collection under /v2.0/
    collection: str  # JSON key of a list
    member: str  # JSON key of one resource
    kind: str  # Model kind
    create: Create
    update: Update | None
    delete: Delete


def _fw(kind: str) -> tuple[Update, Delete]:
    return (lambda m, r, c: ops.update_fw(m, kind, r, c),
            lambda m, r: ops.delete_fw(m, kind, r))


SPECS: list[Spec] = [
    Spec("networks", "networks", "network", "network", Model.create_network,
         ops.update_network, ops.delete_network),
    Spec("subnets", "subnets", "subnet", "subnet", Model.create_subnet, ops.update_subnet,
         ops.delete_subnet),
    Spec("ports", "ports", "port", "port", Model.create_port, Model.update_port,
         ops.delete_port),
    Spec("security-groups", "security_groups", "security_group", "security_group",
         Model.create_security_group, Model.update_security_group,
         Model.delete_security_group),
    Spec("routers", "routers", "router", "router", Model.create_router, ops.update_router,
         ops.delete_router),
    Spec("floatingips", "floatingips", "floatingip", "floatingip", Model.create_floatingip,
         Model.update_floatingip, ops.delete_floatingip),
    Spec("fwaas/firewall_rules", "firewall_rules", "firewall_rule", "firewall_rule",
         Model.create_firewall_rule, *_fw("firewall_rule")),
    Spec("fwaas/firewall_policies", "firewall_policies", "firewall_policy", "firewall_policy",
         Model.create_firewall_policy, *_fw("firewall_policy")),
    Spec("fwaas/firewall_groups", "firewall_groups", "firewall_group", "firewall_group",
         Model.create_firewall_group, *_fw("firewall_group")),
]

token_header = APIKeyHeader(name="X-Auth-Token", auto_error=False,
                            description="The admin token or a project's token")


def json_response(body: Any, status: int = 200) -> Response:
    return Response(json.dumps(body, separators=(",", ":")), status_code=status,
                    media_type="application/json")


async def read_json(request: Request) -> Any:
    raw = await request.body()
    try:
        return json.loads(raw or b"null")
    except ValueError:
        raise ApiError(400, "Malformed request body: not JSON") from None


def member_body(data: Any, member: str) -> dict[str, Any]:
    if not isinstance(data, dict) or set(data) != {member} or not isinstance(data[member], dict):
        raise ApiError(400, f"Resource body required: {{\"{member}\": {{...}}}}",
                       "HTTPBadRequest")
    return dict(data[member])


def with_random_mac(m: Model, body: dict[str, Any]) -> dict[str, Any]:
    """A port without a MAC gets a random one as Neutron gives it (fa:16:3e:xx:xx:xx),
    checked against the network's MACs in O(1); the Model's own derivation is for
    reproducible topology files and scans every MAC."""
    net = m.networks.get(body.get("network_id") or "")
    if "mac_address" in body or net is None:
        return body
    for _ in range(100):
        mac = "fa:16:3e:" + ":".join(f"{b:02x}" for b in secrets.token_bytes(3))
        if m.mac_owner(net.id, mac) is None:
            return {**body, "mac_address": mac}
    return body


def if_match(request: Request, current: int) -> None:
    """Neutron's ``If-Match: revision_number=N``: 412 when the resource moved on."""
    header = request.headers.get("if-match")
    if not header:
        return
    for part in header.split(","):
        part = part.strip()
        if part.startswith("revision_number="):
            try:
                want = int(part.split("=", 1)[1])
            except ValueError:
                raise ApiError(400, f"Invalid If-Match header '{header}'") from None
            if want != current:
                raise ApiError(412, f"Constraint failed: revision_number is {current},"
                               f" not {want}", "RevisionNumberConstraintFailed")
            return
    raise ApiError(400, f"Invalid If-Match header '{header}': use revision_number=N")


class Handlers:
    """Request handling shared by every collection (see :func:`install`)."""

    def __init__(self, server: Any) -> None:
        self.server = server  # portwall.api.app.Server

    def caller(self, request: Request) -> Caller:
        return authenticate(self.server.config, request)

    def render(self, m: Model, kind: str, obj: Resource) -> dict[str, Any]:
        return self.server.views.render(m, kind, obj, self.server.cache.meta.get((kind, obj.id)))

    # ------------------------------------------------------------------ reads
    def list_(self, spec: Spec, request: Request) -> Response:
        c = self.caller(request)
        cache = self.server.cache
        if spec.kind == "security_group":
            self._ensure_default(c, request)
        with cache.lock:
            cache.sync()
            m = cache.model
            items = [self.render(m, spec.kind, o) for o in m.table(spec.kind).values()
                     if tenancy.visible(c, spec.kind, o)]
        return json_response(query.apply(request, spec.collection, items))

    def _ensure_default(self, c: Caller, request: Request) -> None:
        """Neutron creates a project's ``default`` group when the project (or the admin,
        filtering by one project) first lists security groups."""
        project = c.project_id
        if c.is_admin:
            wanted = request.query_params.getlist("project_id") or \
                request.query_params.getlist("tenant_id")
            if len(wanted) != 1:
                return
            project = wanted[0]
        cache = self.server.cache
        with cache.lock:
            cache.sync()
            if cache.model.default_group(project) is None:
                cache.mutate(lambda m: m.ensure_default_group(project))

    def show(self, spec: Spec, request: Request, rid: str) -> Response:
        c = self.caller(request)
        cache = self.server.cache
        with cache.lock:
            cache.sync()
            obj = cache.model.table(spec.kind).get(rid)
            if obj is None or not tenancy.visible(c, spec.kind, obj):
                raise tenancy.not_found(spec.kind, rid)
            item = self.render(cache.model, spec.kind, obj)
        return json_response({spec.member: query.pick_fields(request, item)})

    # ----------------------------------------------------------------- writes
    def create(self, spec: Spec, request: Request, data: Any) -> Response:
        c = self.caller(request)
        bulk = isinstance(data, dict) and set(data) == {spec.collection}
        bodies = data[spec.collection] if bulk else [member_body(data, spec.member)]
        if not isinstance(bodies, list) or not all(isinstance(b, dict) for b in bodies):
            raise ApiError(400, f"Bulk body required: {{\"{spec.collection}\": [...]}}")

        def op(m: Model) -> list[Resource]:
            out = []
            for b in bodies:
                body = tenancy.check_body(m, c, spec.kind, b)
                if spec.kind == "port":
                    body = with_random_mac(m, body)
                out.append(spec.create(m, body))
            return out

        cache = self.server.cache
        with cache.lock:
            made = cache.mutate(op)
            out = [self.render(cache.model, spec.kind, o) for o in made]
        self.server.changed()
        if bulk:
            return json_response({spec.collection: out}, 201)
        return json_response({spec.member: out[0]}, 201)

    def _owned(self, m: Model, c: Caller, spec: Spec, rid: str) -> Resource:
        return tenancy.lookup(m, c, spec.kind, rid, own=True)

    def update(self, spec: Spec, request: Request, rid: str, data: Any) -> Response:
        c = self.caller(request)
        changes = member_body(data, spec.member)
        assert spec.update is not None
        upd = spec.update

        def op(m: Model) -> Resource:
            obj = self._owned(m, c, spec, rid)
            meta = self.server.cache.meta.get((spec.kind, obj.id))
            if_match(request, meta.revision_number if meta else 0)
            body = changes if c.is_admin else tenancy.resolve_refs(m, c, spec.kind,
                                                                   dict(changes))
            return upd(m, obj.id, body)

        cache = self.server.cache
        with cache.lock:
            obj = cache.mutate(op)
            item = self.render(cache.model, spec.kind, cache.model.table(spec.kind)[obj.id])
        self.server.changed()
        return json_response({spec.member: item})

    def delete(self, spec: Spec, request: Request, rid: str) -> Response:
        c = self.caller(request)

        def op(m: Model) -> None:
            obj = self._owned(m, c, spec, rid)
            meta = self.server.cache.meta.get((spec.kind, obj.id))
            if_match(request, meta.revision_number if meta else 0)
            spec.delete(m, obj.id)

        self.server.cache.mutate(op)
        self.server.views.forget((spec.kind, rid))
        self.server.changed()
        return Response(status_code=204)

    # --------------------------------------------------------- router actions
    def router_action(self, request: Request, rid: str, action: str, data: Any) -> Response:
        c = self.caller(request)
        if not isinstance(data, dict):
            raise ApiError(400, "Request body must be an object")

        if action.endswith("_extraroutes"):
            return self.extraroutes(request, rid, action, data)

        def op(m: Model) -> dict[str, Any]:
            router = tenancy.lookup(m, c, "router", rid, own=True)
            body = data if c.is_admin else tenancy.resolve_refs(m, c, "router_interface",
                                                                dict(data))
            for k in body:
                if k not in ("subnet_id", "port_id"):
                    raise ApiError(400, f"Unrecognized attribute(s) '{k}'")
            if action == "add_router_interface":
                port = m.add_router_interface(router.id, body)
                subnets = [f.subnet_id for f in port.fixed_ips]
                return {"id": router.id, "tenant_id": router.project_id,
                        "project_id": router.project_id, "port_id": port.id,
                        "subnet_id": subnets[0] if subnets else None, "subnet_ids": subnets,
                        "network_id": port.network_id}
            return ops.remove_router_interface(m, router.id, body)

        out = self.server.cache.mutate(op)
        self.server.changed()
        return json_response(out)

    # ------------------------------------------------------- policy actions
    def policy_action(self, request: Request, rid: str, action: str, data: Any) -> Response:
        """FWaaS v2 ``insert_rule`` / ``remove_rule``: the policy's rule list changes (and
        its revision moves on); the answer is the policy, as neutron-fwaas returns it."""
        c = self.caller(request)
        if not isinstance(data, dict):
            raise ApiError(400, "Request body must be an object")
        allowed = {"firewall_rule_id"} | (
            {"insert_before", "insert_after"} if action == "insert_rule" else set())
        for k in data:
            if k not in allowed:
                raise ApiError(400, f"Unrecognized attribute(s) '{k}'")

        def op(m: Model) -> Resource:
            policy = tenancy.lookup(m, c, "firewall_policy", rid, own=True)
            meta = self.server.cache.meta.get(("firewall_policy", policy.id))
            if_match(request, meta.revision_number if meta else 0)
            body = dict(data)
            for f in allowed:  # rules the caller may not see are unknown ids to it
                if body.get(f) and not c.is_admin:
                    body[f] = tenancy.lookup(m, c, "firewall_rule", str(body[f]), f).id
            if action == "insert_rule":
                return m.insert_firewall_rule(policy.id, body)
            return m.remove_firewall_rule(policy.id, body)

        cache = self.server.cache
        with cache.lock:
            obj = cache.mutate(op)
            item = self.render(cache.model, "firewall_policy", obj)
        self.server.changed()
        return json_response(item)

    def extraroutes(self, request: Request, rid: str, action: str, data: Any) -> Response:
        """extraroute-atomic: ``PUT /routers/{id}/add_extraroutes`` and
        ``remove_extraroutes`` with ``{"router": {"routes": [...]}}`` (what ``openstack
        router add route`` sends); adding a present route or removing an absent one is
        not an error, as in Neutron."""
        c = self.caller(request)
        body = data.get("router") if isinstance(data, dict) else None
        routes = body.get("routes") if isinstance(body, dict) else None
        if not isinstance(routes, list) or set(body or {}) != {"routes"}:
            raise ApiError(400, "Request body must be {\"router\": {\"routes\": [...]}}")

        def op(m: Model) -> Resource:
            router = tenancy.lookup(m, c, "router", rid, own=True)
            now = [x.model_dump() for x in m.routers[router.id].routes]
            if action == "add_extraroutes":
                new = now + [r for r in routes if r not in now]
            else:
                new = [r for r in now if r not in routes]
            return l3.set_routes(m, router.id, new)

        cache = self.server.cache
        with cache.lock:
            obj = cache.mutate(op)
            item = self.render(cache.model, "router", cache.model.routers[obj.id])
        self.server.changed()
        return json_response({"router": item})

    # ----------------------------------------------------- security group rules
    def _rules(self, m: Model, c: Caller) -> list[dict[str, Any]]:
        meta = self.server.cache.meta
        return [rule_view(r, meta.get(("security_group", g.id)))
                for g in m.security_groups.values() if c.owns(g.project_id)
                for r in g.security_group_rules]

    def list_rules(self, request: Request) -> Response:
        c = self.caller(request)
        cache = self.server.cache
        with cache.lock:
            cache.sync()
            items = self._rules(cache.model, c)
        return json_response(query.apply(request, "security_group_rules", items))

    def show_rule(self, request: Request, rid: str) -> Response:
        c = self.caller(request)
        cache = self.server.cache
        with cache.lock:
            cache.sync()
            for r in self._rules(cache.model, c):
                if r["id"] == rid:
                    return json_response({"security_group_rule": query.pick_fields(request, r)})
        raise tenancy.not_found("security_group_rule", rid)

    def create_rule(self, request: Request, data: Any) -> Response:
        c = self.caller(request)
        bulk = isinstance(data, dict) and set(data) == {"security_group_rules"}
        bodies = data["security_group_rules"] if bulk else [
            member_body(data, "security_group_rule")]
        if not isinstance(bodies, list) or not all(isinstance(b, dict) for b in bodies):
            raise ApiError(400, "Bulk body required: {\"security_group_rules\": [...]}")

        def op(m: Model) -> list[Any]:
            return [m.create_security_group_rule(
                tenancy.check_body(m, c, "security_group_rule", b)) for b in bodies]

        cache = self.server.cache
        with cache.lock:
            rules = cache.mutate(op)
            out = [rule_view(r, cache.meta.get(("security_group", r.security_group_id)))
                   for r in rules]
        self.server.changed()
        if bulk:
            return json_response({"security_group_rules": out}, 201)
        return json_response({"security_group_rule": out[0]}, 201)

    def delete_rule(self, request: Request, rid: str) -> Response:
        c = self.caller(request)

        def op(m: Model) -> None:
            rule = m.security_group_rule(rid)
            if not c.owns(m.security_groups[rule.security_group_id].project_id):
                raise tenancy.not_found("security_group_rule", rid)
            m.delete_security_group_rule(rid)

        self.server.cache.mutate(op)
        self.server.changed()
        return Response(status_code=204)


def install(app: FastAPI, server: Any) -> None:
    """Register every collection's routes (explicit paths, so the OpenAPI document lists
    each one)."""
    h = Handlers(server)
    r = APIRouter(prefix="/v2.0", dependencies=[Depends(token_header)])

    def bind(spec: Spec) -> None:
        tag: list[str | Enum] = [spec.collection]

        async def list_(request: Request) -> Response:
            return await run_in_threadpool(h.list_, spec, request)

        async def show(request: Request, rid: str) -> Response:
            return await run_in_threadpool(h.show, spec, request, rid)

        async def create(request: Request) -> Response:
            data = await read_json(request)
            return await run_in_threadpool(h.create, spec, request, data)

        async def update(request: Request, rid: str) -> Response:
            data = await read_json(request)
            return await run_in_threadpool(h.update, spec, request, rid, data)

        async def delete(request: Request, rid: str) -> Response:
            return await run_in_threadpool(h.delete, spec, request, rid)

        base = f"/{spec.path}"
        body_doc = {"requestBody": {"content": {"application/json": {"schema": {
            "type": "object", "properties": {spec.member: {"type": "object"}},
            "required": [spec.member]}}}, "required": True}}
        r.add_api_route(base, list_, methods=["GET"], tags=tag, name=f"list {spec.collection}")
        r.add_api_route(base + "/{rid}", show, methods=["GET"], tags=tag,
                        name=f"show {spec.member}")
        r.add_api_route(base, create, methods=["POST"], tags=tag, status_code=201,
                        name=f"create {spec.member}", openapi_extra=body_doc)
        if spec.update is not None:
            r.add_api_route(base + "/{rid}", update, methods=["PUT"], tags=tag,
                            name=f"update {spec.member}", openapi_extra=body_doc)
        r.add_api_route(base + "/{rid}", delete, methods=["DELETE"], tags=tag,
                        status_code=204, name=f"delete {spec.member}")

    for spec in SPECS:
        bind(spec)

    tag2: list[str | Enum] = ["security_group_rules"]

    async def list_rules(request: Request) -> Response:
        return await run_in_threadpool(h.list_rules, request)

    async def show_rule(request: Request, rid: str) -> Response:
        return await run_in_threadpool(h.show_rule, request, rid)

    async def create_rule(request: Request) -> Response:
        data = await read_json(request)
        return await run_in_threadpool(h.create_rule, request, data)

    async def delete_rule(request: Request, rid: str) -> Response:
        return await run_in_threadpool(h.delete_rule, request, rid)

    rule_doc = {"requestBody": {"content": {"application/json": {"schema": {
        "type": "object", "properties": {"security_group_rule": {"type": "object"}},
        "required": ["security_group_rule"]}}}, "required": True}}
    r.add_api_route("/security-group-rules", list_rules, methods=["GET"], tags=tag2)
    r.add_api_route("/security-group-rules/{rid}", show_rule, methods=["GET"], tags=tag2)
    r.add_api_route("/security-group-rules", create_rule, methods=["POST"], tags=tag2,
                    status_code=201, openapi_extra=rule_doc)
    r.add_api_route("/security-group-rules/{rid}", delete_rule, methods=["DELETE"], tags=tag2,
                    status_code=204)

    def bind_action(action: str) -> None:
        async def act(request: Request, rid: str) -> Response:
            data = await read_json(request)
            return await run_in_threadpool(h.router_action, request, rid, action, data)

        tags: list[str | Enum] = ["routers"]
        schema: dict[str, Any] = {"type": "object", "properties": {
            "subnet_id": {"type": "string"}, "port_id": {"type": "string"}}}
        if action.endswith("_extraroutes"):
            route = {"type": "object", "properties": {"destination": {"type": "string"},
                                                      "nexthop": {"type": "string"}}}
            schema = {"type": "object", "properties": {"router": {
                "type": "object", "properties": {"routes": {"type": "array", "items": route}}}}}
        r.add_api_route(f"/routers/{{rid}}/{action}", act, methods=["PUT"], tags=tags,
                        name=action, openapi_extra={"requestBody": {"content": {
                            "application/json": {"schema": schema}}, "required": True}})

    bind_action("add_router_interface")
    bind_action("remove_router_interface")

    def bind_policy_action(action: str) -> None:
        async def act(request: Request, rid: str) -> Response:
            data = await read_json(request)
            return await run_in_threadpool(h.policy_action, request, rid, action, data)

        props: dict[str, Any] = {"firewall_rule_id": {"type": "string"}}
        if action == "insert_rule":
            props |= {"insert_before": {"type": "string"}, "insert_after": {"type": "string"}}
        tags: list[str | Enum] = ["firewall_policies"]
        r.add_api_route(f"/fwaas/firewall_policies/{{rid}}/{action}", act, methods=["PUT"],
                        tags=tags, name=action, openapi_extra={"requestBody": {"content": {
                            "application/json": {"schema": {"type": "object",
                                                            "properties": props}}},
                            "required": True}})

    bind_policy_action("insert_rule")
    bind_policy_action("remove_rule")
    bind_action("add_extraroutes")
    bind_action("remove_extraroutes")
    app.include_router(r)
