"""The host-NAT guard (seed 003): bridged tenant traffic never meets NAT portwall does not own.

With bridge netfilter on, a packet bridged across a tenant bridge also crosses the host's
``nat POSTROUTING``; a foreign rule such as docker's ``-s 172.17.0.0/16 ! -o docker0 -j
MASQUERADE`` then rewrites the source of a tenant on an overlapping subnet to the host's
address. The guard is the first rule of ``nat POSTROUTING``: a jump to ``pwguard-nat``,
which ACCEPTs (ends the nat table for the packet, so no later rule NATs it) what is bridged
out of one of portwall's bridges. Nothing else is touched.

It lives in iptables' nat table whatever backend filters the ports: that is where the
foreign rules are (docker, kolla), and only a verdict in the same chain can stop them.
:func:`ensure_guard` runs on every apply: a foreign program that flushed POSTROUTING or
inserted above the guard gets it put back in first place.
"""

from __future__ import annotations

from collections.abc import Iterable

from portwall.kernel.runner import Runner

CHAIN = "pwguard-nat"  # not "pw-": the host backend owns (and prunes) those chains
HOOK = f"-j {CHAIN}"


def guard_rules(bridges: Iterable[str]) -> list[str]:
    return [f"-o {br} -m physdev --physdev-is-bridged -m comment --comment pw-nat-guard"
            " -j ACCEPT"
            for br in sorted(set(bridges))]


def ensure_guard(runner: Runner, bridges: Iterable[str]) -> list[str]:
    """Make ``nat POSTROUTING`` start with the guard for ``bridges``; returns what changed
    ([] when it already was in place). One read, at most one atomic restore."""
    want = guard_rules(bridges)
    dump = runner.run(["iptables-save", "-t", "nat"]).stdout
    post = [ln[len("-A POSTROUTING "):] for ln in dump.splitlines()
            if ln.startswith("-A POSTROUTING ")]
    have = [ln[len(f"-A {CHAIN} "):] for ln in dump.splitlines()
            if ln.startswith(f"-A {CHAIN} ")]
    first = bool(post) and post[0] == HOOK and post.count(HOOK) == 1
    chain_ok = f":{CHAIN} " in dump and have == want
    if first and chain_ok:
        return []
    lines = ["*nat", f":{CHAIN} - [0:0]", *(f"-A {CHAIN} {r}" for r in want)]
    lines += [f"-D POSTROUTING {HOOK}"] * post.count(HOOK)
    lines += [f"-I POSTROUTING 1 {HOOK}", "COMMIT", ""]
    res = runner.run(["iptables-restore", "--noflush", "-w"], input="\n".join(lines),
                     write=True)
    if res.returncode != 0:
        raise RuntimeError(f"nat guard: iptables-restore failed: {res.stderr.strip()}")
    changes = []
    if not first:
        changes.append("nat guard moved back to the top of POSTROUTING" if HOOK in post
                       else "nat guard installed first in POSTROUTING")
    if not chain_ok:
        changes.append(f"nat guard covers {len(want)} bridges")
    return changes


def remove_guard(runner: Runner) -> bool:
    """Take the guard out of ``nat POSTROUTING`` (hook and chain); True if it was there."""
    dump = runner.run(["iptables-save", "-t", "nat"]).stdout
    if f":{CHAIN} " not in dump:
        return False
    hooks = sum(1 for ln in dump.splitlines() if ln == f"-A POSTROUTING {HOOK}")
    lines = ["*nat", *[f"-D POSTROUTING {HOOK}"] * hooks, f"-F {CHAIN}", f"-X {CHAIN}",
             "COMMIT", ""]
    res = runner.run(["iptables-restore", "--noflush", "-w"], input="\n".join(lines),
                     write=True)
    if res.returncode != 0:
        raise RuntimeError(f"nat guard: iptables-restore failed: {res.stderr.strip()}")
    return True
