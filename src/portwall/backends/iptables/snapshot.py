"""What the kernel reports: ``iptables-save`` and ``ipset save`` output, parsed.

Only the parts the applier reasons about are kept: the rules of every portwall chain, the
rules of the built-in chains (to find and place portwall's hooks) and the names of foreign
chains. Rule specs stay plain strings in ``iptables-save``'s spelling so that the desired
and the current state compare as strings, chain by chain.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

from portwall.backends.iptables.types import PREFIX

#: ipsets portwall owns: ``pw4-...``/``pw6-...`` from the renderer, ``pwt-...`` temporaries
#: of a swap, ``pw-...`` for anything else portwall may name. Everything else is foreign.
_OWNED_SET = re.compile(r"pw[46t]?-")
_TARGET = re.compile(r"(?:^|\s)-[jg]\s+(\S+)")
_SIMPLE_COMMENT = re.compile(r'--comment "([A-Za-z0-9_-]+)"')
_COMMENT = re.compile(r'--comment (?:"((?:[^"\\]|\\.)*)"|(\S+))')


def owns_set(name: str) -> bool:
    return _OWNED_SET.match(name) is not None


def owns_chain(name: str) -> bool:
    return name.startswith(PREFIX)


def target_of(spec: str) -> str | None:
    """The ``-j``/``-g`` target of a rule spec, if any."""
    m = _TARGET.search(spec)
    return m.group(1) if m else None


def is_hook(spec: str) -> bool:
    """A rule in a built-in chain that sends traffic into a portwall chain."""
    target = target_of(spec)
    return target is not None and owns_chain(target)


def canonical_spec(spec: str) -> str:
    """``spec`` as ``iptables-save`` prints it, as far as quoting goes: a comment made only
    of ``[A-Za-z0-9_-]`` is printed without quotes, anything else in double quotes."""
    spec = spec.strip()
    if '--comment "' in spec:
        spec = _SIMPLE_COMMENT.sub(r"--comment \1", spec)
    return spec


def comment_of(spec: str) -> str | None:
    """The rule id in a rule's ``-m comment``: its first token (portwall writes the IR rule
    id there, then names for people, e.g. ``sgr-1 group web ingress tcp/22``)."""
    m = _COMMENT.search(spec)
    if not m:
        return None
    text = re.sub(r"\\(.)", r"\1", m.group(1)) if m.group(1) is not None else m.group(2)
    return text.split(maxsplit=1)[0] if text.strip() else text


@dataclass
class TableState:
    """One table of one family as ``iptables-save`` printed it."""

    name: str
    chains: dict[str, list[str]] = field(default_factory=dict)  # portwall chains only
    builtins: dict[str, list[str]] = field(default_factory=dict)  # built-in chain rules
    foreign: dict[str, list[str]] = field(default_factory=dict)  # other user chains

    def copy(self) -> TableState:
        """A copy whose dicts can change; rule lists are shared, so they are replaced,
        never edited in place (copying 60k rules per apply would cost milliseconds)."""
        return TableState(self.name, dict(self.chains), dict(self.builtins), dict(self.foreign))


FamilyState = dict[str, TableState]


def parse_save(text: str) -> FamilyState:
    """Parse ``iptables-save`` output into tables."""
    tables: FamilyState = {}
    cur: TableState | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("*"):
            cur = tables.setdefault(line[1:], TableState(line[1:]))
        elif cur is None or line == "COMMIT":
            continue
        elif line.startswith(":"):
            name, policy = [*line[1:].split(), "-"][:2]
            target = cur.builtins if policy != "-" else (
                cur.chains if owns_chain(name) else cur.foreign)
            target.setdefault(name, [])
        elif line.startswith("-A "):
            _, chain, *rest = line.split(" ", 2)
            spec = rest[0] if rest else ""
            if owns_chain(chain):
                cur.chains.setdefault(chain, []).append(spec)
            elif chain in cur.builtins:
                cur.builtins[chain].append(spec)
            else:
                cur.foreign.setdefault(chain, []).append(spec)
    return tables


@dataclass
class SetState:
    """One ipset as ``ipset save`` printed it; members normalised to CIDR strings."""

    name: str
    set_type: str
    family: int
    options: str  # the rest of the create line, for the record
    members: set[str] = field(default_factory=set)


def canonical_member(member: str) -> str:
    """A hash:net member as a CIDR with prefix (``10.0.0.1`` -> ``10.0.0.1/32``), so that the
    renderer's spelling and ``ipset save``'s compare equal."""
    m = member.strip()
    if "/" not in m:  # the common case, a host: no parsing (thousands per apply)
        return m + ("/128" if ":" in m else "/32")
    try:
        return str(ipaddress.ip_network(m, strict=False))
    except ValueError:
        return m


def parse_ipset_save(text: str, *, owned_only: bool = True) -> dict[str, SetState]:
    """Parse ``ipset save`` output (``create``/``add`` lines)."""
    sets: dict[str, SetState] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 3:
            continue
        if parts[0] == "create":
            name, set_type = parts[1], parts[2]
            if owned_only and not owns_set(name):
                continue
            opts = parts[3:]
            family = 6 if "inet6" in opts else 4
            sets[name] = SetState(name, set_type, family, " ".join(opts))
        elif parts[0] == "add" and parts[1] in sets:
            sets[parts[1]].members.add(canonical_member(parts[2]))
    return sets
