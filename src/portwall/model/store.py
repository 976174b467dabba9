"""The model: every resource of one deployment, changed only through Neutron's operations.

Each ``create_*`` / ``update_*`` / ``delete_*`` method applies the same checks and defaults
as Neutron's API (see ``shared/reference/neutron-semantics.md`` section 6) and raises a typed
error naming the field. A failed call leaves the model unchanged: every operation validates
fully before it writes anything.

The topology-file loader and the API server both drive this class, so a file and an API call
can never disagree about what is valid.

:class:`Model` only puts things together: the tables, indexes, change journal and store
revisions are :class:`~portwall.model.storage.Storage`; the operations are functions in one
module per API area (``networks``, ``ports``, ``groups``, ``l3``, ``fwaas``), which import
the storage and each other but never this module, so there is no import cycle.

A stored port, network or group is replaced by a new object when it changes, never edited in
place (a group's rule list only gains or loses whole rules, announced in the journal): the
incremental compiler (``portwall.ir.compile.PlanCompiler``) reads the journal to find what
changed and recognises unchanged resources by identity or by (id, store revision).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from portwall.model import fwaas, groups, l3, networks, ports
from portwall.model.resources import (
    FirewallGroup,
    FirewallPolicy,
    FirewallRule,
    FloatingIP,
    Network,
    Port,
    Router,
    SecurityGroup,
    SecurityGroupRule,
    Subnet,
)
from portwall.model.storage import IdFactory, Storage, random_ids, stable_ids

__all__ = ["IdFactory", "Model", "random_ids", "stable_ids"]


class Model(Storage):
    """All resources of one deployment, keyed by id, with Neutron's create/update rules."""

    # ----------------------------------------------------------------- networks
    def create_network(self, body: Mapping[str, Any]) -> Network:
        return networks.create_network(self, body)

    def create_subnet(self, body: Mapping[str, Any]) -> Subnet:
        return networks.create_subnet(self, body)

    # ------------------------------------------------------------ security groups
    def ensure_default_group(self, project_id: str) -> SecurityGroup:
        """The project's ``default`` group, created on first use as Neutron does."""
        return groups.ensure_default_group(self, project_id)

    def create_security_group(self, body: Mapping[str, Any]) -> SecurityGroup:
        return groups.create_security_group(self, body)

    def create_security_group_rule(self, body: Mapping[str, Any]) -> SecurityGroupRule:
        return groups.create_security_group_rule(self, body)

    def delete_security_group_rule(self, rule_id: str) -> None:
        groups.delete_security_group_rule(self, rule_id)

    def update_security_group(self, ref: str, changes: Mapping[str, Any]) -> SecurityGroup:
        return groups.update_security_group(self, ref, changes)

    def delete_security_group(self, ref: str) -> None:
        groups.delete_security_group(self, ref)

    # -------------------------------------------------------------------- ports
    def create_port(self, body: Mapping[str, Any]) -> Port:
        return ports.create_port(self, body)

    def update_port(self, ref: str, changes: Mapping[str, Any]) -> Port:
        """Neutron's ``port-update``; the port is replaced only if every check passes."""
        return ports.update_port(self, ref, changes)

    def delete_port(self, ref: str) -> None:
        ports.delete_port(self, ref)

    # ------------------------------------------------------------ routers & NAT
    def create_router(self, body: Mapping[str, Any]) -> Router:
        return l3.create_router(self, body)

    def router_gateway_port(self, router_id: str) -> Port | None:
        """The router's port on its external network (None without a gateway)."""
        return l3.router_gateway_port(self, router_id)

    def add_router_interface(self, ref: str, body: Mapping[str, Any]) -> Port:
        """``PUT /routers/{id}/add_router_interface`` with ``subnet_id`` or ``port_id``."""
        return l3.add_router_interface(self, ref, body)

    def create_floatingip(self, body: Mapping[str, Any]) -> FloatingIP:
        return l3.create_floatingip(self, body)

    def update_floatingip(self, ref: str, changes: Mapping[str, Any]) -> FloatingIP:
        return l3.update_floatingip(self, ref, changes)

    # ------------------------------------------------------------------- FWaaS
    def create_firewall_rule(self, body: Mapping[str, Any]) -> FirewallRule:
        return fwaas.create_firewall_rule(self, body)

    def create_firewall_policy(self, body: Mapping[str, Any]) -> FirewallPolicy:
        return fwaas.create_firewall_policy(self, body)

    def create_firewall_group(self, body: Mapping[str, Any]) -> FirewallGroup:
        return fwaas.create_firewall_group(self, body)

    def insert_firewall_rule(self, ref: str, body: Mapping[str, Any]) -> FirewallPolicy:
        """``PUT /fwaas/firewall_policies/{id}/insert_rule``."""
        return fwaas.insert_rule(self, ref, body)

    def remove_firewall_rule(self, ref: str, body: Mapping[str, Any]) -> FirewallPolicy:
        """``PUT /fwaas/firewall_policies/{id}/remove_rule``."""
        return fwaas.remove_rule(self, ref, body)

    # ---------------------------------------------------- older private helpers
    def _allocate(self, subnet: Subnet, taken: Any) -> str:
        return networks.allocate(self, subnet, taken)
