"""The Store interface on SQLite, PostgreSQL and etcd: atomic transactions, one revision per
transaction, the change feed (latest state, deletions, compaction), stale writers."""

from __future__ import annotations

import threading

import pytest

from portwall.store import Record, StaleRevision, open_store
from portwall.store.cache import ModelCache


def test_transactions_and_feed(store_url: str) -> None:
    """Revisions are compared, not counted: etcd's are cluster-wide (see docs/etcd.md)."""
    s = open_store(store_url)
    try:
        assert s.head() == 0
        with s.transaction() as t:
            t.put(Record("network", "n1", "p", {"name": "a"}))
            t.put(Record("network", "n2", "p", {"name": "b"}))
        r1 = s.head()
        assert r1 > 0
        with pytest.raises(RuntimeError), s.transaction() as t:
            t.put(Record("network", "n3", "p", {}))
            raise RuntimeError("request failed")
        assert s.head() == r1 and s.get("network", "n3") is None  # nothing of it stayed
        with s.transaction() as t:
            t.put(Record("network", "n1", "p", {"name": "a2"}))
            t.delete("network", "n2")
        cs = s.changes(r1)
        r2 = cs.head
        assert r2 > r1 and s.head() == r2
        by_id = {c.id: c.record for c in cs.changes}
        assert by_id["n2"] is None
        n1 = by_id["n1"]
        assert n1 is not None and n1.body == {"name": "a2"} and n1.revision_number == 2
        assert [c.id for c in s.changes(0).changes] == ["n1", "n2"]  # latest state each
        with pytest.raises(StaleRevision), s.transaction(expect_revision=r1) as t:
            t.put(Record("network", "n4", "p", {}))
        assert s.get("network", "n4") is None
        s.compact(r2)  # type: ignore[attr-defined]
        assert s.changes(r1).reset and not s.changes(r2).reset
        records, head = s.list("network")
        assert [r.id for r in records] == ["n1"] and head >= r2
    finally:
        s.close()


def test_concurrent_writers_get_distinct_revisions(store_url: str) -> None:
    s = open_store(store_url)
    errors: list[BaseException] = []

    def write(k: int) -> None:
        try:
            for i in range(10):
                with s.transaction() as t:
                    t.put(Record("network", f"w{k}-{i}", "p", {}))
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=write, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert not errors
        changes = s.changes(0).changes
        assert len(changes) == 40
        assert len({c.revision for c in changes}) == 40  # one revision per transaction
        assert s.head() == max(c.revision for c in changes)
    finally:
        s.close()


def test_two_caches_on_one_store_see_each_other(store_url: str) -> None:
    """Two server processes on one database: each one's writes reach the other, and a
    writer that is behind resyncs and retries instead of overwriting."""
    s1, s2 = open_store(store_url), open_store(store_url)
    try:
        a, b = ModelCache(s1), ModelCache(s2)
        net = a.mutate(lambda m: m.create_network({"name": "shared-db"}))
        b.mutate(lambda m: m.create_subnet({"network_id": net.id, "cidr": "10.0.0.0/24"}))
        p = a.mutate(lambda m: m.create_port({"network_id": net.id}))  # a is behind: resync
        assert p.fixed_ips[0].ip_address == "10.0.0.2"
        q = b.mutate(lambda m: m.create_port({"network_id": net.id}))
        assert q.fixed_ips[0].ip_address == "10.0.0.3"  # b saw a's port: no clash
        a.sync()
        assert set(a.model.ports) == set(b.model.ports) == {p.id, q.id}
    finally:
        s1.close()
        s2.close()
