"""The SQL store (SQLite by default, PostgreSQL too) behind :class:`portwall.store.Store`.

One row per resource plus a change log; a single ``pw_meta`` row holds the head revision
and doubles as the write lock (``SELECT ... FOR UPDATE`` on PostgreSQL, ``BEGIN
IMMEDIATE`` on SQLite), so concurrent writers -- threads or several server processes --
commit one after another and every transaction gets its own revision.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine

from portwall.store.base import Change, ChangeSet, Record, StaleRevision
from portwall.store.schema import changes as t_changes
from portwall.store.schema import meta as t_meta
from portwall.store.schema import resources as t_res

#: ``put(prev=UNKNOWN)``: the caller does not know what is stored; read it.
UNKNOWN = object()
MIGRATIONS = str(Path(__file__).parent / "migrations")


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _sqlite_engine(url: str) -> Engine:
    path = url.split("///", 1)[1] if "///" in url else ""
    if path and path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

    @event.listens_for(engine, "connect")
    def _connect(dbapi: Any, _rec: Any) -> None:
        dbapi.isolation_level = None  # we emit BEGIN ourselves (below)
        cur = dbapi.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        # Writers take the write lock at BEGIN, so two writers never both read the same
        # head revision; readers use a plain (WAL snapshot) transaction.
        write = conn.get_execution_options().get("pw_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    return engine


def _row_record(row: Any) -> Record:
    return Record(kind=row.kind, id=row.id, project_id=row.project_id,
                  body=json.loads(row.body), revision_number=row.revision_number,
                  created_at=row.created_at, updated_at=row.updated_at)


class _SqlTxn:
    """The writes of one transaction; committed by :meth:`SqlStore.transaction`."""

    def __init__(self, conn: Connection, revision: int) -> None:
        self.conn, self.revision = conn, revision
        self.touched: list[tuple[str, str]] = []

    def get(self, kind: str, rid: str) -> Record | None:
        row = self.conn.execute(
            sa.select(t_res).where(t_res.c.kind == kind, t_res.c.id == rid)).first()
        return None if row is None else _row_record(row)

    def put(self, record: Record, prev: Record | object | None = UNKNOWN) -> Record:
        """Insert or replace; bumps the record's revision_number and timestamps.

        ``prev`` is the stored record as the caller knows it (None: new), which spares a
        read when the caller's view is current (it wrote with ``expect_revision``)."""
        old = self.get(record.kind, record.id) if prev is UNKNOWN else prev
        assert old is None or isinstance(old, Record)
        stamp = now()
        record.revision_number = (old.revision_number + 1) if old else 1
        record.created_at = old.created_at if old else (record.created_at or stamp)
        record.updated_at = stamp
        values = {"project_id": record.project_id, "revision_number": record.revision_number,
                  "created_at": record.created_at, "updated_at": record.updated_at,
                  "body": json.dumps(record.body, separators=(",", ":"))}
        if old is None:
            self.conn.execute(t_res.insert().values(kind=record.kind, id=record.id, **values))
        else:
            self.conn.execute(t_res.update().where(
                t_res.c.kind == record.kind, t_res.c.id == record.id).values(**values))
        self.touched.append((record.kind, record.id))
        return record

    def delete(self, kind: str, rid: str) -> None:
        self.conn.execute(t_res.delete().where(t_res.c.kind == kind, t_res.c.id == rid))
        self.touched.append((kind, rid))


class SqlStore:
    """:class:`portwall.store.Store` on SQLAlchemy; the schema is migrated on open."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.sqlite = url.startswith("sqlite")
        self.engine = _sqlite_engine(url) if self.sqlite else sa.create_engine(
            url, pool_size=10, max_overflow=20, pool_pre_ping=True)
        self.migrate()

    def migrate(self) -> None:
        """Bring the schema to the newest Alembic revision (a no-op when it is)."""
        cfg = Config()
        cfg.set_main_option("script_location", MIGRATIONS)
        with self.engine.connect().execution_options(pw_write=True) as conn:
            cfg.attributes["connection"] = conn
            if self.sqlite:
                with conn.begin():
                    command.upgrade(cfg, "head")
            else:
                command.upgrade(cfg, "head")
                conn.commit()

    # ------------------------------------------------------------------ reads
    def head(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(t_meta.c.revision)).scalar_one())

    def get(self, kind: str, rid: str) -> Record | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(t_res).where(t_res.c.kind == kind, t_res.c.id == rid)).first()
            return None if row is None else _row_record(row)

    def list(self, kind: str | None = None) -> tuple[list[Record], int]:
        with self.engine.connect() as conn, conn.begin():
            head = int(conn.execute(sa.select(t_meta.c.revision)).scalar_one())
            q = sa.select(t_res)
            if kind is not None:
                q = q.where(t_res.c.kind == kind)
            return [_row_record(r) for r in conn.execute(q)], head

    def changes(self, since_revision: int) -> ChangeSet:
        with self.engine.connect() as conn, conn.begin():
            head, compacted = conn.execute(
                sa.select(t_meta.c.revision, t_meta.c.compacted)).one()
            if since_revision < compacted:
                return ChangeSet(since_revision, int(head), reset=True)
            if since_revision >= head:
                return ChangeSet(since_revision, int(head))
            last = (sa.select(t_changes.c.kind, t_changes.c.id,
                              sa.func.max(t_changes.c.revision).label("rev"))
                    .where(t_changes.c.revision > since_revision)
                    .group_by(t_changes.c.kind, t_changes.c.id).subquery())
            q = (sa.select(last.c.kind, last.c.id, last.c.rev, t_res.c.project_id,
                           t_res.c.revision_number, t_res.c.created_at, t_res.c.updated_at,
                           t_res.c.body)
                 .select_from(last.outerjoin(t_res, sa.and_(t_res.c.kind == last.c.kind,
                                                            t_res.c.id == last.c.id)))
                 .order_by(last.c.rev))
            out = [Change(int(r.rev), r.kind, r.id,
                          None if r.body is None else _row_record(r)) for r in conn.execute(q)]
            return ChangeSet(since_revision, int(head), out)

    # ----------------------------------------------------------------- writes
    @contextlib.contextmanager
    def transaction(self, expect_revision: int | None = None) -> Iterator[_SqlTxn]:
        with self.engine.connect().execution_options(pw_write=True) as conn, conn.begin():
            q = sa.select(t_meta.c.revision).where(t_meta.c.id == 1)
            head = int(conn.execute(q if self.sqlite else q.with_for_update()).scalar_one())
            if expect_revision is not None and head != expect_revision:
                raise StaleRevision(f"store is at revision {head}, not {expect_revision}")
            txn = _SqlTxn(conn, head + 1)
            yield txn
            if txn.touched:
                conn.execute(t_changes.insert(), [
                    {"revision": txn.revision, "kind": k, "id": i} for k, i in txn.touched])
                conn.execute(t_meta.update().where(t_meta.c.id == 1).values(
                    revision=txn.revision))

    def compact(self, keep_after: int) -> None:
        """Forget the change log up to ``keep_after``; followers behind it resync."""
        with self.engine.connect().execution_options(pw_write=True) as conn, conn.begin():
            conn.execute(t_changes.delete().where(t_changes.c.revision <= keep_after))
            conn.execute(t_meta.update().where(t_meta.c.id == 1).values(compacted=keep_after))

    def close(self) -> None:
        self.engine.dispose()
