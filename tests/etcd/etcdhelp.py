"""Writing a lab topology into an etcd store with its ports bound to compute hosts."""

from __future__ import annotations

import time
from collections.abc import Callable

from portwall.model import Model
from portwall.store import Record, Store, codec


def store_bound(store: Store, m: Model, host: str) -> None:
    """Every resource of ``m`` in one transaction; VM ports bound to ``host``."""
    with store.transaction() as txn:
        for kind in codec.KINDS:
            for obj in codec.table(m, kind).values():
                body = codec.to_body(m, kind, obj)
                if kind == "port" and not str(body.get("device_owner", "")).startswith(
                        "network:"):
                    body["binding:host_id"] = host
                txn.put(Record(kind, obj.id, obj.project_id, body))


def wait_for(cond: Callable[[], bool], timeout: float = 30.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)
