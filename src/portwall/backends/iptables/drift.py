"""Explain, in words, how the kernel differs from a desired ruleset.

The applier repairs drift by simply applying again; this module is for people (``portwall
status``, the agent's log): which chain is missing or modified, whether a hook was deleted or
pushed down by another program, which set members went missing.
"""

from __future__ import annotations

from collections.abc import Mapping

from portwall.backends.iptables.snapshot import (
    FamilyState,
    SetState,
    canonical_member,
    canonical_spec,
    is_hook,
)
from portwall.backends.iptables.types import Chain, IptablesRuleset

#: At most this many example lines/members per message.
EXAMPLES = 3


def _examples(items: list[str]) -> str:
    more = f" (+{len(items) - EXAMPLES} more)" if len(items) > EXAMPLES else ""
    return "; ".join(items[:EXAMPLES]) + more


def describe_drift(ruleset: IptablesRuleset, tables: Mapping[int, FamilyState],
                   sets: Mapping[str, SetState]) -> list[str]:
    out: list[str] = []
    for fam in sorted(set(ruleset.tables) | set(tables)):
        want_tables = ruleset.tables.get(fam, {})  # type: ignore[call-overload]
        have_tables = tables.get(fam, {})
        for tname in sorted(set(want_tables) | set(have_tables)):
            where = f"IPv{fam} {tname}"
            want = want_tables.get(tname)
            have = have_tables.get(tname)
            want_chains = {} if want is None else {
                c.name: Chain(c.name, [canonical_spec(r) for r in c.rules], c.ordered)
                for c in want.chains.values()}
            have_chains = {} if have is None else have.chains
            for name, chain in want_chains.items():
                cur, rules = have_chains.get(name), chain.rules
                if cur is None:
                    out.append(f"{where}: chain {name} is missing")
                elif not chain.same_rules(cur):
                    gone = [r for r in rules if r not in set(cur)]
                    extra = [r for r in cur if r not in set(rules)]
                    detail = []
                    if gone:
                        detail.append(f"{len(gone)} rules missing: {_examples(gone)}")
                    if extra:
                        detail.append(f"{len(extra)} unexpected: {_examples(extra)}")
                    if not detail:
                        detail.append("same rules in another order")
                    out.append(f"{where}: chain {name} modified ({len(cur)} rules, want "
                               f"{len(rules)}): " + " / ".join(detail))
            for name in sorted(set(have_chains) - set(want_chains)):
                out.append(f"{where}: chain {name} is not in the ruleset (left over)")
            hooks: dict[str, list[str]] = {}
            for h in want.hooks if want is not None else []:
                hooks.setdefault(h.builtin, []).append(canonical_spec(h.rule))
            builtins = {} if have is None else have.builtins
            for b in sorted(set(hooks) | set(builtins)):
                rules = builtins.get(b, [])
                for i, h in enumerate(hooks.get(b, [])):
                    if h not in rules:
                        out.append(f"{where}: hook missing in {b}: {h}")
                        continue
                    if rules.index(h) != i:
                        out.append(f"{where}: hook in {b} is rule {rules.index(h) + 1}, not "
                                   f"{i + 1} (another program inserted rules before it): {h}")
                    if rules.count(h) > 1:
                        out.append(f"{where}: hook appears {rules.count(h)} times in {b}: {h}")
                for r in rules:
                    if is_hook(r) and r not in hooks.get(b, []):
                        out.append(f"{where}: unexpected portwall hook in {b}: {r}")
    for name in sorted(set(ruleset.ipsets) | set(sets)):
        want_set = ruleset.ipsets.get(name)
        have_set = sets.get(name)
        if have_set is None:
            out.append(f"ipset {name} is missing")
            continue
        if want_set is None:
            out.append(f"ipset {name} is not in the ruleset (left over)")
            continue
        if (have_set.set_type, have_set.family) != (want_set.set_type, want_set.family):
            out.append(f"ipset {name} is {have_set.set_type} IPv{have_set.family}, want "
                       f"{want_set.set_type} IPv{want_set.family}")
            continue
        members = {canonical_member(m) for m in want_set.members}
        gone = sorted(members - have_set.members)
        extra = sorted(have_set.members - members)
        if gone:
            out.append(f"ipset {name}: {len(gone)} members missing: {_examples(gone)}")
        if extra:
            out.append(f"ipset {name}: {len(extra)} unexpected members: {_examples(extra)}")
    return out
