"""Errors as Neutron returns them: ``{"NeutronError": {"type", "message", "detail"}}``."""

from __future__ import annotations

import json
import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from portwall.model.errors import PortwallError

log = logging.getLogger("portwall.api")

_HTTP_TYPES = {400: "HTTPBadRequest", 401: "HTTPUnauthorized", 403: "HTTPForbidden",
               404: "HTTPNotFound", 405: "HTTPMethodNotAllowed", 409: "HTTPConflict",
               412: "PreconditionFailed", 413: "HTTPRequestEntityTooLarge",
               415: "HTTPUnsupportedMediaType", 422: "HTTPBadRequest"}


class ApiError(PortwallError):
    """An error raised by the API layer itself (auth, policy, If-Match, bad query)."""

    def __init__(self, status: int, message: str, neutron_type: str | None = None) -> None:
        super().__init__(message, neutron_type=neutron_type or _HTTP_TYPES.get(status))
        self.status = status


def body(status: int, neutron_type: str, message: str) -> Response:
    payload = {"NeutronError": {"type": neutron_type, "message": message, "detail": ""}}
    return Response(json.dumps(payload), status_code=status, media_type="application/json")


def install(app: FastAPI) -> None:
    """Every error leaves the server as a NeutronError body with Neutron's status code."""

    @app.exception_handler(PortwallError)
    async def _portwall(_r: Request, e: PortwallError) -> Response:
        status = e.status if 400 <= e.status < 600 else 500
        return body(status, e.neutron_type, str(e))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_r: Request, e: StarletteHTTPException) -> Response:
        status = 400 if e.status_code == 422 else e.status_code
        return body(status, _HTTP_TYPES.get(status, "HTTPError"), str(e.detail))

    @app.exception_handler(RequestValidationError)
    async def _validation(_r: Request, e: RequestValidationError) -> Response:
        errs = e.errors()
        first = errs[0] if errs else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return body(400, "HTTPBadRequest", f"Invalid request: {where}: {first.get('msg', '')}")

    @app.exception_handler(Exception)
    async def _crash(_r: Request, e: Exception) -> Response:  # pragma: no cover - logged
        log.exception("internal error")
        return body(500, "InternalServerError", f"Request failed: internal server error ({e})")
