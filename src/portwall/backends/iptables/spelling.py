"""How iptables-save spells things: comments, protocols, addresses, ports, marks, matches.

The renderer (:mod:`.render`) writes rules in exactly this spelling so the applier can compare
desired and actual chains as plain strings.
"""

from __future__ import annotations

import ctypes
import functools
import re
import socket
from collections.abc import Mapping

from portwall.ir.types import CtState, IPNetwork, Match, PortRange, SetRef

#: xt_comment refuses comments of 256 bytes or more (XT_MAX_COMMENT_LEN counts the NUL)
COMMENT_MAX = 255
#: A human name in a comment: one token of a safe charset, at most this long
NAME_MAX = 48
_SAFE = re.compile(r"[A-Za-z0-9_-]+")
_UNSAFE_COMMENT = re.compile(r"[\"'\\\x00-\x1f\x7f]")
_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9_.:/-]+")


class RenderError(ValueError):
    """The plan cannot be expressed in iptables (e.g. two ports share a device name)."""


# ------------------------------------------------------------------------ spelling
def name_token(name: str) -> str:
    """A user's name (group, port) as one comment token: spaces, quotes and anything
    outside ``[A-Za-z0-9_.:/-]`` become ``_``, so the rid stays the comment's first token
    and the text needs no escaping in iptables-restore."""
    return _NAME_UNSAFE.sub("_", name.strip())[:NAME_MAX] or "-"


def _comment(text: str, note: str = "") -> str:
    """``-m comment`` as iptables-save prints it: quoted unless plain (xtables_save_string).
    Quotes and backslashes, which iptables would escape, are replaced instead. ``note``
    (names for people) follows the rid after a space; every parser reads the first token."""
    text = _UNSAFE_COMMENT.sub("_", text)[:COMMENT_MAX] or "-"
    if note:
        text = f"{text} {_UNSAFE_COMMENT.sub('_', note)}"[:COMMENT_MAX].rstrip()
    if _SAFE.fullmatch(text):
        return f"-m comment --comment {text}"
    return f'-m comment --comment "{text}"'


class _ProtoEnt(ctypes.Structure):
    _fields_ = [("p_name", ctypes.c_char_p), ("p_aliases", ctypes.c_void_p),
                ("p_proto", ctypes.c_int)]


# iptables' own table (xtables_chain_protos), consulted after the system's protocol database.
_XTABLES_PROTOS = {6: "tcp", 132: "sctp", 17: "udp", 136: "udplite", 1: "icmp",
                   58: "ipv6-icmp", 50: "esp", 51: "ah", 135: "ipv6-mh"}


@functools.cache
def protocol_spelling(number: int) -> str:
    """How iptables-save prints ``-p <number>``: the name libc's ``getprotobynumber`` gives
    (that is what iptables calls, so /etc/protocols decides), then iptables' built-in names,
    else the number. "" for 0, which iptables treats as "any protocol" and does not print."""
    if number == 0:
        return ""
    try:
        fn = ctypes.CDLL(None).getprotobynumber
        fn.restype = ctypes.POINTER(_ProtoEnt)
        fn.argtypes = [ctypes.c_int]
        ent = fn(number)
        if ent and ent.contents.p_name:
            return str(ent.contents.p_name.decode())
    except (OSError, AttributeError):  # no libc symbol: fall back like iptables does
        pass
    return _XTABLES_PROTOS.get(number, str(number))


def _net(net: IPNetwork) -> str:
    """An address as iptables prints it: always with the prefix length; IPv6 through
    inet_ntop (as iptables does), which differs from Python for e.g. ::ffff:a.b.c.d."""
    if net.version == 6:
        return f"{socket.inet_ntop(socket.AF_INET6, net.network_address.packed)}/{net.prefixlen}"
    return str(net)


def _range(r: PortRange) -> str:
    return str(r.lo) if r.lo == r.hi else f"{r.lo}:{r.hi}"


_PORT_MODULES = {6: "tcp", 17: "udp", 132: "sctp", 33: "dccp"}
_CT_ORDER = (CtState.INVALID, CtState.NEW, CtState.RELATED, CtState.ESTABLISHED,
             CtState.UNTRACKED)


def match_spec(m: Match, sets: Mapping[str, str]) -> list[str]:
    """The match part of a rule, in iptables-save's order: addresses, protocol, then the
    match modules in the order portwall always adds them (mac, set, ports, icmp, conntrack).

    ``sets`` maps IR set ids to ipset names.
    """
    out: list[str] = []
    set_parts: list[str] = []
    for flag, direction, addr in (("-s", "src", m.src), ("-d", "dst", m.dst)):
        if isinstance(addr, SetRef):
            try:
                set_parts.append(f"-m set --match-set {sets[addr.set_id]} {direction}")
            except KeyError:
                raise RenderError(f"rule refers to unknown address set {addr.set_id}") from None
        elif addr is not None and addr.prefixlen:  # iptables prints no -s/-d for a /0
            out.append(f"{flag} {_net(addr)}")
    proto = m.protocol
    if proto:
        out.append(f"-p {protocol_spelling(proto)}")
    if m.src_mac:
        out.append(f"-m mac --mac-source {m.src_mac.lower()}")
    out += set_parts
    if m.sport is not None or m.dport is not None:
        out += _port_match(m)
    if m.icmp_type is not None:
        code = "" if m.icmp_code is None else f"/{m.icmp_code}"
        if proto == 1 and m.family == 4:
            out.append(f"-m icmp --icmp-type {m.icmp_type}{code}")
        elif proto == 58 and m.family == 6:
            out.append(f"-m icmp6 --icmpv6-type {m.icmp_type}{code}")
        else:
            raise RenderError(f"ICMP type on protocol {proto} in IPv{m.family}")
    if m.ct:
        out.append("-m conntrack --ctstate " + ",".join(s.name for s in _CT_ORDER if s in m.ct))
    return out


def _port_match(m: Match) -> list[str]:
    proto = m.protocol or 0
    module = _PORT_MODULES.get(proto)
    if module is not None:
        spec = f"-m {module}"
        if m.sport is not None:
            spec += f" --sport {_range(m.sport)}"
        if m.dport is not None:
            spec += f" --dport {_range(m.dport)}"
        return [spec]
    if proto == 136:  # udplite has no match module of its own; multiport takes one option
        return [f"-m multiport --{k} {_range(r)}"
                for k, r in (("sports", m.sport), ("dports", m.dport)) if r is not None]
    raise RenderError(f"port match on protocol {proto or 'any'}")


def _mark(bits: int, mask: int) -> str:
    return f"-j MARK --set-xmark {bits:#x}/{mask:#x}"


def _has_mark(bits: int) -> str:
    return f"-m mark --mark {bits:#x}/{bits:#x}"
