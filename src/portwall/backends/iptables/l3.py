"""Routers on iptables: NAT, metadata redirect and FWaaS v2 in each router's namespace.

Rendered from :class:`portwall.ir.l3.RouterPlan` only (no model), per router and family, as
``iptables-restore --noflush`` input that declares portwall's own chains (declaring a chain
in a noflush restore empties it) and fills them, so one restore per family replaces all of
a router's rules atomically and leaves every other program's rules alone. Layout
(``neutron-semantics.md`` sections 4 and 5, with portwall's ``pw-`` prefix)::

    mangle PREROUTING  -> pw-l3-mark:  -i qg-X -> MARK 0x2/0xffff (came in by the gateway)
    nat    PREROUTING  -> pw-l3-pre:   metadata REDIRECT (-i qr+), floating-IP DNAT
    nat    OUTPUT      -> pw-l3-out:   floating-IP DNAT for the router's own packets
    nat    POSTROUTING -> pw-l3-post:  ! -o qg-X ! DNAT -> ACCEPT (east-west: no SNAT);
                                       -> pw-l3-snat: -> pw-l3-fsnat (P -> F first), then
                                       -o qg-X SNAT to the gateway, DNATed and not from the
                                       gateway SNAT to the gateway (hairpin)
    filter FORWARD     -> pw-l3-fwd:   metadata address never forwarded; per firewall-group
                                       port -i qr-X -> pw-fe<group>, -o qr-X -> pw-fi<group>
    pw-fi / pw-fe:     INVALID DROP, ESTABLISHED,RELATED RETURN, the rules in order
                       (allow RETURN, deny DROP, reject REJECT port-unreachable), DROP

A group chain RETURNs on allow instead of ACCEPTing, so an east-west packet must pass the
group of the interface it enters by *and* the one it leaves by (the evaluator's rule).

Floating-IP rules also CONNMARK the connection with the floating IP's mark
(:func:`portwall.kernel.conntrack.fip_ct_marks`) so that moving it cuts its connections
with one in-kernel ctnetlink flush (:func:`reconcile_router`). Comments carry the rid, then
names for people (``fwr-<id> group <name> ingress tcp/22 allow``); parsers read the rid.

The nftables backend renders the same RouterPlan (:mod:`portwall.backends.nftables.l3`);
the lab picks the L3 renderer through :func:`portwall.lab.routers.l3_backend`.
"""

from __future__ import annotations

import ipaddress
import re
import shlex
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Literal

from portwall.backends.base import ApplyError, ApplyReport, RouterRenderCache
from portwall.backends.iptables.render import _comment, match_spec
from portwall.backends.iptables.spelling import name_token, protocol_spelling
from portwall.ir.l3 import FirewallPlan, FloatingIPNat, FwAction, FwRule, RouterPlan
from portwall.ir.types import Family, Origin
from portwall.kernel.conntrack import DNAT_MASK, SNAT_MASK, CtNetlink, fip_ct_marks
from portwall.kernel.runner import Job, Runner

MARK_GW = "0x2/0xffff"
CHAINS = {
    "mangle": [("PREROUTING", "pw-l3-mark")],
    "nat": [("PREROUTING", "pw-l3-pre"), ("OUTPUT", "pw-l3-out"),
            ("POSTROUTING", "pw-l3-post")],
    "filter": [("FORWARD", "pw-l3-fwd")],
}
EXTRA_NAT = ("pw-l3-snat", "pw-l3-fsnat")
_DIRECTIONS: tuple[Literal["egress", "ingress"], ...] = ("egress", "ingress")


def fw_chain(fw: FirewallPlan, direction: str) -> str:
    return f"pw-f{'i' if direction == 'ingress' else 'e'}{fw.id.replace('-', '')[:12]}"


# Comment notes: the words after a rule's rid, for people (the rid stays the first token,
# as in the port filters' comments, :mod:`.notes`). The nftables router table says the same
# words (its own :mod:`portwall.backends.nftables.notes`: no backend imports another).
def group_note(fw: FirewallPlan, direction: str | None = None) -> str:
    """After a firewall group's rid: ``group <name> [<direction>]``."""
    return " ".join(["group", name_token(fw.name or fw.id), *((direction,) if direction else ())])


def fw_rule_note(fw: FirewallPlan, direction: str, r: FwRule) -> str:
    """After a firewall rule's rid: group, direction, protocol/port and action."""
    m = r.match
    proto = (protocol_spelling(m.protocol) or str(m.protocol)) if m.protocol else "any"
    ports = f"/{m.dport}" if m.dport is not None else ""
    return f"{group_note(fw, direction)} {proto}{ports} {r.action.value}"


def fip_note(f: FloatingIPNat) -> str:
    """After a floating IP's rid: its name, the translation and the port's name."""
    return (f"fip {name_token(f.origin.resource_name or str(f.floating))} {f.floating}->"
            f"{f.fixed} port {name_token(f.port_name or f.port_id)}")


@dataclass
class RouterRuleset:
    """One router's rules: ``tables[family][table] = [(chain, [rule specs])]``."""

    router_id: str
    netns: str
    tables: dict[int, dict[str, list[tuple[str, list[str]]]]]
    provenance: dict[str, Origin] = field(default_factory=dict)

    def table_input(self, family: Family, table: str) -> str:
        """One table's ``iptables-restore --noflush`` section (hooks excluded)."""
        chains = self.tables.get(family, {}).get(table, [])
        out = [f"*{table}", *(f":{name} - [0:0]" for name, _ in chains)]
        out += [f"-A {name} {r}" for name, rules in chains for r in rules]
        return "\n".join([*out, "COMMIT"]) + "\n"

    def restore_input(self, family: Family) -> str:
        """The ``iptables-restore --noflush`` text for one family (hooks excluded)."""
        out: list[str] = []
        for table, chains in self.tables.get(family, {}).items():
            out.append(f"*{table}")
            out += [f":{name} - [0:0]" for name, _ in chains]
            out += [f"-A {name} {r}" for name, rules in chains for r in rules]
            out.append("COMMIT")
        return "\n".join(out) + "\n"


def _fw_rules(fw: FirewallPlan, direction: Literal["ingress", "egress"], family: Family,
              prov: dict[str, Origin]) -> list[str]:
    rules = fw.rules(direction)
    out = ["-m conntrack --ctstate INVALID " + _comment("pw-fw-invalid") + " -j DROP",
           "-m conntrack --ctstate RELATED,ESTABLISHED " + _comment("pw-fw-established")
           + " -j RETURN"]
    reject = "icmp6-port-unreachable" if family == 6 else "icmp-port-unreachable"
    for r in rules or ():
        if r.match.family != family:
            continue
        prov[r.rid] = r.origin
        target = {FwAction.ALLOW: "RETURN", FwAction.DENY: "DROP",
                  FwAction.REJECT: f"REJECT --reject-with {reject}"}[r.action]
        out.append(" ".join([*match_spec(r.match, {}),
                             _comment(r.rid, fw_rule_note(fw, direction, r)), "-j", target]))
    prov[f"fw-default-{fw.id}"] = fw.origin
    note = f"{group_note(fw, direction)} default-deny"
    out.append(f"{_comment(f'fw-default-{fw.id}', note)} -j DROP")
    return out


def render_router(r: RouterPlan) -> RouterRuleset:
    """A router's rules for both families (NAT is IPv4 only, as in Neutron)."""
    prov: dict[str, Origin] = {}
    tables: dict[int, dict[str, list[tuple[str, list[str]]]]] = {4: {}, 6: {}}
    gw = r.gateway
    for fam in (4, 6):
        fwd: list[str] = []
        chains: list[tuple[str, list[str]]] = []
        if fam == 4 and r.metadata is not None:
            fwd.append(f"-d {r.metadata.address}/32 {_comment('pw-metadata-never-forwarded')}"
                       " -j DROP")
        for fw in r.firewalls:
            if not fw.enabled:
                continue
            for direction in _DIRECTIONS:
                name = fw_chain(fw, direction)
                chains.append((name, _fw_rules(fw, direction, fam, prov)))
            for itf in r.interfaces:
                if itf.port_id in fw.ports:
                    fwd.append(f"-i {itf.device} {_comment(f'fw-{fw.id}', group_note(fw, 'egress'))}"
                               f" -j {fw_chain(fw, 'egress')}")
                    fwd.append(f"-o {itf.device} {_comment(f'fw-{fw.id}', group_note(fw, 'ingress'))}"
                               f" -j {fw_chain(fw, 'ingress')}")
        tables[fam]["filter"] = [("pw-l3-fwd", fwd), *chains]
    # IPv4 NAT
    mark: list[str] = []
    pre: list[str] = []
    out: list[str] = []
    post: list[str] = []
    snat: list[str] = []
    fsnat: list[str] = []
    if r.metadata is not None:
        md = r.metadata
        prov["pw-metadata"] = md.origin
        pre.append(f"-d {md.address}/32 -i qr+ -p tcp -m tcp --dport {md.port}"
                   f" {_comment('pw-metadata')} -j REDIRECT --to-ports {md.local_port}")
    marks = fip_ct_marks(f.floating for f in r.floating_ips)
    for f in r.floating_ips:
        prov[f"fip-{f.id}"] = f.origin
        c = _comment(f"fip-{f.id}", fip_note(f))
        slot = marks.get(str(f.floating))
        for chain, match, ctmark, mask in (
                (pre, f"-d {f.floating}/32", (slot or 0) << 16, DNAT_MASK),
                (out, f"-d {f.floating}/32", (slot or 0) << 16, DNAT_MASK),
                (fsnat, f"-s {f.fixed}/32", slot or 0, SNAT_MASK)):
            if slot is not None:  # names the connection's floating IP, to cut it by mark
                chain.append(f"{match} {c} -j CONNMARK --set-xmark {ctmark:#x}/{mask:#x}")
        pre.append(f"-d {f.floating}/32 {c} -j DNAT --to-destination {f.fixed}")
        out.append(f"-d {f.floating}/32 {c} -j DNAT --to-destination {f.fixed}")
        fsnat.append(f"-s {f.fixed}/32 {c} -j SNAT --to-source {f.floating}")
    if gw is not None:
        mark.append(f"-i {gw.device} {_comment('pw-from-gateway')} -j MARK --set-xmark "
                    f"{MARK_GW}")
        post.append(f"! -o {gw.device} -m conntrack ! --ctstate DNAT"
                    f" {_comment('pw-no-snat-east-west')} -j ACCEPT")
        post.append(f"{_comment('pw-snat')} -j pw-l3-snat")
        snat.append(f"{_comment('pw-float-snat')} -j pw-l3-fsnat")
        if r.snat is not None:
            prov["pw-snat"] = r.snat.origin
            snat.append(f"-o {gw.device} {_comment('pw-snat-gateway')} -j SNAT --to-source"
                        f" {r.snat.to}")
            snat.append(f"-m mark ! --mark {MARK_GW} -m conntrack --ctstate DNAT"
                        f" {_comment('pw-snat-hairpin')} -j SNAT --to-source {r.snat.to}")
    tables[4]["mangle"] = [("pw-l3-mark", mark)]
    tables[4]["nat"] = [("pw-l3-pre", pre), ("pw-l3-out", out), ("pw-l3-post", post),
                        ("pw-l3-snat", snat), ("pw-l3-fsnat", fsnat)]
    return RouterRuleset(r.id, r.netns, tables, prov)


class L3Renderer(RouterRenderCache[RouterRuleset]):
    """Renders every router of a plan, reusing a router's output while its plan is equal."""

    def __init__(self) -> None:
        super().__init__(render_router)


def _restore(family: Family) -> list[str]:
    return ["iptables-restore" if family == 4 else "ip6tables-restore", "--noflush", "-w"]


class L3Applier:
    """Keeps one router namespace in line with its ruleset: one atomic restore per family
    and only when that family's text changed; hooks added once; nothing else touched."""

    def __init__(self, netns: str, runner: Runner | None = None) -> None:
        self.netns = netns
        self.runner = runner or Runner(netns)
        self._applied: dict[tuple[int, str], str] = {}
        self._hooked: set[int] = set()
        self._ct: CtNetlink | None = None

    @property
    def ct(self) -> CtNetlink:
        """In-process ctnetlink in the router's namespace (opened on first use)."""
        if self._ct is None:
            self._ct = CtNetlink(self.netns)
        return self._ct

    def close(self) -> None:
        """Close the ctnetlink socket (it holds the namespace alive)."""
        if self._ct is not None:
            self._ct.close()
            self._ct = None

    def _hooks(self, family: Family, rs: RouterRuleset) -> str:
        """Jumps from the built-in chains, for the tables that lack them (checked once)."""
        if family in self._hooked:
            return ""
        dump = self.runner.run(["iptables-save" if family == 4 else "ip6tables-save"]).stdout
        out = []
        for table, hooks in CHAINS.items():
            if table not in rs.tables.get(family, {}):
                continue
            lines = [f"*{table}"]
            for builtin, chain in hooks:
                if f"-A {builtin} -j {chain}" not in dump:
                    lines.append(f"-I {builtin} 1 -j {chain}")
            if len(lines) > 1:
                out += [*lines, "COMMIT"]
        self._hooked.add(family)
        return "\n".join(out) + ("\n" if out else "")

    def apply(self, rs: RouterRuleset) -> ApplyReport:
        t0 = time.perf_counter()
        report = ApplyReport("iptables")
        jobs: list[tuple[int, str, Job]] = []
        fams: tuple[Family, ...] = (4, 6)
        texts: dict[tuple[int, str], str] = {}
        for fam in fams:
            # only the tables whose text changed (a floating IP touches nat alone): each
            # table in the input costs iptables-nft a read of that table
            changed = {t: rs.table_input(fam, t) for t in rs.tables.get(fam, {})}
            changed = {t: x for t, x in changed.items() if self._applied.get((fam, t)) != x}
            if not changed:
                continue
            texts |= {(fam, t): x for t, x in changed.items()}
            # chains before the hooks that jump to them, all in one restore
            body = "".join(changed.values()) + self._hooks(fam, rs)
            jobs.append((fam, body, Job(_restore(fam), body)))
        results = self.runner.run_all([j for _, _, j in jobs], write=True)
        for (done, _text, job), res in zip(jobs, results, strict=True):
            if res.returncode != 0:
                self._hooked.discard(done)
                raise ApplyError(f"router {rs.router_id}: {job.argv[0]} failed",
                                 command=" ".join(job.argv), stderr=res.stderr)
            self._applied |= {k: v for k, v in texts.items() if k[0] == done}
            report.noop = False
            report.write_commands.append(" ".join(job.argv))
        report.changes["router_restores"] = len(jobs)
        report.seconds = time.perf_counter() - t0
        return report

    def forget(self) -> None:
        """Drop the cache (the namespace was rebuilt)."""
        self._applied.clear()
        self._hooked.clear()


# ------------------------------------------------------------------ conntrack
@dataclass(frozen=True)
class RouterCt:
    """One tracked connection in a router: original tuple and the reply's addresses."""

    family: int
    protocol: int
    src: str
    dst: str
    sport: int | None
    dport: int | None
    reply_src: str
    reply_dst: str
    icmp_type: int | None = None

    def delete_args(self) -> list[str]:
        args = ["conntrack", "-D", "-f", "ipv6" if self.family == 6 else "ipv4",
                "-s", self.src, "-d", self.dst, "-p", str(self.protocol)]
        if self.sport is not None and self.dport is not None:
            args += ["--sport", str(self.sport), "--dport", str(self.dport)]
        return args


def parse_router_ct(text: str) -> list[RouterCt]:
    """``conntrack -L -o extended``: both tuples' addresses (NAT shows in the reply)."""
    out = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 5 or parts[0] not in ("ipv4", "ipv6"):
            continue
        kv: list[tuple[str, str]] = [tuple(t.split("=", 1)) for t in parts if "=" in t]  # type: ignore[misc]
        srcs = [v for k, v in kv if k == "src"]
        dsts = [v for k, v in kv if k == "dst"]
        if len(srcs) < 2 or len(dsts) < 2:
            continue
        first: dict[str, str] = {}
        for k, v in kv:
            first.setdefault(k, v)

        def num(k: str, f: dict[str, str] = first) -> int | None:
            return int(f[k]) if k in f else None

        out.append(RouterCt(4 if parts[0] == "ipv4" else 6, int(parts[3]), srcs[0], dsts[0],
                            num("sport"), num("dport"), srcs[1], dsts[1], num("type")))
    return out


def stale_connections(old: RouterPlan | None, new: RouterPlan, entries: Iterable[RouterCt],
                      allowed: Callable[[RouterCt], bool]) -> list[RouterCt]:
    """Connections the new router plan no longer carries: a floating IP moved or gone
    (DNAT towards, or SNAT from, a fixed IP that no longer owns it), or a firewall group
    that no longer allows the original packet. With ``old`` known and its firewall groups
    unchanged, only the floating-IP test runs (no evaluation per entry)."""
    fip_of = {str(f.floating): str(f.fixed) for f in new.floating_ips}
    fixed_to = {str(f.fixed): str(f.floating) for f in new.floating_ips}
    olds = {str(f.floating) for f in old.floating_ips} if old is not None else set()
    ext = new.gateway.networks() if new.gateway is not None else ()
    own = {str(a.ip) for i in new.all_interfaces() for a in i.addresses}

    def was_fip(addr: str) -> bool:  # without the old plan: any external non-own address
        return addr in olds or (old is None and addr not in own and any(
            ipaddress.ip_address(addr) in n for n in ext))

    snat_to = str(new.snat.to) if new.snat is not None else None
    fw_changed = old is None or old.firewalls != new.firewalls
    out = []
    for e in entries:
        dnat_gone = (e.dst in fip_of and fip_of[e.dst] != e.reply_src) or (
            e.dst not in fip_of and was_fip(e.dst))
        fsnat_gone = (e.reply_dst != e.src and e.reply_dst != snat_to
                      and fixed_to.get(e.src) != e.reply_dst)
        if (e.family == 4 and (dnat_gone or fsnat_gone)) or (fw_changed and not allowed(e)):
            out.append(e)
    return out


def reconcile_router(runner: Runner, old: RouterPlan | None, new: RouterPlan,
                     allowed: Callable[[RouterCt], bool], ct: CtNetlink | None = None) -> int:
    """Delete the router's connections :func:`stale_connections` names; returns how many.

    When only floating IPs changed, the connections of each moved or removed one go by
    address: with ``ct`` (in-process ctnetlink) two kernel flushes per floating IP whose
    rules mark its connections (to it, from it), else (no socket, or no mark for that address) through the
    ``conntrack`` tool (``-D -d F`` and ``-D -q F``, one shell)."""
    if old is not None and old.floating_ips == new.floating_ips and \
            old.firewalls == new.firewalls and old.snat == new.snat:
        return 0
    if old is not None and old.firewalls == new.firewalls and old.snat == new.snat:
        now = {(f.floating, f.fixed) for f in new.floating_ips}
        moved = sorted({str(f.floating) for f in old.floating_ips if (f.floating, f.fixed)
                        not in now})
        if not moved:
            return 0
        marks = fip_ct_marks(f.floating for f in old.floating_ips) if ct is not None else {}
        by_mark = [marks[a] for a in moved if a in marks]
        rest = [a for a in moved if a not in marks]
        cut = ct.cut_floating(by_mark) if ct is not None and by_mark else 0
        if not rest:
            return cut
        cmds = [f"conntrack -D {flag} {a} 2>&1" for a in rest for flag in ("-d", "-q")]
        out = runner.run(["sh", "-c", "; ".join(cmds) + "; true"], write=True).stdout
        return cut + sum(int(n) for n in re.findall(r"(\d+) flow entries have been deleted",
                                                    out))
    listing = runner.run(["conntrack", "-L", "-o", "extended"]).stdout
    stale = stale_connections(old, new, parse_router_ct(listing), allowed)
    if not stale:
        return 0
    cmds = [shlex.join(e.delete_args()) for e in stale]
    runner.run(["sh", "-c", "; ".join(cmds) + "; true"], write=True)
    return len(stale)
