"""Kernel-free: which host each VM of a multi-host sandbox lands on, and the ``host:`` key."""

from __future__ import annotations

from pathlib import Path

import pytest

from portwall.ir import compile_plan
from portwall.lab.multihost import MultiSandbox, host_names, is_multihost
from portwall.lab.state import HostState, LabError, SandboxState, VMState
from portwall.topology import TopologyError, load_topology, loads_topology

SEED001 = Path(__file__).resolve().parents[2] / "examples" / "seed001-vip-nat-fixed.yaml"

SMALL = """
project: p
networks:
  - name: n
    subnets: [{name: s, cidr: 10.9.0.0/24}]
ports:
  - {name: a-port, network_id: n, fixed_ips: [10.9.0.11]}
  - {name: b-port, network_id: n, fixed_ips: [10.9.0.12]BIND}
  - {name: c-port, network_id: n, fixed_ips: [10.9.0.13]}
lab:
  vms:
    a: {ports: [a-port]HOST}
    b: {ports: [b-port]}
    c: {ports: [c-port]}
"""


def small(host: str = "", bind: str = "") -> str:
    return SMALL.replace("HOST", f", host: {host}" if host else "").replace(
        "BIND", f", 'binding:host_id': {bind}" if bind else "")


def box_for(names: list[str], vms: dict[str, VMState] | None = None) -> MultiSandbox:
    hosts = {n: HostState(name=n, netns=f"pwh-x-{i}", underlay_ip=f"198.18.0.{i}")
             for i, n in enumerate(names, 1)}
    return MultiSandbox(SandboxState(name="t", id="x", topology="t", host_netns="pwh-x-1",
                                     hosts=hosts, vms=vms or {}))


def test_round_robin_and_bindings() -> None:
    topo = load_topology(SEED001)
    assert host_names(topo, 3) == ["host1", "host2", "host3"]
    assert is_multihost(topo, 3) and not is_multihost(topo, 0) and not is_multihost(topo, 1)
    box = box_for(["host1", "host2", "host3"])
    want = box._desired(topo, compile_plan(topo.model))
    placed = [vm.host for vm in want.values()]
    assert placed == ["host1", "host2", "host3"] * 2 + ["host1", "host2"]
    for vm in want.values():
        for p in vm.ports:
            assert topo.model.ports[p.id].binding_host_id == vm.host
    # each host's plan holds exactly the ports of its VMs
    for h in ("host1", "host2", "host3"):
        mine = {p.id for vm in want.values() if vm.host == h for p in vm.ports
                if not topo.model.ports[p.id].is_trusted}
        assert {p.id for p in compile_plan(topo.model, h).ports} == mine


def test_existing_vms_stay_and_new_ones_fill_the_least_busy_host() -> None:
    topo = loads_topology(small(), "<t>")
    have = {"a": VMState(name="a", netns="pwv-x-a", host="h2"),
            "b": VMState(name="b", netns="pwv-x-b", host="h2")}
    want = box_for(["h1", "h2"], have)._desired(topo, compile_plan(topo.model))
    assert {n: v.host for n, v in want.items()} == {"a": "h2", "b": "h2", "c": "h1"}


def test_host_key_and_binding() -> None:
    topo = loads_topology(small(host="compute-a", bind="compute-b"), "<t>")
    assert [vm.host for vm in topo.lab.vms.values()] == ["compute-a", "compute-b", None]
    assert host_names(topo, 0) == ["compute-a", "compute-b"]
    assert host_names(topo, 3) == ["compute-a", "compute-b", "host1"]
    assert is_multihost(topo, 0)
    want = box_for(host_names(topo, 0))._desired(topo, compile_plan(topo.model))
    assert {n: v.host for n, v in want.items()} == {
        "a": "compute-a", "b": "compute-b", "c": "compute-a"}
    with pytest.raises(LabError, match="not one of the sandbox's hosts"):
        box_for(["x1", "x2"])._desired(topo, compile_plan(topo.model))


def test_host_key_must_be_a_name() -> None:
    with pytest.raises(TopologyError, match="must be 1-63"):
        loads_topology(small(host="'bad/name'"), "<t>")


def test_host_key_must_match_the_ports_binding() -> None:
    text = small(bind="compute-b").replace("b: {ports: [b-port]}",
                                           "b: {ports: [b-port], host: compute-c}")
    with pytest.raises(TopologyError, match="differs from its ports' binding"):
        loads_topology(text, "<t>")
