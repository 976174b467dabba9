"""nftables backend: ``table inet portwall`` filters (conntrack zones, shared chains per
group combination, verdict-map dispatch), ``table bridge portwall`` names the ports and
checks ARP/ND; applied in-process through libnftables, one transaction per change."""

from __future__ import annotations

from portwall.backends.base import Backend
from portwall.backends.nftables.apply import NftApplier
from portwall.backends.nftables.render import NftRenderer, render_nftables
from portwall.backends.nftables.types import NftRuleset

BACKEND = Backend("nftables", "nftables (libnftables): verdict maps, shared chains, sets",
                  NftRenderer, NftApplier)

__all__ = ["BACKEND", "NftApplier", "NftRenderer", "NftRuleset", "render_nftables"]
