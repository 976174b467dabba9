"""``portwall apply --netns`` and ``portwall remove --netns``: the rendered policy loaded the
safe way (other programs' rules survive), re-applied as a no-op, and removed without leaving
anything of portwall's. (The applier behind it is the lab's, proven with real packets there.)"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from portwall.cli import main
from portwall.lab import netns

NEEDS_ROOT = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)")
pytestmark = [pytest.mark.e2e, NEEDS_ROOT]
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _save(ns: str) -> str:
    return netns.run(ns, ["iptables-save"]).stdout


def test_iptables_apply_keeps_foreign_rules_and_remove_takes_only_portwalls(
        make_netns: Callable[[str], str]) -> None:
    ns = make_netns("pwt-apply")
    netns.run(ns, ["iptables", "-A", "FORWARD", "-s", "172.17.0.0/16", "-j", "ACCEPT"])
    netns.run(ns, ["iptables", "-A", "INPUT", "-p", "tcp", "--dport", "22", "-j", "ACCEPT"])
    runner = CliRunner()
    f = str(EXAMPLES / "seed001-vip-nat.yaml")
    r = runner.invoke(main, ["apply", f, "--netns", ns, "--backend", "iptables", "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    assert doc["noop"] is False and doc["changes"]["chains_written"] > 0
    saved = _save(ns)
    assert "-A FORWARD -j pw-FORWARD" in saved.replace(" -m comment --comment pw-hook", "")
    assert "-A FORWARD -s 172.17.0.0/16 -j ACCEPT" in saved  # docker's rule kept
    assert "--dport 22 -j ACCEPT" in saved
    sets = netns.run(ns, ["ipset", "list", "-n"]).stdout.split()
    assert any(s.startswith("pw4-") for s in sets)

    again = runner.invoke(main, ["apply", f, "--netns", ns, "--backend", "iptables", "--json"])
    assert json.loads(again.output)["noop"] is True

    r = runner.invoke(main, ["remove", "--netns", ns, "--backend", "iptables"])
    assert r.exit_code == 0, r.output
    after = _save(ns)
    assert "pw-" not in after
    assert "-A FORWARD -s 172.17.0.0/16 -j ACCEPT" in after and "--dport 22 -j ACCEPT" in after
    assert not [s for s in netns.run(ns, ["ipset", "list", "-n"]).stdout.split()
                if s.startswith("pw")]


def _tables(ns: str) -> list[str]:
    return netns.run(ns, ["nft", "list", "tables"]).stdout.splitlines()


def test_default_backend_nftables_keeps_foreign_rules_and_remove_takes_only_its_tables(
        make_netns: Callable[[str], str]) -> None:
    ns = make_netns("pwt-apply")
    netns.run(ns, ["iptables", "-A", "FORWARD", "-s", "172.17.0.0/16", "-j", "ACCEPT"])
    netns.run(ns, ["nft", "add table inet theirs; add chain inet theirs c; "
                          "add rule inet theirs c tcp dport 22 accept"])
    runner = CliRunner()
    f = str(EXAMPLES / "seed001-vip-nat.yaml")
    r = runner.invoke(main, ["apply", f, "--netns", ns, "--json"])  # no --backend: nftables
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    assert doc["backend"] == "nftables" and doc["noop"] is False
    assert {"table inet portwall", "table bridge portwall", "table inet theirs"} <= set(_tables(ns))
    assert "-A FORWARD -s 172.17.0.0/16 -j ACCEPT" in _save(ns)  # docker's rule kept
    saved = _save(ns)  # nothing of the iptables backend's (the host-NAT guard is every
    assert ":pw-FORWARD" not in saved and "-j pw-" not in saved  # backend's: pwguard-nat)

    again = runner.invoke(main, ["apply", f, "--netns", ns, "--json"])
    assert json.loads(again.output)["noop"] is True

    r = runner.invoke(main, ["remove", "--netns", ns])
    assert r.exit_code == 0, r.output
    assert not [t for t in _tables(ns) if "portwall" in t]
    assert "table inet theirs" in _tables(ns)
    assert "tcp dport 22 accept" in netns.run(ns, ["nft", "list", "table", "inet",
                                                   "theirs"]).stdout
    assert "-A FORWARD -s 172.17.0.0/16 -j ACCEPT" in _save(ns) and "pw" not in _save(ns)


def test_apply_needs_an_existing_namespace() -> None:
    r = CliRunner().invoke(main, ["apply", str(EXAMPLES / "seed000-router-vm.yaml"),
                                  "--netns", "pwt-no-such-ns-zz"])
    assert r.exit_code == 2 and "does not exist" in r.output
    r = CliRunner().invoke(main, ["apply", str(EXAMPLES / "seed000-router-vm.yaml")])
    assert r.exit_code == 2  # --netns is required: never the machine's own namespace
