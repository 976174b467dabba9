"""The rendered iptables + ipset state loads into a real kernel and reads back unchanged.

For every example topology, a feature-rich generated one and a 40-port synthetic workload,
on both iptables backends: ``ipset restore``, ``iptables-restore --test``, a real
``--noflush`` load into a throw-away namespace, then ``iptables-save`` must list every
portwall chain with exactly the rule strings the renderer produced (what lets the applier
diff desired and actual state as plain strings). A last test sends real packets through the
loaded rules to check the layout itself: dispatch, group chains and their mark bit, anti-spoof.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from portwall.backends.iptables.render import ipset_restore_text, render_iptables, restore_text
from portwall.backends.iptables.types import IptablesRuleset
from portwall.ir import compile_plan
from portwall.ir.types import HostPlan
from portwall.lab import netns
from portwall.topology import loads_topology

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ipset") is None,
                       reason="needs root, iptables and ipset"),
]

#: Everything the renderer must spell: IPv6, a stateless group, port security disabled,
#: address pairs (CIDR, other MAC, 0.0.0.0/0 and ::/0), a port without fixed IPs, remote
#: groups in both directions, ICMP type and type/code, port ranges, protocol names/numbers
#: (sctp, udplite, dccp with ports; gre, vrrp, 200 without).
RICH = """
project: rich
networks:
  - name: net4
    subnets: [{name: s4, cidr: 10.10.0.0/24}, {name: s6, cidr: "fd00:10::/64"}]
  - name: net2
    subnets: [{name: s2, cidr: 10.20.0.0/24}]
security_groups:
  - name: web
    security_group_rules:
      - {direction: ingress, ethertype: IPv4, protocol: tcp, port_range_min: 80, port_range_max: 80}
      - {direction: ingress, ethertype: IPv4, protocol: tcp, port_range_min: 1000,
         port_range_max: 2000, remote_ip_prefix: 192.168.0.0/16}
      - {direction: ingress, ethertype: IPv4, protocol: icmp, port_range_min: 8, port_range_max: 0}
      - {direction: ingress, ethertype: IPv4, protocol: icmp, port_range_min: 3}
      - {direction: ingress, ethertype: IPv6, protocol: ipv6-icmp, port_range_min: 128,
         port_range_max: 0}
      - {direction: ingress, ethertype: IPv6, protocol: tcp, port_range_min: 443,
         port_range_max: 443, remote_ip_prefix: "2001:db8::/32"}
      - {direction: ingress, ethertype: IPv4, protocol: "132", port_range_min: 3868,
         port_range_max: 3868}
      - {direction: ingress, ethertype: IPv4, protocol: udplite, port_range_min: 5000,
         port_range_max: 5010}
      - {direction: ingress, ethertype: IPv4, protocol: dccp, port_range_min: 6000,
         port_range_max: 6000}
      - {direction: ingress, ethertype: IPv4, protocol: "47"}
      - {direction: ingress, ethertype: IPv4, protocol: vrrp}
      - {direction: ingress, ethertype: IPv6, protocol: "200"}
      - {direction: ingress, ethertype: IPv4, protocol: tcp, port_range_min: 22,
         port_range_max: 22, remote_group_id: nat}
      - {direction: ingress, ethertype: IPv6, protocol: udp, port_range_min: 53,
         port_range_max: 53, remote_group_id: web}
      - {direction: egress, ethertype: IPv4, protocol: tcp, port_range_min: 25,
         port_range_max: 25, remote_group_id: nat}
  - name: nat
    security_group_rules:
      - {direction: ingress, ethertype: IPv4, remote_group_id: web}
      - {direction: ingress, ethertype: IPv6, protocol: ipv6-icmp}
  - name: stateless
    stateful: false
    default_egress_rules: false
    security_group_rules:
      - {direction: ingress, ethertype: IPv4, protocol: udp, port_range_min: 53, port_range_max: 53}
      - {direction: egress, ethertype: IPv4, protocol: udp, port_range_min: 1024,
         port_range_max: 65535}
ports:
  - {name: web1, network_id: net4, fixed_ips: [10.10.0.11, "fd00:10::11"], security_groups: [web]}
  - name: web2
    network_id: net4
    fixed_ips: [10.10.0.12]
    security_groups: [web]
    allowed_address_pairs: [{ip_address: 10.10.0.100},
                            {ip_address: 10.99.0.0/16, mac_address: "fa:16:3e:00:00:99"}]
  - name: nat1
    network_id: net4
    fixed_ips: [10.10.0.13]
    security_groups: [nat, web]
    allowed_address_pairs: [{ip_address: 0.0.0.0/0}, {ip_address: "::/0"}]
  - {name: free, network_id: net2, fixed_ips: [10.20.0.5], port_security_enabled: false}
  - {name: sl, network_id: net2, fixed_ips: [10.20.0.6], security_groups: [stateless]}
  - {name: bare, network_id: net4, fixed_ips: [], security_groups: [web]}
"""

BACKENDS = {
    "nft": ("iptables-restore", "iptables-save", "ip6tables-restore", "ip6tables-save"),
    "legacy": ("iptables-legacy-restore", "iptables-legacy-save",
               "ip6tables-legacy-restore", "ip6tables-legacy-save"),
}


def _bench_plan(n_ports: int) -> HostPlan:
    """The benchmarks' synthetic workload (bench/workload.py), small and dual-stack."""
    spec = importlib.util.spec_from_file_location("pw_bench_workload",
                                                  ROOT / "bench" / "workload.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return compile_plan(mod.Workload(n_ports, groups=3, pairs=2, dual_stack=True).m)


def _plan(source: str) -> HostPlan:
    if source == "rich":
        return compile_plan(loads_topology(RICH, "rich.yaml").model)
    if source == "bench-40":
        return _bench_plan(40)
    path = EXAMPLES / source
    return compile_plan(loads_topology(path.read_text(), str(path)).model)


SOURCES = [p.name for p in sorted(EXAMPLES.glob("*.yaml"))] + ["rich", "bench-40"]


def _saved_chains(ns: str, save_cmd: str) -> dict[tuple[str, str], list[str]]:
    """(table, chain) -> rule specs, as ``iptables-save`` lists them."""
    out: dict[tuple[str, str], list[str]] = {}
    table = ""
    for line in netns.run(ns, [save_cmd]).stdout.splitlines():
        if line.startswith("*"):
            table = line[1:]
        elif line.startswith(":"):
            out.setdefault((table, line[1:].split()[0]), [])
        elif line.startswith("-A "):
            chain, _, spec = line[3:].partition(" ")
            out.setdefault((table, chain), []).append(spec)
    return out


def _check_loaded(ns: str, ruleset: IptablesRuleset, family: int, save_cmd: str) -> None:
    saved = _saved_chains(ns, save_cmd)
    for tname, table in ruleset.tables[family].items():  # type: ignore[index]
        ours = {c: rules for (t, c), rules in saved.items() if t == tname and c.startswith("pw-")}
        want = {name: chain.rules for name, chain in table.chains.items()}
        assert sorted(ours) == sorted(want), f"IPv{family} {tname}: chain sets differ"
        for name, rules in want.items():
            assert ours[name] == rules, f"IPv{family} {tname} {name} reads back differently"
        for hook in table.hooks:
            # exactly one hook, and it is the first rule of its built-in chain
            assert saved[(tname, hook.builtin)].count(hook.rule) == 1
            assert saved[(tname, hook.builtin)][0] == hook.rule


def _ipset_members(ns: str) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for line in netns.run(ns, ["ipset", "save"]).stdout.splitlines():
        parts = line.split()
        if parts[0] == "create":
            out[parts[1]] = set()
        elif parts[0] == "add":
            out[parts[1]].add(parts[2])
    return out


@pytest.mark.parametrize("backend", sorted(BACKENDS))
@pytest.mark.parametrize("source", SOURCES)
def test_rendered_rules_load_and_read_back_verbatim(
        source: str, backend: str, make_netns: Callable[[str], str]) -> None:
    plan = _plan(source)
    ruleset = render_iptables(plan)
    ns = make_netns("pwt-rl")
    restore4, save4, restore6, save6 = BACKENDS[backend]

    netns.run(ns, ["ipset", "restore"], input=ipset_restore_text(ruleset))
    assert _ipset_members(ns) == {n: set(s.members) for n, s in ruleset.ipsets.items()}

    for family, restore, save in ((4, restore4, save4), (6, restore6, save6)):
        text = restore_text(ruleset, family)  # type: ignore[arg-type]
        netns.run(ns, [restore, "--test", "--noflush"], input=text)
        netns.run(ns, [restore, "--noflush"], input=text)
        _check_loaded(ns, ruleset, family, save)
        # Re-applying over the loaded state (what an applier does, hooks already in place)
        # replaces the chains instead of appending to them.
        netns.run(ns, [restore, "--noflush"],
                  input=restore_text(ruleset, family, hooks=False))  # type: ignore[arg-type]
        _check_loaded(ns, ruleset, family, save)
    # ipset restore with -exist is idempotent too
    netns.run(ns, ["ipset", "restore"], input=ipset_restore_text(ruleset))


# ------------------------------------------------------------------ real packets
SMOKE = """
project: smoke
networks:
  - name: n1
    subnets: [{name: s1, cidr: 10.50.0.0/24}]
security_groups:
  - name: web
    security_group_rules:
      - {direction: ingress, ethertype: IPv4, protocol: tcp, port_range_min: 80, port_range_max: 80}
      - {direction: ingress, ethertype: IPv4, protocol: icmp, remote_group_id: web}
  - name: other
ports:
  - {name: a, network_id: n1, fixed_ips: [10.50.0.11], security_groups: [web]}
  - {name: b, network_id: n1, fixed_ips: [10.50.0.12], security_groups: [web]}
  - {name: c, network_id: n1, fixed_ips: [10.50.0.13], security_groups: [other]}
  - {name: d, network_id: n1, fixed_ips: [10.50.0.14], port_security_enabled: false}
"""


@pytest.fixture
def smoke_host(make_netns: Callable[[str], str]) -> Iterator[tuple[HostPlan, dict[str, str]]]:
    """A host namespace with the network's bridge and one VM namespace per port, wired by
    veth pairs whose host ends carry the ports' tap names; the rendered rules loaded."""
    plan = compile_plan(loads_topology(SMOKE, "smoke.yaml").model)
    host = make_netns("pwt-rh")
    vms: dict[str, str] = {}
    bridge = plan.ports[0].bridge
    netns.run(host, ["ip", "link", "add", bridge, "type", "bridge"])
    netns.run(host, ["ip", "link", "set", bridge, "up"])
    for p in plan.ports:
        vm = make_netns(f"pwt-v{p.name}")
        vms[p.name] = vm
        netns.run(host, ["ip", "link", "add", p.device, "type", "veth", "peer", "name", "eth0",
                         "netns", vm])
        netns.run(host, ["ip", "link", "set", p.device, "master", bridge, "up"])
        netns.run(vm, ["ip", "link", "set", "eth0", "address", p.mac, "up"])
        for a in p.addresses:
            netns.run(vm, ["ip", "addr", "add", f"{a.network_address}/24", "dev", "eth0"])
    # A bridge portwall does not own (think docker0) with two namespaces on it.
    netns.run(host, ["ip", "link", "add", "dk0", "type", "bridge"])
    netns.run(host, ["ip", "link", "set", "dk0", "up"])
    for i in (1, 2):
        other = make_netns(f"pwt-vx{i}")
        vms[f"x{i}"] = other
        netns.run(host, ["ip", "link", "add", f"dkv{i}", "type", "veth", "peer", "name", "eth0",
                         "netns", other])
        netns.run(host, ["ip", "link", "set", f"dkv{i}", "master", "dk0", "up"])
        netns.run(other, ["ip", "link", "set", "eth0", "up"])
        netns.run(other, ["ip", "addr", "add", f"172.17.0.{i + 1}/16", "dev", "eth0"])
    vms["host"] = host
    ruleset = render_iptables(plan)
    netns.run(host, ["ipset", "restore"], input=ipset_restore_text(ruleset))
    netns.run(host, ["iptables-restore", "--noflush"], input=restore_text(ruleset, 4))
    # the kernel default (bridge-nf-call-iptables = 1) is what portwall relies on
    netns.run(host, ["sysctl", "-w", "net.bridge.bridge-nf-call-iptables=1"], check=False)
    netns.run(host, ["iptables", "-P", "FORWARD", "DROP"])  # nothing but portwall may accept
    yield plan, vms


def _ping(vm: str, dst: str, src: str | None = None) -> bool:
    argv = ["ping", "-c", "1", "-W", "1", *(["-I", src] if src else []), dst]
    return netns.run(vm, argv, check=False).returncode == 0


def _tcp(vm_from: str, vm_to: str, dst: str, port: int) -> bool:
    server = subprocess.Popen(["ip", "netns", "exec", vm_to, "nc", "-l", "-k", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(50):  # wait until the listener is up
            if f":{port} " in netns.run(vm_to, ["ss", "-ltnH"]).stdout:
                break
            time.sleep(0.02)
        return netns.run(vm_from, ["nc", "-z", "-w", "1", dst, str(port)], check=False).returncode == 0
    finally:
        server.kill()
        server.wait()


def test_loaded_layout_filters_real_packets(smoke_host: tuple[HostPlan, dict[str, str]]) -> None:
    _plan, vm = smoke_host
    assert _ping(vm["a"], "10.50.0.12")  # remote group web allows ICMP from a (in web)
    assert not _ping(vm["c"], "10.50.0.12")  # c is not in web: its ping has no rule
    assert _tcp(vm["c"], vm["b"], "10.50.0.12", 80)  # tcp/80 from anywhere
    assert not _tcp(vm["c"], vm["b"], "10.50.0.12", 81)  # the next port stays closed
    assert _ping(vm["a"], "10.50.0.14")  # d has port security disabled: accepted both ways
    assert not _ping(vm["d"], "10.50.0.11")  # ...but a's own ingress still applies
    netns.run(vm["a"], ["ip", "addr", "add", "10.50.0.99/24", "dev", "eth0"])
    assert not _ping(vm["a"], "10.50.0.12", src="10.50.0.99")  # spoofed source dropped
    # Foreign bridged traffic is neither accepted nor dropped by portwall: FORWARD's policy
    # (DROP) decides, until another program's own rule accepts it.
    assert not _ping(vm["x1"], "172.17.0.3")
    netns.run(vm["host"], ["iptables", "-A", "FORWARD", "-i", "dk0", "-j", "ACCEPT"])
    assert _ping(vm["x1"], "172.17.0.3")
