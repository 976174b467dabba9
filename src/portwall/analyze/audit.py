"""``portwall audit``: findings about a whole policy, exhaustive over addresses and ports.

Every finding has a stable code (tests, CI gates and users' suppressions rely on it), a
severity, the resources involved, what is wrong in the user's terms, and how to fix it.

=====  ========================================================================
code   finding
=====  ========================================================================
PW001  a remote-group rule admits a very wide allowed-address-pair (seed 001)
PW002  a sensitive service of a port is open to every address (0.0.0.0/0, ::/0)
PW003  a security-group rule is redundant: its ports' other rules already allow it
PW004  a rule's remote group has no member addresses: the rule allows nothing
PW005  a port has port security disabled: it is not filtered at all
PW006  an allowed address pair is wider than, or outside, the port's subnets
PW007  subnets of different networks overlap inside one conntrack zone
PW008  a tenant subnet overlaps a host NAT rule or host network (seed 003)
PW009  without host rules to check: a tenant subnet overlaps a range hosts commonly use
PW010  a floating IP nothing from the outside can reach (security groups, FWaaS)
PW011  a firewall rule can never match: earlier rules of its policy cover it
PW012  a firewall group denies every new connection in one direction (and family)
PW013  a router has enable_snat false and no floating IP: its subnets have no way out
PW014  a tenant subnet overlaps a subnet of an external network
PW015  an extra route's nexthop is no port's address, or it replaces a connected route
=====  ========================================================================

PW010-PW015 read the L3 IR (routers, NAT, FWaaS): :mod:`portwall.analyze.l3audit`.

Reachability questions (PW002) are answered by :mod:`portwall.analyze.reach` over interval
sets covering every source address; redundancy (PW003) by exact box subtraction
over the union of each port's groups (:mod:`portwall.analyze.redundancy`), so nothing here
samples packets.
"""

from __future__ import annotations

import ipaddress
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from portwall.analyze.describe import match_label, set_label, short_id
from portwall.analyze.hostrules import HostRules
from portwall.analyze.matrix import MatrixRow, reachability_matrix
from portwall.analyze.reach import (
    SetIntervals,
    Slice,
    SliceResult,
    allowed_sources,
    full_space,
)
from portwall.analyze.redundancy import redundant_rules
from portwall.bulk import gc_paused
from portwall.ir.compile import zone_for
from portwall.ir.types import (
    AddressSet,
    HostPlan,
    Jump,
    OriginKind,
    PortPlan,
    Rule,
    RuleSet,
    SetRef,
)
from portwall.model.protocols import TCP, UDP
from portwall.model.store import Model

SEVERITIES = ("info", "low", "medium", "high", "critical")
#: Address pairs at least this wide (prefix length <= this) let "the internet" in.
WIDE_PREFIX = {4: 8, 6: 32}
#: Services that should never face every address: (protocol, port, name, severity).
SENSITIVE: tuple[tuple[int, int, str, str], ...] = (
    (TCP, 22, "ssh", "high"),
    (TCP, 23, "telnet", "high"),
    (TCP, 3389, "rdp", "high"),
    (TCP, 5900, "vnc", "high"),
    (TCP, 445, "smb", "high"),
    (TCP, 3306, "mysql", "high"),
    (TCP, 5432, "postgresql", "high"),
    (TCP, 1433, "mssql", "high"),
    (TCP, 1521, "oracle", "high"),
    (TCP, 27017, "mongodb", "critical"),
    (TCP, 6379, "redis", "critical"),
    (TCP, 9200, "elasticsearch", "critical"),
    (TCP, 11211, "memcached", "critical"),
    (UDP, 11211, "memcached", "critical"),
    (TCP, 2375, "docker API", "critical"),
    (TCP, 2379, "etcd", "critical"),
)
MAX_NAMES = 12


@dataclass(frozen=True)
class ResourceRef:
    type: str
    id: str
    name: str = ""

    def label(self) -> str:
        """Names first; a short id only for what has no name (rules, mostly)."""
        kind = {"security_group_rule": "rule", "security_group": "group"}.get(
            self.type, self.type.replace("_", " "))
        return f"{kind} {self.name or short_id(self.id)}"

    def to_json(self) -> dict[str, str]:
        return {"type": self.type, "id": self.id, "name": self.name}


@dataclass
class Finding:
    code: str
    severity: str
    title: str
    resources: list[ResourceRef] = field(default_factory=list)
    detail: str = ""
    fix: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"code": self.code, "severity": self.severity, "title": self.title,
                "resources": [r.to_json() for r in self.resources], "detail": self.detail,
                "fix": self.fix}


def _names(names: Sequence[str], limit: int = MAX_NAMES) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


class _Ctx:
    """What every check shares: the model, the plan, and indexes built once."""

    def __init__(self, model: Model, plan: HostPlan):
        self.model, self.plan = model, plan
        self.sets = SetIntervals(plan)
        self.ports_of_ruleset: dict[str, list[PortPlan]] = defaultdict(list)
        for p in plan.ports:
            for step in (*p.ingress, *p.egress):
                if isinstance(step, Jump):
                    self.ports_of_ruleset[step.ruleset_id].append(p)

    def group_ref(self, rs: RuleSet) -> ResourceRef:
        return ResourceRef("security_group", rs.group_id, rs.group_name)

    def rule_ref(self, r: Rule) -> ResourceRef:
        return ResourceRef("security_group_rule", r.origin.resource_id, r.origin.resource_name)

    def port_ref(self, p: PortPlan) -> ResourceRef:
        return ResourceRef("port", p.id, p.name)


# ------------------------------------------------------------------ PW001
def _remote_group_rules(plan: HostPlan) -> Iterable[tuple[RuleSet, Rule, SetRef, AddressSet | None]]:
    """Every rule that names a remote group: (its rule set, the rule, the set reference,
    the address set if the plan has one)."""
    for rs in plan.rulesets.values():
        for r in rs.rules:
            ref = r.match.src if rs.direction == "ingress" else r.match.dst
            if isinstance(ref, SetRef):
                yield rs, r, ref, plan.address_sets.get(ref.set_id)


def check_wide_pairs_in_remote_groups(ctx: _Ctx) -> list[Finding]:
    out: list[Finding] = []
    plan = ctx.plan
    for rs, r, ref, aset in _remote_group_rules(plan):
        if aset is None:
            continue
        wide = [m for m in aset.members if m.kind == OriginKind.ADDRESS_PAIR
                and m.cidr.prefixlen <= WIDE_PREFIX[m.cidr.version]]
        if not wide:
            continue
        exposed = ctx.ports_of_ruleset.get(rs.id, [])
        svc = match_label(plan, r.match).replace(f" from {set_label(plan, ref)}", "") \
            .replace(f" to {set_label(plan, ref)}", "")
        for m in wide:
            everything = m.cidr.prefixlen == 0
            if rs.direction == "ingress":
                sev = "critical" if everything else "high"
                what = (f"every port in group {rs.group_name} "
                        f"({_names([p.name for p in exposed]) or 'no port yet'}) accepts "
                        f"{svc} from any address in {m.cidr}")
            else:
                sev = "low"
                what = (f"every port in group {rs.group_name} may send {svc} to any "
                        f"address in {m.cidr}")
            out.append(Finding(
                "PW001", sev,
                f"remote group {aset.group_name} contains the wide address pair {m.cidr}"
                f" of port {m.port_name}",
                [ctx.rule_ref(r), ctx.group_ref(rs),
                 ResourceRef("security_group", aset.group_id, aset.group_name),
                 ResourceRef("port", m.port_id, m.port_name),
                 *(ctx.port_ref(p) for p in exposed[:MAX_NAMES])],
                f"rule {short_id(r.origin.resource_id)} of group {rs.group_name} ({rs.direction} "
                f"{match_label(plan, r.match, rs.direction)}) allows the addresses of every port in "
                f"group {aset.group_name}, and that includes allowed address pairs: port "
                f"{m.port_name} has {m.cidr}, so {what}.",
                f"keep port {m.port_name} (it needs {m.cidr}, e.g. as a NAT/router VM) in a"
                f" security group of its own that no remote-group rule refers to, or replace"
                f" remote_group_id {aset.group_name} in this rule with remote_ip_prefix "
                "entries for the members' fixed IPs"))
    return out


# ------------------------------------------------------------------ PW002
def _relevant_key(step: Any, cache: dict[str, bool]) -> Any:
    """Steps that can matter for a sensitive-service slice, as a hashable key; per-port
    provider rules (DHCP replies to the port's own address) are not, and are left out so
    ports with the same groups share one computation."""
    if isinstance(step, Jump):
        return ("J", step.ruleset_id)
    if isinstance(step, Rule):
        hit = cache.get(step.rid)
        if hit is None:
            m = step.match
            hit = (m.protocol is None or any(m.protocol == p for p, *_ in SENSITIVE)) and (
                m.dport is None or any(port in m.dport for _, port, *_ in SENSITIVE))
            cache[step.rid] = hit
        return step.rid if hit else None
    return None


def check_sensitive_open(ctx: _Ctx) -> list[Finding]:
    out: list[Finding] = []
    plan = ctx.plan
    rel: dict[str, bool] = {}
    memo: dict[tuple[Any, ...], list[tuple[Slice, str, str, SliceResult]]] = {}
    for p in plan.ports:
        if not p.filtered:
            continue  # PW005 reports unfiltered ports
        families = {a.version for a in p.addresses} or {4}
        steps = [s for s in p.ingress if _relevant_key(s, rel) is not None]
        own = [int(a.network_address) for a in p.addresses]
        # a relevant rule that names a destination makes the answer depend on this port
        per_port = any(isinstance(s, Rule) and s.match.dst is not None for s in steps)
        key = (tuple(_relevant_key(s, rel) for s in steps), tuple(sorted(families)),
               p.id if per_port else None)
        hits = memo.get(key)
        if hits is None:
            hits = []
            for fam in sorted(families):
                everything = full_space(fam)
                for proto, port, name, sev in SENSITIVE:
                    s = Slice(fam, proto, port)
                    res = allowed_sources(plan, steps, s, own, ctx.sets)
                    if res.allowed.covers(everything):
                        hits.append((s, name, sev, res))
            memo[key] = hits
        if not hits:
            continue
        worst = max((h[2] for h in hits), key=SEVERITIES.index)
        refs = [ctx.port_ref(p)]
        by_cause: dict[str, list[str]] = {}
        for s, name, _, res in hits:
            anyaddr = "0.0.0.0/0" if s.family == 4 else "::/0"
            why = []
            for rule, jump, _gained in res.contributors:
                g = f" of group {plan.rulesets[jump.ruleset_id].group_name}" if jump else ""
                why.append(f"rule {short_id(rule.origin.resource_id)}{g} "
                           f"({match_label(plan, rule.match, 'ingress')})")
                ref = ctx.rule_ref(rule)
                if ref not in refs:
                    refs.append(ref)
            cause = f"from {anyaddr}, allowed by " + "; ".join(why)
            by_cause.setdefault(cause, []).append(
                f"{name} ({'tcp' if s.protocol == TCP else 'udp'}/{s.dport})")
        names = sorted({h[1] for h in hits})
        addrs = ", ".join(str(a.network_address) for a in p.addresses)
        out.append(Finding(
            "PW002", worst,
            f"port {p.name} exposes {_names(names, 5)} to every address",
            refs,
            f"port {p.name} ({addrs}) accepts new connections on "
            + "; and on ".join(f"{', '.join(svcs)} {cause}" for cause, svcs in by_cause.items())
            + ". Checked over every source address.",
            "restrict these rules to the prefixes that need the service (a management network,"
            " a bastion's remote group) instead of anywhere"))
    return out


# ------------------------------------------------------------------ PW003
def check_redundant_rules(ctx: _Ctx) -> list[Finding]:
    """Rules that add nothing to any port's policy (:mod:`portwall.analyze.redundancy`)."""
    out: list[Finding] = []
    plan = ctx.plan
    for red in redundant_rules(plan, ctx.ports_of_ruleset):
        rs, r = red.ruleset, red.rule
        d = rs.direction
        why = "; ".join(
            f"rule {short_id(o.origin.resource_id)}"
            + (f" of group {ors.group_name}" if ors is not rs else "")
            + f" ({match_label(plan, o.match, d)})" for o, ors in red.cover)
        refs = [ctx.rule_ref(r), ctx.group_ref(rs), *(ctx.rule_ref(o) for o, _ in red.cover)]
        if not red.cross:
            out.append(Finding(
                "PW003", "low",
                f"rule {short_id(r.origin.resource_id)} of group {rs.group_name} is redundant",
                refs,
                f"{d} rule {short_id(r.origin.resource_id)} ({match_label(plan, r.match, d)})"
                f" can never allow anything the group's other rules do not already allow: {why}",
                "delete the redundant rule (or narrow the wider one if it was the mistake)"))
            continue
        others = sorted({ors.group_name for _, ors in red.cover if ors is not rs})
        for _, ors in red.cover:
            ref = ctx.group_ref(ors)
            if ors is not rs and ref not in refs:
                refs.append(ref)
        names = [p.name for p in red.ports]
        out.append(Finding(
            "PW003", "info",
            f"rule {short_id(r.origin.resource_id)} of group {rs.group_name} is redundant for every port"
            f" of the group (through group{'s' if len(others) > 1 else ''} {', '.join(others)})",
            refs,
            f"{d} rule {short_id(r.origin.resource_id)} ({match_label(plan, r.match, d)}) allows nothing"
            f" that the ports of group {rs.group_name} ({_names(names)}) are not already allowed"
            f" by the rules of their groups (a port's policy is the union of its groups'"
            f" rules): {why}",
            f"delete the rule if every port of group {rs.group_name} is meant to stay in "
            f"{' and '.join(others)} (a port that later joins {rs.group_name} alone would lose"
            " what it allows); otherwise keep it"))
    return out


# ------------------------------------------------------------------ PW004
def check_empty_remote_groups(ctx: _Ctx) -> list[Finding]:
    out: list[Finding] = []
    plan = ctx.plan
    for rs, r, ref, aset in _remote_group_rules(plan):
        if aset is not None and aset.members:
            continue
        gid = aset.group_id if aset else ref.set_id[3:-3]
        gname = aset.group_name if aset else gid
        other = plan.address_sets.get(f"sg-{gid}-v{6 if r.match.family == 4 else 4}")
        has_ports = any(gid in p.groups for p in plan.ports) or bool(other and other.members)
        sev = "info" if has_ports else "low"
        why = (f"no port of group {gname} has an IPv{r.match.family} address"
               if has_ports else f"group {gname} has no ports")
        out.append(Finding(
            "PW004", sev,
            f"rule {short_id(r.origin.resource_id)} of group {rs.group_name} refers to an empty "
            f"remote group",
            [ctx.rule_ref(r), ctx.group_ref(rs)] + (
                [] if gid == rs.group_id else [ResourceRef("security_group", gid, gname)]),
            f"{rs.direction} rule ({match_label(plan, r.match, rs.direction)}) allows nothing "
            f"today: "
            f"{why}.",
            f"delete the rule if group {gname} is not meant to be used, or add its ports"))
    return out


# ------------------------------------------------------------------ PW005
def check_port_security_disabled(ctx: _Ctx) -> list[Finding]:
    out = []
    for p in ctx.plan.ports:
        if p.filtered:
            continue
        addrs = ", ".join(str(a.network_address) for a in p.addresses) or "no fixed IP"
        out.append(Finding(
            "PW005", "medium", f"port {p.name} has port security disabled", [ctx.port_ref(p)],
            f"port {p.name} ({addrs}) is not filtered at all: any source address and MAC may "
            "leave it and every packet reaches it, whatever the security groups say.",
            "enable port_security_enabled and attach security groups; for a router/NAT VM use "
            "allowed address pairs instead"))
    return out


# ------------------------------------------------------------------ PW006
def check_wide_pairs(ctx: _Ctx) -> list[Finding]:
    out = []
    model = ctx.model
    remote = {aset.group_id if aset else ref.set_id[3:-3]
              for _, _, ref, aset in _remote_group_rules(ctx.plan)}
    for port in model.ports.values():
        if not port.allowed_address_pairs or not port.port_security_enabled:
            continue
        in_remote = sorted(model.security_groups[g].name or g for g in port.security_groups or ()
                           if g in remote and g in model.security_groups)
        subnets = [s.network for s in model.subnets_of(port.network_id)]
        for i, pair in enumerate(port.allowed_address_pairs):
            net = pair.network
            same = [s for s in subnets if s.version == net.version]
            if any(net.subnet_of(s) for s in same):  # type: ignore[arg-type]
                continue
            wider = any(s.subnet_of(net) and s != net for s in same)  # type: ignore[arg-type]
            if net.prefixlen <= WIDE_PREFIX[net.version]:
                # what makes it dangerous is a remote-group rule naming one of its groups
                sev, what = "high" if in_remote else "medium", f"very wide ({net})"
            elif wider:
                sev, what = "medium", f"wider than the port's subnet ({net})"
            else:
                sev, what = "low", f"outside the port's subnets ({net})"
            out.append(Finding(
                "PW006", sev,
                f"address pair {net} of port {port.label()} is {what.split(' (')[0]}",
                [ResourceRef("port", port.id, port.name)],
                f"allowed_address_pairs[{i}] of port {port.label()} is {what}; the port's "
                f"subnets are {', '.join(map(str, subnets)) or 'none'}. The port may send from "
                f"any address in {net}, and every remote-group rule that names one of its groups"
                f" admits all of {net}" + (
                    f": today group {', '.join(in_remote)} is used as a remote group."
                    if in_remote else " (none does today)."),
                "narrow the pair to the addresses the VM really uses (a VIP /32, the routed "
                "subnet); keep router/NAT ports in their own security group"))
    return out


# ------------------------------------------------------------------ PW007
def check_zone_overlaps(ctx: _Ctx) -> list[Finding]:
    model = ctx.model
    zone_of = {p.network_id: p.zone for p in ctx.plan.ports}
    for nid, z in zone_for(model.networks).items():
        zone_of.setdefault(nid, z)
    by_zone: dict[int, list[Any]] = defaultdict(list)
    for s in model.subnets.values():
        by_zone[zone_of.get(s.network_id, -1)].append(s)
    out = []
    for zone, subs in by_zone.items():
        for i, a in enumerate(subs):
            for b in subs[i + 1:]:
                if a.network_id == b.network_id or a.network.version != b.network.version:
                    continue
                if a.network.overlaps(b.network):
                    out.append(Finding(
                        "PW007", "high",
                        f"subnets {a.label()} and {b.label()} overlap in conntrack zone {zone}",
                        [ResourceRef("subnet", a.id, a.name), ResourceRef("subnet", b.id, b.name)],
                        f"{a.cidr} (network {_net(model, a.network_id)}) and {b.cidr} (network "
                        f"{_net(model, b.network_id)}) overlap and share conntrack zone {zone}:"
                        " connections of one network can match entries of the other.",
                        "give the networks distinct conntrack zones, or renumber one subnet"))
    return out


def _net(model: Model, network_id: str) -> str:
    net = model.networks.get(network_id)
    return (net.name if net is not None else "") or short_id(network_id)


# ------------------------------------------------------------------ PW008
def check_host_overlaps(ctx: _Ctx, host: HostRules) -> list[Finding]:
    out = []
    subnets = list(ctx.model.subnets.values())
    for r in host.nat_rules():
        for s in subnets:
            net = s.network
            hit = None
            if r.src is not None and not r.src_negated and r.src.version == net.version \
                    and r.src.overlaps(net):
                hit = ("source", r.src)
            elif r.dst is not None and not r.dst_negated and r.dst.version == net.version \
                    and r.dst.overlaps(net) and r.target in ("DNAT", "REDIRECT", "NETMAP"):
                hit = ("destination", r.dst)
            if hit is None:
                continue
            scoped = (r.out_iface is not None and not r.out_negated) or (
                r.in_iface is not None and not r.in_negated)
            sev = "medium" if scoped else "critical"
            out.append(Finding(
                "PW008", sev,
                f"tenant subnet {s.label()} ({net}) overlaps host NAT rule {r.target} "
                f"{hit[1]}",
                [ResourceRef("subnet", s.id, s.name),
                 ResourceRef("network", s.network_id, _net(ctx.model, s.network_id))],
                f"the host ({host.source or 'rules'}) has `{r.text}` in table {r.table}; its "
                f"{hit[0]} {hit[1]} overlaps tenant subnet {net}. With bridge-nf-call-iptables"
                f"=1 bridged VM traffic traverses nat {r.chain} and "
                + ("may be rewritten when it leaves through that interface."
                   if scoped else "gets its addresses rewritten (seed 003: docker's MASQUERADE)."),
                "renumber the tenant subnet, or exempt tenant bridges from the host rule (e.g. "
                "`-I POSTROUTING -o brq+ -j RETURN` before it, or have docker MASQUERADE only "
                "packets marked as coming from docker0)"))
    for hn in host.networks:
        for s in subnets:
            if s.network.version == hn.network.version and s.network.overlaps(hn.network):
                out.append(Finding(
                    "PW008", "high",
                    f"tenant subnet {s.label()} ({s.cidr}) overlaps host network {hn.network} "
                    f"on {hn.device}",
                    [ResourceRef("subnet", s.id, s.name)],
                    f"the host has {hn.network} on {hn.device}; tenant subnet {s.cidr} overlaps "
                    "it, so the host's routing and NAT for that range also apply to tenant "
                    "addresses.",
                    "renumber the tenant subnet or the host network"))
    return out


# ------------------------------------------------------------------ PW009
#: Ranges that software on compute hosts configures by default, with NAT rules to match.
HOST_DEFAULTS: tuple[tuple[str, str], ...] = (
    ("172.17.0.0/16", "docker's default bridge docker0 (MASQUERADE -s 172.17.0.0/16)"),
    ("192.168.122.0/24", "libvirt's default network virbr0 (MASQUERADE)"),
    ("10.88.0.0/16", "podman's default network cni-podman0 (MASQUERADE)"),
)


def check_host_defaults(ctx: _Ctx) -> list[Finding]:
    out = []
    for cidr, what in HOST_DEFAULTS:
        net = ipaddress.ip_network(cidr)
        for s in ctx.model.subnets.values():
            if s.network.version == 4 and s.network.overlaps(net):
                out.append(Finding(
                    "PW009", "low",
                    f"tenant subnet {s.label()} ({s.cidr}) overlaps {cidr}, {what.split(' (')[0]}",
                    [ResourceRef("subnet", s.id, s.name)],
                    f"{cidr} is {what}. If a compute host runs it, bridged tenant traffic of "
                    f"{s.cidr} can be NATed by the host's rule (seed 003). No host rules were "
                    "given, so this could not be checked.",
                    "run `portwall audit FILE --host-rules <iptables-save dump>` (or "
                    "--host-netns) to check the hosts, or pick another range"))
    return out


# ------------------------------------------------------------------ driver
#: Findings about one rule (its first resource); dropped when the file did not write it.
ABOUT_A_RULE = ("PW003", "PW004")


def audit(model: Model, plan: HostPlan, host: HostRules | None = None,
          written: Callable[[str], bool] | None = None) -> list[Finding]:
    """Every finding for ``model`` compiled as ``plan``, most severe first.

    ``written(id)`` says whether the user wrote a resource (a topology's
    :meth:`~portwall.topology.Topology.written`); findings about a rule the model added by
    itself (the implicit ``default`` group's rules, automatic egress rules) are then left
    out: the user cannot act on them. Exposure findings (PW001, PW002) always stay."""
    findings: list[Finding] = []
    # Interval and box arithmetic allocates millions of short-lived acyclic objects; the
    # cyclic collector would walk the whole (large) plan on each burst.
    with gc_paused():
        ctx = _Ctx(model, plan)
        for check in (check_wide_pairs_in_remote_groups, check_sensitive_open,
                      check_redundant_rules, check_empty_remote_groups,
                      check_port_security_disabled, check_wide_pairs, check_zone_overlaps):
            findings += check(ctx)
        findings += check_host_defaults(ctx) if host is None else check_host_overlaps(ctx, host)
        from portwall.analyze.l3audit import router_findings

        findings += router_findings(model, plan)
    if written is not None:
        findings = [f for f in findings if not (
            f.code in ABOUT_A_RULE and f.resources and f.resources[0].type ==
            "security_group_rule" and not written(f.resources[0].id))]
    findings.sort(key=lambda f: (-SEVERITIES.index(f.severity), f.code))
    return findings


__all__ = [
    "SEVERITIES",
    "Finding",
    "HostRules",
    "MatrixRow",
    "ResourceRef",
    "audit",
    "reachability_matrix",
]
