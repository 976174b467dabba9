"""The evaluator against Open vSwitch, packet by packet (the generator, probes and sniffing
of ``test_differential.py``, on a sandbox enforced by the ovs backend): 2,000 IPv4 packets
and 800 dual-stack ones, genuine and forged, each delivered iff the evaluator allows it."""

from __future__ import annotations

import importlib.util
import os
import random
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from portwall.analyze.evaluate import evaluate_hop
from portwall.ir import compile_plan
from portwall.lab.sandbox import sandbox
from portwall.topology import load_topology

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]


def _differential() -> Any:
    path = Path(__file__).resolve().parent / "test_differential.py"
    spec = importlib.util.spec_from_file_location("pw_differential_e2e", path)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize(("seed", "dual", "count"), [(11, False, 2000), (12, True, 800)],
                         ids=["ipv4-2000", "dual-stack-800"])
def test_evaluator_matches_ovs(seed: int, dual: bool, count: int, tmp_path: Path) -> None:
    d = _differential()
    path = tmp_path / f"diff{seed}.yaml"
    path.write_text(yaml.safe_dump(d.generate(seed, dual), sort_keys=False))
    topo = load_topology(path)
    plan = compile_plan(topo.model)
    probes = d.make_probes(topo, plan, seed, count)
    ports = {vm: plan.port(topo.lab.vms[vm].ports[0]) for vm in topo.lab.vms}
    expected = {p.marker: evaluate_hop(plan, p.packet(), ports[p.src_vm], ports[p.dst_vm])
                for p in probes}
    allowed = sum(h.allowed for h in expected.values())
    assert 0.1 * len(probes) < allowed < 0.9 * len(probes), allowed

    # Every probe is a new flow, i.e. an upcall to ovs-vswitchd's slow path; a burst of
    # thousands overflows the userspace datapath's receive queues (the packets are lost
    # before any flow sees them), so the senders pace themselves.
    assert "    sock.send(f)\n" in d.SENDER
    d.SENDER = d.SENDER.replace("    sock.send(f)\n", "    sock.send(f)\n    time.sleep(0.003)\n")
    d.SENDER = "import time\n" + d.SENDER
    with sandbox(topo, name=f"pwodiff{seed}-{random.randrange(16**6):06x}",
                 backend="ovs") as box:
        seen = d._run_batch(box, probes)

    wrong = []
    for p in probes:
        hop = expected[p.marker]
        if hop.allowed != (p.marker in seen):
            why = hop.denied_by.origin if hop.denied_by else (
                hop.ingress.origin if hop.ingress else None)
            wrong.append(f"#{p.marker} {p.src_vm}->{p.dst_vm} {p.packet().describe()} mac "
                         f"{p.smac}: evaluator {'allow' if hop.allowed else 'deny'} "
                         f"({why.kind if why else '-'} {why.detail if why else ''}), ovs "
                         f"{'delivered' if p.marker in seen else 'dropped'}")
    assert not wrong, f"{len(wrong)}/{len(probes)} verdicts differ:\n" + "\n".join(wrong[:40])
    # control: an evaluator without the anti-spoof check is contradicted by what OVS did
    blind = d._without_spoof_check(plan)
    bports = {vm: blind.port(p.id) for vm, p in ports.items()}
    assert sum(evaluate_hop(blind, p.packet(), bports[p.src_vm], bports[p.dst_vm]).allowed
               != (p.marker in seen) for p in probes) > 10
