"""Security groups: the default group, automatic rules, reserved names, deletion (§6)."""

from __future__ import annotations

from typing import Any

import pytest

from portwall.model import Model, PortwallError, stable_ids


def fails(fn: Any, *args: Any, status: int, neutron_type: str, field: str | None,
          **kwargs: Any) -> PortwallError:
    """Call ``fn``; it must raise this typed error naming this field."""
    with pytest.raises(PortwallError) as info:
        fn(*args, **kwargs)
    err = info.value
    assert (err.status, err.neutron_type, err.field) == (status, neutron_type, field), str(err)
    return err


@pytest.fixture
def model() -> Model:
    m = Model(stable_ids("t"))
    m.create_network({"name": "net"})
    m.create_subnet({"name": "sub", "network_id": "net", "cidr": "10.0.0.0/24"})
    return m


def summary(rules: Any) -> set[tuple[object, ...]]:
    return {(r.direction, r.ethertype, r.protocol, r.port_range_min, r.port_range_max,
             r.remote_ip_prefix, r.remote_group_id) for r in rules}


def test_new_group_gets_egress_any_v4_and_v6(model: Model) -> None:
    sg = model.create_security_group({"name": "web", "description": "front"})
    assert summary(sg.security_group_rules) == {
        ("egress", "IPv4", None, None, None, None, None),
        ("egress", "IPv6", None, None, None, None, None),
    }
    assert all(r.security_group_id == sg.id for r in sg.security_group_rules)
    assert sg.stateful is True


def test_default_group_allows_ingress_from_itself(model: Model) -> None:
    sg = model.ensure_default_group("alice")
    assert sg.name == "default" and sg.project_id == "alice"
    assert summary(sg.security_group_rules) == {
        ("egress", "IPv4", None, None, None, None, None),
        ("egress", "IPv6", None, None, None, None, None),
        ("ingress", "IPv4", None, None, None, None, sg.id),
        ("ingress", "IPv6", None, None, None, None, sg.id),
    }
    assert model.ensure_default_group("alice") is sg  # one per project


def test_creating_any_group_creates_the_default(model: Model) -> None:
    assert model.default_group("bob") is None
    model.create_security_group({"name": "web", "project_id": "bob"})
    assert model.default_group("bob") is not None


@pytest.mark.parametrize("existing", [True, False])
def test_user_may_not_create_another_default(model: Model, existing: bool) -> None:
    if existing:
        model.ensure_default_group("default")
    fails(model.create_security_group, {"name": "default"}, status=409,
          neutron_type="SecurityGroupDefaultAlreadyExists", field="name")
    assert [g.name for g in model.security_groups.values()].count("default") == int(existing)


def test_rename_to_default_is_409(model: Model) -> None:
    sg = model.create_security_group({"name": "web"})
    fails(model.update_security_group, sg.id, {"name": "default"}, status=409,
          neutron_type="SecurityGroupDefaultAlreadyExists", field="name")


def test_renaming_the_default_group_is_409(model: Model) -> None:
    sg = model.ensure_default_group("default")
    fails(model.update_security_group, sg.id, {"name": "mine"}, status=409,
          neutron_type="SecurityGroupCannotUpdateDefault", field="name")
    assert model.update_security_group(sg.id, {"description": "ok"}).description == "ok"


def test_deleting_the_default_group_is_409(model: Model) -> None:
    sg = model.ensure_default_group("default")
    fails(model.delete_security_group, sg.id, status=409,
          neutron_type="SecurityGroupCannotRemoveDefault", field=None)


def test_delete_group_in_use_is_409(model: Model) -> None:
    sg = model.create_security_group({"name": "web"})
    p = model.create_port({"network_id": "net", "security_groups": ["web"]})
    err = fails(model.delete_security_group, "web", status=409,
                neutron_type="SecurityGroupInUse", field=None)
    assert sg.id in err.message
    model.update_port(p.id, {"security_groups": []})
    model.delete_security_group("web")
    assert sg.id not in model.security_groups


def test_delete_group_removes_rules_that_reference_it(model: Model) -> None:
    web = model.create_security_group({"name": "web"})
    db = model.create_security_group({"name": "db"})
    model.create_security_group_rule({"security_group_id": db.id, "direction": "ingress",
                                      "remote_group_id": "web"})
    model.delete_security_group(web.id)
    assert all(r.remote_group_id != web.id for r in db.security_group_rules)


def test_unknown_group_field_is_400(model: Model) -> None:
    fails(model.create_security_group, {"name": "x", "colour": "red"}, status=400,
          neutron_type="HTTPBadRequest", field="colour")


def test_read_only_group_field_on_update_is_400(model: Model) -> None:
    sg = model.create_security_group({"name": "web"})
    fails(model.update_security_group, sg.id, {"project_id": "x"}, status=400,
          neutron_type="HTTPBadRequest", field="project_id")


def test_stateful_change_while_in_use_is_409(model: Model) -> None:
    sg = model.create_security_group({"name": "web"})
    model.create_port({"network_id": "net", "security_groups": ["web"]})
    fails(model.update_security_group, sg.id, {"stateful": False}, status=409,
          neutron_type="SecurityGroupInUse", field="stateful")
    other = model.create_security_group({"name": "idle"})
    assert model.update_security_group(other.id, {"stateful": False}).stateful is False


def test_group_with_bad_rule_is_not_created(model: Model) -> None:
    err = fails(model.create_security_group,
                {"name": "web", "security_group_rules": [
                    {"direction": "ingress", "protocol": "tcp", "port_range_min": 80,
                     "port_range_max": 80},
                    {"direction": "ingress", "protocol": "tcp", "port_range_min": 0,
                     "port_range_max": 80}]},
                status=400, neutron_type="SecurityGroupInvalidPortValue",
                field="port_range_min")
    assert err.resource == "security_group_rules[1]"
    assert all(g.name != "web" for g in model.security_groups.values())


def test_group_with_explicit_rules_gets_no_automatic_egress(model: Model) -> None:
    sg = model.create_security_group({"name": "web", "security_group_rules": [
        {"direction": "ingress", "protocol": "tcp", "port_range_min": 80, "port_range_max": 80}]})
    assert summary(sg.security_group_rules) == {("ingress", "IPv4", "tcp", 80, 80, None, None)}


def test_group_names_may_repeat_but_then_need_ids(model: Model) -> None:
    a = model.create_security_group({"name": "web"})
    model.create_security_group({"name": "web"})
    fails(model.get, "security_group", "web", status=409, neutron_type="Conflict", field=None)
    assert model.get("security_group", a.id) is a


def test_delete_unknown_rule_is_404(model: Model) -> None:
    fails(model.delete_security_group_rule, "nope", status=404,
          neutron_type="SecurityGroupRuleNotFound", field=None)
