"""etcd v3 through its JSON gateway: KV calls over etcd3gw with endpoint failover, and a
watch stream kept open in a thread.

etcd3gw talks to one endpoint; a cluster URL names several, so calls rotate to the next
member when one is down. Its watch helper drops what a follower needs (the response
header's revision, compaction, progress notifications), so :class:`Watch` reads the
gateway's stream itself: one JSON object per line.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import requests
from etcd3gw import exceptions as gwexc
from etcd3gw.client import Etcd3Client

from portwall.model.errors import PortwallError

log = logging.getLogger("portwall.etcd")

#: Errors after which another member may still answer.
UNREACHABLE = (gwexc.ConnectionFailedError, gwexc.ConnectionTimeoutError,
               gwexc.InternalServerError)


class Unavailable(PortwallError):
    """No member of the cluster answered (the API answers 503: retry later)."""

    status = 503
    neutron_type = "ServiceUnavailable"


def b64(s: str | bytes) -> str:
    return base64.b64encode(s.encode() if isinstance(s, str) else s).decode()


def unb64(s: str) -> bytes:
    return base64.b64decode(s)


def prefix_end(prefix: str) -> str:
    """The range end that covers every key starting with ``prefix``."""
    raw = bytearray(prefix.encode())
    raw[-1] += 1
    return raw.decode()


def parse_url(url: str) -> tuple[list[str], str]:
    """``etcd://h:p,h:p[/prefix]`` -> (endpoints, key prefix without trailing slash)."""
    rest = url.split("://", 1)[1]
    hosts, _, path = rest.partition("/")
    endpoints = [h for h in hosts.split(",") if h]
    if not endpoints:
        raise ValueError(f"no etcd endpoint in '{url}'")
    return endpoints, "/" + (path.strip("/") or "portwall")


@dataclass
class KV:
    key: str
    value: bytes | None  # None: deleted
    mod_revision: int


def _kv(d: dict[str, Any], deleted: bool = False) -> KV:
    return KV(unb64(d["key"]).decode(), None if deleted else unb64(d.get("value", "")),
              int(d.get("mod_revision", 0)))


class Gateway:
    """KV calls to the first member that answers (the last good one first)."""

    def __init__(self, endpoints: list[str], timeout: float = 5.0) -> None:
        self.endpoints = endpoints
        self.clients = []
        for ep in endpoints:
            host, _, port = ep.rpartition(":")
            self.clients.append(Etcd3Client(host=host, port=int(port), timeout=timeout,
                                            api_path="/v3/"))
        self.current = 0
        self.lock = threading.Lock()

    def post(self, path: str, payload: dict[str, Any], retry: bool = True) -> Any:
        """POST to one member after the other; ``retry=False``: only the current one."""
        errors = []
        for k in range(len(self.clients) if retry else 1):
            i = (self.current + k) % len(self.clients)
            c = self.clients[i]
            try:
                out = c.post(c.get_url(path), json=payload)
                self.current = i
                return out
            except UNREACHABLE as e:
                errors.append(f"{self.endpoints[i]}: {type(e).__name__}")
                if not retry:
                    self.current = (i + 1) % len(self.clients)
        raise Unavailable("etcd unreachable (" + "; ".join(errors) + ")")

    def range(self, prefix: str, revision: int = 0, keys_only: bool = False) -> tuple[list[KV], int]:
        payload: dict[str, Any] = {"key": b64(prefix), "range_end": b64(prefix_end(prefix))}
        if revision:
            payload["revision"] = revision
        if keys_only:
            payload["keys_only"] = True
        out = self.post("/kv/range", payload)
        return [_kv(d) for d in out.get("kvs", [])], int(out["header"]["revision"])

    def get(self, key: str) -> tuple[KV | None, int]:
        out = self.post("/kv/range", {"key": b64(key)})
        kvs = out.get("kvs", [])
        return (_kv(kvs[0]) if kvs else None), int(out["header"]["revision"])

    def txn(self, compare: list[dict[str, Any]], success: list[dict[str, Any]],
            retry: bool = True) -> tuple[bool, int]:
        out = self.post("/kv/txn", {"compare": compare, "success": success}, retry=retry)
        return bool(out.get("succeeded", False)), int(out["header"]["revision"])

    def compact(self, revision: int) -> None:
        self.post("/kv/compaction", {"revision": revision, "physical": True})

    def close(self) -> None:
        for c in self.clients:
            c.session.close()


def op_put(key: str, value: bytes | str) -> dict[str, Any]:
    return {"request_put": {"key": b64(key), "value": b64(value)}}


def op_delete(key: str) -> dict[str, Any]:
    return {"request_delete_range": {"key": b64(key)}}


class Watch:
    """Follow every key under ``prefix`` from a revision on, in a thread, reconnecting to
    any member; ``on_events(kvs, revision)`` gets each response's events (one revision's
    events arrive together), ``on_compacted()`` when history is gone (the owner reloads and
    returns the revision to follow from)."""

    def __init__(self, gateway: Gateway, prefix: str, start_after: int,
                 on_events: Callable[[list[KV], int], None],
                 on_compacted: Callable[[], int],
                 on_state: Callable[[bool], None] = lambda up: None) -> None:
        self.gw, self.prefix = gateway, prefix
        self.last = start_after
        self.on_events, self.on_compacted, self.on_state = on_events, on_compacted, on_state
        self.connected = False
        #: what arrived: responses carrying events, their events and bytes; all bytes
        self.responses = self.events = self.event_bytes = self.bytes = 0
        self._stop = threading.Event()
        self._resp: requests.Response | None = None
        self._session = requests.Session()
        self._thread = threading.Thread(target=self._run, name=f"etcd-watch{prefix}",
                                        daemon=True)
        self._thread.start()

    def _run(self) -> None:
        k = 0
        while not self._stop.is_set():
            ep = self.gw.endpoints[(self.gw.current + k) % len(self.gw.endpoints)]
            try:
                self._follow(ep)
            except Exception as e:  # a broken stream: reconnect (another member)
                if self._stop.is_set():
                    break
                log.info("watch %s on %s: %s", self.prefix, ep, e)
            if self.connected:
                self.connected = False
                self.on_state(False)
            k += 1
            self._stop.wait(0.2)

    def _follow(self, endpoint: str) -> None:
        req: dict[str, Any] = {"create_request": {"key": b64(self.prefix),
                                  "range_end": b64(prefix_end(self.prefix)),
                                  "start_revision": self.last + 1, "progress_notify": True}}
        self._resp = resp = self._session.post(f"http://{endpoint}/v3/watch", json=req,
                                               stream=True, timeout=(2.0, 20.0))
        resp.raise_for_status()
        for line in resp.iter_lines():
            if self._stop.is_set():
                return
            if not line.strip():
                continue
            self.bytes += len(line) + 1
            msg = json.loads(line)
            if "error" in msg:
                raise RuntimeError(msg["error"].get("message", "watch error"))
            res = msg["result"]
            if int(res.get("compact_revision", 0) or 0) > 0:
                self.last = self.on_compacted()
                return  # re-create the watch from the reloaded revision
            if res.get("canceled"):
                raise RuntimeError(res.get("cancel_reason", "watch canceled"))
            if not self.connected:
                self.connected = True
                self.on_state(True)
            evs = res.get("events") or []
            rev = int(res["header"]["revision"])
            if evs:
                self.responses += 1
                self.events += len(evs)
                self.event_bytes += len(line) + 1
                kvs = [_kv(e["kv"], e.get("type") == "DELETE") for e in evs]
                self.on_events(kvs, max(kv.mod_revision for kv in kvs))
                self.last = max(self.last, max(kv.mod_revision for kv in kvs))
            elif not res.get("created"):
                # progress notification: nothing under the prefix up to ``rev``
                self.on_events([], rev)
                self.last = max(self.last, rev)

    def stop(self) -> None:
        self._stop.set()
        resp = self._resp
        if resp is not None:
            with contextlib.suppress(Exception):  # unblock the reader thread now
                resp.raw._fp.fp.raw._sock.shutdown(2)
            resp.close()
        self._thread.join(timeout=5)
        self._session.close()


def history(gw: Gateway, prefix: str, after: int, until: int,
            timeout: float = 10.0) -> list[KV] | None:
    """Events under ``prefix`` in (after, until] read back from etcd's history with a
    short-lived watch; None when compaction removed them."""
    if until <= after:
        return []
    req: dict[str, Any] = {"create_request": {"key": b64(prefix),
                                              "range_end": b64(prefix_end(prefix)),
                                              "start_revision": after + 1}}
    out: list[KV] = []
    ep = gw.endpoints[gw.current]
    with requests.post(f"http://{ep}/v3/watch", json=req, stream=True,
                       timeout=(2.0, timeout)) as resp:
        resp.raise_for_status()
        for line in resp.iter_lines():
            if not line.strip():
                continue
            res = json.loads(line).get("result", {})
            if int(res.get("compact_revision", 0) or 0) > 0:
                return None
            for e in res.get("events") or []:
                kv = _kv(e["kv"], e.get("type") == "DELETE")
                if kv.mod_revision > until:
                    return out
                out.append(kv)
            if out and out[-1].mod_revision >= until:
                return out
    return out


def wait_until(cond: Callable[[], bool], timeout: float, step: float = 0.005) -> bool:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() >= deadline:
            return False
        time.sleep(step)
    return True
