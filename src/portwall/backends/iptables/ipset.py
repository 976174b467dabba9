"""Make portwall's ipsets match the desired ones, in the order the iptables rules need.

Two ``ipset restore`` batches bracket the iptables transaction:

* before it, sets that do not exist yet are created and filled (rules about to be loaded
  reference them, and a new unreferenced set changes nothing that is enforced);
* after it succeeded, existing sets are updated and unneeded sets destroyed (a set still
  referenced by a rule cannot be destroyed, and updating a set before a failed iptables load
  would change what is enforced). A few changes are single ``add``/``del`` lines; many
  changes fill a temporary set and ``swap`` it in, so lookups never see a half-built set.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field

from portwall.backends.iptables.snapshot import SetState, canonical_member, owns_set
from portwall.backends.iptables.types import IpSet

#: More changes than this (or than SWAP_FRACTION of the set) load a new set and swap it in.
SWAP_MIN_CHANGES = 32
SWAP_FRACTION = 0.10


class SetConflict(ValueError):
    """An existing set has the name portwall needs but another type or family."""


def temp_name(name: str) -> str:
    """A short, owned name for the temporary twin of ``name`` (ipset names are <= 31)."""
    return "pwt-" + hashlib.sha1(name.encode()).hexdigest()[:16]


def _create_line(name: str, s: IpSet, size: int) -> str:
    fam = "inet6" if s.family == 6 else "inet"
    maxelem = max(s.maxelem, 65536)
    while maxelem < 2 * size:  # room to grow by add/del before the next swap
        maxelem *= 2
    return f"create {name} {s.set_type} family {fam} hashsize 1024 maxelem {maxelem}"


@dataclass
class SetPlan:
    """What to run before and after the iptables transaction, and the counts to report."""

    before: list[str] = field(default_factory=list)
    after: list[str] = field(default_factory=list)
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    swapped: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    entries_added: int = 0
    entries_removed: int = 0
    #: set name -> members that left it (their connections may have to be cut)
    removed_members: dict[str, set[str]] = field(default_factory=dict)

    def empty(self) -> bool:
        return not (self.before or self.after)


def plan_sets(desired: Mapping[str, IpSet], current: Mapping[str, SetState]) -> SetPlan:
    """Diff desired sets against ``ipset save``'s view; raises :class:`SetConflict`."""
    plan = SetPlan()
    temps: set[str] = set()
    for name, s in desired.items():
        want = {canonical_member(m) for m in s.members}
        have = current.get(name)
        if have is None:
            plan.created.append(name)
            plan.before.append(_create_line(name, s, len(want)))
            plan.before += [f"add {name} {m}" for m in sorted(want)]
            plan.entries_added += len(want)
            continue
        if have.set_type != s.set_type or have.family != s.family:
            raise SetConflict(
                f"ipset {name} exists as {have.set_type} (IPv{have.family}) but portwall"
                f" needs {s.set_type} (IPv{s.family}); remove it first")
        add, rem = sorted(want - have.members), sorted(have.members - want)
        if not add and not rem:
            continue
        plan.entries_added += len(add)
        plan.entries_removed += len(rem)
        if rem:
            plan.removed_members[name] = set(rem)
        n = len(add) + len(rem)
        if n > SWAP_MIN_CHANGES or (n > 1 and n > SWAP_FRACTION * max(len(want), len(have.members))):
            tmp = temp_name(name)
            temps.add(tmp)
            plan.swapped.append(name)
            if tmp in current:
                plan.after.append(f"destroy {tmp}")
            plan.after.append(_create_line(tmp, s, len(want)))
            plan.after += [f"add {tmp} {m}" for m in sorted(want)]
            plan.after += [f"swap {tmp} {name}", f"destroy {tmp}"]
        else:
            plan.updated.append(name)
            plan.after += [f"del {name} {m}" for m in rem]
            plan.after += [f"add {name} {m}" for m in add]
    for name in sorted(current):
        if name not in desired and name not in temps and owns_set(name):
            plan.deleted.append(name)
            plan.after.append(f"destroy {name}")
            if current[name].members:
                plan.removed_members[name] = set(current[name].members)
    return plan


def destroy_script(names: list[str]) -> str:
    return "".join(f"destroy {n}\n" for n in names)
