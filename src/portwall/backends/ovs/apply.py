"""Make one integration bridge match an :class:`OvsRuleset`: one OpenFlow bundle per change.

* Every write is a single OpenFlow 1.5 bundle over one long-lived connection to the bridge
  (:mod:`.ofconn`; ``ovs-ofctl --bundle`` as the fallback transport): the switch applies
  all of it or none of it, and a bundle that is not committed (the applier killed half-way)
  is discarded when its connection closes, so no port ever runs a partial rule set.
* Incremental: the applier remembers, per owner cookie, the flows it wrote; a change sends,
  for the owners that differ, the flows that differ (a vanished flow deleted by its table,
  priority and match, a new or changed one added), nothing for the others. A fresh
  applier (or one after an error) first asks the switch (a flow dump compared by cookie
  and flow identity) and rewrites, in one bundle, just the owners that differ; so a second
  apply sends nothing.
* Drift: the bridge's flows against the rendered ones, by cookie, named by owner.
* Connections: after a change, conntrack entries of the userspace datapath
  (``dpctl/dump-conntrack``) are checked with the evaluator against the new plan (as
  :mod:`portwall.kernel.conntrack` does for the kernel) and those no longer allowed are
  deleted (``dpctl/flush-conntrack`` with the 5-tuple).
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Callable, Iterable
from typing import Any

from portwall.backends.base import ApplyError, ApplyReport
from portwall.backends.ovs import daemon
from portwall.backends.ovs import flows as F
from portwall.backends.ovs.flows import Owner
from portwall.backends.ovs.ofconn import OFCTL, Transport, default_transport, flow_slot
from portwall.backends.ovs.ovsdb import BRIDGE, Ovsdb, OvsError, mgmt, vswitchd_ctl
from portwall.backends.ovs.render import OvsRuleset
from portwall.ir.types import HostPlan
from portwall.kernel.conntrack import CtEntry, PlanVerdict


class OvsApplier:
    """Applies rulesets to the integration bridge of namespace ``netns``'s private OVS."""

    def __init__(self, netns: str | None, bridge: str = BRIDGE, *,
                 transport: Transport | None = None,
                 ofports: Callable[[], dict[str, int]] | None = None) -> None:
        """``transport`` and ``ofports`` (device -> OpenFlow port) replace the bridge
        connection and OVSDB, for tests of the applier's decisions without a switch."""
        if netns is None:
            raise OvsError("the ovs backend works on a namespace's private Open vSwitch; "
                           "portwall never programs the machine's own")
        self.netns, self.bridge = netns, bridge
        self.target = mgmt(netns, bridge)
        self._db: Ovsdb | None = None
        self._applied: dict[int, tuple[str, ...]] | None = None  # owner -> flows on the bridge
        # owner cookie -> (the Owner object, its resolved texts, its absent devices, every
        # device it names), valid for ``_ports``
        self._resolved: dict[int, tuple[Owner, tuple[str, ...], frozenset[str],
                                        frozenset[str]]] = {}
        self._ports: dict[str, int] = {}
        # owner cookie -> the absent devices it names (few: devices not yet on the bridge)
        self._absent: dict[int, frozenset[str]] = {}
        self.commands: list[list[str]] = []
        self._transport = transport
        self._ofports = ofports

    # ------------------------------------------------------------------ helpers
    @property
    def db(self) -> Ovsdb:
        if self._db is None:
            if not daemon.running(self.netns):
                daemon.start(self.netns)  # a namespace without its Open vSwitch yet
            self._db = Ovsdb(self.netns)
        return self._db

    @property
    def transport(self) -> Transport:
        if self._transport is None:
            self.db  # noqa: B018 - the daemons (and the bridge's socket) exist first
            self._transport = default_transport(self.target)
        return self._transport

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None
        if self._db is not None:
            self._db.close()
            self._db = None

    def __enter__(self) -> OvsApplier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self, argv: list[str], input: str | None = None,
             ok: Iterable[int] = (0,)) -> subprocess.CompletedProcess[str]:
        self.commands.append(argv)
        proc = subprocess.run(argv, input=input, capture_output=True, text=True, timeout=300)
        if proc.returncode not in tuple(ok):
            raise ApplyError(f"{argv[0]} {argv[3] if len(argv) > 3 else ''} failed",
                             command=" ".join(argv), stderr=proc.stderr)
        return proc

    def resolved(self, ruleset: OvsRuleset, ofports: dict[str, int] | None = None
                 ) -> tuple[dict[int, tuple[str, ...]], list[str]]:
        """owner -> flow texts with port numbers; flows of absent devices are left out."""
        if ofports is None:
            ofports = self._ofports() if self._ofports else self.db.ofports(self.bridge)
        if ofports != self._ports:
            # a device came, went or was renumbered: only the owners naming one of those
            # devices are resolved again (a new port's device is one more entry here; all
            # 60,000 flows re-resolved cost ~200 ms)
            was = self._ports
            moved = {d for d in ofports.keys() | was.keys() if ofports.get(d) != was.get(d)}
            self._resolved = {c: hit for c, hit in self._resolved.items()
                              if hit[3].isdisjoint(moved)}
            self._ports = dict(ofports)
        cache, owners = self._resolved, ruleset.owners
        # two comprehensions over the owners (identity checks), the loop only for the few
        # owners that are new or changed since the last render
        stale = [c for c, o in owners.items() if (h := cache.get(c)) is None or h[0] is not o]
        absent = self._absent
        for cookie in stale:
            hit = cache[cookie] = self._resolve_owner(owners[cookie], ofports)
            if hit[2]:
                absent[cookie] = hit[2]
            else:
                absent.pop(cookie, None)
        if len(cache) > len(owners):  # owners gone since
            for c in [c for c in cache if c not in owners]:
                del cache[c]
        out = {c: cache[c][1] for c in owners}
        skipped: set[str] = set()
        for c, devices in list(absent.items()):
            if c in cache:
                skipped |= devices
            else:
                del absent[c]
        warnings = [f"device {d} is not on bridge {self.bridge}: its flows are not written"
                    for d in sorted(skipped)]
        return out, warnings

    def _resolve_owner(self, owner: Owner, ofports: dict[str, int]
                       ) -> tuple[Owner, tuple[str, ...], frozenset[str], frozenset[str]]:
        texts: list[str] = []
        missing: set[str] = set()
        named: set[str] = set()
        for f in owner.flows:
            text = f.text()
            if "{" in text:
                named.update(f.devices())
            t = F.resolve(text, ofports)
            if t is None:
                missing.update(d for d in f.devices() if d not in ofports)
            else:
                texts.append(t)
        owner.flows_skipped = len(texts) != len(owner.flows)
        return owner, tuple(texts), frozenset(missing), frozenset(named)

    # -------------------------------------------------------------------- apply
    def apply(self, ruleset: OvsRuleset, plan: HostPlan | None = None) -> ApplyReport:
        t0 = time.perf_counter()
        report = ApplyReport("ovs")
        timings = report.timings
        desired, report.warnings = self.resolved(ruleset)
        report.warnings += ruleset.warnings()
        timings["resolve"] = time.perf_counter() - t0
        changed: set[int]
        try:
            if self._applied is None:
                changed = self._full_sync(desired, report)
            else:
                changed = self._incremental(desired, report)
        except BaseException:
            self._applied = None  # unknown state: ask the switch next time
            raise
        timings["write"] = time.perf_counter() - t0 - timings["resolve"]
        self._applied = desired
        report.noop = not changed
        if changed and plan is not None:
            t1 = time.perf_counter()
            self._cut_connections(plan, ruleset, changed, report)
            timings["conntrack"] = time.perf_counter() - t1
        report.touched = [f"~ {ruleset.owners[c].label}" if c in ruleset.owners
                          else f"- owner {c:#x}" for c in sorted(changed)]
        report.seconds = time.perf_counter() - t0
        return report

    def _full_sync(self, desired: dict[int, tuple[str, ...]], report: ApplyReport) -> set[int]:
        """Ask the bridge, then rewrite only the owners whose flows differ (one bundle)."""
        diff = self.transport.diff([t for ts in desired.values() for t in ts])
        if not diff:
            return set()
        changed = {ln.cookie & F.OWNER_MASK for ln in diff}
        adds = [t for c in sorted(changed) for t in desired.get(c, ())]
        self._bundle([(c, F.OWNER_MASK) for c in sorted(changed)], adds, report)
        report.changes = {"flows_written": len(adds), "owners_changed": len(changed),
                          "full_sync": 1}
        return changed

    def _incremental(self, desired: dict[int, tuple[str, ...]], report: ApplyReport) -> set[int]:
        """Only the flows that differ, within the owners that differ: a flow whose slot
        (table, priority, match) is gone is deleted by its slot, a new or changed flow is
        added (an add replaces the flow in its slot). Deleting by slot is an exact lookup
        for the switch; by cookie/mask it would walk all 60,000 flows."""
        assert self._applied is not None
        old = self._applied
        # an owner resolved from cache has the very tuple applied last time: ``is`` first
        changed = {c for c, fl in desired.items()
                   if fl is not (was := old.get(c)) and fl != (was or ())}
        gone = {c for c in old.keys() - desired.keys() if old[c]}
        if not changed and not gone:
            return set()
        removes: list[str] = []
        adds: list[str] = []
        for c in sorted(changed | gone):
            before = {flow_slot(t): t for t in old.get(c, ())}
            after = {flow_slot(t): t for t in desired.get(c, ())}
            removes += [t for k, t in before.items() if k not in after]
            adds += [t for k, t in after.items() if before.get(k) != t]
        self._bundle([], adds, report, removes)
        report.changes = {"flows_added": len(adds), "flows_deleted": len(removes),
                          "owners_changed": len(changed | gone)}
        return changed | gone

    def _bundle(self, deletes: list[tuple[int, int]], adds: list[str], report: ApplyReport,
                removes: list[str] | None = None) -> None:
        """One atomic OpenFlow bundle: deletes by cookie, deletes by slot, then adds."""
        t = self.transport
        n = len(t.log)
        try:
            t.bundle(deletes, adds, removes or [])
        finally:
            report.write_commands += t.log[n:]
        report.timings.update({f"bundle {k}": v for k, v in getattr(t, "timings", {}).items()})

    # ---------------------------------------------------------------- conntrack
    def conntrack(self) -> list[CtEntry]:
        proc = self._run(["ovs-appctl", "-t", vswitchd_ctl(self.netns), "dpctl/dump-conntrack"])
        return parse_dump_conntrack(proc.stdout)

    def _cut_connections(self, plan: HostPlan, ruleset: OvsRuleset, changed: set[int],
                         report: ApplyReport) -> None:
        ports = {o.cookie: p for p in plan.ports
                 if (o := ruleset.owners.get(F.owner_cookie(F.KIND_PORT, p.id))) is not None}
        only_ports = all(F.kind_of(c) == F.KIND_PORT for c in changed)
        zones = ({ports[c].zone for c in changed if c in ports} if only_ports
                 else {p.zone for p in plan.ports})
        if not zones:
            return
        entries = [e for e in self.conntrack() if e.zone in zones]
        verdict = PlanVerdict(plan)
        doomed = [e for e in entries if not verdict(e)]
        report.conntrack_checked = len(entries)
        for e in doomed:
            proc = self._run(["ovs-appctl", "-t", vswitchd_ctl(self.netns),
                              "dpctl/flush-conntrack", f"zone={e.zone}", flush_tuple(e)],
                             ok=(0, 2))
            if proc.returncode == 0:
                report.conntrack_deleted += 1

    # -------------------------------------------------------------------- drift
    def dump(self) -> str:
        return self._run([*OFCTL, "dump-flows", self.target]).stdout

    def drift(self, ruleset: OvsRuleset) -> list[str]:
        desired, _ = self.resolved(ruleset)
        out = []
        for ln in self.transport.diff([t for ts in desired.values() for t in ts]):
            who = ruleset.label_of(ln.cookie) if ln.cookie else "(no cookie)"
            what = "missing on the bridge" if ln.sign == "+" else "not rendered (extra)"
            out.append(f"{what}: {ln.text}  [{who}]")
        return out

    def remove_all(self) -> None:
        """Delete every flow (the bridge is portwall's alone) in one bundle."""
        self._applied = None
        self.transport.bundle([(0, 0)], [])


# ------------------------------------------------------------------ conntrack text
_TUPLE = re.compile(r"(orig|reply)=\(([^)]*)\)")


def parse_dump_conntrack(text: str) -> list[CtEntry]:
    """``dpctl/dump-conntrack`` lines -> entries (original direction)."""
    out = []
    protos = {"tcp": 6, "udp": 17, "icmp": 1, "icmpv6": 58, "sctp": 132, "udplite": 136}
    for line in text.splitlines():
        head = line.split(",", 1)[0].strip()
        tuples = dict(_TUPLE.findall(line))
        orig = tuples.get("orig")
        if not orig:
            continue
        kv: dict[str, str] = dict(x.split("=", 1) for x in orig.split(",") if "=" in x)
        zm = re.search(r"zone=(\d+)", line.split("reply=")[-1])
        zone = int(zm.group(1)) if zm else 0
        proto = protos.get(head)
        if proto is None:
            try:
                proto = int(head)
            except ValueError:
                continue
        family = 6 if ":" in kv.get("src", "") else 4

        def num(k: str, d: dict[str, Any] = kv) -> int | None:
            return int(d[k]) if k in d else None

        state = re.search(r"state=(\w+)", line)
        out.append(CtEntry(family, proto, kv.get("src", ""), kv.get("dst", ""), zone,
                           num("sport"), num("dport"), num("type"), num("code"), num("id"),
                           state.group(1) if state else None))
    return out


def flush_tuple(e: CtEntry) -> str:
    """The original-direction tuple ``dpctl/flush-conntrack`` selects one entry by."""
    v6 = e.family == 6
    parts = [f"ct_{'ipv6' if v6 else 'nw'}_src={e.src}", f"ct_{'ipv6' if v6 else 'nw'}_dst={e.dst}",
             f"ct_nw_proto={e.protocol}"]
    if e.protocol in (1, 58):
        parts += [f"icmp_type={e.icmp_type or 0}", f"icmp_code={e.icmp_code or 0}",
                  f"icmp_id={e.icmp_id or 0}"]
    elif e.sport is not None and e.dport is not None:
        parts += [f"ct_tp_src={e.sport}", f"ct_tp_dst={e.dport}"]
    return ",".join(parts)
