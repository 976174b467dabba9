"""What the iptables+ipset renderer produces and the iptables applier consumes.

A ruleset is a set of portwall-owned chains per (family, table), the few hook rules that
send traffic from built-in chains into them, and the ipsets the rules reference. Rules are
kept as rule specs in ``iptables-save``'s canonical spelling, so the applier can compare
the desired state with what the kernel reports chain by chain, as plain strings.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from portwall.backends.iptables.l2 import L2Port
from portwall.ir.types import Origin

IpFamily = Literal[4, 6]
TableName = Literal["filter", "raw", "mangle", "nat"]

#: Every chain and set portwall owns starts with this; nothing else is ever touched.
PREFIX = "pw-"
#: ipset names start with this (``pw4-...`` / ``pw6-...``).
SET_PREFIX = "pw"


@dataclass
class Chain:
    """A portwall-owned chain: its name and its rule specs (without ``-A <name>``).

    ``ordered=False`` marks a chain whose rules are independent of each other (per-port
    dispatch: each rule matches one port's device and none is terminal), so the applier may
    append a new rule instead of inserting it in place. On iptables-nft an ``-A`` needs no
    dump of the table's rules, while a numbered ``-I`` does: that is most of the cost of
    adding a port to a host that already has thousands.
    """

    name: str
    rules: list[str] = field(default_factory=list)
    ordered: bool = True

    def same_rules(self, actual: list[str]) -> bool:
        """Does the kernel's rule list ``actual`` already say what this chain says?"""
        if self.ordered:
            return actual == self.rules
        if len(actual) != len(self.rules):
            return False
        mine = set(self.rules)
        if len(mine) == len(self.rules):  # no duplicates: a set compare is exact
            return mine == set(actual)
        return sorted(actual) == sorted(self.rules)


@dataclass
class Hook:
    """A rule portwall keeps at the top of a built-in chain (e.g. FORWARD -> pw-FORWARD)."""

    builtin: str
    rule: str  # spec without "-A <builtin>"; must be a jump to a portwall chain


@dataclass
class Table:
    name: TableName
    chains: dict[str, Chain] = field(default_factory=dict)  # in dependency order
    hooks: list[Hook] = field(default_factory=list)


@dataclass
class IpSet:
    name: str
    family: IpFamily
    set_type: str  # "hash:net"
    members: list[str] = field(default_factory=list)  # sorted, canonical (as `ipset save`)
    comment: str = ""  # which IR address set it renders (group name/id)
    maxelem: int = 65536  # ipset default; raised (powers of two) to twice the members


class Provenance(Mapping[str, Origin]):
    """Comment tag (rule id) -> the resource behind the line, for every line a ruleset
    writes. Made of the renderer's per-port and per-group pieces and merged only when
    someone reads it (an apply error, drift, a test), so a render never pays for it."""

    def __init__(self, parts: Sequence[Mapping[str, Origin] | Callable[[], Mapping[str, Origin]]]
                 = ()) -> None:
        self._parts = parts
        self._merged: dict[str, Origin] | None = None

    def _all(self) -> dict[str, Origin]:
        if self._merged is None:
            merged: dict[str, Origin] = {}
            for part in self._parts:
                for k, v in (part() if callable(part) else part).items():
                    merged.setdefault(k, v)
            self._merged = merged
        return self._merged

    def __getitem__(self, rid: str) -> Origin:
        return self._all()[rid]

    def __iter__(self) -> Iterator[str]:
        return iter(self._all())

    def __len__(self) -> int:
        return len(self._all())

    def __eq__(self, other: object) -> bool:  # provenance never decides ruleset equality
        return isinstance(other, Provenance)

    __hash__ = None  # type: ignore[assignment]


@dataclass
class IptablesRuleset:
    """The whole desired iptables+ipset state of one host, with the provenance of every
    line it writes."""

    tables: dict[IpFamily, dict[TableName, Table]] = field(default_factory=dict)
    ipsets: dict[str, IpSet] = field(default_factory=dict)
    #: the bridge table's elements (ARP/ND guard, tracked or not), per port device
    l2: dict[str, L2Port] = field(default_factory=dict)
    provenance: Provenance = field(default_factory=Provenance)
