"""Make a host's iptables + ipset state match a rendered ruleset: atomic, incremental, safe.

One :meth:`IptablesApplier.apply`:

1. reads the kernel once: ``iptables-save`` per family (or the cached snapshot, when the
   nf_tables generation proves nothing changed since) and ``ipset save``;
2. diffs chain by chain, set by set (:mod:`.transaction`, :mod:`.ipset`);
3. creates missing sets, then writes only the changed chains and hooks in one
   ``iptables-restore --noflush`` per family (each table commit is atomic), then updates
   and destroys sets, which is only safe once the rules no longer need the old contents;
4. on failure restores the previous portwall state and raises :class:`ApplyError` naming
   the failing line, its rule id and the resource it came from;
5. cuts conntrack entries the new plan no longer allows (:mod:`.conntrack`), looking only
   at zones of ports whose chains were rewritten or whose remote groups lost members.

Only ``pw-`` chains, portwall's hook rules and portwall's sets are ever written; other
programs' chains and rules (docker's, an admin's) are left byte-for-byte as they were.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from typing import cast

from portwall.backends.iptables import l2
from portwall.backends.iptables import render as rnames
from portwall.backends.iptables.drift import describe_drift
from portwall.backends.iptables.ipset import SetConflict, SetPlan, destroy_script, plan_sets
from portwall.backends.iptables.l2 import L2Sync
from portwall.backends.iptables.report import ApplyError, IptablesReport
from portwall.backends.iptables.snapshot import (
    FamilyState,
    SetState,
    comment_of,
    is_hook,
    owns_chain,
    parse_ipset_save,
    parse_save,
)
from portwall.backends.iptables.transaction import FamilyScript, SourceLine, plan_family
from portwall.backends.iptables.types import (
    Chain,
    Hook,
    IpFamily,
    IpSet,
    IptablesRuleset,
    Table,
    TableName,
)
from portwall.ir.types import HostPlan, Jump, Origin, SetRef
from portwall.kernel import conntrack as ct
from portwall.kernel.runner import Job, NftGeneration, Result, Runner

FAMILIES: tuple[int, int] = (4, 6)
_LINE = re.compile(r"line:? (\d+)")


def _tools(legacy: bool) -> dict[tuple[int, str], str]:
    # Explicit -nft binaries: the generation check only holds for the nf_tables backend,
    # whatever the system's iptables alternative points to.
    kind = "legacy" if legacy else "nft"
    return {
        (4, "save"): f"iptables-{kind}-save", (4, "restore"): f"iptables-{kind}-restore",
        (6, "save"): f"ip6tables-{kind}-save", (6, "restore"): f"ip6tables-{kind}-restore",
    }


def origins(plan: HostPlan) -> dict[str, Origin]:
    """Rule ids (as written in the kernel's comments) -> the resource behind them: the
    renderer's own provenance of ``plan`` (one-shot; an applier uses the ruleset's)."""
    return dict(rnames.render_iptables(plan).provenance)


def _tables_of(ruleset: IptablesRuleset, family: int) -> Mapping[str, Table]:
    return ruleset.tables.get(family, {})  # type: ignore[call-overload]


def _as_tables(state: FamilyState) -> dict[TableName, Table]:
    """A snapshot turned back into desired tables (to roll back to it)."""
    out: dict[TableName, Table] = {}
    for name, st in state.items():
        hooks = [Hook(b, r) for b, rules in st.builtins.items() for r in rules if is_hook(r)]
        if st.chains or hooks:
            tname = cast(TableName, name)
            out[tname] = Table(tname, {c: Chain(c, list(rs)) for c, rs in st.chains.items()},
                               hooks)
    return out


class IptablesApplier:
    """Applies :class:`IptablesRuleset` objects to one network namespace.

    Keep one instance per namespace: it caches the last kernel snapshot, trusted only while
    the nf_tables generation is unchanged.
    """

    def __init__(self, netns: str | None = None, *, legacy: bool = False,
                 cache: bool = True, runner: Runner | None = None) -> None:
        """``runner`` replaces the real one (e.g. :class:`portwall.kernel.fake.FakeRunner`
        in unit tests); the generation cache is then off, as it reads the kernel directly."""
        self.netns = netns
        self.legacy = legacy
        self.runner = runner if runner is not None else Runner(netns)
        self._tools = _tools(legacy)
        use_gen = cache and not legacy and runner is None
        self._gen = NftGeneration(netns) if use_gen else None
        self._cache: dict[int, FamilyState] | None = None
        self._cache_gen: int | None = None
        self._port_chains: dict[tuple[str, str], frozenset[str]] = {}
        # Chain objects of the last applied ruleset, per (family, table, name), while the
        # cached snapshot proves the kernel still holds them: an incremental renderer hands
        # back the same object for an unchanged chain, so identity spares comparing it.
        self._synced: dict[tuple[int, str, str], Chain] = {}
        self._l2 = L2Sync(self.runner)  # the bridge table (ARP/ND guard, tracking marks)
        self._l2_read: l2.L2State | None = None  # read with the last full iptables-save

    # ------------------------------------------------------------------ reading
    def _save_all(self) -> dict[int, FamilyState]:
        """``iptables-save`` of both families and the bridge table (run side by side)."""
        tools = [self._tools[(f, "save")] for f in FAMILIES]
        results = self.runner.run_all([Job([t]) for t in tools] + [Job(l2.READ)])
        self._l2_read = l2.parse_result(results.pop())
        out: dict[int, FamilyState] = {}
        for fam, tool, res in zip(FAMILIES, tools, results, strict=True):
            if res.returncode != 0:
                raise ApplyError(f"cannot read IPv{fam} rules", command=tool, stderr=res.stderr)
            out[fam] = parse_save(res.stdout)
        return out

    def _read_tables(self, *, fresh: bool) -> tuple[dict[int, FamilyState], bool]:
        """Both families' tables; the cached snapshot if the generation proves it current."""
        gen = self._gen.get() if self._gen is not None else None
        if not fresh and self._cache is not None and gen is not None and gen == self._cache_gen:
            return self._cache, True
        state = self._save_all()
        self._cache, self._cache_gen = (state, gen) if gen is not None else (None, None)
        # The kernel may differ from what was last applied (that is why it was read):
        # chains must be compared again before identity can vouch for them.
        self._synced = {}
        return state, False

    def _read_sets(self) -> dict[str, SetState]:
        proc = self.runner.run(["ipset", "save"])
        if proc.returncode != 0:
            raise ApplyError("cannot read ipsets", command="ipset save", stderr=proc.stderr)
        return parse_ipset_save(proc.stdout)

    def current(self) -> IptablesRuleset:
        """Portwall-owned state as the kernel reports it (chains, hooks, sets)."""
        tables, _ = self._read_tables(fresh=True)
        out = IptablesRuleset()
        for fam in FAMILIES:
            out.tables[cast(IpFamily, fam)] = _as_tables(tables.get(fam, {}))
        for name, s in sorted(self._read_sets().items()):
            m = re.search(r"maxelem (\d+)", s.options)
            out.ipsets[name] = IpSet(name, cast(IpFamily, s.family), s.set_type,
                                     sorted(s.members), maxelem=int(m.group(1)) if m else 65536)
        return out

    def drift(self, ruleset: IptablesRuleset) -> list[str]:
        """Human-readable differences between the kernel and ``ruleset``; [] when in sync.
        Always reads the kernel afresh."""
        tables, _ = self._read_tables(fresh=True)
        return (describe_drift(ruleset, tables, self._read_sets())
                + l2.describe_drift(self._l2.read(), ruleset.l2))

    # ------------------------------------------------------------------ writing
    def apply(self, ruleset: IptablesRuleset, plan: HostPlan | None = None) -> IptablesReport:
        """Make the kernel match ``ruleset``; see the module docstring for the order."""
        t0 = time.perf_counter()
        rep = IptablesReport()
        self.runner.writes.clear()
        _validate(ruleset)
        tables, rep.cached_read = self._read_tables(fresh=False)
        sets_now = self._read_sets()
        rep.timings["read"] = time.perf_counter() - t0
        try:
            setplan = plan_sets(ruleset.ipsets, sets_now)
        except SetConflict as e:
            raise ApplyError(str(e)) from None
        # Forget what was in sync until this apply succeeds; a fresh read proves nothing.
        synced, self._synced = (self._synced if rep.cached_read else {}), {}
        scripts: dict[int, FamilyScript] = {
            f: plan_family(f, _tables_of(ruleset, f), tables.get(f, {}),
                           _in_sync(ruleset, f, synced))
            for f in FAMILIES}
        # the table as read with iptables-save just now; from the cache: L2Sync reads it
        # itself if it has no state of its own
        l2change = self._l2.plan(ruleset.l2, trusted=rep.cached_read,
                                 state=... if rep.cached_read else self._l2_read)
        rep.timings["diff"] = time.perf_counter() - t0 - rep.timings["read"]
        if setplan.empty() and all(s.empty() for s in scripts.values()) and not l2change.script:
            self._l2.commit(l2change)
            self._remember(ruleset)
            rep.seconds = time.perf_counter() - t0
            return rep

        rep.noop = False
        self._fill_counts(rep, scripts, setplan)
        rep.l2_added, rep.l2_removed = l2change.added, l2change.removed
        # Chains that existed and changed; a chain created now (a port just plugged) had no
        # filter before, so there is nothing it used to allow that might now be denied.
        changed_chains = {c for s in scripts.values() for t in s.tables
                          for c in (*t.rewritten, *t.edited, *t.deleted)}
        self._commit_l2(l2change, ruleset.provenance)
        try:
            self._sets_before(setplan)
            self._load(scripts, tables, setplan, ruleset.provenance)
        except ApplyError:
            self._l2.undo(l2change)
            raise
        self._sets_after(setplan)
        self._remember(ruleset)
        rep.timings["write"] = time.perf_counter() - t0 - rep.timings["read"] - rep.timings["diff"]

        if plan is not None:
            t1 = time.perf_counter()
            zones = self._zones_to_check(plan, changed_chains, set(setplan.removed_members))
            rep.conntrack_checked, rep.conntrack_deleted = ct.reconcile(
                self.runner, zones, ct.PlanVerdict(plan))
            rep.timings["conntrack"] = time.perf_counter() - t1
        rep.write_commands = [" ".join(c.argv) for c in self.runner.writes]
        rep.seconds = time.perf_counter() - t0
        return rep

    def _commit_l2(self, change: l2.L2Change, provenance: Mapping[str, Origin]) -> None:
        """Write the bridge table's change (one nft transaction) before the iptables part;
        account for its generation bump so the iptables snapshot stays trusted."""
        res = self._l2.commit(change)
        if res is None:
            return
        if res.returncode != 0:
            m = _LINE.search(res.stderr)
            lines = change.script.splitlines()
            n = int(m.group(1)) if m else None
            line = lines[n - 1] if n is not None and 0 < n <= len(lines) else None
            origin = None
            if line is not None and " element " in line:  # name the port of the element
                dev = line.split("{", 1)[1].strip().split(" ", 1)[0].strip('"')
                origin = provenance.get(f"l2-{dev}")
            raise ApplyError(f"nft refused the bridge table {l2.TABLE} change; the previous "
                             "rules stay enforced", command="nft -f -", line=line, line_no=n,
                             origin=origin, stderr=res.stderr)
        gen = self._gen.get() if self._gen is not None else None
        if (self._cache is not None and self._cache_gen is not None and gen is not None
                and gen == self._cache_gen + 1):
            self._cache_gen = gen
        else:
            self._cache, self._cache_gen, self._synced = None, None, {}

    def _remember(self, ruleset: IptablesRuleset) -> None:
        """After a successful apply whose result the cache holds, note the chain objects."""
        if self._cache is None:
            self._synced.clear()
            return
        self._synced = {(f, tname, name): c for f in FAMILIES
                        for tname, table in _tables_of(ruleset, f).items()
                        for name, c in table.chains.items()}

    def _zones_to_check(self, plan: HostPlan, chains: set[str], shrunk_sets: set[str]) -> set[int]:
        """Zones of the ports whose filtering may now be stricter: their own chains were
        (re)written, a group chain they jump to was, or a remote group they match on lost
        members. Chains rewritten to repair drift count too: connections opened while the
        kernel did not enforce the plan are checked against it."""
        if not chains and not shrunk_sets:
            return set()
        bad_sets = {sid for sid, s in plan.address_sets.items()
                    if rnames.set_name(s.group_id, s.family) in shrunk_sets}
        bad_rulesets = {
            rsid for rsid, rs in plan.rulesets.items()
            if rnames.group_chain(rs) in chains or any(
                isinstance(a, SetRef) and a.set_id in bad_sets
                for r in rs.rules for a in (r.match.src, r.match.dst))}
        zones: set[int] = set()
        for p in plan.ports:
            if p.zone in zones:
                continue
            names = self._port_chains.get((p.id, p.device))
            if names is None:
                names = self._port_chains[(p.id, p.device)] = frozenset(
                    (rnames.ingress_chain(p), rnames.egress_chain(p), rnames.spoof_chain(p)))
            if names & chains or (bad_rulesets and any(
                    isinstance(s, Jump) and s.ruleset_id in bad_rulesets
                    for s in (*p.ingress, *p.egress))):
                zones.add(p.zone)
        return zones

    @staticmethod
    def _fill_counts(rep: IptablesReport, scripts: Mapping[int, FamilyScript], sp: SetPlan) -> None:
        for fam, script in scripts.items():
            for t in script.tables:
                rep.written += [(fam, t.table, c) for c in t.written]
                rep.deleted += [(fam, t.table, c) for c in t.deleted]
                rep.hooks_fixed += t.hooks_fixed
                rep.rules_written += len(t.lines)
        rep.chains_written, rep.chains_deleted = len(rep.written), len(rep.deleted)
        rep.sets_created, rep.sets_updated = len(sp.created), len(sp.updated) + len(sp.swapped)
        rep.sets_swapped, rep.sets_deleted = len(sp.swapped), len(sp.deleted)
        rep.set_entries_added, rep.set_entries_removed = sp.entries_added, sp.entries_removed

    def _ipset_restore(self, lines: list[str], what: str) -> None:
        text = "\n".join(lines) + "\n"
        proc = self.runner.run(["ipset", "restore", "-exist"], input=text, write=True)
        if proc.returncode != 0:
            m = _LINE.search(proc.stderr)
            n = int(m.group(1)) if m else None
            line = lines[n - 1] if n is not None and 0 < n <= len(lines) else None
            raise ApplyError(f"ipset refused the {what}", command="ipset restore", line=line,
                             line_no=n, stderr=proc.stderr)

    def _sets_before(self, sp: SetPlan) -> None:
        if not sp.before:
            return
        try:
            self._ipset_restore(sp.before, "new sets")
        except ApplyError:
            self._destroy_quietly(sp.created)
            raise

    def _sets_after(self, sp: SetPlan) -> None:
        if sp.after:
            self._ipset_restore(sp.after, "set updates (the iptables rules are applied)")

    def _destroy_quietly(self, names: list[str]) -> None:
        if names:
            self.runner.run(["ipset", "restore", "-exist"], input=destroy_script(names),
                            write=True)

    def _restore(self, texts: Mapping[int, str]) -> dict[int, Result]:
        """One ``iptables-restore --noflush`` per family, one after the other: nf_tables
        commits of one namespace serialise anyway, and a commit of one family makes the
        other restore's cache stale, which it then rebuilds (measured: slower in parallel)."""
        return {f: self.runner.run([self._tools[(f, "restore")], "--noflush"], input=texts[f],
                                   write=True)
                for f in FAMILIES if f in texts}

    def _load(self, scripts: Mapping[int, FamilyScript], before: dict[int, FamilyState],
              sp: SetPlan, provenance: Mapping[str, Origin] | None) -> None:
        """One restore per family; on failure put the previous state back and raise."""
        gen0 = self._gen.get() if self._gen is not None else None
        maps = {f: s.text_and_map() for f, s in scripts.items() if not s.empty()}
        results = self._restore({f: m[0] for f, m in maps.items()})
        for fam, res in results.items():
            if res.returncode != 0:
                text, where = maps[fam]
                exc = self._explain(fam, res.stderr, text, where, provenance)
                exc.rolled_back = self._rollback(before)
                self._destroy_quietly(sp.created)
                raise exc
        commits = sum(len(scripts[f].tables) for f in maps)
        # The cache now holds what we wrote; trust it only if the generation moved by
        # exactly our commits (anyone else's change in between forces a full read).
        if self._cache is not None:
            new: dict[int, FamilyState] = {f: dict(self._cache.get(f, {})) for f in FAMILIES}
            for f, fs in scripts.items():
                for t in fs.tables:
                    if t.after is not None:
                        new[f][t.table] = t.after
            gen1 = self._gen.get() if self._gen is not None else None
            ok = gen0 is not None and gen1 is not None and gen1 == gen0 + commits
            self._cache, self._cache_gen = (new, gen1) if ok else (None, None)

    def _explain(self, family: int, stderr: str, text: str, where: list[SourceLine],
                 provenance: Mapping[str, Origin] | None) -> ApplyError:
        lines = text.splitlines()
        m = _LINE.search(stderr)
        n = _culprit(lines, where, int(m.group(1)), stderr) if m else None
        line = src = rid = origin = None
        if n is not None and 0 < n <= len(lines):
            line, src = lines[n - 1], where[n - 1]
            if src.spec is not None:
                rid = comment_of(src.spec)
                if rid is not None and provenance is not None:
                    origin = provenance.get(rid)
        what = f"IPv{family} {src.table} chain {src.chain}" if src and src.chain else f"IPv{family}"
        return ApplyError(f"iptables-restore failed ({what}); the previous rules stay enforced",
                          command=self._tools[(family, "restore")], line=line, line_no=n,
                          chain=src.chain if src else None, rid=rid, origin=origin,
                          stderr=stderr)

    def _rollback(self, before: dict[int, FamilyState]) -> bool:
        """Put back portwall's previous chains and hooks in any table a failed run did
        commit (a restore commits table by table). True when the kernel is as before."""
        self._cache = None
        try:
            now, _ = self._read_tables(fresh=True)
        except ApplyError:
            return False
        ok = True
        texts = {}
        for f in FAMILIES:
            script = plan_family(f, _as_tables(before.get(f, {})), now.get(f, {}))
            if not script.empty():
                texts[f] = script.text_and_map()[0]
        ok = all(r.returncode == 0 for r in self._restore(texts).values())
        self._cache = None
        return ok

    def remove_all(self) -> None:
        """Remove every portwall chain, hook and set; nothing else."""
        tables, _ = self._read_tables(fresh=True)
        maps = {}
        for fam in FAMILIES:
            script = plan_family(fam, {}, tables.get(fam, {}))
            if not script.empty():
                maps[fam] = script.text_and_map()
        for fam, res in self._restore({f: m[0] for f, m in maps.items()}).items():
            if res.returncode != 0:
                self._cache = None
                raise self._explain(fam, res.stderr, maps[fam][0], maps[fam][1], None)
        self._cache = None
        self._l2.remove()
        names = sorted(self._read_sets())
        if names:
            self._ipset_restore([f"destroy {n}" for n in names], "removal of portwall's sets")

    def close(self) -> None:
        if self._gen is not None:
            self._gen.close()

    def __enter__(self) -> IptablesApplier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_NAMED = re.compile(r"[`'\"]([^`'\"\s]+)'|Set (\S+) doesn't exist")


def _culprit(lines: list[str], where: list[SourceLine], n: int, stderr: str) -> int:
    """The line to blame. iptables-nft checks jump targets at COMMIT and reports that line;
    then the rule naming the missing chain/set/match (quoted in the message) is the one."""
    if not 0 < n <= len(lines) or where[n - 1].spec is not None:
        return n
    names = [a or b for a, b in _NAMED.findall(stderr)]
    for name in names:
        pat = re.compile(rf"(?<![\w-]){re.escape(name)}(?![\w-])")
        for i in range(n - 2, -1, -1):
            if where[i].table != where[n - 1].table:
                break
            if where[i].spec is not None and pat.search(lines[i]):
                return i + 1
    return n


def _in_sync(ruleset: IptablesRuleset, family: int,
             synced: Mapping[tuple[int, str, str], Chain]) -> dict[str, set[str]]:
    """Per table, the desired chains that are the very objects last applied."""
    return {tname: {name for name, c in table.chains.items()
                    if synced.get((family, tname, name)) is c}
            for tname, table in _tables_of(ruleset, family).items()}


def _validate(ruleset: IptablesRuleset) -> None:
    """Refuse to write anything outside portwall's namespace of names."""
    from portwall.backends.iptables.snapshot import owns_set

    for fam, tables in ruleset.tables.items():
        for tname, table in tables.items():
            for name in table.chains:
                if not owns_chain(name):
                    raise ApplyError(f"IPv{fam} {tname}: chain {name} is not portwall's "
                                     "(names must start with pw-)")
            for h in table.hooks:
                if not is_hook(h.rule):
                    raise ApplyError(f"IPv{fam} {tname}: hook in {h.builtin} must jump to a pw- "
                                     f"chain: {h.rule}")
    for name in ruleset.ipsets:
        if not owns_set(name):
            raise ApplyError(f"ipset {name} is not portwall's (names must start with pw4-/pw6-)")


__all__ = ["ApplyError", "IptablesApplier", "IptablesReport", "origins"]
