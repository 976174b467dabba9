"""``X-Auth-Token`` -> who is asking: the admin, or one project (else 401)."""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from starlette.requests import Request

from portwall.api.config import Config
from portwall.api.errors import ApiError


@dataclass(frozen=True)
class Caller:
    project_id: str
    is_admin: bool

    def owns(self, project_id: str) -> bool:
        return self.is_admin or project_id == self.project_id


ADMIN_PROJECT = "admin"


def authenticate(cfg: Config, request: Request) -> Caller:
    token = request.headers.get("x-auth-token")
    if not token:
        raise ApiError(401, "Authentication required: send an X-Auth-Token header.")
    if cfg.admin_token and hmac.compare_digest(token, cfg.admin_token):
        return Caller(ADMIN_PROJECT, True)
    for known, project in cfg.project_tokens.items():
        if hmac.compare_digest(token, known):
            return Caller(project, False)
    raise ApiError(401, "The request you have made requires authentication.")
