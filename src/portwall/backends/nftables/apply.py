"""Make one namespace's portwall tables match an :class:`NftRuleset`: one transaction.

1. know the kernel: the objects of the last successful apply while the nf_tables
   generation proves nobody wrote since, else a fresh ``nft -j list table`` of both tables;
2. diff: sets/maps by element (unchanged sets are the very objects applied last time and
   are skipped by identity), chains by their rules (kernel chains by their rule comments and counters);
3. write the difference as one batch through libnftables (all or nothing: a refused batch
   leaves the previous state enforced, and the error names the rule and its origin);
4. cut conntrack entries the new plan no longer allows (:mod:`portwall.kernel.conntrack`)
   when something that allowed traffic went away (a chain rewritten, elements removed).

Only ``table inet portwall`` and ``table bridge portwall`` are ever touched.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field

from portwall.backends.base import ApplyError, ApplyReport
from portwall.backends.nftables.spell import rid_of
from portwall.backends.nftables.state import KernelState, parse
from portwall.backends.nftables.text import batch_text
from portwall.backends.nftables.types import (
    BRIDGE,
    INET,
    TABLE,
    NftChain,
    NftRuleset,
    NftSet,
    SetKey,
)
from portwall.backends.nftables.worker import NftWorker
from portwall.ir.types import HostPlan
from portwall.kernel import conntrack as ct
from portwall.kernel.runner import Runner

#: sets whose lost elements may forbid open connections (the others only name things)
_RESTRICTING = ("sp", "r4", "r6", "t_", "ingress", "egress", "zones")
_ERR_LINE = re.compile(r"^(?:/dev/stdin|<cmdline>|[^:]*):(\d+):", re.M)


@dataclass
class NftApplyResult:
    """The applier's own report (``ApplyReport.native``)."""

    batch: str = ""
    cached: bool = False
    chains_written: list[str] = field(default_factory=list)
    chains_deleted: list[str] = field(default_factory=list)
    sets_created: list[str] = field(default_factory=list)
    sets_deleted: list[str] = field(default_factory=list)
    elements_added: int = 0
    elements_removed: int = 0


class NftApplier:
    """One per namespace; keeps the libnftables worker and what it last applied."""

    def __init__(self, netns: str | None) -> None:
        self.netns = netns
        self.worker = NftWorker(netns)
        self.runner = Runner(netns)
        # what the last successful apply wrote (valid while the generation is unchanged)
        self._known_gen: int | None = None
        self._owner: object = None
        self._serial = -2
        self._chains: dict[SetKey, NftChain] = {}
        self._maps: dict[SetKey, bool] = {}  # set -> is a map

    # ------------------------------------------------------------------ kernel
    def read(self) -> KernelState:
        state = KernelState()
        for fam in (INET, BRIDGE):
            parse(self.worker.list_json(f"table {fam} {TABLE}"), fam, state)
        return state

    # ------------------------------------------------------------------- apply
    def apply(self, ruleset: NftRuleset, plan: HostPlan | None = None) -> ApplyReport:
        t0 = time.perf_counter()
        gen_ok = (self._known_gen is not None and ruleset.owner is self._owner
                  and self.worker.generation() == self._known_gen)
        res = NftApplyResult(cached=gen_ok)
        new_sets: list[NftSet] = []
        new_chains: list[NftChain] = []
        rewrite: list[NftChain] = []
        added: list[tuple[NftSet, frozenset[str]]] = []
        removed: list[tuple[NftSet, frozenset[str]]] = []
        drop_chains: list[NftChain] = []
        drop_sets: list[NftSet] = []
        tables: list[str] = []
        kchains: dict[SetKey, object]
        if gen_ok and ruleset.serial == self._serial:  # this very ruleset is in the kernel
            kchains, maps = dict(ruleset.chains), {}
        elif gen_ok and ruleset.parent == self._serial:  # the one after it: apply the deltas
            kchains = dict(self._chains)
            maps = dict(self._maps)
            for key, s in ruleset.sets.items():
                if key not in maps:
                    new_sets.append(s)
                    if len(s):
                        added.append((s, s.elements))
                elif key in ruleset.deltas:
                    plus, minus = ruleset.deltas[key]
                    if plus:
                        added.append((s, plus))
                    if minus:
                        removed.append((s, minus))
        else:  # anything else: compare with what the kernel holds
            state = self.read()
            tables = [f for f in (INET, BRIDGE) if f not in state.tables]
            kchains = dict(state.chains)
            maps = {k: ks.is_map for k, ks in state.sets.items()}
            for key, s in ruleset.sets.items():
                have = state.sets.get(key)
                if have is None:
                    new_sets.append(s)
                    if len(s):
                        added.append((s, s.elements))
                    continue
                want = s.elements
                plus, minus = want - have.elements, have.elements - want
                if plus:
                    added.append((s, plus))
                if minus:
                    removed.append((s, minus))
        t_read = time.perf_counter()
        for key, c in ruleset.chains.items():
            have_c = kchains.get(key)
            if have_c is None:
                new_chains.append(c)
            elif isinstance(have_c, NftChain):
                if have_c is not c and have_c.rules != c.rules:
                    rewrite.append(c)
            elif have_c != c.signature():
                rewrite.append(c)
        for key in kchains.keys() - ruleset.chains.keys():
            drop_chains.append(NftChain(key[0], key[1], ()))
        for key in maps.keys() - ruleset.sets.keys():
            drop_sets.append(NftSet(key[0], key[1], "", frozenset(), maps[key]))
        # Port chains refer to group chains: delete them first.
        drop_chains.sort(key=lambda c: (not c.name.startswith("p"), c.name))
        text = batch_text(new_sets=new_sets, new_chains=new_chains, rewrite=rewrite,
                          removed=removed, added=added, drop_chains=drop_chains,
                          drop_sets=drop_sets, tables=tables)
        rep = ApplyReport("nftables", native=res)
        rep.timings["read"] = t_read - t0
        tracked: int | None = None
        if text:
            tracked = self._write(text, ruleset, rep.timings)
            res.batch = text
            rep.noop = False
            rep.write_commands = ["libnftables: one batch"]
        elif not (gen_ok and ruleset.serial == self._serial):
            self._remember(ruleset)  # in sync: later renders can apply their deltas
        t_write = time.perf_counter()
        rep.timings["write"] = t_write - t_read
        res.chains_written = [c.name for c in (*new_chains, *rewrite)]
        res.chains_deleted = [c.name for c in drop_chains]
        res.sets_created = [s.name for s in new_sets]
        res.sets_deleted = [s.name for s in drop_sets]
        res.elements_added = sum(len(e) for _s, e in added)
        res.elements_removed = sum(len(e) for _s, e in removed)
        rep.changes = {"chains_written": len(res.chains_written),
                       "chains_deleted": len(drop_chains), "sets_created": len(new_sets),
                       "sets_deleted": len(drop_sets), "set_elements_added": res.elements_added,
                       "set_elements_removed": res.elements_removed}
        rep.touched = ([f"~ {c.family} chain {c.name}" for c in (*new_chains, *rewrite)]
                       + [f"+ {s.family} {s.name}: {len(e)} elements" for s, e in added]
                       + [f"- {s.family} {s.name}: {len(e)} elements" for s, e in removed]
                       + [f"- {c.family} chain {c.name}" for c in drop_chains]
                       + [f"- {s.family} set {s.name}" for s in drop_sets])
        shrank = bool(rewrite or drop_chains) or any(
            s.name.startswith(_RESTRICTING) for s, _e in removed)
        if tracked is None and plan is not None and shrank:
            tracked = self.worker.conntrack_count()
        if plan is not None and shrank and tracked != 0:
            zones = {p.zone for p in plan.ports}
            rep.conntrack_checked, rep.conntrack_deleted = ct.reconcile(
                self.runner, zones, ct.PlanVerdict(plan))
            rep.timings["conntrack"] = time.perf_counter() - t_write
        rep.seconds = time.perf_counter() - t0
        return rep

    def _write(self, text: str, ruleset: NftRuleset, timings: dict[str, float]) -> int | None:
        """Commit ``text``; the conntrack count right after (None: unknown)."""
        t0 = time.perf_counter()
        rc, _out, err, gen, tracked = self.worker.commit(text)
        timings["nft"] = time.perf_counter() - t0
        if rc != 0:
            self._known_gen = None
            raise self._error(text, err, ruleset)
        self._remember(ruleset, gen)
        return tracked

    def _remember(self, ruleset: NftRuleset, gen: int | None = None) -> None:
        self._owner, self._serial = ruleset.owner, ruleset.serial
        self._chains = dict(ruleset.chains)
        self._maps = {k: s.is_map for k, s in ruleset.sets.items()}
        self._known_gen = self.worker.generation() if gen is None else gen

    @staticmethod
    def _error(text: str, err: str, ruleset: NftRuleset) -> ApplyError:
        line = rid = None
        line_no = None
        lines = text.splitlines()
        m = _ERR_LINE.search(err)
        if m:  # "file:LINE:col" (nft -f) ...
            line_no = int(m.group(1))
            line = lines[line_no - 1] if 0 < line_no <= len(lines) else None
        else:  # ... or libnftables' buffer input: the offending command echoed under the error
            line_no = _blamed(lines, err)
            line = lines[line_no - 1] if line_no else None
        if line is not None:
            tag = re.search(r'comment "([^"]*)"$', line)
            rid = rid_of(tag.group(1)) if tag else None
        origin = ruleset.provenance().get(rid) if rid else None
        return ApplyError("nftables refused the batch; nothing was changed", command="nft",
                          line=line, line_no=line_no, rid=rid, origin=origin, stderr=err,
                          rolled_back=True)

    # ------------------------------------------------------------------- drift
    def drift(self, ruleset: NftRuleset) -> list[str]:
        state = self.read()
        out: list[str] = []
        for fam in (INET, BRIDGE):
            if fam not in state.tables:
                out.append(f"table {fam} {TABLE} missing")
        for key, s in ruleset.sets.items():
            have = state.sets.get(key)
            if have is None:
                out.append(f"{key[0]} {'map' if s.is_map else 'set'} {key[1]} missing")
                continue
            miss, extra = s.elements - have.elements, have.elements - s.elements
            if miss:
                out.append(f"{key[0]} {key[1]}: {len(miss)} elements missing "
                           f"(e.g. {sorted(miss)[0]})")
            if extra:
                out.append(f"{key[0]} {key[1]}: {len(extra)} unexpected elements "
                           f"(e.g. {sorted(extra)[0]})")
        for key, c in ruleset.chains.items():
            tags = state.chains.get(key)
            if tags is None:
                out.append(f"{key[0]} chain {key[1]} missing")
            elif tags != c.signature():
                out.append(f"{key[0]} chain {key[1]} modified ({len(tags)} rules, "
                           f"{len(c.rules)} expected)")
        for key in sorted(state.chains.keys() - ruleset.chains.keys()):
            out.append(f"{key[0]} chain {key[1]} not portwall's current ruleset")
        for key in sorted(state.sets.keys() - ruleset.sets.keys()):
            out.append(f"{key[0]} set {key[1]} not portwall's current ruleset")
        return out

    def remove_all(self) -> None:
        text = "".join(f"add table {f} {TABLE}\ndelete table {f} {TABLE}\n" for f in (INET, BRIDGE))
        rc, _o, err = self.worker.run(text)
        self._known_gen = None
        if rc != 0:
            raise ApplyError("could not remove portwall's tables", command="nft", stderr=err)

    def close(self) -> None:
        self.worker.close()

    def __enter__(self) -> NftApplier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _blamed(lines: list[str], err: str) -> int | None:
    """The 1-based batch line an error is about. libnftables echoes a command under the
    error and marks a column span with carets, but for kernel errors the echoed command can
    be an earlier one of the batch; the span is right, so prefer the first line whose text
    at that span is one whole token (e.g. ``@nosuchset``), else the echoed line."""
    out = err.splitlines()
    where = {ln: i for i, ln in enumerate(lines, 1)}
    for i, ln in enumerate(out):
        if ln not in where:
            continue
        carets = out[i + 1] if i + 1 < len(out) else ""
        start = carets.find("^")
        end = carets.rfind("^") + 1
        if start >= 0:
            for no, cand in enumerate(lines, 1):
                tok = cand[start:end]
                whole = (len(cand) >= end and tok.strip() == tok and bool(tok)
                         and (start == 0 or cand[start - 1] == " ")
                         and (end == len(cand) or cand[end] == " "))
                if whole and (cand == ln or tok.startswith("@") or no > where[ln]):
                    return no
        return where[ln]
    return None
