"""Open vSwitch backend: security groups as OpenFlow conntrack flows on one integration
bridge (userspace ``netdev`` datapath in the lab), applied as OpenFlow bundles.

Pipeline, cookies and owners: :mod:`.flows`; rendering: :mod:`.render` (remote-group member
flows: :mod:`.members`); bridge, ports and the
private daemons' sockets through OVSDB (ovsdbapp): :mod:`.ovsdb`; applier: :mod:`.apply`,
which talks OpenFlow to the bridge through :mod:`.ofconn` (messages: :mod:`.ofmsg`).
"""

from __future__ import annotations

from portwall.backends.base import Backend
from portwall.backends.ovs.apply import OvsApplier
from portwall.backends.ovs.render import OvsRenderer, OvsRuleset

__all__ = ["BACKEND", "OvsApplier", "OvsRenderer", "OvsRuleset"]

BACKEND = Backend("ovs", "Open vSwitch OpenFlow + conntrack, conjunctions for remote groups",
                  OvsRenderer, OvsApplier, bridge="ovs")
