"""The etcd store's own guarantees: a host's view follows only its derived keys, survives
compaction by reloading (ChangeSet.reset), and a guarded write that lost the race to
another server commits nothing (not even derived keys)."""

from __future__ import annotations

import uuid

import pytest

from portwall.store import StaleRevision, etcdtemp, open_store
from portwall.store import etcd_client as ec
from portwall.store.cache import ModelCache
from portwall.store.etcd import EtcdHostStore, EtcdStore

pytestmark = [pytest.mark.skipif(bool(etcdtemp.unavailable()), reason="etcd not installed")]


@pytest.fixture
def url(etcd_cluster: etcdtemp.TempEtcd) -> str:
    return etcd_cluster.url("pwt-" + uuid.uuid4().hex[:12])


def _port(cache: ModelCache, net: str, host: str, group: str) -> str:
    return cache.mutate(lambda m: m.create_port({"network_id": net, "binding:host_id": host,
                                                 "security_groups": [group]})).id


def test_host_view_follows_its_keys_and_survives_compaction(url: str) -> None:
    store = open_store(url)
    assert isinstance(store, EtcdStore)
    writer = ModelCache(store)
    net = writer.mutate(lambda m: m.create_network({"name": "n"})).id
    writer.mutate(lambda m: m.create_subnet({"network_id": net, "cidr": "10.0.0.0/24"}))
    g = writer.mutate(lambda m: m.create_security_group({"name": "g"})).id
    view = open_store(url, host="a")
    assert isinstance(view, EtcdHostStore)
    try:
        reader = ModelCache(view)
        pa = _port(writer, net, "a", g)
        pb = _port(writer, net, "b", g)  # b's port: no remote-group rule names g
        ec.wait_until(lambda: view.head() >= store.last_commit - 1, 10)
        reader.sync()
        assert pa in reader.model.ports and pb not in reader.model.ports
        # a rule on g naming g: b's port becomes a member a's host must know
        writer.mutate(lambda m: m.create_security_group_rule({
            "security_group_id": g, "direction": "ingress", "remote_group_id": g}))
        assert ec.wait_until(lambda: view.head() >= store.last_commit, 10)
        reader.sync()
        assert pb in reader.model.ports
        assert reader.model.ports[pb].binding_host_id == "b"

        # the view's watch misses history that is then compacted: it reloads
        old = view.head()
        view.watch.stop()  # type: ignore[union-attr]
        pc = _port(writer, net, "a", g)
        _port(writer, net, "a", g)
        store.compact(store.last_commit)  # pc's revision is history now
        view.watch = ec.Watch(view.gw, view.hp, old, view._on_events, view._on_compacted,
                              view.feed.state)
        assert ec.wait_until(lambda: view.loads == 2 and view.head() >= store.last_commit, 10)
        assert view.changes(old).reset
        assert pc in {k for _, k in reader.sync()}  # reset: everything, pc among it
        assert pc in reader.model.ports
    finally:
        view.close()
        store.close()


def test_a_lost_race_commits_nothing(url: str) -> None:
    s1, s2 = open_store(url), open_store(url)
    assert isinstance(s1, EtcdStore) and isinstance(s2, EtcdStore)
    try:
        a, b = ModelCache(s1), ModelCache(s2)
        net = a.mutate(lambda m: m.create_network({"name": "n"})).id
        a.mutate(lambda m: m.create_subnet({"network_id": net, "cidr": "10.0.0.0/24"}))
        g = a.mutate(lambda m: m.create_security_group({"name": "g"})).id
        b.sync()
        based = b.revision
        _port(a, net, "h", g)  # a moves the head
        hosts_before, _ = s1.gw.range(s1.prefix + "/h/")
        with pytest.raises(StaleRevision), s2.transaction(expect_revision=based) as t:
            from portwall.store import Record

            t.put(Record("network", "late", "p", {"id": "late", "name": "late"}))
        assert s1.get("network", "late") is None
        hosts_after, _ = s1.gw.range(s1.prefix + "/h/")
        assert [kv.key for kv in hosts_after] == [kv.key for kv in hosts_before]
        # b's cache retries on its own: its port lands once, with the next free address
        q = b.mutate(lambda m: m.create_port({"network_id": net, "binding:host_id": "h",
                                              "security_groups": [g]}))
        assert q.fixed_ips[0].ip_address == "10.0.0.3"
        view = open_store(url, host="h")
        try:
            assert len(view.list("port")[0]) == 2
        finally:
            view.close()
    finally:
        s1.close()
        s2.close()
