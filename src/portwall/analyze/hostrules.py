"""The compute host's own rules and networks, as audit needs them (seed 003: docker's NAT).

Read from an ``iptables-save`` dump or live from a network namespace that plays the host.
Only the fields audit reasons about are parsed (table, chain, source/destination and their
negation, interfaces, target); everything else stays in ``text`` for messages. Live reads
run *inside* the named namespace (``ip netns exec``): the root namespace is never read unless
the caller names a namespace that is it.
"""

from __future__ import annotations

import ipaddress
import json
import shlex
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from portwall.analyze.intervals import IPNetwork

NAT_TARGETS = frozenset({"MASQUERADE", "SNAT", "DNAT", "REDIRECT", "NETMAP"})


@dataclass(frozen=True)
class HostRule:
    table: str
    chain: str
    text: str  # the rule as iptables-save printed it
    target: str | None = None
    src: IPNetwork | None = None
    src_negated: bool = False
    dst: IPNetwork | None = None
    dst_negated: bool = False
    in_iface: str | None = None
    in_negated: bool = False
    out_iface: str | None = None
    out_negated: bool = False

    @property
    def is_nat(self) -> bool:
        return self.table == "nat" and self.target in NAT_TARGETS


@dataclass(frozen=True)
class HostNetwork:
    """An address configured on the host, with its prefix (``172.17.0.1/16 dev docker0``)."""

    network: IPNetwork
    device: str


@dataclass
class HostRules:
    rules: list[HostRule] = field(default_factory=list)
    networks: list[HostNetwork] = field(default_factory=list)
    source: str = ""

    @classmethod
    def parse(cls, text: str, source: str = "") -> HostRules:
        """Parse ``iptables-save`` output (several dumps may be concatenated)."""
        out = cls(source=source)
        table = ""
        for raw in text.splitlines():
            line = raw.strip()
            if line.startswith("*"):
                table = line[1:]
            elif line.startswith("-A "):
                rule = _parse_rule(table, line)
                if rule is not None:
                    out.rules.append(rule)
        return out

    @classmethod
    def from_file(cls, path: str) -> HostRules:
        return cls.parse(Path(path).read_text(), source=path)

    @classmethod
    def from_netns(cls, ns: str) -> HostRules:
        """Read both iptables backends' rules and the addresses of namespace ``ns``."""
        if not ns or not Path(f"/run/netns/{ns}").exists():
            raise ValueError(f"network namespace '{ns}' does not exist (ip netns list)")
        texts = []
        for tool in ("iptables-save", "iptables-legacy-save"):
            proc = subprocess.run(["ip", "netns", "exec", ns, tool], capture_output=True,
                                  text=True, timeout=30)
            if proc.returncode == 0:
                texts.append(proc.stdout)
        out = cls.parse("\n".join(texts), source=f"netns {ns}")
        proc = subprocess.run(["ip", "netns", "exec", ns, "ip", "-j", "addr", "show"],
                              capture_output=True, text=True, timeout=30)
        if proc.returncode == 0 and proc.stdout.strip():
            for link in json.loads(proc.stdout):
                for a in link.get("addr_info", ()):
                    net = ipaddress.ip_network(f"{a['local']}/{a['prefixlen']}", strict=False)
                    if net.is_loopback or net.is_link_local or net.prefixlen == net.max_prefixlen:
                        continue
                    out.networks.append(HostNetwork(net, link.get("ifname", "")))
        return out

    def nat_rules(self) -> list[HostRule]:
        return [r for r in self.rules if r.is_nat and not r.chain.startswith("pw-")]


def _parse_rule(table: str, line: str) -> HostRule | None:
    try:
        words = shlex.split(line)
    except ValueError:
        return None
    chain = words[1]
    kw: dict[str, object] = {}
    neg = False
    i = 2
    while i < len(words):
        w = words[i]
        if w == "!":
            neg = True
            i += 1
            continue
        val = words[i + 1] if i + 1 < len(words) else None
        if w in ("-s", "--source", "-d", "--destination") and val is not None:
            key = "src" if w in ("-s", "--source") else "dst"
            try:
                kw[key] = ipaddress.ip_network(val, strict=False)
                kw[f"{key}_negated"] = neg
            except ValueError:
                pass
            i += 2
        elif w in ("-i", "--in-interface", "-o", "--out-interface") and val is not None:
            key = "in" if w in ("-i", "--in-interface") else "out"
            kw[f"{key}_iface"], kw[f"{key}_negated"] = val, neg
            i += 2
        elif w in ("-j", "--jump") and val is not None:
            kw["target"] = val
            i += 2
        else:
            i += 1
        neg = False
    return HostRule(table, chain, line, **kw)  # type: ignore[arg-type]
