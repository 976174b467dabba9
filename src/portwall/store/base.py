"""The store interface: what the API server and the agent need from a database.

Resources are JSON documents keyed by (kind, id), each with its project and Neutron's
per-resource ``revision_number``. Every committed transaction gets the next store-wide
revision; :meth:`Store.changes` returns what changed after a revision, which is the feed
agents follow. SQL (SQLite, PostgreSQL) implements it here; a distributed store (etcd,
whose revisions are exactly this) implements the same three methods without touching the
API or the agent.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass
class Record:
    """One stored resource: its document plus the bookkeeping Neutron shows."""

    kind: str
    id: str
    project_id: str
    body: dict[str, Any]
    revision_number: int = 0
    created_at: str = ""
    updated_at: str = ""


@dataclass
class Change:
    """A resource changed at ``revision``; ``record`` is its current state (None: deleted)."""

    revision: int
    kind: str
    id: str
    record: Record | None


@dataclass
class ChangeSet:
    """The feed between two revisions: latest state of each resource that changed.

    ``reset`` means the store no longer has the history back to ``since`` (compaction) and
    the follower must resync from :meth:`Store.list` instead."""

    since: int
    head: int
    changes: list[Change] = field(default_factory=list)
    reset: bool = False


class StaleRevision(Exception):
    """The store moved past the revision a writer based its change on: resync, retry."""


class Txn(Protocol):
    """Reads and writes inside one transaction: all of them commit together or none."""

    #: the store revision this transaction commits as
    revision: int

    def get(self, kind: str, rid: str) -> Record | None: ...

    def put(self, record: Record, prev: Record | object | None = ...) -> Record:
        """Insert or replace. ``prev``: the stored record as the caller knows it (None for
        a new one), valid only inside ``transaction(expect_revision=...)``."""
        ...

    def delete(self, kind: str, rid: str) -> None: ...


class Store(Protocol):
    """A database of resources with a revision-ordered change feed."""

    url: str

    def head(self) -> int:
        """The revision of the last committed transaction (0 when empty)."""
        ...

    def get(self, kind: str, rid: str) -> Record | None: ...

    def list(self, kind: str | None = None) -> tuple[list[Record], int]:
        """Every record (of ``kind``) and the revision they are consistent with."""
        ...

    def changes(self, since_revision: int) -> ChangeSet:
        """What changed after ``since_revision``, up to the head."""
        ...

    def transaction(self, expect_revision: int | None = None) -> contextlib.AbstractContextManager[Txn]:
        """One atomic write. With ``expect_revision``, raises :class:`StaleRevision` when the
        head moved past it (another writer), so the caller can resync and retry."""
        ...

    def close(self) -> None: ...


@contextlib.contextmanager
def closing(store: Store) -> Iterator[Store]:
    try:
        yield store
    finally:
        store.close()
