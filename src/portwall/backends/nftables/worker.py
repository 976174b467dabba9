"""libnftables inside one network namespace, in-process.

Each applier keeps a long-lived ``nftables.Nftables()`` context for its namespace: every
batch then costs the parse and one netlink transaction, no process start (``nft -f`` is
~3 ms before it does anything). A namespace is a property of a thread, so every call moves
the *calling* thread into the namespace for its duration (:func:`portwall.kernel.runner.inside`,
two ``setns`` calls, ~20 us) and back: libnftables' netlink socket is always opened inside
the namespace, whatever thread calls us.

Why not a worker thread that lives in the namespace: handing a call to another thread and
back means two cross-CPU wake-ups, and on this 2-vCPU VM a wake-up of an idle vCPU now and
then takes 1-3 ms (measured: the apply's tail at 10,000 ports was made of these hand-offs,
not of nft work). The netlink transaction itself runs in the sender's context, so doing it
in the caller's thread wakes nobody.
"""

from __future__ import annotations

import json
import socket
import struct
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from portwall.kernel.runner import inside

T = TypeVar("T")

_NETLINK_NETFILTER = 12
_NFT_GETGEN = (10 << 8) | 16  # NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_GETGEN
_NFT_NEWGEN = (10 << 8) | 15
_NLMSG_ERROR = 2
_NFTA_GEN_ID = 1


class NftWorker:
    def __init__(self, netns: str | None) -> None:
        self.netns = netns
        self._lock = threading.RLock()  # one libnftables context: one caller at a time
        self._nft: Any = None
        self._gen_sock: socket.socket | None = None
        self._gen_seq = 0
        self.call(self._open)  # fails if the namespace is missing: no stray namespace

    def call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` in this thread, moved into the namespace for the duration: several
        steps (read the generation, commit, read it again) in one visit."""
        with self._lock, inside(self.netns):
            return fn()

    def _open(self) -> None:
        import nftables  # Debian's python3-nftables (system site-packages)

        nft = nftables.Nftables()
        nft.set_stateless_output(True)
        self._nft = nft

    def cmd_inside(self, text: str, as_json: bool = False) -> tuple[int, str, str]:
        """One batch; only from inside :meth:`call`."""
        self._nft.set_json_output(as_json)
        try:
            rc, out, err = self._nft.cmd(text)
        finally:
            self._nft.set_json_output(False)
        return int(rc), str(out or ""), str(err or "")

    def run(self, text: str) -> tuple[int, str, str]:
        """One ``nft -f`` batch: one transaction, all or nothing."""
        return self.call(lambda: self.cmd_inside(text))

    def list_json(self, what: str, stateful: bool = False) -> list[dict[str, Any]] | None:
        """``nft -j list <what>`` objects, or None when it does not exist; ``stateful``
        includes counter values (a rule's ``counter`` is ``null`` otherwise)."""
        def listing() -> tuple[int, str, str]:
            if not stateful:
                return self.cmd_inside(f"list {what}", True)
            self._nft.set_stateless_output(False)
            try:
                return self.cmd_inside(f"list {what}", True)
            finally:
                self._nft.set_stateless_output(True)

        rc, out, _err = self.call(listing)
        if rc != 0:
            return None
        items: list[dict[str, Any]] = json.loads(out).get("nftables", [])
        return items

    def generation_inside(self) -> int | None:
        """The generation, only from inside :meth:`call`: one NFT_MSG_GETGEN on a plain
        netlink socket (opened in the namespace), a few microseconds, where a pyroute2
        request costs ~0.3 ms on every apply."""
        try:
            if self._gen_sock is None:
                sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, _NETLINK_NETFILTER)
                sock.settimeout(2.0)
                sock.bind((0, 0))
                self._gen_sock = sock
                self._gen_seq = 0
            self._gen_seq += 1
            seq = self._gen_seq
            # nlmsghdr (len, type, flags=NLM_F_REQUEST, seq, pid) + nfgenmsg (AF_UNSPEC, v0, 0)
            self._gen_sock.send(struct.pack("=IHHII", 20, _NFT_GETGEN, 1, seq, 0)
                                + struct.pack("=BBH", 0, 0, 0))
            while True:
                data = self._gen_sock.recv(4096)
                _ln, typ, _fl, rseq = struct.unpack_from("=IHHI", data)
                if rseq != seq:
                    continue  # an answer to an earlier, timed-out request
                if typ != _NFT_NEWGEN:
                    raise OSError(f"netlink answered type {typ}")
                off = 20
                while off + 4 <= len(data):
                    alen, atyp = struct.unpack_from("=HH", data, off)
                    if atyp & 0x3FFF == _NFTA_GEN_ID:
                        return int(struct.unpack_from(">I", data, off + 4)[0])
                    off += (alen + 3) & ~3
                return None
        except OSError:  # no answer: callers then read the kernel instead of trusting a cache
            if self._gen_sock is not None:
                self._gen_sock.close()
            self._gen_sock = None
            return None

    def _commit(self, text: str) -> tuple[int, str, str, int | None, int | None]:
        rc, out, err = self.cmd_inside(text)
        return rc, out, err, self.generation_inside(), self._conntrack_count()

    def commit(self, text: str) -> tuple[int, str, str, int | None, int | None]:
        """:meth:`run`, then the generation it left and the conntrack count, in one visit to
        the namespace."""
        return self.call(lambda: self._commit(text))

    def generation(self) -> int | None:
        """The nf_tables generation (bumped by every committed transaction of anyone)."""
        return self.call(self.generation_inside)

    def conntrack_count(self) -> int | None:
        """Tracked connections in the namespace (None if unknown): /proc/sys/net is per
        namespace of the thread that opens it, so it is read from inside."""
        return self.call(self._conntrack_count)

    @staticmethod
    def _conntrack_count() -> int | None:
        try:
            with open("/proc/sys/net/netfilter/nf_conntrack_count") as f:
                return int(f.read())
        except (OSError, ValueError):
            return None

    def close(self) -> None:
        with self._lock:
            if self._gen_sock is not None:
                self._gen_sock.close()
                self._gen_sock = None
            self._nft = None
