"""The model split: storage (tables, journal, revisions) apart from the operations, and the
incremental compiler following the journal and store revisions."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from portwall.ir import compile as ir_compile
from portwall.ir.compile import PlanCompiler, compile_plan
from portwall.model import Model, stable_ids, storage
from portwall.store import open_store
from portwall.store.cache import ModelCache


def _small(m: Model, n: int = 5) -> tuple[str, list[str]]:
    net = m.create_network({"name": "n", "project_id": "p"})
    m.create_subnet({"network_id": net.id, "cidr": "10.0.0.0/24", "project_id": "p"})
    sg = m.create_security_group({"name": "web", "project_id": "p"})
    m.create_security_group_rule({"security_group_id": sg.id, "direction": "ingress",
                                  "remote_group_id": sg.id})
    ids = [m.create_port({"network_id": net.id, "name": f"p{i}", "project_id": "p",
                          "security_groups": [sg.id]}).id for i in range(n)]
    return sg.id, ids


def test_operation_modules_do_not_import_store() -> None:
    """No import cycle: each per-resource module imports without ``model.store`` (checked
    in a fresh interpreter, so nothing is already loaded)."""
    for mod in ("networks", "ports", "groups", "l3", "fwaas", "storage"):
        # portwall.model/__init__ imports store (the facade): load the module alone
        code = ("import importlib.util, sys, types\n"
                "pkg = types.ModuleType('portwall.model'); pkg.__path__ = "
                "[str(importlib.util.find_spec('portwall').submodule_search_locations[0])"
                " + '/model']\n"
                "sys.modules['portwall.model'] = pkg\n"
                f"importlib.import_module('portwall.model.{mod}')\n"
                "assert 'portwall.model.store' not in sys.modules\n")
        subprocess.run([sys.executable, "-c", code], check=True)
        # not even for type checking: the operations are typed against the storage
        src = Path(storage.__file__).with_name(f"{mod}.py").read_text()
        assert "model.store" not in src and "model import store" not in src, mod


def test_journal_records_writes_and_announced_changes() -> None:
    m = Model(stable_ids("j"))
    gid, ids = _small(m)
    at = m.cursor
    m.update_port(ids[0], {"name": "renamed"})
    m.create_security_group_rule({"security_group_id": gid, "direction": "egress",
                                  "protocol": "tcp"})
    m.ports[ids[1]] = m.ports[ids[1]].model_copy()  # a direct write is journaled too
    assert set(m.changes_since(at) or ()) == {("port", ids[0]), ("security_group", gid),
                                              ("port", ids[1])}
    m.delete_port(ids[2])
    assert (m.changes_since(at) or [])[-1] == ("port", ids[2])
    assert m.changes_since(m.cursor) == []


def test_journal_trims_and_readers_fall_back(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(storage, "JOURNAL_MAX", 4)
    m = Model(stable_ids("t"))
    _gid, ids = _small(m, 3)
    comp = PlanCompiler()
    comp.compile(m)
    start = m.cursor
    for i in range(12):
        m.update_port(ids[i % 3], {"name": f"x{i}"})
    assert m.changes_since(start) is None  # too far back: compare everything
    assert comp.compile(m) == compile_plan(m)


def test_revision_is_dropped_by_a_write() -> None:
    m = Model(stable_ids("r"))
    _gid, ids = _small(m, 1)
    m.set_revision("port", ids[0], 7)
    assert m.revision("port", ids[0]) == 7
    m.update_port(ids[0], {"name": "y"})
    assert m.revision("port", ids[0]) is None


def test_private_helpers_still_answer() -> None:
    """Older callers (and code merged from before the split) use these names."""
    m = Model(stable_ids("o"))
    _gid, ids = _small(m, 1)
    port = m.ports[ids[0]]
    assert m._table("port") is m.table("port")
    assert m.mac_owner(port.network_id, port.mac_address) == port.id
    with pytest.raises(Exception, match="already exists"):
        m._unique_id("port", port.id)


@pytest.fixture
def compiled(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    calls = {"n": 0, "rules": 0}
    steps, rule = ir_compile._port_steps, ir_compile.compile_rule

    def count(*a: Any, **k: Any) -> Any:
        calls["n"] += 1
        return steps(*a, **k)

    def count_rule(*a: Any, **k: Any) -> Any:
        calls["rules"] += 1
        return rule(*a, **k)

    monkeypatch.setattr(ir_compile, "_port_steps", count)
    monkeypatch.setattr(ir_compile, "compile_rule", count_rule)
    return calls


def test_reloaded_cache_compiles_only_what_changed(tmp_path: Path,
                                                   compiled: dict[str, int]) -> None:
    """A ModelCache reload (every object new) costs no port compile when the revisions are
    unchanged; a port changed in the store is compiled again, by its new revision."""
    url = f"sqlite:///{tmp_path}/s.db"
    writer = ModelCache(open_store(url))
    ids: list[str] = writer.mutate(lambda m: _small(m, 6)[1])
    reader = ModelCache(open_store(url))
    comp = PlanCompiler()
    first = comp.compile(reader.model)
    assert compiled["n"] == 6
    rules = compiled["rules"]
    assert rules > 0
    reader.reload()  # a new Model: new objects, same revisions
    assert comp.compile(reader.model) == first and compiled["n"] == 6
    assert compiled["rules"] == rules  # the group's rule sets are kept too
    writer.mutate(lambda m: m.update_port(ids[2], {"name": "moved"}))
    reader.reload()
    plan = comp.compile(reader.model)
    assert compiled["n"] == 7 and plan.port(ids[2]).name == "moved"
    writer.mutate(lambda m: m.update_port(ids[3], {"name": "fed"}))
    reader.sync()  # the feed: the journal names the one port
    plan = comp.compile(reader.model)
    assert compiled["n"] == 8
    assert plan == compile_plan(reader.model)
