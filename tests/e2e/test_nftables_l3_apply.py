"""The nftables router applier in a real namespace: one transaction per change, only the
changed chains, only portwall's table; drift repaired; a refused batch changes nothing
and names its origin. And the in-process ctnetlink clean-up cuts exactly the floating
IP's connections (by ct mark), in the router's namespace and nowhere else."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from portwall.backends.base import ApplyError
from portwall.backends.iptables.l3 import reconcile_router
from portwall.backends.nftables.l3 import NftL3Renderer
from portwall.backends.nftables.l3apply import NftL3Applier
from portwall.backends.nftables.types import NftChain
from portwall.ir.compile import PlanCompiler
from portwall.kernel.conntrack import CtNetlink, fip_ct_marks
from portwall.kernel.runner import Runner
from portwall.lab import netns
from portwall.topology import load_topology

SEED = Path(__file__).resolve().parents[2] / "examples" / "seed002-router-fip.yaml"
pytestmark = [pytest.mark.e2e, pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]
FOREIGN = ("add table inet other\n"
           "add chain inet other c { type filter hook forward priority 5; policy accept; }\n"
           "add rule inet other c counter\n")


def _nft(ns: str, *args: str) -> str:
    return netns.run(ns, ["nft", *args]).stdout


def _insert(ns: str, src: str, dst: str, sport: int, mark: int) -> None:
    netns.run(ns, ["conntrack", "-I", "-p", "tcp", "-s", src, "-d", dst, "--sport", str(sport),
                   "--dport", "80", "--state", "ESTABLISHED", "-u", "SEEN_REPLY", "-t", "300",
                   "-m", str(mark)])


def _count(ns: str) -> int:
    out = subprocess.run(["ip", "netns", "exec", ns, "conntrack", "-C"], text=True,
                         capture_output=True, check=True).stdout
    return int(out.strip())


def test_incremental_transactions_own_only_their_table(
        make_netns: Callable[[str], str]) -> None:
    ns = make_netns("pwt-nl3")
    subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=FOREIGN, text=True,
                   check=True)
    m = load_topology(SEED).model
    comp, ren = PlanCompiler(), NftL3Renderer()
    (r,) = comp.compile(m).routers.values()
    ap = NftL3Applier(ns)
    try:
        rep = ap.apply(ren.render([r])[r.id])
        assert not rep.noop and rep.changes["router_chains_written"] == len(
            ren.render([r])[r.id].chains)
        assert "portwall_l3" in _nft(ns, "list", "tables") and "chain c" in _nft(
            ns, "list", "table", "inet", "other")
        assert ap.apply(ren.render([r])[r.id]).noop  # nothing changed: no transaction
        fip = next(f for f in m.floating_ips.values() if f.floating_ip_address == "203.0.113.12")
        m.update_floatingip(fip.id, {"port_id": None})
        (r2,) = comp.compile(m).routers.values()
        rep = ap.apply(ren.render([r2])[r2.id])
        assert rep.changes["router_chains_written"] == 3  # l3_pre, l3_out, l3_post
        listing = _nft(ns, "list", "table", "inet", "portwall_l3")
        assert "203.0.113.12" not in listing and "203.0.113.11" in listing
        # someone else edits our table: the next apply rebuilds it (and theirs stays)
        netns.run(ns, ["nft", "flush", "chain", "inet", "portwall_l3", "l3_pre"])
        assert not ap.apply(ren.render([r2])[r2.id]).noop
        assert "dnat ip to 10.2.0.11" in _nft(ns, "list", "chain", "inet", "portwall_l3",
                                             "l3_pre")
        assert "chain c" in _nft(ns, "list", "table", "inet", "other")
    finally:
        ap.close()


def test_refused_batch_changes_nothing_and_names_the_origin(
        make_netns: Callable[[str], str]) -> None:
    ns = make_netns("pwt-nl3")
    (r,) = PlanCompiler().compile(load_topology(SEED).model).routers.values()
    ren = NftL3Renderer()
    rs = ren.render([r])[r.id]
    ap = NftL3Applier(ns)
    try:
        ap.apply(rs)
        before = _nft(ns, "list", "table", "inet", "portwall_l3")
        name = next(n for n in rs.chains if n.startswith("pw-fi"))
        rid = next(k for k in rs.provenance if k.startswith("fwr-"))
        bad = NftChain(rs.chains[name].family, name, (
            *rs.chains[name].rules, f'ip saddr 10.2.0.300 drop comment "{rid} group x"'))
        broken = replace(rs, chains={**rs.chains, name: bad})
        with pytest.raises(ApplyError) as err:
            ap.apply(broken)
        assert err.value.rolled_back and rid in str(err.value)
        assert "firewall_rule" in str(err.value)  # the origin of the rid
        assert _nft(ns, "list", "table", "inet", "portwall_l3") == before
        assert not ap.apply(rs).noop  # the applier no longer trusts its cache: rewrites
    finally:
        ap.close()


def test_ctnetlink_cuts_only_the_moved_floating_ip(make_netns: Callable[[str], str]) -> None:
    ns, other = make_netns("pwt-nl3"), make_netns("pwt-nl3o")
    m = load_topology(SEED).model
    comp = PlanCompiler()
    (old,) = comp.compile(m).routers.values()
    marks = fip_ct_marks(f.floating for f in old.floating_ips)
    for i, f in enumerate(old.floating_ips):
        for j in range(3):  # to F, as its DNAT rule marks them
            _insert(ns, "198.51.100.10", str(f.floating), 40000 + 10 * i + j,
                    marks[str(f.floating)] << 16)
    # from web-1 leaving as 203.0.113.11 (its float-SNAT's mark); from web-2 (.12) to .11
    # (hairpin: both halves); the gateway's SNAT (no mark)
    _insert(ns, "10.2.0.11", "198.51.100.10", 41000, marks["203.0.113.11"])
    _insert(ns, "10.2.0.12", "203.0.113.11", 41001,
            marks["203.0.113.11"] << 16 | marks["203.0.113.12"])
    _insert(ns, "10.2.0.21", "198.51.100.10", 41002, 0)
    _insert(other, "198.51.100.10", "203.0.113.11", 42000, marks["203.0.113.11"] << 16)
    assert _count(ns) == 3 * len(old.floating_ips) + 3
    fip = next(f for f in m.floating_ips.values() if f.floating_ip_address == "203.0.113.11")
    m.update_floatingip(fip.id, {"port_id": "db-1-port"})  # moved
    (new,) = comp.compile(m).routers.values()
    ct = CtNetlink(ns)
    try:
        cut = reconcile_router(Runner(ns), old, new, lambda e: True, ct)
    finally:
        ct.close()
    assert cut == 5
    left = netns.run(ns, ["conntrack", "-L"]).stdout
    assert "dst=203.0.113.11" not in left and left.count("dst=203.0.113.12") == 3
    assert "src=10.2.0.11 " not in left and "src=10.2.0.21 " in left
    assert _count(other) == 1  # another namespace's table is not touched
