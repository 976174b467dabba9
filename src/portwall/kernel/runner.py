"""Running the netfilter tools inside a namespace, and nf_tables' generation counter.

When a namespace is given, every command is started from a thread that has entered it (see
:func:`inside`), so iptables, ipset and conntrack can never act on the caller's namespace.
Write commands are logged, which lets callers (and tests) see exactly what an apply changed.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from pyroute2 import netns as pr_netns
from pyroute2.netlink import NLM_F_REQUEST
from pyroute2.netlink.nfnetlink.nftsocket import NFT_MSG_GETGEN, NFTSocket, nft_gen_msg


@dataclass
class Command:
    argv: list[str]
    seconds: float
    returncode: int


@contextlib.contextmanager
def inside(name: str | None) -> Iterator[None]:
    """Move the calling thread into namespace ``name`` (and back afterwards).

    Namespaces are per thread, and a child process starts in its parent thread's
    namespace, so this replaces ``ip netns exec`` (which also remounts /sys: about 3 ms per
    command, most of an incremental apply's budget). The file is opened here because
    pyroute2's ``pushns(name)`` would silently create a missing namespace.
    """
    if name is None:
        yield
        return
    saved = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(f"/run/netns/{name}", os.O_RDONLY)
        try:
            pr_netns.setns(target)
        finally:
            os.close(target)
        try:
            yield
        finally:
            pr_netns.setns(saved)
    finally:
        os.close(saved)


@dataclass
class Job:
    argv: list[str]
    input: str | None = None


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


@dataclass
class Runner:
    """Runs tools inside ``netns`` (the current namespace when None)."""

    netns: str | None
    writes: list[Command] = field(default_factory=list)
    reads: list[Command] = field(default_factory=list)

    def run(self, argv: Sequence[str], *, input: str | None = None, write: bool = False,
            timeout: float = 120) -> Result:
        """Run ``argv``; never raises on a non-zero exit (callers explain failures)."""
        return self.run_all([Job(list(argv), input)], write=write, timeout=timeout)[0]

    def run_all(self, jobs: Sequence[Job], *, write: bool = False,
                timeout: float = 120) -> list[Result]:
        """Start every job at once (e.g. the IPv4 and IPv6 restores) and wait for all.
        Inputs go through memory files, so no process waits on another's pipe."""
        if not jobs:
            return []
        t0 = time.perf_counter()
        procs: list[subprocess.Popen[str]] = []
        try:
            with inside(self.netns):
                for job in jobs:
                    stdin: int | None = None
                    if job.input is not None:
                        stdin = os.memfd_create("portwall-input")
                        os.write(stdin, job.input.encode())
                        os.lseek(stdin, 0, os.SEEK_SET)
                    try:
                        procs.append(subprocess.Popen(
                            job.argv, stdin=stdin if stdin is not None else subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
                    finally:
                        if stdin is not None:
                            os.close(stdin)
            if len(procs) == 1:
                outs = [procs[0].communicate(timeout=timeout)]
            else:  # drain every pipe at once: a big iptables-save would otherwise stall
                with ThreadPoolExecutor(len(procs)) as pool:
                    outs = list(pool.map(lambda p: p.communicate(timeout=timeout), procs))
            results = [Result(p.returncode, o, e) for p, (o, e) in zip(procs, outs, strict=True)]
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
        took = time.perf_counter() - t0
        for job, res in zip(jobs, results, strict=True):
            (self.writes if write else self.reads).append(Command(job.argv, took, res.returncode))
        return results


class NftGeneration:
    """The nf_tables ruleset generation of one namespace.

    The kernel bumps it on every committed nf_tables transaction (one per table commit of
    ``iptables-nft-restore``, any ``iptables``/``nft`` change), so an unchanged generation
    proves that nobody touched the iptables-nft state since we last looked: the applier
    then diffs against its cached snapshot instead of paying for a full ``iptables-save``.
    """

    def __init__(self, netns: str | None) -> None:
        self._netns = netns
        self._sock: Any = None

    def get(self) -> int | None:
        """The current generation id, or None if it cannot be read."""
        try:
            # Used inside the namespace every time: pyroute2 may open the kernel socket
            # lazily, and it must never be opened in (or talk to) the caller's namespace.
            with inside(self._netns):
                if self._sock is None:
                    self._sock = NFTSocket()
                msgs = self._sock.request_get(nft_gen_msg(), NFT_MSG_GETGEN, NLM_F_REQUEST)
            gen = msgs[0].get_attr("NFTA_GEN_ID")
            return int(gen) if gen is not None else None
        except Exception:  # a missing namespace or kernel support: fall back to full reads
            self.close()
            return None

    def close(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(Exception):
                self._sock.close()
            self._sock = None
