"""The server's change feed over HTTP, as a read-only :class:`portwall.store.Store` (for
``portwall agent --server URL``), plus status reports to ``/v2.0/agents``."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import httpx

from portwall.store.base import Change, ChangeSet, Record


def _record(d: dict[str, Any]) -> Record:
    return Record(**d)


class HttpStore:
    def __init__(self, url: str, token: str, timeout: float = 40.0) -> None:
        self.url = url.rstrip("/")
        self.client = httpx.Client(base_url=self.url, headers={"X-Auth-Token": token},
                                   timeout=timeout)
        #: seconds a changes() call may wait for news (long poll)
        self.wait = 0.0

    def _get(self, path: str, **params: Any) -> Any:
        r = self.client.get(path, params=params)
        r.raise_for_status()
        return r.json()

    def head(self) -> int:
        return int(self._get("/v2.0/portwall/changes", since=2**31)["head"])

    def get(self, kind: str, rid: str) -> Record | None:
        records, _ = self.list(kind)
        return next((r for r in records if r.id == rid), None)

    def list(self, kind: str | None = None) -> tuple[list[Record], int]:
        body = self._get("/v2.0/portwall/snapshot")
        records = [_record(r) for r in body["records"]]
        return [r for r in records if kind in (None, r.kind)], int(body["head"])

    def changes(self, since_revision: int) -> ChangeSet:
        body = self._get("/v2.0/portwall/changes", since=since_revision, wait=self.wait)
        return ChangeSet(body["since"], body["head"], [
            Change(c["revision"], c["kind"], c["id"],
                   None if c["record"] is None else _record(c["record"]))
            for c in body["changes"]], reset=body["reset"])

    @contextlib.contextmanager
    def transaction(self, expect_revision: int | None = None) -> Iterator[Any]:
        raise NotImplementedError("the HTTP feed is read-only; report through report()")
        yield  # pragma: no cover

    def report(self, host: str, status: dict[str, Any]) -> None:
        self.client.put(f"/v2.0/agents/{host}/status", json=status).raise_for_status()

    def close(self) -> None:
        self.client.close()
