"""iptables + ipset backend (adapter over :mod:`portwall.backends.iptables.render` and
:mod:`portwall.backends.iptables.apply` until those modules move into this package)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from portwall.backends.base import ApplyReport, Backend
from portwall.backends.iptables import l2
from portwall.backends.iptables.apply import IptablesApplier as _Applier
from portwall.backends.iptables.render import IptablesRenderer as _Renderer
from portwall.backends.iptables.render import ipset_restore_text, restore_text
from portwall.backends.iptables.types import IptablesRuleset
from portwall.ir.types import HostPlan, Origin


@dataclass
class Ruleset:
    backend = "iptables"
    inner: IptablesRuleset

    def provenance(self) -> Mapping[str, Origin]:
        """What the renderer recorded for every line it wrote (spoof entries included)."""
        return self.inner.provenance

    def counts(self) -> dict[str, int]:
        rules = sum(len(c.rules) for fam in self.inner.tables.values()
                    for t in fam.values() for c in t.chains.values())
        chains = sum(len(t.chains) for fam in self.inner.tables.values() for t in fam.values())
        return {"rules": rules, "chains": chains, "sets": len(self.inner.ipsets),
                "set_elements": sum(len(s.members) for s in self.inner.ipsets.values()),
                "bridge_elements": len({e for p in self.inner.l2.values() for e in p.elements})}

    def sections(self) -> list[tuple[str, str]]:
        return [("ipset restore -exist", ipset_restore_text(self.inner)),
                ("iptables-restore --noflush", restore_text(self.inner, 4)),
                ("ip6tables-restore --noflush", restore_text(self.inner, 6)),
                (f"nft -f - (bridge {l2.TABLE}: ARP/ND guard, tracking)", l2_text(self.inner))]


def l2_text(rs: IptablesRuleset) -> str:
    """The bridge table as one ``nft -f`` file: the table, then every element."""
    elements = {e for p in rs.l2.values() for e in p.elements}
    return "\n".join([f"add table bridge {l2.TABLE}", f"delete table bridge {l2.TABLE}",
                      l2.skeleton(), *l2.element_script("add", elements)]) + "\n"


class Renderer:
    def __init__(self) -> None:
        self._r = _Renderer()

    def render(self, plan: HostPlan) -> Ruleset:
        return Ruleset(self._r.render(plan))


class Applier:
    def __init__(self, netns: str | None) -> None:
        self._a = _Applier(netns)

    def apply(self, ruleset: Ruleset, plan: HostPlan | None = None) -> ApplyReport:
        r = self._a.apply(ruleset.inner, plan)
        return ApplyReport(
            "iptables", noop=r.noop, seconds=r.seconds,
            changes={"chains_written": r.chains_written, "chains_deleted": r.chains_deleted,
                     "sets_created": r.sets_created, "sets_deleted": r.sets_deleted,
                     "set_elements_added": r.set_entries_added,
                     "set_elements_removed": r.set_entries_removed,
                     "l2_elements_added": r.l2_added, "l2_elements_removed": r.l2_removed},
            conntrack_checked=r.conntrack_checked, conntrack_deleted=r.conntrack_deleted,
            timings=r.timings, write_commands=r.write_commands, warnings=r.warnings,
            touched=[f"~ IPv{f} {t} {c}" for f, t, c in r.written]
            + [f"- IPv{f} {t} {c}" for f, t, c in r.deleted]
            + ([f"~ bridge {l2.TABLE}: +{r.l2_added} -{r.l2_removed} elements"]
               if r.l2_added or r.l2_removed else []), native=r)

    def drift(self, ruleset: Ruleset) -> list[str]:
        return self._a.drift(ruleset.inner)

    def remove_all(self) -> None:
        self._a.remove_all()

    def close(self) -> None:
        self._a.close()

    def __enter__(self) -> Applier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


BACKEND = Backend("iptables", "iptables-nft + ipset, one chain per security group",
                  Renderer, Applier)
