"""FWaaS v2 policy actions: ``PUT /v2.0/fwaas/firewall_policies/{id}/insert_rule`` and
``/remove_rule``, with neutron-fwaas' order rules and errors, on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from apihelp import Api
from serverproc import TOKEN, ServerProcess

BASE = "/v2.0/fwaas/firewall_policies"


def _rules(a: Api, n: int) -> list[str]:
    return [a.make("fwaas/firewall_rules", "firewall_rule", name=f"r{i}", protocol="tcp",
                   destination_port=str(1000 + i), action="allow")["id"] for i in range(n)]


def _policy(a: Api, pid: str) -> dict[str, Any]:
    r = a.get(f"{BASE}/{pid}")
    assert r.status_code == 200, r.text
    return r.json()["firewall_policy"]  # type: ignore[no-any-return]


def _err(resp: Any, status: int, kind: str) -> None:
    assert resp.status_code == status, resp.text
    assert resp.json()["NeutronError"]["type"] == kind, resp.text


def test_insert_before_after_and_top(api: Api) -> None:
    a = api.as_("tok-a")
    r0, r1, r2, r3 = _rules(a, 4)
    pol = a.make("fwaas/firewall_policies", "firewall_policy", name="p",
                 firewall_rules=[r0])
    rev0 = _policy(a, pol["id"])["revision_number"]
    resp = a.put(f"{BASE}/{pol['id']}/insert_rule",
                 {"firewall_rule_id": r1, "insert_after": r0})
    assert resp.status_code == 200, resp.text
    assert resp.json()["firewall_rules"] == [r0, r1]  # the policy itself, unwrapped
    a.put(f"{BASE}/{pol['id']}/insert_rule", {"firewall_rule_id": r2, "insert_before": r1})
    assert _policy(a, pol["id"])["firewall_rules"] == [r0, r2, r1]
    # neither given: at the top; both given: insert_before wins
    a.put(f"{BASE}/{pol['id']}/insert_rule", {"firewall_rule_id": r3})
    assert _policy(a, pol["id"])["firewall_rules"] == [r3, r0, r2, r1]
    a.put(f"{BASE}/{pol['id']}/remove_rule", {"firewall_rule_id": r2})
    a.put(f"{BASE}/{pol['id']}/insert_rule",
          {"firewall_rule_id": r2, "insert_before": r3, "insert_after": r1})
    got = _policy(a, pol["id"])
    assert got["firewall_rules"] == [r2, r3, r0, r1]
    assert got["revision_number"] > rev0
    resp = a.put(f"{BASE}/{pol['id']}/remove_rule", {"firewall_rule_id": r0})
    assert resp.status_code == 200 and resp.json()["firewall_rules"] == [r2, r3, r1]
    assert a.get(f"/v2.0/fwaas/firewall_rules/{r0}").status_code == 200  # the rule stays


def test_insert_and_remove_errors(api: Api) -> None:
    a = api.as_("tok-a")
    r0, r1, r2 = _rules(a, 3)
    pol = a.make("fwaas/firewall_policies", "firewall_policy", firewall_rules=[r0])
    url = f"{BASE}/{pol['id']}"
    before = _policy(a, pol["id"])
    _err(a.put(f"{url}/insert_rule", {"firewall_rule_id": r0}), 409,
         "FirewallRuleAlreadyAssociated")
    _err(a.put(f"{url}/insert_rule", {}), 400, "FirewallRuleInfoMissing")
    _err(a.put(f"{url}/remove_rule", {"insert_before": r0}), 400, "HTTPBadRequest")
    _err(a.put(f"{url}/insert_rule", {"firewall_rule_id": "nope"}), 404,
         "FirewallRuleNotFound")
    _err(a.put(f"{url}/insert_rule", {"firewall_rule_id": r1, "insert_after": "nope"}), 404,
         "FirewallRuleNotFound")
    _err(a.put(f"{url}/insert_rule", {"firewall_rule_id": r1, "insert_before": r2}), 400,
         "FirewallRuleNotAssociatedWithPolicy")
    _err(a.put(f"{url}/remove_rule", {"firewall_rule_id": r1}), 400,
         "FirewallRuleNotAssociatedWithPolicy")
    _err(a.put(f"{url}/remove_rule", {"firewall_rule_id": "nope"}), 404,
         "FirewallRuleNotFound")
    _err(a.put(f"{BASE}/nope/insert_rule", {"firewall_rule_id": r1}), 404,
         "FirewallPolicyNotFound")
    # a failed action changes nothing, not even the revision
    assert _policy(a, pol["id"]) == before
    # another project can neither change the policy nor use a rule it cannot see
    b = api.as_("tok-b")
    _err(b.put(f"{url}/insert_rule", {"firewall_rule_id": r1}), 404, "FirewallPolicyNotFound")
    (rb,) = _rules(b, 1)
    _err(a.put(f"{url}/insert_rule", {"firewall_rule_id": rb}), 404, "FirewallRuleNotFound")
    assert _policy(a, pol["id"]) == before


def test_if_match_on_actions(api: Api) -> None:
    a = api.as_("tok-a")
    r0, r1 = _rules(a, 2)
    pol = a.make("fwaas/firewall_policies", "firewall_policy", firewall_rules=[r0])
    rev = _policy(a, pol["id"])["revision_number"]
    resp = a.put(f"{BASE}/{pol['id']}/insert_rule", {"firewall_rule_id": r1},
                 headers={"If-Match": f"revision_number={rev + 5}"})
    assert resp.status_code == 412, resp.text
    resp = a.put(f"{BASE}/{pol['id']}/insert_rule", {"firewall_rule_id": r1},
                 headers={"If-Match": f"revision_number={rev}"})
    assert resp.status_code == 200, resp.text


def test_insert_and_remove_with_the_sdk(tmp_path: Path) -> None:
    """openstacksdk's ``insert_rule_into_policy`` / ``remove_rule_from_policy`` (it sends
    ``insert_before``/``insert_after`` as null when not given) against a real server."""
    sdk = pytest.importorskip("openstack")
    exc = pytest.importorskip("openstack.exceptions")
    srv = ServerProcess(f"sqlite:///{tmp_path}/pw.db").start(tmp_path)
    try:
        conn = sdk.connect(auth_type="admin_token",
                           auth={"endpoint": srv.url, "token": TOKEN},
                           network_endpoint_override=srv.url)
        net = conn.network
        r0, r1, r2 = (net.create_firewall_rule(name=f"sdk-r{i}", protocol="tcp",
                                               destination_port=str(2000 + i),
                                               action="allow") for i in range(3))
        pol = net.create_firewall_policy(name="sdk-pol", firewall_rules=[r0.id])
        got = net.insert_rule_into_policy(pol.id, r1.id, insert_after=r0.id)
        assert got.firewall_rules == [r0.id, r1.id]
        net.insert_rule_into_policy(pol.id, r2.id)  # at the top
        assert net.get_firewall_policy(pol.id).firewall_rules == [r2.id, r0.id, r1.id]
        got = net.remove_rule_from_policy(pol.id, r0.id)
        assert got.firewall_rules == [r2.id, r1.id]
        with pytest.raises(exc.HttpException) as e:
            net.remove_rule_from_policy(pol.id, r0.id)
        assert e.value.status_code == 400
        with pytest.raises(exc.HttpException) as e:
            net.insert_rule_into_policy(pol.id, r1.id)
        assert e.value.status_code == 409
        assert net.get_firewall_policy(pol.id).firewall_rules == [r2.id, r1.id]
    finally:
        srv.stop()
