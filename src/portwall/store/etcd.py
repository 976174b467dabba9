"""The etcd store: ``--db etcd://host:port[,host:port...][/prefix]`` (see docs/etcd.md).

Key layout under the prefix (``/portwall`` by default)::

    <P>/m/head                  value: id of the last model transaction; its mod_revision
                                is the store's head revision
    <P>/m/r/<kind>/<id>         one resource (JSON: project, revision_number, times, body)
    <P>/m/r/agent/<id>          an agent's status (written by the agent, no head bump)
    <P>/h/<host>/<kind>/<id>    derived: what <host>'s agent needs (etcd_hosts.HostIndex)

Store revisions are etcd revisions. One API request is one etcd transaction: resources,
the head key and every host's derived keys, guarded by ``mod_revision(head) <= base``, so
two servers never interleave half a change and a server that is behind gets
:class:`StaleRevision` (the cache resyncs and retries). Each process follows ``<P>/m/``
with a watch; the feed (:meth:`EtcdStore.changes`) is served from what the watch delivered,
after waiting for it to reach the head. Compaction -> ``ChangeSet.reset``.

:class:`EtcdHostStore` is an agent's read-only store: it watches ``<P>/h/<host>/`` only,
so a change elsewhere in the cloud sends it nothing; when etcd is unreachable it keeps what
it has (the agent keeps enforcing) and says it is stale.
"""

from __future__ import annotations

import bisect
import contextlib
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

from portwall.store import etcd_client as ec
from portwall.store.base import Change, ChangeSet, Record, StaleRevision
from portwall.store.etcd_hosts import HostIndex, Key, decode, encode

UNKNOWN = object()
NOT_MODEL = ("agent",)  # kinds written without the head guard (status, not resources)
LOG_MAX = 200_000
SYNC_TIMEOUT = 10.0


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class _Feed:
    """What a watch delivered: latest records, a log of (revision, key), the watermark."""

    def __init__(self) -> None:
        self.cond = threading.Condition(threading.RLock())
        self.log: list[tuple[int, Key]] = []
        self.log_start = 0  # changes(since < log_start) -> reset
        self.delivered = 0
        self.connected = False
        self.down_since: float | None = time.monotonic()

    def note(self, rev: int, keys: list[Key]) -> None:
        self.log.extend((rev, k) for k in keys)
        if len(self.log) > LOG_MAX:
            cut = len(self.log) // 2
            self.log_start = self.log[cut - 1][0]
            del self.log[:cut]

    def since(self, since: int, records: dict[Key, Record]) -> ChangeSet:
        if since < self.log_start:
            return ChangeSet(since, self.delivered, reset=True)
        latest: dict[Key, int] = {}
        i = bisect.bisect_right(self.log, (since, ("\uffff", "")))
        for rev, key in self.log[i:]:
            latest[key] = rev
        out = [Change(rev, k[0], k[1], records.get(k))
               for k, rev in sorted(latest.items(), key=lambda kv: kv[1])]
        return ChangeSet(since, max(self.delivered, since), out)

    def state(self, up: bool) -> None:
        with self.cond:
            self.connected = up
            self.down_since = None if up else time.monotonic()
            self.cond.notify_all()


class EtcdStore:
    """The whole cloud (API servers); keeps every host's derived keys up to date."""

    def __init__(self, url: str) -> None:
        self.url = url
        endpoints, self.prefix = ec.parse_url(url)
        self.gw = ec.Gateway(endpoints)
        self.mp, self.rp, self.head_key = self.prefix + "/m/", self.prefix + "/m/r/", \
            self.prefix + "/m/head"
        self.feed = _Feed()
        self.index = HostIndex()
        self._own: set[int] = set()  # own commits the watch has not delivered yet
        self.last_commit = 0
        self.load_target = 0
        self._compacted_at: int = 0  # the compaction this process knows of (history before: gone)
        with self.feed.cond:
            first = self._load()
            self.feed.log_start = 0 if first == 0 else self.feed.delivered
        self.watch = ec.Watch(self.gw, self.mp, self.feed.delivered, self._on_events,
                              self._on_compacted, self.feed.state)

    # --------------------------------------------------------------- following
    def _key(self, kind: str, rid: str) -> str:
        return f"{self.rp}{kind}/{rid}"

    def _split(self, key: str) -> Key | None:
        if not key.startswith(self.rp):
            return None
        kind, _, rid = key[len(self.rp):].partition("/")
        return kind, rid

    def _load(self) -> int:
        """Read everything under ``<P>/m/``; the number of resources found."""
        kvs, rev = self.gw.range(self.mp)
        records = []
        for kv in kvs:
            k = self._split(kv.key)
            if k is not None and kv.value is not None:
                records.append(decode(k[0], k[1], kv.value))
        self.index.load(records)
        self.index.revision = rev
        self.load_target = max((kv.mod_revision for kv in kvs), default=0)
        self.feed.delivered = rev
        self.feed.log = []
        self._own.clear()
        return len(kvs)

    def _on_compacted(self) -> int:
        with self.feed.cond:
            self._compacted_at = max(self._compacted_at, self.feed.delivered)
            self._load()
            self.feed.log_start = self.feed.delivered
            self.feed.cond.notify_all()
            return self.feed.delivered

    def _on_events(self, kvs: list[ec.KV], rev: int) -> None:
        with self.feed.cond:
            by_rev: dict[int, list[ec.KV]] = {}
            for kv in kvs:
                by_rev.setdefault(kv.mod_revision, []).append(kv)
            for r in sorted(by_rev):
                keys: list[Key] = []
                changes: list[tuple[str, str, Record | None]] = []
                for kv in by_rev[r]:
                    k = self._split(kv.key)
                    if k is None:
                        continue
                    keys.append(k)
                    changes.append((k[0], k[1], None if kv.value is None
                                    else decode(k[0], k[1], kv.value)))
                if r in self._own:
                    self._own.discard(r)  # already in the index
                elif changes:
                    self.index.apply(changes)
                self.feed.note(r, keys)
            self.feed.delivered = max(self.feed.delivered, rev)
            self.feed.cond.notify_all()

    def _caught_up(self, target: int) -> None:
        with self.feed.cond:
            if not self.feed.cond.wait_for(lambda: self.feed.delivered >= target,
                                           timeout=SYNC_TIMEOUT):
                raise ec.Unavailable(f"etcd watch did not reach revision {target}")

    # ------------------------------------------------------------------- reads
    def head(self) -> int:
        kv, _ = self.gw.get(self.head_key)
        return 0 if kv is None else kv.mod_revision

    def get(self, kind: str, rid: str) -> Record | None:
        kv, _ = self.gw.get(self._key(kind, rid))
        return None if kv is None or kv.value is None else decode(kind, rid, kv.value)

    def list(self, kind: str | None = None) -> tuple[list[Record], int]:
        kvs, rev = self.gw.range(self.rp + (f"{kind}/" if kind else ""))
        out = []
        for kv in kvs:
            k = self._split(kv.key)
            if k is not None and kv.value is not None:
                out.append(decode(k[0], k[1], kv.value))
        return out, rev

    def changes(self, since_revision: int) -> ChangeSet:
        self._caught_up(self.head())
        with self.feed.cond:
            start, target = self.feed.log_start, self.load_target
        if since_revision < start and since_revision < target and not self._compacted_at:
            # older than this process: read it back from etcd's history (if not compacted)
            old = ec.history(self.gw, self.mp, since_revision, target)
            if old is not None:
                with self.feed.cond:
                    cs = self.feed.since(start, self.index.recs)
                    keys = {(c.kind, c.id) for c in cs.changes}
                    early: dict[Key, int] = {}
                    for kv in old:
                        k = self._split(kv.key)
                        if k is not None and k not in keys:
                            early[k] = kv.mod_revision
                    cs.changes[:0] = [Change(r, k[0], k[1], self.index.recs.get(k))
                                      for k, r in sorted(early.items(), key=lambda x: x[1])]
                    cs.since = since_revision
                    return cs
        with self.feed.cond:
            return self.feed.since(since_revision, self.index.recs)

    # ------------------------------------------------------------------ writes
    @contextlib.contextmanager
    def transaction(self, expect_revision: int | None = None) -> Iterator[_EtcdTxn]:
        txn = _EtcdTxn(self)
        yield txn
        if txn.ops:
            self._commit(txn, expect_revision)

    def _commit(self, txn: _EtcdTxn, expect: int | None) -> None:
        model = [(k, r) for k, r in txn.ops.items() if k[0] not in NOT_MODEL]
        if not model:  # agent status: no guard, no derived keys
            ops = [ec.op_delete(self._key(*k)) if r is None else
                   ec.op_put(self._key(*k), encode(r)) for k, r in txn.ops.items()]
            _, txn.revision = self.gw.txn([], ops)
            return
        for attempt in range(20):
            base = expect
            if base is None:
                base = self.head()
                self._caught_up(base)
            with self.feed.cond:
                if expect is None:
                    txn.restamp()
                ok, rev = self._try(txn, base)
            if ok:
                txn.revision = self.last_commit = rev
                return
            if expect is not None:
                raise StaleRevision(f"the store moved past revision {expect}")
            time.sleep(0.005 * attempt)
        raise StaleRevision("too many concurrent writers")

    def _try(self, txn: _EtcdTxn, base: int) -> tuple[bool, int]:
        """One guarded etcd transaction (caller holds the feed lock)."""
        changes = [(k[0], k[1], r) for k, r in txn.ops.items()]
        olds = [(k[0], k[1], self.index.recs.get(k)) for k in txn.ops]
        diff = self.index.apply(changes)
        tag = uuid.uuid4().hex
        ops = [ec.op_put(self.head_key, tag)]
        for kind, rid, r in changes:
            ops.append(ec.op_delete(self._key(kind, rid)) if r is None
                       else ec.op_put(self._key(kind, rid), encode(r)))
        for host, (puts, dels) in diff.items():
            hp = f"{self.prefix}/h/{host}/"
            ops += [ec.op_put(f"{hp}{k}/{i}", v) for (k, i), v in puts.items()]
            ops += [ec.op_delete(f"{hp}{k}/{i}") for k, i in dels]
        compare = [{"key": ec.b64(self.head_key), "target": "MOD", "result": "LESS",
                    "mod_revision": base + 1}]
        try:
            ok, rev = self.gw.txn(compare, ops, retry=False)
        except ec.Unavailable:
            ok, rev = self._committed(tag)
        if ok:
            self._own.add(rev)
            self.index.revision = max(self.index.revision, rev)
        else:
            self.index.apply(olds)
        return ok, rev

    def _committed(self, tag: str) -> tuple[bool, int]:
        """After a lost answer: did our transaction commit? (the head key holds its tag)"""
        deadline = time.monotonic() + SYNC_TIMEOUT
        while True:
            try:
                kv, _ = self.gw.get(self.head_key)
                if kv is not None and kv.value == tag.encode():
                    return True, kv.mod_revision
                return False, 0
            except ec.Unavailable:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def compact(self, keep_after: int) -> None:
        """Compact etcd's history up to ``keep_after``; followers behind it resync."""
        self.gw.compact(keep_after)
        with self.feed.cond:
            self._compacted_at = max(self._compacted_at, keep_after)
            self.feed.log = [e for e in self.feed.log if e[0] > keep_after]
            self.feed.log_start = max(self.feed.log_start, keep_after)

    def close(self) -> None:
        self.watch.stop()
        self.gw.close()


class _EtcdTxn:
    """Buffered writes of one transaction (committed together by :class:`EtcdStore`)."""

    def __init__(self, store: EtcdStore) -> None:
        self.store = store
        self.revision = store.feed.delivered
        self.ops: dict[Key, Record | None] = {}
        self._prev: dict[Key, Any] = {}

    def get(self, kind: str, rid: str) -> Record | None:
        if (kind, rid) in self.ops:
            return self.ops[(kind, rid)]
        return self.store.index.recs.get((kind, rid))

    def put(self, record: Record, prev: Record | object | None = UNKNOWN) -> Record:
        key = (record.kind, record.id)
        self._prev.setdefault(key, prev)
        old = self.get(*key) if prev is UNKNOWN else prev
        assert old is None or isinstance(old, Record)
        stamp = now()
        record.revision_number = (old.revision_number + 1) if old else 1
        record.created_at = old.created_at if old else (record.created_at or stamp)
        record.updated_at = stamp
        self.ops[key] = record
        return record

    def delete(self, kind: str, rid: str) -> None:
        self.ops[(kind, rid)] = None

    def restamp(self) -> None:
        """Blind writes: number them from what is stored now (before each attempt)."""
        for key, r in self.ops.items():
            if r is not None and self._prev.get(key) is UNKNOWN:
                old = self.store.index.recs.get(key)
                r.revision_number = (old.revision_number + 1) if old else 1
                r.created_at = old.created_at if old else r.created_at


class EtcdHostStore:
    """One host's view (read-only): the derived keys under ``<P>/h/<host>/``."""

    def __init__(self, url: str, host: str) -> None:
        self.url, self.host = url, host
        endpoints, self.prefix = ec.parse_url(url)
        self.gw = ec.Gateway(endpoints)
        self.hp = f"{self.prefix}/h/{host}/"
        self.feed = _Feed()
        self.records: dict[Key, Record] = {}
        self.loads = 0
        self.watch: ec.Watch | None = None
        with contextlib.suppress(ec.Unavailable):  # etcd down at start: retried on use
            self._start()

    def _start(self) -> None:
        """Load the view and start watching (never before a load succeeded: an agent must
        not enforce an empty view because etcd was unreachable)."""
        with self.feed.cond:
            if self.watch is None:
                self._load()
                self.watch = ec.Watch(self.gw, self.hp, self.feed.delivered,
                                      self._on_events, self._on_compacted, self.feed.state)

    def _split(self, key: str) -> Key:
        kind, _, rid = key[len(self.hp):].partition("/")
        return kind, rid

    def _load(self) -> None:
        kvs, rev = self.gw.range(self.hp)
        self.records = {}
        for kv in kvs:
            k = self._split(kv.key)
            if kv.value is not None:
                self.records[k] = decode(k[0], k[1], kv.value)
        self.feed.delivered = rev
        self.feed.log = []
        self.feed.log_start = rev
        self.loads += 1

    def _on_compacted(self) -> int:
        with self.feed.cond:
            self._load()
            self.feed.cond.notify_all()
            return self.feed.delivered

    def _on_events(self, kvs: list[ec.KV], rev: int) -> None:
        with self.feed.cond:
            by_rev: dict[int, list[Key]] = {}
            for kv in kvs:
                k = self._split(kv.key)
                if kv.value is None:
                    self.records.pop(k, None)
                else:
                    self.records[k] = decode(k[0], k[1], kv.value)
                by_rev.setdefault(kv.mod_revision, []).append(k)
            for r in sorted(by_rev):
                self.feed.note(r, by_rev[r])
            self.feed.delivered = max(self.feed.delivered, rev)
            self.feed.cond.notify_all()

    @property
    def stale(self) -> bool:
        """True when the watch has been down for over a second (etcd unreachable)."""
        if self.watch is None:
            return True
        down = self.feed.down_since
        return down is not None and time.monotonic() - down > 1.0

    def stats(self) -> dict[str, int]:
        w = self.watch
        if w is None:
            return {"loads": self.loads}
        return {"watch_events": w.events, "watch_event_bytes": w.event_bytes,
                "watch_bytes": w.bytes, "watch_responses": w.responses, "loads": self.loads}

    def wait(self, since: int, timeout: float) -> None:
        """Block until something past ``since`` arrived (or ``timeout``)."""
        with self.feed.cond:
            self.feed.cond.wait_for(lambda: self.feed.delivered > since, timeout=timeout)

    def head(self) -> int:
        return self.feed.delivered

    def get(self, kind: str, rid: str) -> Record | None:
        return self.records.get((kind, rid))

    def list(self, kind: str | None = None) -> tuple[list[Record], int]:
        self._start()
        with self.feed.cond:
            return ([r for k, r in self.records.items() if kind in (None, k[0])],
                    self.feed.delivered)

    def changes(self, since_revision: int) -> ChangeSet:
        self._start()
        if self.stale:
            raise ec.Unavailable(f"etcd unreachable: host {self.host} is enforcing its last"
                                 f" state (revision {self.feed.delivered})")
        with self.feed.cond:
            return self.feed.since(since_revision, self.records)

    @contextlib.contextmanager
    def transaction(self, expect_revision: int | None = None) -> Iterator[Any]:
        raise NotImplementedError("a host's view is read-only; agents write via report()")
        yield  # pragma: no cover

    def report(self, host: str, status: dict[str, Any]) -> None:
        from portwall.store import agent_record_id

        rid = agent_record_id(host)
        stamp = now()
        rec = Record("agent", rid, "admin", {**status, "host": host, **self.stats()},
                     int(time.time() * 1000), stamp, stamp)
        self.gw.txn([], [ec.op_put(f"{self.prefix}/m/r/agent/{rid}", encode(rec))])

    def close(self) -> None:
        if self.watch is not None:
            self.watch.stop()
        self.gw.close()
