"""``portwall audit --matrix`` over classes of ports equals the matrix computed pair by pair."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from portwall.analyze.matrix import reachability_matrix
from portwall.analyze.reach import SetIntervals, pair_services, services_text
from portwall.cli import main
from portwall.ir import compile_plan
from portwall.ir.types import HostPlan
from portwall.topology import loads_topology

Key = tuple[str, str, int]

V4_PREFIXES = ["10.0.0.0/24", "10.0.0.0/25", "10.0.0.128/25", "10.0.0.7/32", "10.0.1.0/24",
               "10.0.0.0/16", "0.0.0.0/0", "192.0.2.0/24"]
V6_PREFIXES = ["fd00::/64", "fd00::/120", "fd00::7/128", "::/0", "2001:db8::/32"]


def _rule(rng: random.Random, groups: list[str], direction: str) -> dict[str, Any]:
    v6 = rng.random() < 0.3
    r: dict[str, Any] = {"direction": direction, "ethertype": "IPv6" if v6 else "IPv4"}
    proto = rng.choice([None, "tcp", "tcp", "udp", "ipv6-icmp" if v6 else "icmp", "gre"])
    if proto is not None:
        r["protocol"] = proto
    if proto in ("tcp", "udp") and rng.random() < 0.8:
        lo = rng.choice([22, 53, 80, 443, 1000, 5432])
        r["port_range_min"], r["port_range_max"] = lo, lo + rng.choice([0, 0, 10, 2000])
    elif proto in ("icmp", "ipv6-icmp") and rng.random() < 0.5:
        r["port_range_min"] = rng.choice([0, 8, 128])
        if rng.random() < 0.3:
            r["port_range_max"] = 0
    kind = rng.random()
    if kind < 0.35:
        r["remote_ip_prefix"] = rng.choice(V6_PREFIXES if v6 else V4_PREFIXES)
    elif kind < 0.65:
        r["remote_group_id"] = rng.choice(groups)
    return r


def random_topology(seed: int, n_ports: int) -> str:
    """Groups with random rules (prefixes that split the subnet, remote groups, protocols
    with and without ports), ports in random group combinations with address pairs (VIPs,
    routed ranges, 0.0.0.0/0), IPv6, several fixed IPs, port security disabled."""
    rng = random.Random(seed)
    groups = [f"g{i}" for i in range(rng.randint(2, 5))]
    sgs = []
    for g in groups:
        rules: dict[str, dict[str, Any]] = {}
        for _ in range(rng.randint(0, 5)):
            r = _rule(rng, groups, rng.choice(["ingress", "ingress", "egress"]))
            same = {k: v for k, v in r.items() if v not in ("0.0.0.0/0", "::/0")}
            rules.setdefault(json.dumps(same, sort_keys=True), r)  # Neutron refuses repeats
        body: dict[str, Any] = {"name": g, "security_group_rules": list(rules.values())}
        if rng.random() < 0.5:
            body["default_egress_rules"] = False
        sgs.append(body)
    ports = []
    hosts = rng.sample([*range(5, 20), *range(120, 140), 249], n_ports)  # around the /25s
    for i in range(n_ports):
        net = rng.choice(["net", "net", "net2"])
        fixed = [f"10.0.{0 if net == 'net' else 1}.{hosts[i]}"]
        if net == "net" and rng.random() < 0.4:
            fixed.append(f"fd00::{hosts[i] if rng.random() < 0.5 else 0x1000 + i:x}")
            if rng.random() < 0.3:
                fixed.reverse()
        p: dict[str, Any] = {"name": f"p{i}", "network_id": net, "fixed_ips": fixed}
        if rng.random() < 0.1:
            p["port_security_enabled"] = False
            p["security_groups"] = []
        else:
            p["security_groups"] = rng.sample(groups, rng.randint(0, min(3, len(groups))))
            if rng.random() < 0.25:
                p["allowed_address_pairs"] = [{"ip_address": rng.choice(
                    ["10.0.0.250", "10.0.0.0/25", "192.0.2.0/24", "0.0.0.0/0"])}]
        ports.append(p)
    doc = {"project": "t", "networks": [
        {"name": "net", "subnets": [{"name": "s4", "cidr": "10.0.0.0/24"},
                                    {"name": "s6", "cidr": "fd00::/64", "ip_version": 6}]},
        {"name": "net2", "subnets": [{"name": "s2", "cidr": "10.0.1.0/24"}]}],
        "security_groups": sgs, "ports": ports}
    return json.dumps(doc)


def pairwise(plan: HostPlan) -> dict[Key, str]:
    """The reference: :func:`pair_services` for every ordered pair of distinct ports."""
    sets = SetIntervals(plan)
    out = {}
    for a in plan.ports:
        for b in plan.ports:
            if a is b:
                continue
            for fam in (4, 6):
                sa = next((x for x in a.addresses if x.version == fam), None)
                sb = next((x for x in b.addresses if x.version == fam), None)
                if sa is not None and sb is not None:
                    out[(a.name, b.name, fam)] = services_text(pair_services(
                        plan, a, b, fam, int(sa.network_address), int(sb.network_address), sets))
    return out


def expand(rows: list[Any]) -> dict[Key, str]:
    """Class rows -> one answer per ordered pair; a pair answered twice is an error."""
    out: dict[Key, str] = {}
    for r in rows:
        for a in r.src_ports:
            for b in r.dst_ports:
                if a == b:
                    continue
                assert (a, b, r.family) not in out, (a, b, r.family)
                out[(a, b, r.family)] = r.services
    return out


@pytest.mark.parametrize("seed", range(40))
def test_class_matrix_equals_pairwise_on_random_topologies(seed: int) -> None:
    t = loads_topology(random_topology(seed, n_ports=random.Random(seed).randint(6, 14)))
    plan = compile_plan(t.model)
    ref = pairwise(plan)
    classes = reachability_matrix(t.model, plan, per_port=False)
    per_port = reachability_matrix(t.model, plan, per_port=True)
    assert expand(classes) == ref
    assert {(r.src, r.dst, r.family): r.services for r in per_port} == ref
    assert len(per_port) == len(ref)


def test_the_generator_exercises_what_matters() -> None:
    """Across the seeds above: answers differ, prefixes split classes, pairs leak."""
    answers: set[str] = set()
    for seed in range(40):
        t = loads_topology(random_topology(seed, n_ports=8))
        answers |= set(pairwise(compile_plan(t.model)).values())
    assert {"nothing", "any"} <= answers and len(answers) > 20


def test_classes_share_answers_and_prefixes_split_them() -> None:
    """30 ports in three groups: far fewer rows than pairs; a prefix rule that admits only
    part of a group's addresses splits that group's senders."""
    groups = """
  - name: web
    security_group_rules:
      - {direction: ingress, protocol: tcp, port_range_min: 80, port_range_max: 80}
      - {direction: ingress, protocol: tcp, port_range_min: 22, port_range_max: 22,
         remote_ip_prefix: 10.0.0.0/28}
  - name: db
    default_egress_rules: false
    security_group_rules:
      - {direction: ingress, protocol: tcp, port_range_min: 5432, port_range_max: 5432,
         remote_group_id: web}
  - name: ops
"""
    ports = "".join(
        f"  - {{name: {g}{i}, network_id: net, fixed_ips: [10.0.0.{base + i}],"
        f" security_groups: [{g}]}}\n"
        for g, base in (("web", 10), ("db", 40), ("ops", 100)) for i in range(10))
    text = f"""
project: t
networks:
  - name: net
    subnets: [{{name: sub, cidr: 10.0.0.0/24}}]
security_groups:
{groups}
ports:
{ports}"""
    t = loads_topology(text)
    plan = compile_plan(t.model)
    rows = reachability_matrix(t.model, plan)  # 30 ports: by class
    assert expand(rows) == pairwise(plan)
    assert len(rows) < 20
    by = {(r.src_ports, r.services): r.dst_ports for r in rows}
    # web0..web5 (10.0.0.10-15) are in 10.0.0.0/28, web6..web9 and the ops ports are not
    def answer(a: str, b: str) -> str:
        (row,) = [r for r in rows if a in r.src_ports and b in r.dst_ports]
        return row.services

    assert answer("web0", "web1") == answer("web5", "web9") == "tcp 22,80"
    assert answer("web9", "web0") == answer("ops0", "web0") == "tcp 80"
    assert not {"web0", "web9"} <= {n for r in rows for n in r.src_ports if "web5" in r.src_ports}
    assert any(set(dst) >= {f"db{i}" for i in range(10)} and s == "tcp 5432"
               for (src, s), dst in by.items() if "web0" in src)
    assert all(r.services == "nothing" for r in rows if "db0" in r.src_ports)


def test_cli_matrix_json_names_every_port(tmp_path: Path) -> None:
    f = tmp_path / "t.json"
    f.write_text(random_topology(3, n_ports=30))
    r = CliRunner().invoke(main, ["audit", str(f), "--matrix", "--json", "--fail-on", "none"])
    assert r.exit_code == 0, r.output
    rows = json.loads(r.output)["matrix"]
    t = loads_topology(f.read_text())
    ref = pairwise(compile_plan(t.model))
    got: dict[Key, str] = {}
    for row in rows:
        for a in row["from_ports"]:
            for b in row["to_ports"]:
                if a != b:
                    got[(a, b, row["family"])] = row["services"]
    assert got == ref
