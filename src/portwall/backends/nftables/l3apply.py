"""Keep one router namespace's ``table inet portwall_l3`` in line with its ruleset.

Through libnftables in-process (the host backend's
:class:`~portwall.backends.nftables.worker.NftWorker`, entered once per apply), one
transaction per change:

* while the nf_tables generation proves nobody wrote since our last apply, the diff is
  against what we applied: only chains whose rules changed are flushed and refilled (a
  floating IP touches ``l3_pre``, ``l3_out`` and ``l3_post``), new group chains are added
  before the jumps to them, chains no longer wanted go last;
* otherwise (first apply, or someone else wrote) the table is rebuilt whole in one
  transaction (``add table; delete table; add table; ...``), which leaves every other
  table of the namespace alone.

A refused batch changes nothing (the kernel's transaction); the error names the rule's
rid and its origin. Connections a floating IP no longer carries are cut in-process with
:class:`~portwall.kernel.conntrack.CtNetlink` (see :func:`portwall.backends.iptables.l3.
reconcile_router`).
"""

from __future__ import annotations

import re
import time

from portwall.backends.base import ApplyError, ApplyReport
from portwall.backends.nftables.apply import _blamed  # the same blame as the host applier
from portwall.backends.nftables.l3 import FAMILY, TABLE, NftL3Ruleset, chain_decl, rule_lines
from portwall.backends.nftables.types import NftChain
from portwall.backends.nftables.worker import NftWorker
from portwall.kernel.conntrack import CtNetlink
from portwall.kernel.runner import Runner

_COMMENT = re.compile(r'comment "([^" ]*)')


class NftL3Applier:
    """One per router namespace: its libnftables worker, its ctnetlink socket, and the
    chains it last applied."""

    def __init__(self, netns: str) -> None:
        self.netns = netns
        self.worker = NftWorker(netns)
        self.runner = Runner(netns)  # for the conntrack tool (listing after FWaaS changes)
        self._ct: CtNetlink | None = None
        self._applied: dict[str, NftChain] | None = None
        self._gen: int | None = None

    @property
    def ct(self) -> CtNetlink:
        if self._ct is None:
            self._ct = CtNetlink(self.netns)
        return self._ct

    def _batch(self, rs: NftL3Ruleset, gen: int | None) -> tuple[str, int]:
        """(batch text, chains written) against what we applied last, if ``gen`` (the
        nf_tables generation now) proves nobody wrote since; else the whole table."""
        old = self._applied
        if old is None or gen is None or gen != self._gen:
            return rs.text(), len(rs.chains)
        new_chains = [c for n, c in rs.chains.items() if n not in old]
        rewrite = [c for n, c in rs.chains.items()
                   if n in old and old[n] is not c and old[n].rules != c.rules]
        gone = [n for n in old if n not in rs.chains]
        lines = [chain_decl(c) for c in new_chains]
        for c in new_chains:
            lines += rule_lines(c)
        for c in rewrite:
            lines.append(f"flush chain {FAMILY} {TABLE} {c.name}")
            lines += rule_lines(c)
        lines += [f"delete chain {FAMILY} {TABLE} {n}" for n in gone]
        return ("\n".join(lines) + "\n" if lines else ""), len(new_chains) + len(rewrite)

    def _transact(self, rs: NftL3Ruleset) -> tuple[str, int, int, str, int | None]:
        """Inside the namespace, in one visit: read the generation, diff, write, read it
        again."""
        w = self.worker
        text, written = self._batch(rs, w.generation_inside())
        if not text:
            return text, written, 0, "", self._gen
        rc, _out, err = w.cmd_inside(text)
        return text, written, rc, err, (w.generation_inside() if rc == 0 else None)

    def apply(self, rs: NftL3Ruleset) -> ApplyReport:
        t0 = time.perf_counter()
        report = ApplyReport("nftables")
        text, written, rc, err, gen = self.worker.call(lambda: self._transact(rs))
        if rc != 0:
            self._applied = self._gen = None
            raise self._error(rs, text, err)
        if text:
            report.noop = False
            report.write_commands.append("libnftables: one batch")
            self._applied, self._gen = dict(rs.chains), gen
        report.changes["router_chains_written"] = written if text else 0
        report.seconds = time.perf_counter() - t0
        return report

    @staticmethod
    def _error(rs: NftL3Ruleset, text: str, err: str) -> ApplyError:
        rid = None
        lines = text.splitlines()
        no = _blamed(lines, err)
        line = lines[no - 1] if no else None
        if line is not None:
            m = _COMMENT.search(line)
            rid = m.group(1) if m else None
        return ApplyError(f"router {rs.router_id}: nftables refused the batch; nothing was "
                          "changed", command="nft", line=line, line_no=no, rid=rid,
                          origin=rs.provenance.get(rid) if rid else None, stderr=err,
                          rolled_back=True)

    def remove(self) -> None:
        """Delete portwall's router table (and only it)."""
        text = f"add table {FAMILY} {TABLE}\ndelete table {FAMILY} {TABLE}\n"
        self.worker.run(text)
        self._applied = self._gen = None

    def forget(self) -> None:
        self._applied = self._gen = None

    def close(self) -> None:
        """Release the libnftables context and the sockets: they hold the namespace alive."""
        self.worker.close()
        if self._ct is not None:
            self._ct.close()
            self._ct = None
