"""libnftables inside one network namespace, in-process.

A namespace is a property of a thread, so each applier owns one worker thread that enters
the target namespace once and keeps a long-lived ``nftables.Nftables()`` context there:
every batch then costs the parse and one netlink transaction, no process start (``nft -f``
is ~3 ms before it does anything). All calls go through that one thread, so libnftables'
netlink socket is always opened inside the namespace, whatever thread calls us.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pyroute2 import netns as pr_netns


class NftWorker:
    def __init__(self, netns: str | None) -> None:
        self.netns = netns
        self._pool = ThreadPoolExecutor(1, thread_name_prefix=f"nft-{netns}",
                                        initializer=self._enter)
        self._nft: Any = None
        self._gen_sock: Any = None
        self._pool.submit(self._open).result()

    def _enter(self) -> None:
        if self.netns is None:
            return
        fd = os.open(f"/run/netns/{self.netns}", os.O_RDONLY)  # fails if missing: no stray ns
        try:
            pr_netns.setns(fd)
        finally:
            os.close(fd)

    def _open(self) -> None:
        import nftables  # Debian's python3-nftables (system site-packages)

        nft = nftables.Nftables()
        nft.set_stateless_output(True)
        self._nft = nft

    def _cmd(self, text: str, as_json: bool) -> tuple[int, str, str]:
        self._nft.set_json_output(as_json)
        try:
            rc, out, err = self._nft.cmd(text)
        finally:
            self._nft.set_json_output(False)
        return int(rc), str(out or ""), str(err or "")

    def run(self, text: str) -> tuple[int, str, str]:
        """One ``nft -f`` batch: one transaction, all or nothing."""
        return self._pool.submit(self._cmd, text, False).result()

    def list_json(self, what: str) -> list[dict[str, Any]] | None:
        """``nft -j list <what>`` objects, or None when it does not exist."""
        rc, out, _err = self._pool.submit(self._cmd, f"list {what}", True).result()
        if rc != 0:
            return None
        items: list[dict[str, Any]] = json.loads(out).get("nftables", [])
        return items

    def _generation(self) -> int | None:
        from pyroute2.netlink import NLM_F_REQUEST
        from pyroute2.netlink.nfnetlink.nftsocket import NFT_MSG_GETGEN, NFTSocket, nft_gen_msg

        try:
            if self._gen_sock is None:
                self._gen_sock = NFTSocket()
            msgs = self._gen_sock.request_get(nft_gen_msg(), NFT_MSG_GETGEN, NLM_F_REQUEST)
            gen = msgs[0].get_attr("NFTA_GEN_ID")
            return int(gen) if gen is not None else None
        except Exception:  # no answer: callers then read the kernel instead of trusting a cache
            self._gen_sock = None
            return None

    def generation(self) -> int | None:
        """The nf_tables generation (bumped by every committed transaction of anyone), read
        from the worker thread, which is already inside the namespace."""
        return self._pool.submit(self._generation).result()

    def conntrack_count(self) -> int | None:
        """Tracked connections in the namespace (None if unknown): /proc/sys/net is per
        namespace of the thread that opens it, so it is read from the worker thread."""
        def read() -> int | None:
            try:
                with open("/proc/sys/net/netfilter/nf_conntrack_count") as f:
                    return int(f.read())
            except (OSError, ValueError):
                return None
        return self._pool.submit(read).result()

    def close(self) -> None:
        def shut() -> None:
            if self._gen_sock is not None:
                self._gen_sock.close()
        self._pool.submit(shut).result()
        self._pool.shutdown(wait=True)
