"""A small test client for the API tests (one token at a time)."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

ADMIN = "admin-secret"
TOKENS = {"tok-a": "project-a", "tok-b": "project-b"}


class Api:
    """A test client speaking as one token (``as_(token)`` gives another view)."""

    def __init__(self, client: TestClient, token: str | None = ADMIN) -> None:
        self.client, self.token = client, token

    def as_(self, token: str | None) -> Api:
        return Api(self.client, token)

    def _h(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        h = {"X-Auth-Token": self.token} if self.token else {}
        return {**h, **(extra or {})}

    def get(self, path: str, **kw: Any) -> Any:
        return self.client.get(path, headers=self._h(kw.pop("headers", None)), **kw)

    def post(self, path: str, body: Any, **kw: Any) -> Any:
        return self.client.post(path, json=body, headers=self._h(kw.pop("headers", None)), **kw)

    def put(self, path: str, body: Any, **kw: Any) -> Any:
        return self.client.put(path, json=body, headers=self._h(kw.pop("headers", None)), **kw)

    def delete(self, path: str, **kw: Any) -> Any:
        return self.client.delete(path, headers=self._h(kw.pop("headers", None)), **kw)

    def make(self, coll: str, member: str, **body: Any) -> dict[str, Any]:
        r = self.post(f"/v2.0/{coll}", {member: body})
        assert r.status_code == 201, r.text
        return r.json()[member]  # type: ignore[no-any-return]


