"""Cut tracked connections the new policy no longer allows, keep the others.

A stateful filter accepts every packet of an ESTABLISHED connection, so removing a rule or a
remote-group member would not stop a session that is already open. After a successful apply
the applier lists the conntrack entries of the zones whose policy got stricter, asks "would
the original-direction packet, as a NEW packet, be allowed by the new plan?", and deletes
the entries for which the answer is no.

The caller says which zones to look at (the applier: zones of ports whose chains it rewrote
or whose remote groups lost members), so an apply that only adds never lists anything.
Listing and deleting go through the ``conntrack`` tool started inside the namespace: one
process to list, one shell for every deletion; pyroute2's ctnetlink was measured no faster
(about 5 ms per dump through its asyncio core). Routers cut a floating IP's connections
in-process instead (:class:`CtNetlink`): a ctnetlink flush filtered by the ct mark their
NAT rules give those connections, with no dump and no process.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shlex
import socket
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from portwall.analyze.evaluate import IPAddress, Packet, evaluate_hop, spoof_entry_for
from portwall.ir.types import HostPlan, PortPlan
from portwall.kernel.runner import Runner
from portwall.model.protocols import ICMP_PROTOCOLS, PORT_PROTOCOLS


@dataclass(frozen=True, slots=True)
class CtEntry:
    """The original direction of one tracked connection."""

    family: int
    protocol: int
    src: str
    dst: str
    zone: int = 0
    sport: int | None = None
    dport: int | None = None
    icmp_type: int | None = None
    icmp_code: int | None = None
    icmp_id: int | None = None
    state: str | None = None

    def describe(self) -> str:
        ports = f" {self.sport}->{self.dport}" if self.dport is not None else ""
        return f"zone {self.zone} proto {self.protocol} {self.src} -> {self.dst}{ports}"


#: Decides whether a connection is still allowed (True keeps it).
AllowedFn = Callable[[CtEntry], bool]

_KV = re.compile(r"(\w+)=(\S+)")


def parse_conntrack(text: str) -> list[CtEntry]:
    """Parse ``conntrack -L -o extended`` lines (first tuple = original direction)."""
    out: list[CtEntry] = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 5 or parts[0] not in ("ipv4", "ipv6"):
            continue
        family = 4 if parts[0] == "ipv4" else 6
        try:
            proto = int(parts[3])
        except ValueError:
            continue
        orig: dict[str, str] = {}
        zone = 0
        state = None
        for tok in parts[4:]:
            m = _KV.fullmatch(tok)
            if m is None:
                if tok.isupper() and not tok.startswith("[") and state is None and not orig:
                    state = tok
                continue
            key, val = m.groups()
            if key == "src" and "src" in orig:
                orig["_reply"] = "1"
            if key == "zone":
                zone = int(val)
            elif "_reply" not in orig:
                orig.setdefault(key, val)
        if "src" not in orig or "dst" not in orig:
            continue

        def num(k: str, d: dict[str, str] = orig) -> int | None:
            return int(d[k]) if k in d else None

        out.append(CtEntry(family, proto, orig["src"], orig["dst"], zone,
                           num("sport"), num("dport"), num("type"), num("code"), num("id"),
                           state))
    return out


def list_entries(runner: Runner, zones: set[int] | None = None) -> list[CtEntry]:
    """Entries of both families, optionally only those in ``zones`` (one process)."""
    proc = runner.run(["conntrack", "-L", "-o", "extended"])
    entries = parse_conntrack(proc.stdout)
    return entries if zones is None else [e for e in entries if e.zone in zones]


def delete_args(e: CtEntry) -> list[str]:
    """``conntrack -D`` arguments selecting exactly ``e``."""
    args = ["conntrack", "-D", "-f", "ipv6" if e.family == 6 else "ipv4", "-w", str(e.zone),
            "-s", e.src, "-d", e.dst]
    if e.protocol in (1, 58) and e.icmp_type is not None:
        opt = "icmpv6" if e.protocol == 58 else "icmp"
        args += ["-p", opt, f"--{opt}-type", str(e.icmp_type), f"--{opt}-code",
                 str(e.icmp_code or 0)]
        if e.icmp_id is not None:
            args += [f"--{opt}-id", str(e.icmp_id)]
    else:
        args += ["-p", str(e.protocol)]
        if e.sport is not None and e.dport is not None:
            args += ["--sport", str(e.sport), "--dport", str(e.dport)]
    return args


_DELETED = re.compile(r"(\d+) flow entries have been deleted")


def delete_entries(runner: Runner, entries: Iterable[CtEntry]) -> int:
    """Delete ``entries`` in one shell inside the namespace; returns how many went."""
    cmds = [shlex.join(delete_args(e)) for e in entries]
    if not cmds:
        return 0
    proc = runner.run(["sh", "-c", "; ".join(cmds) + "; true"], write=True)
    return sum(int(n) for n in _DELETED.findall(proc.stderr))


# ------------------------------------------------------------------ the verdict
def _packet(e: CtEntry) -> Packet | None:
    try:
        ports = e.protocol in PORT_PROTOCOLS
        icmp = e.protocol in ICMP_PROTOCOLS
        return Packet(
            family=4 if e.family == 4 else 6, src=ipaddress.ip_address(e.src),
            dst=ipaddress.ip_address(e.dst), protocol=e.protocol,
            sport=e.sport if ports else None, dport=e.dport if ports else None,
            icmp_type=e.icmp_type if icmp else None, icmp_code=e.icmp_code if icmp else None)
    except ValueError:
        return None


class PlanVerdict:
    """``allowed(entry)`` against one plan, using :mod:`portwall.analyze.evaluate`.

    conntrack does not record MACs, so each end is the port of the entry's zone that has the
    address as a fixed IP, else the one whose most specific address pair covers it, else no
    local port (that side is not filtered here). When several ports qualify the entry is
    kept if any pairing allows it: cutting a legitimate session is worse than keeping a
    doubtful one for the rest of its life.
    """

    def __init__(self, plan: HostPlan) -> None:
        self.plan = plan
        self._by_zone: dict[int, list[PortPlan]] = {}
        for p in plan.ports:
            self._by_zone.setdefault(p.zone, []).append(p)

    @staticmethod
    def _owners(zone_ports: list[PortPlan], addr: IPAddress, family: int) -> list[PortPlan]:
        """Ports that own ``addr``: by fixed IP, else by the most specific address pair."""
        exact = [p for p in zone_ports if any(addr == a.network_address for a in p.addresses)]
        if exact:
            return exact
        best: list[PortPlan] = []
        best_len = -1
        for p in zone_ports:
            for s in p.spoof:
                if s.cidr is None or s.family != family or addr not in s.cidr:
                    continue
                if s.cidr.prefixlen > best_len:
                    best, best_len = [p], s.cidr.prefixlen
                elif s.cidr.prefixlen == best_len and p not in best:
                    best.append(p)
        return best

    def __call__(self, e: CtEntry) -> bool:
        pkt = _packet(e)
        if pkt is None:
            return True
        zone_ports = self._by_zone.get(e.zone, [])
        senders: list[PortPlan | None] = [
            p for p in self._owners(zone_ports, pkt.src, e.family)
            if spoof_entry_for(p, pkt) is not None] or [None]
        receivers: list[PortPlan | None] = [
            *self._owners(zone_ports, pkt.dst, e.family)] or [None]
        for s in senders:
            for r in receivers:
                # One port owning both ends (a wide address pair) is routing traffic
                # through itself: only its egress applies on this host.
                if evaluate_hop(self.plan, pkt, s, None if r is s else r).allowed:
                    return True
        return False


def reconcile(runner: Runner, zones: set[int], allowed: AllowedFn) -> tuple[int, int]:
    """Delete the entries in ``zones`` that ``allowed`` rejects: (checked, deleted)."""
    if not zones:
        return 0, 0
    entries = list_entries(runner, zones)
    doomed = [e for e in entries if not allowed(e)]
    return len(entries), delete_entries(runner, doomed)


# ------------------------------------------------------------------ ctnetlink, in-process
#: A router's connection names its floating IPs in its ct mark: the DNAT rule of floating IP
#: F puts F's slot in the high half (connections *to* F), the float-SNAT rule of F puts it
#: in the low half (connections *from* F's port, leaving as F). A hairpin from one floating
#: IP's port to another floating IP carries both.
DNAT_MASK = 0xFFFF0000
SNAT_MASK = 0x0000FFFF
_NFNL_SUBSYS_CTNETLINK = 1
_IPCTNL_MSG_CT_DELETE = 2
_IPCTNL_MSG_CT_GET_STATS = 5


def fip_ct_marks(floating: Iterable[IPAddress]) -> dict[str, int]:
    """floating address -> its slot (the address' low 16 bits). Addresses whose bits are 0
    or shared with another floating IP of the same router get none: their connections are
    found by address instead (the ``conntrack`` tool)."""
    slots: dict[int, list[str]] = {}
    for f in floating:
        slots.setdefault(int(f) & 0xFFFF, []).append(str(f))
    return {addrs[0]: slot for slot, addrs in slots.items() if slot and len(addrs) == 1}


class CtNetlink:
    """ctnetlink over a netlink socket opened inside ``netns``, used in-process.

    A socket belongs to the namespace of the thread that creates it, so a short-lived
    thread enters the namespace, opens the socket and leaves; every later call then talks
    to that namespace's conntrack table from any thread, with no process start. A dump
    costs ~13 ms here whatever the namespace holds (the kernel walks the host-wide hash
    of 262,144 buckets), so floating IPs are cut with *flushes filtered by ct mark*
    (~0.3 ms each): the kernel deletes the entries whose mark names the floating IP.
    (pyroute2's NFCTSocket opens its socket lazily in its own event loop, i.e. in the
    caller's namespace, and costs 1-9 ms a call: its message classes are used, its
    socket is not.)"""

    def __init__(self, netns: str | None) -> None:
        import threading

        self.netns = netns
        self._seq = 0
        box: dict[str, object] = {}

        def open_inside() -> None:
            try:
                if netns is not None:
                    from pyroute2 import netns as pr_netns

                    fd = os.open(f"/run/netns/{netns}", os.O_RDONLY)
                    try:
                        pr_netns.setns(fd)
                    finally:
                        os.close(fd)
                s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 12)  # NETFILTER
                s.bind((0, 0))
                box["sock"] = s
            except Exception as e:  # reported below, in the caller's thread
                box["err"] = e

        t = threading.Thread(target=open_inside, name=f"ctnl-{netns}")
        t.start()
        t.join()
        if "err" in box:
            raise box["err"]  # type: ignore[misc]
        self.sock: socket.socket = box["sock"]  # type: ignore[assignment]

    def _request(self, msg_type: int, family: int, attrs: list[tuple[str, int]]) -> bytes:
        from pyroute2.netlink import NLM_F_ACK, NLM_F_REQUEST
        from pyroute2.netlink.nfnetlink.nfctsocket import nfct_msg

        self._seq += 1
        msg = nfct_msg()
        msg["nfgen_family"] = family
        msg["attrs"] = attrs
        msg["header"]["type"] = (_NFNL_SUBSYS_CTNETLINK << 8) | msg_type
        msg["header"]["flags"] = NLM_F_REQUEST | NLM_F_ACK
        msg["header"]["sequence_number"] = self._seq
        msg.encode()
        self.sock.send(msg.data)
        while True:
            data = self.sock.recv(65536)
            off = 0
            while off < len(data):
                length, typ, _flags, seq = struct.unpack_from("=IHHI", data, off)
                if seq == self._seq:
                    if typ == 2:  # NLMSG_ERROR: 0 is the ACK
                        (err,) = struct.unpack_from("=i", data, off + 16)
                        if err:
                            raise OSError(-err, f"ctnetlink: {os.strerror(-err)}")
                        return b""
                    return data[off:off + length]
                off += (length + 3) & ~3

    def count(self) -> int:
        """Connections tracked in the namespace."""
        from pyroute2.netlink.nfnetlink.nfctsocket import nfct_stats

        raw = self._request(_IPCTNL_MSG_CT_GET_STATS, 0, [])
        if not raw:
            return 0
        msg = nfct_stats(raw)
        msg.decode()
        return int(msg.get_attr("CTA_STATS_GLOBAL_ENTRIES") or 0)

    def flush_mark(self, mark: int, mask: int, family: int = socket.AF_INET) -> None:
        """Delete every entry of ``family`` whose ct mark & mask == mark."""
        if not mark & mask:
            raise ValueError("a mark of 0 would select every unmarked connection")
        self._request(_IPCTNL_MSG_CT_DELETE, family,
                      [("CTA_MARK", mark), ("CTA_MARK_MASK", mask)])

    def cut_floating(self, slots: Iterable[int]) -> int:
        """Delete the connections to and from each floating IP slot (two flushes each);
        returns how many entries went (the table's count before and after, so
        connections opened meanwhile by others may blur it)."""
        slots = list(slots)
        if not slots:
            return 0
        before = self.count()
        if before == 0:
            return 0
        for slot in slots:
            self.flush_mark(slot << 16, DNAT_MASK)
            self.flush_mark(slot, SNAT_MASK)
        return max(0, before - self.count())

    def close(self) -> None:
        self.sock.close()
