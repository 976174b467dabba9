"""IR matches and set elements spelled in ``nft`` syntax (inet table), and names.

Element strings are canonical: :mod:`.state` turns the kernel's JSON listing back into
exactly these strings, so desired and actual sets compare as plain string sets.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
import socket
from collections.abc import Mapping

from portwall.ir.types import Action, CtState, IPNetwork, Match, PortRange, SetRef

#: the packet mark carries a portwall port id in the high 16 bits (bridge -> inet
#: hand-over) and the id of the port's chain combination in the low 16 bits, which the
#: verdict maps are keyed by (few entries: a committed chain re-validates only those)
MARK_SHIFT = 16
MAX_PORT_ID = 0xFFFE
COMBO_MASK = 0xFFFF
MAX_COMBO_ID = 0xFFFE

_SAFE = re.compile(r"[A-Za-z0-9_]+")
_UNSAFE_COMMENT = re.compile(r"[\"'\\\x00-\x1f\x7f]")
_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9_.:/-]+")
#: nft refuses comments over 128 bytes (NFTNL_UDATA_COMMENT_MAXLEN); every character
#: written is ASCII (names are reduced to a safe charset), so characters are bytes
COMMENT_MAX = 127
NAME_MAX = 48
_CT_ORDER = (CtState.INVALID, CtState.NEW, CtState.ESTABLISHED, CtState.RELATED,
             CtState.UNTRACKED)
_PORT_PROTOCOLS = {6, 17, 33, 132, 136}
#: drops count (the lab proves a denied probe by its rule's counter, see .counters);
#: accepts do not: the hot path of allowed traffic stays counter-free
VERDICT = {Action.ALLOW: "accept", Action.DROP: "counter drop"}


class RenderError(ValueError):
    """The plan cannot be expressed in nftables."""


def ident(text: str, room: int = 40) -> str:
    """A chain/set name part: ``text`` when plain, else a clean prefix plus a hash."""
    if len(text) <= room and _SAFE.fullmatch(text):
        return text
    digest = hashlib.sha1(text.encode()).hexdigest()[:8]
    clean = re.sub(r"[^A-Za-z0-9_]", "_", text)[: room - 9]
    return f"{clean}_{digest}" if clean else digest


def digest(lines: tuple[str, ...] | list[str]) -> str:
    return hashlib.sha1("\n".join(lines).encode()).hexdigest()[:12]


def comment(text: str, note: str = "") -> str:
    """``comment "<rid> <note>"``: the rid (or a ``pw-``/``t_`` tag) first, which is all any
    parser reads (:func:`rid_of`); ``note`` holds names for people (see :mod:`.notes`)."""
    text = _UNSAFE_COMMENT.sub("_", text)[:COMMENT_MAX] or "-"
    if note:
        text = f"{text} {_UNSAFE_COMMENT.sub('_', note)}"[:COMMENT_MAX].rstrip()
    return f'comment "{text}"'


def rid_of(tag: str) -> str:
    """The rid of a rule comment (its first token)."""
    return tag.split(" ", 1)[0]


def name_token(name: str) -> str:
    """A user's name (group, port) as one ASCII token (anything outside
    ``[A-Za-z0-9_.:/-]`` becomes ``_``, at most 48 characters), so the rid stays the
    comment's first token and a comment never outgrows nft's limit in bytes."""
    return _NAME_UNSAFE.sub("_", name.strip())[:NAME_MAX] or "-"


def quote(name: str) -> str:
    return f'"{name}"'


def addr(net: IPNetwork) -> str:
    """An address (no prefix for a host) or a prefix; IPv6 through inet_ntop as nft does."""
    if net.version == 6:
        text = socket.inet_ntop(socket.AF_INET6, net.network_address.packed)
    else:
        text = str(net.network_address)
    return text if net.prefixlen == net.max_prefixlen else f"{text}/{net.prefixlen}"


def mark_of(port_id: int, combo: int = 0) -> int:
    return port_id << MARK_SHIFT | combo


def collapse(nets: list[IPNetwork]) -> list[IPNetwork]:
    """Non-overlapping prefixes covering ``nets`` (interval sets refuse overlaps)."""
    out: list[IPNetwork] = []
    for version in (4, 6):
        fam = [n for n in nets if n.version == version]
        if fam:
            out += list(ipaddress.collapse_addresses(fam))  # type: ignore[type-var]
    return out


def _range(r: PortRange) -> str:
    return str(r.lo) if r.lo == r.hi else f"{r.lo}-{r.hi}"


def set_names(set_id: str, family: int) -> tuple[str, str]:
    """(hash set of host addresses, interval set of prefixes) of one remote group."""
    base = ident(set_id.removeprefix("sg-"), 48)
    return f"r{family}h_{base}", f"r{family}n_{base}"


def match_variants(m: Match, sets: Mapping[str, tuple[str, str]],
                   skip: str | None = None) -> list[str]:
    """The match part of a rule: one text per variant (a remote-group reference becomes two
    rules, one per set: host addresses hashed, prefixes in an interval set; both accept, so
    the pair means exactly "in the group"). ``skip`` leaves out the src or dst address
    (a template puts it into a set lookup of its own)."""
    ip = "ip" if m.family == 4 else "ip6"
    head = [f"meta nfproto ipv{m.family}"]
    variants = [head]
    for key, field in (("saddr", m.src), ("daddr", m.dst)):
        if field is None or (skip is not None and key.startswith(skip)):
            continue
        if isinstance(field, SetRef):
            try:
                hname, nname = sets[field.set_id]
            except KeyError:
                raise RenderError(f"rule refers to unknown address set {field.set_id}") from None
            variants = [[*v, f"{ip} {key} @{s}"] for v in variants for s in (hname, nname)]
        elif field.prefixlen:
            variants = [[*v, f"{ip} {key} {addr(field)}"] for v in variants]
    tail: list[str] = []
    if m.protocol:
        tail.append(f"meta l4proto {m.protocol}")
    if m.src_mac:
        tail.append(f"ether saddr {m.src_mac.lower()}")
    if m.sport is not None or m.dport is not None:
        if m.protocol not in _PORT_PROTOCOLS:
            raise RenderError(f"port match on protocol {m.protocol or 'any'}")
        if m.sport is not None:
            tail.append(f"th sport {_range(m.sport)}")
        if m.dport is not None:
            tail.append(f"th dport {_range(m.dport)}")
    if m.icmp_type is not None:
        if m.protocol == 1 and m.family == 4:
            kw = "icmp"
        elif m.protocol == 58 and m.family == 6:
            kw = "icmpv6"
        else:
            raise RenderError(f"ICMP type on protocol {m.protocol} in IPv{m.family}")
        tail.append(f"{kw} type {m.icmp_type}")
        if m.icmp_code is not None:
            tail.append(f"{kw} code {m.icmp_code}")
    if m.ct:
        tail.append("ct state " + ",".join(s.value for s in _CT_ORDER if s in m.ct))
    return [" ".join(v + tail) for v in variants]
