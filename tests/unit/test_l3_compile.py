"""Routers in the IR: incremental compile equals a fresh one, unchanged routers are reused,
and the iptables L3 rendering follows neutron-semantics sections 4 and 5."""

from __future__ import annotations

from pathlib import Path

from portwall.backends.iptables.l3 import L3Renderer, RouterCt, render_router, stale_connections
from portwall.ir.compile import PlanCompiler, compile_plan
from portwall.ir.l3 import compile_routers
from portwall.topology import load_topology

SEED = Path(__file__).resolve().parents[2] / "examples" / "seed002-router-fip.yaml"


def test_incremental_router_compile_matches_fresh_and_reuses() -> None:
    m = load_topology(SEED).model
    comp = PlanCompiler()
    first = comp.compile(m).routers
    again = comp.compile(m).routers
    assert all(again[r] is first[r] for r in first)  # nothing changed: same objects
    fip = next(f for f in m.floating_ips.values() if f.floating_ip_address == "203.0.113.12")
    m.update_floatingip(fip.id, {"port_id": None})
    after = comp.compile(m).routers
    assert after == compile_routers(m) and after != first
    pol = m.get("firewall_policy", "db-in")
    pol.firewall_rules.pop(0)
    fw = comp.compile(m).routers
    assert fw == compile_routers(m) and fw != after
    (r,) = fw.values()
    assert next(x.origin.resource_name for x in r.firewalls[0].ingress or ()) == "db-from-app"


def test_render_nat_and_fwaas_layout() -> None:
    plan = compile_plan(load_topology(SEED).model)
    (r,) = plan.routers.values()
    rs = render_router(r)
    v4, v6 = rs.restore_input(4), rs.restore_input(6)
    assert "-j SNAT --to-source 203.0.113.2" in v4  # enable_snat
    assert "-d 203.0.113.11/32 -m comment" in v4 and "-j DNAT --to-destination 10.2.0.11" in v4
    assert "-s 10.2.0.11/32 -m comment" in v4 and "-j SNAT --to-source 203.0.113.11" in v4
    assert "-j REDIRECT --to-ports 9697" in v4 and "-i qr+" in v4
    assert "! --ctstate DNAT" in v4  # no SNAT east-west
    assert "REJECT --reject-with icmp-port-unreachable" in v4
    assert "*nat" not in v6 and "icmp6" not in v6  # no NAT, no v6 reject rule here
    fi = [ln for ln in v4.splitlines() if ln.startswith("-A pw-fi")]
    assert "INVALID" in fi[0] and "ESTABLISHED" in fi[1] and fi[-1].endswith("-j DROP")
    # rule order: the client deny comes before the app allow
    names = [ln for ln in fi if "fwr-" in ln]
    assert "10.2.0.100/32" in names[0] and "-j DROP" in names[0]
    assert "10.2.0.0/24" in names[1] and "-j RETURN" in names[1]


def test_no_snat_when_disabled() -> None:
    text = SEED.read_text().replace("enable_snat: true", "enable_snat: false")
    from portwall.topology import loads_topology

    plan = compile_plan(loads_topology(text).model)
    (r,) = plan.routers.values()
    assert r.snat is None and "--to-source 203.0.113.2" not in render_router(r).restore_input(4)


def test_renderer_skips_unchanged_routers() -> None:
    m = load_topology(SEED).model
    comp, ren = PlanCompiler(), L3Renderer()
    a = ren.render(comp.compile(m).routers.values())
    b = ren.render(comp.compile(m).routers.values())
    assert all(a[k] is b[k] for k in a)


def test_stale_connections_after_fip_move() -> None:
    m = load_topology(SEED).model
    old = compile_plan(m).routers
    fip = next(f for f in m.floating_ips.values() if f.floating_ip_address == "203.0.113.11")
    m.update_floatingip(fip.id, {"port_id": None})
    new = compile_plan(m).routers
    rid = next(iter(new))
    entries = [
        RouterCt(4, 6, "198.51.100.10", "203.0.113.11", 1, 80, "10.2.0.11", "198.51.100.10"),
        RouterCt(4, 6, "198.51.100.10", "203.0.113.12", 2, 80, "10.2.0.12", "198.51.100.10"),
        RouterCt(4, 6, "10.2.0.11", "198.51.100.10", 3, 7, "198.51.100.10", "203.0.113.11"),
        RouterCt(4, 6, "10.2.0.100", "198.51.100.10", 4, 7, "198.51.100.10", "203.0.113.2"),
    ]
    stale = stale_connections(old[rid], new[rid], entries, lambda e: True)
    assert [e.sport for e in stale] == [1, 3]
