"""Conntrack clean-up decisions and failure reports, without a kernel."""

from __future__ import annotations

from portwall.backends.iptables.apply import origins
from portwall.backends.iptables.report import ApplyError
from portwall.ir import compile_plan
from portwall.ir.types import OriginKind
from portwall.kernel.conntrack import CtEntry, PlanVerdict, delete_args, parse_conntrack
from portwall.model import Model, stable_ids

LISTING = """\
ipv4     2 tcp      6 431999 ESTABLISHED src=10.0.0.11 dst=10.0.0.12 sport=40000 dport=22 \
src=10.0.0.12 dst=10.0.0.11 sport=22 dport=40000 [ASSURED] mark=0 zone=7 use=1
ipv4     2 icmp     1 29 src=10.0.0.11 dst=10.0.0.12 type=8 code=0 id=77 [UNREPLIED] \
src=10.0.0.12 dst=10.0.0.11 type=0 code=0 id=77 mark=0 zone=7 use=1
ipv6     10 udp      17 29 src=fd00::1 dst=fd00::2 sport=5 dport=53 [UNREPLIED] \
src=fd00::2 dst=fd00::1 sport=53 dport=5 mark=0 zone=9 use=1
ipv4     2 udp      17 30 src=10.0.0.1 dst=10.0.0.2 sport=5 dport=53 [UNREPLIED] \
src=10.0.0.2 dst=10.0.0.1 sport=53 dport=5 mark=0 use=1
conntrack v1.4.7 (conntrack-tools): 4 flow entries have been shown.
"""


def test_parse_conntrack_reads_the_original_direction() -> None:
    tcp, icmp, udp6, udp0 = parse_conntrack(LISTING)
    assert tcp == CtEntry(4, 6, "10.0.0.11", "10.0.0.12", 7, 40000, 22, state="ESTABLISHED")
    assert (icmp.protocol, icmp.icmp_type, icmp.icmp_code, icmp.icmp_id) == (1, 8, 0, 77)
    assert (udp6.family, udp6.zone, udp6.sport, udp6.dport) == (6, 9, 5, 53)
    assert udp0.zone == 0


def test_delete_args_select_exactly_one_entry_in_its_zone() -> None:
    tcp, icmp, udp6, _ = parse_conntrack(LISTING)
    assert delete_args(tcp) == ["conntrack", "-D", "-f", "ipv4", "-w", "7", "-s", "10.0.0.11",
                                "-d", "10.0.0.12", "-p", "6", "--sport", "40000",
                                "--dport", "22"]
    assert delete_args(icmp)[-8:] == ["-p", "icmp", "--icmp-type", "8", "--icmp-code", "0",
                                      "--icmp-id", "77"]
    assert delete_args(udp6)[2:6] == ["-f", "ipv6", "-w", "9"]


def small_model() -> tuple[Model, str, str, str]:
    m = Model(stable_ids("apply-ct"))
    net = m.create_network({"name": "n"})
    m.create_subnet({"network_id": net.id, "cidr": "10.0.0.0/24"})
    sg = m.create_security_group({"name": "srv", "security_group_rules": [
        {"direction": "ingress", "protocol": "tcp", "port_range_min": 22, "port_range_max": 22},
        {"direction": "egress"},
    ]})
    a = m.create_port({"network_id": net.id, "name": "a", "security_groups": [sg.id],
                       "fixed_ips": [{"ip_address": "10.0.0.11"}]})
    b = m.create_port({"network_id": net.id, "name": "b", "security_groups": [sg.id],
                       "fixed_ips": [{"ip_address": "10.0.0.12"}]})
    return m, sg.id, a.id, b.id


def test_plan_verdict_keeps_allowed_and_rejects_denied_connections() -> None:
    m, _, a, _ = small_model()
    plan = compile_plan(m)
    zone = plan.port(a).zone
    ok = PlanVerdict(plan)
    ssh = CtEntry(4, 6, "10.0.0.11", "10.0.0.12", zone, 40000, 22)
    web = CtEntry(4, 6, "10.0.0.11", "10.0.0.12", zone, 40000, 80)
    assert ok(ssh)
    assert not ok(web)
    # Another zone's entry is not about these ports: nothing local filters it.
    assert ok(CtEntry(4, 6, "10.0.0.11", "10.0.0.12", zone + 1, 40000, 80))


def test_plan_verdict_follows_a_removed_rule() -> None:
    m, sg, a, _ = small_model()
    ssh_rule = next(r for r in m.security_groups[sg].security_group_rules
                    if r.port_range_min == 22)
    m.delete_security_group_rule(ssh_rule.id)
    plan = compile_plan(m)
    entry = CtEntry(4, 6, "10.0.0.11", "10.0.0.12", plan.port(a).zone, 40000, 22)
    assert not PlanVerdict(plan)(entry)


def test_origins_name_the_resource_behind_a_rule_id() -> None:
    m, sg, a, _ = small_model()
    plan = compile_plan(m)
    rid = next(f"sgr-{r.id}" for r in m.security_groups[sg].security_group_rules
               if r.port_range_min == 22)
    by_rid = origins(plan)
    assert by_rid[rid].kind is OriginKind.SG_RULE
    assert by_rid[f"port-{a}"].resource_id == a


def test_apply_error_message_names_line_rid_and_resource() -> None:
    m, _sg, _, _ = small_model()
    plan = compile_plan(m)
    rid, origin = next((k, v) for k, v in origins(plan).items() if k.startswith("sgr-"))
    err = ApplyError("iptables-restore failed", line="-A pw-x -j NOPE", line_no=3, rid=rid,
                     origin=origin, command="iptables-nft-restore", stderr="Chain 'NOPE'")
    text = str(err)
    assert "line 3: -A pw-x -j NOPE" in text and rid in text
    assert origin.resource_id in text and "Chain 'NOPE'" in text
