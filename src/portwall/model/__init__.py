"""Stage 1 of the spine: the Neutron resources, validated (model -> compile -> render -> apply)."""

from portwall.model.errors import Conflict, InvalidInput, NotFound, PortwallError
from portwall.model.resources import (
    AllowedAddressPair,
    FirewallGroup,
    FirewallPolicy,
    FirewallRule,
    FixedIP,
    FloatingIP,
    Network,
    Port,
    Router,
    SecurityGroup,
    SecurityGroupRule,
    Subnet,
)
from portwall.model.store import Model, random_ids, stable_ids

__all__ = [
    "AllowedAddressPair",
    "Conflict",
    "FirewallGroup",
    "FirewallPolicy",
    "FirewallRule",
    "FixedIP",
    "FloatingIP",
    "InvalidInput",
    "Model",
    "Network",
    "NotFound",
    "Port",
    "PortwallError",
    "Router",
    "SecurityGroup",
    "SecurityGroupRule",
    "Subnet",
    "random_ids",
    "stable_ids",
]
