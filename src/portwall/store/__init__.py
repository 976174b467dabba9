"""Where resources live: a :class:`Store` (SQL today) with a revision-ordered change feed."""

from __future__ import annotations

import uuid

from portwall.store.base import Change, ChangeSet, Record, StaleRevision, Store, Txn

DEFAULT_URL = "sqlite:///portwall.db"
_AGENT_NS = uuid.UUID("0b7c8e0c-55a4-4f7e-9d1a-6167656e7473")


def agent_record_id(host: str) -> str:
    """The id of a host's agent record (stable, so a restarted agent updates its own)."""
    return str(uuid.uuid5(_AGENT_NS, host))


def open_store(url: str, host: str | None = None) -> Store:
    """A store for ``url``: ``sqlite:///path``, ``postgresql://...`` (psycopg 3),
    ``etcd://h:p[,h:p...][/prefix]``. With ``host`` (an agent), etcd gives that host's
    view only (its derived keys); SQL stores ignore it."""
    if url.startswith("etcd://"):
        from portwall.store.etcd import EtcdHostStore, EtcdStore

        return EtcdHostStore(url, host) if host else EtcdStore(url)
    if url.startswith("sqlite"):
        from portwall.store.sql import SqlStore

        return SqlStore(url)
    if url.startswith(("postgresql", "postgres")):
        from portwall.store.sql import SqlStore

        if url.startswith("postgres://"):
            url = "postgresql://" + url[len("postgres://"):]
        if url.startswith("postgresql://"):
            url = "postgresql+psycopg://" + url[len("postgresql://"):]
        return SqlStore(url)
    raise ValueError(f"unsupported store URL '{url}' (use sqlite:///PATH, postgresql://... or etcd://HOST:PORT)")


__all__ = ["DEFAULT_URL", "Change", "ChangeSet", "Record", "StaleRevision", "Store", "Txn",
           "agent_record_id", "open_store"]
