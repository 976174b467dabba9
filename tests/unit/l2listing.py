"""What ``nft -j list table bridge portwall_l2`` prints once an iptables ruleset's bridge table
(the ARP/ND guard) is loaded: its sets' elements and its rules' comments. Shared by the
renderer's parse-back test and the fake runner's applier tests."""

from __future__ import annotations

import json

from portwall.backends.iptables.l2 import CHAINS, SETS
from portwall.backends.iptables.types import IptablesRuleset


def _elem(e: tuple[str, ...]) -> object:
    parts: list[object] = []
    for x in e:
        if "/" in x:
            a, n = x.split("/")
            parts.append({"prefix": {"addr": a, "len": int(n)}})
        elif x.startswith("0x") and "-" in x:
            parts.append({"range": x.split("-")})
        else:
            parts.append(x)
    return {"concat": parts} if len(parts) > 1 else parts[0]


def l2_listing(rs: IptablesRuleset) -> str:
    want = {e for p in rs.l2.values() for e in p.elements}
    objs: list[object] = [{"set": {"name": n, "elem": [_elem(e) for s, e in want if s == n]}}
                          for n in SETS]
    objs += [{"rule": {"chain": c, "comment": r.rsplit('comment "', 1)[1].rstrip('"')}}
             for c, rules in CHAINS.items() for r in rules]
    return json.dumps({"nftables": objs})
