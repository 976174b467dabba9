"""The synthetic deployment every benchmark measures, built through portwall's own model.

Its shape is the Neutron peer's ``gen_ports.py`` (``shared/peer/neutron/``), so figures can be
set side by side: every port is in ``sg-all`` (which holds every port and has a remote-group
rule on itself) and in one of ``groups`` ``sg-app-<k>`` groups, ~10 rules each (ports and
ranges, ICMP type/code, CIDRs, an egress rule, IPv6 rules, one more remote-group rule).
Every resource is created through :class:`portwall.model.Model`, i.e. with Neutron's checks.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from portwall.model import Model, stable_ids


def rule(direction: str, ethertype: str = "IPv4", protocol: str | None = None,
         lo: int | None = None, hi: int | None = None, prefix: str | None = None,
         remote: str | None = None) -> dict[str, Any]:
    """A security-group rule body with only the fields that are set."""
    r: dict[str, Any] = {"direction": direction, "ethertype": ethertype}
    for k, v in (("protocol", protocol), ("port_range_min", lo), ("port_range_max", hi),
                 ("remote_ip_prefix", prefix), ("remote_group_id", remote)):
        if v is not None:
            r[k] = v
    return r


def sg_all_rules() -> list[dict[str, Any]]:
    """``sg-all``: Neutron's egress-any pair plus ingress rules, one with remote group
    ``sg-all`` (every port)."""
    return [
        rule("egress"), rule("egress", "IPv6"),
        rule("ingress", protocol="tcp", lo=22, hi=22, prefix="0.0.0.0/0"),
        rule("ingress", protocol="icmp", prefix="0.0.0.0/0"),
        rule("ingress", "IPv6", protocol="ipv6-icmp"),
        rule("ingress", protocol="tcp", lo=5432, hi=5432, remote="sg-all"),
        rule("ingress", protocol="udp", lo=53, hi=53, prefix="10.0.0.0/8"),
        rule("ingress", protocol="tcp", lo=9100, hi=9100, prefix="192.168.0.0/16"),
        rule("ingress", protocol="udp", lo=161, hi=162, prefix="172.16.0.0/12"),
        rule("ingress", "IPv6", protocol="tcp", lo=22, hi=22),
    ]


def sg_app_rules(k: int) -> list[dict[str, Any]]:
    """``sg-app-<k>``: ten rules of the kinds users write."""
    return [
        rule("ingress", protocol="tcp", lo=80, hi=80, prefix="0.0.0.0/0"),
        rule("ingress", protocol="tcp", lo=443, hi=443),
        rule("ingress", protocol="tcp", lo=8000 + k, hi=8100 + k, prefix="10.0.0.0/8"),
        rule("ingress", protocol="tcp", lo=3306, hi=3306, prefix=f"10.{k % 256}.0.0/16"),
        rule("ingress", protocol="udp", lo=5000, hi=5100),
        rule("ingress", protocol="icmp", lo=8, hi=0, prefix="198.51.100.0/24"),
        rule("ingress", protocol="tcp", lo=8080, hi=8080, remote="sg-all"),
        rule("egress", protocol="tcp", lo=25, hi=25, prefix="203.0.113.0/24"),
        rule("ingress", "IPv6", protocol="tcp", lo=80, hi=80),
        rule("ingress", "IPv6", protocol="tcp", lo=443, hi=443, prefix="2001:db8::/32"),
    ]


class Workload:
    """``n`` ports on ``host``; ``pairs`` allowed address pairs on every port (2: the
    foundation issue's compile benchmark) or, when None, one pair on every 10th port (the
    peer's workload)."""

    def __init__(self, n: int, *, groups: int = 10, pairs: int | None = None,
                 dual_stack: bool = False, host: str = "") -> None:
        self.host, self.pairs, self.dual_stack = host, pairs, dual_stack
        self.m = Model(stable_ids(f"bench-{n}"))
        self.net = self.m.create_network({"name": "net0"})
        self.m.create_subnet({"network_id": self.net.id, "cidr": "10.0.0.0/8", "name": "v4"})
        if dual_stack:
            self.m.create_subnet({"network_id": self.net.id, "cidr": "fd00::/64", "name": "v6"})
        self.sg_all = self._group("sg-all", sg_all_rules())
        self.apps = [self._group(f"sg-app-{k}", sg_app_rules(k))
                     for k in range(min(groups, max(n, 1)))]
        self.next = 0
        for _ in range(n):
            self.add_port()

    def _group(self, name: str, rules: list[dict[str, Any]]) -> str:
        sg = self.m.create_security_group({"name": name, "security_group_rules": []})
        for r in rules:
            if r.get("remote_group_id") == "sg-all":
                r["remote_group_id"] = sg.id if name == "sg-all" else self.sg_all
            self.m.create_security_group_rule({**r, "security_group_id": sg.id})
        return str(sg.id)

    def add_port(self, host: str | None = None) -> str:
        """One more port (on ``host``, default the workload's); returns its id."""
        i = self.next
        self.next += 1
        mac = f"fa:16:3e:{(i >> 16) & 255:02x}:{(i >> 8) & 255:02x}:{i & 255:02x}"
        fixed = [{"ip_address": str(ipaddress.IPv4Address("10.0.0.10") + i)}]
        if self.dual_stack:
            fixed.append({"ip_address": str(ipaddress.IPv6Address("fd00::10") + i)})
        pair_v4 = str(ipaddress.IPv4Address("10.200.0.0") + i)
        if self.pairs is None:
            pairs = [{"ip_address": pair_v4, "mac_address": mac}] if i % 10 == 0 else []
        else:
            extra = f"172.{16 + i % 16}.{(i >> 8) & 255}.{i & 255}"
            pairs = [{"ip_address": ip} for ip in (pair_v4, extra)][: self.pairs]
        port = self.m.create_port({
            "network_id": self.net.id, "name": f"p{i}", "mac_address": mac,
            "fixed_ips": fixed, "allowed_address_pairs": pairs,
            "security_groups": [self.sg_all, self.apps[i % len(self.apps)]],
            "binding:host_id": self.host if host is None else host,
        })
        return str(port.id)

    def change_rule(self, step: int) -> None:
        """Replace one rule of one group (Neutron rules are immutable: delete + create)."""
        sg = self.m.security_groups[self.apps[step % len(self.apps)]]
        victim = next(r for r in sg.security_group_rules if r.protocol == "udp")
        self.m.delete_security_group_rule(victim.id)
        lo = 5000 + 200 * (step + 1)
        self.m.create_security_group_rule(
            rule("ingress", protocol="udp", lo=lo, hi=lo + 100) | {"security_group_id": sg.id})
