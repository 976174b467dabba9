"""A Model kept in step with a :class:`Store` by following its change feed.

The API server changes resources through :meth:`ModelCache.mutate`: the operation runs on
the Model (Neutron's checks), what it changed is written in one store transaction, and on
any failure the Model is put back as the store has it -- a failed request changes nothing.
The agent only reads: :meth:`sync` applies the feed, replacing only the changed objects so
the incremental compiler redoes only their part. Every resource carries its store revision
(``Model.revision``), so after a reload -- all objects new -- the compiler still knows the
unchanged ones by (id, revision).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

from portwall.model import Model
from portwall.store import codec
from portwall.store.base import Record, StaleRevision, Store

T = TypeVar("T")

#: Record kinds that are not Model resources (the feed carries them; the Model ignores them).
OTHER_KINDS = ("agent",)


class ModelCache:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.lock = threading.RLock()
        self.model = Model()
        self.meta: dict[tuple[str, str], Record] = {}  # bookkeeping without the body
        self.revision = 0
        self.reload()

    def reload(self) -> None:
        """Rebuild the Model from the store (start-up, compaction, after a failed write)."""
        with self.lock:
            records, head = self.store.list()
            model, meta = Model(), {}
            by_kind: dict[str, list[Record]] = {}
            for r in records:
                by_kind.setdefault(r.kind, []).append(r)
            for kind in codec.KINDS:
                for r in by_kind.get(kind, []):
                    codec.put(model, kind, r.body, r.revision_number)
                    meta[(kind, r.id)] = _strip(r)
            for kind in OTHER_KINDS:
                for r in by_kind.get(kind, []):
                    meta[(kind, r.id)] = r
            self.model, self.meta, self.revision = model, meta, head

    def sync(self) -> list[tuple[str, str]]:
        """Apply what changed in the store since the last sync; returns those (kind, id)."""
        with self.lock:
            cs = self.store.changes(self.revision)
            if cs.reset:
                self.reload()
                return [k for k in self.meta]
            done: list[tuple[str, str]] = []
            # Resources that reference others are applied after them (a new port after its
            # network, group and subnet of the same transaction).
            order = {k: i for i, k in enumerate(codec.KINDS)}
            for ch in sorted(cs.changes, key=lambda c: (c.revision, order.get(c.kind, 99))):
                key = (ch.kind, ch.id)
                if ch.record is None:
                    if ch.kind in codec.KINDS:
                        codec.remove(self.model, ch.kind, ch.id)
                    self.meta.pop(key, None)
                else:
                    if ch.kind in codec.KINDS:
                        codec.put(self.model, ch.kind, ch.record.body,
                                  ch.record.revision_number)
                        self.meta[key] = _strip(ch.record)
                    else:
                        self.meta[key] = ch.record
                done.append(key)
            self.revision = cs.head
            return done

    def mutate(self, op: Callable[[Model], T],
               extra: Callable[[Any], list[Record]] | None = None) -> T:
        """Run ``op`` on the Model and commit what it changed in one transaction.

        ``extra`` may add records that are not Model resources (agents). On a concurrent
        writer (another process) the cache syncs and the operation runs again."""
        with self.lock:
            for attempt in range(5):
                self.sync()
                snap = codec.Snapshot(self.model)
                try:
                    result = op(self.model)
                    changed, deleted = snap.diff(self.model)
                    self._commit(changed, deleted, extra(result) if extra else [])
                    return result
                except StaleRevision:
                    self.reload()
                    if attempt == 4:
                        raise
                except BaseException:
                    if snap.diff(self.model) != ([], []):
                        self.reload()
                    raise
            raise AssertionError("unreachable")

    def write_records(self, records: list[Record],
                      deletes: tuple[tuple[str, str], ...] = ()) -> None:
        """Write records that are not Model resources (agent status)."""
        with self.lock:
            with self.store.transaction() as txn:
                for r in records:
                    txn.put(r)
                for kind, rid in deletes:
                    txn.delete(kind, rid)
            self.sync()

    def _commit(self, changed: list[tuple[str, str]], deleted: list[tuple[str, str]],
                extra: list[Record]) -> None:
        if not changed and not deleted and not extra:
            return
        m = self.model
        with self.store.transaction(expect_revision=self.revision) as txn:
            stored: list[Record] = []
            for kind, rid in changed:
                obj = codec.table(m, kind)[rid]
                stored.append(txn.put(Record(kind, rid, obj.project_id,
                                             codec.to_body(m, kind, obj)),
                                      self.meta.get((kind, rid))))
            for kind, rid in deleted:
                txn.delete(kind, rid)
            stored += [txn.put(r) for r in extra]
            new_revision = txn.revision
        for r in stored:
            if r.kind in codec.KINDS:
                self.meta[(r.kind, r.id)] = _strip(r)
                m.set_revision(r.kind, r.id, r.revision_number)
            else:
                self.meta[(r.kind, r.id)] = r
        for key in deleted:
            self.meta.pop(key, None)
        self.revision = new_revision


def _strip(r: Record) -> Record:
    return Record(r.kind, r.id, r.project_id, {}, r.revision_number, r.created_at,
                  r.updated_at)
