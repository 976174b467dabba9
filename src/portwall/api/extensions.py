"""``/v2.0/extensions``: the API extensions portwall implements (clients probe these)."""

from __future__ import annotations

from typing import Any

_UPDATED = "2026-01-01T00:00:00-00:00"

EXTENSIONS: dict[str, tuple[str, str]] = {
    "security-group": ("security-group", "The security groups extension."),
    "stateful-security-group": ("Stateful security group", "Stateless groups (stateful=false)."),
    "allowed-address-pairs": ("Allowed Address Pairs", "Extra (IP or CIDR, MAC) pairs a port may use."),
    "port-security": ("Port Security", "Per-network and per-port port_security_enabled."),
    "binding": ("Port Binding", "binding:host_id and friends."),
    "external-net": ("Neutron external network", "router:external networks."),
    "router": ("Neutron L3 Router", "Routers, interfaces and floating IPs."),
    "extraroute": ("Neutron Extra Route", "Extra routes (destination, nexthop) on routers."),
    "extraroute-atomic": ("Extra routes atomic", "add_extraroutes / remove_extraroutes."),
    "ext-gw-mode": ("Neutron L3 Configurable external gateway mode", "enable_snat."),
    "fwaas_v2": ("Firewall as a Service v2", "Firewall groups, policies and rules."),
    "standard-attr-revisions": ("Resource revision numbers", "revision_number and If-Match."),
    "revision-if-match": ("If-Match constraints based on revision_number", "412 on mismatch."),
    "standard-attr-timestamp": ("Resource timestamps", "created_at and updated_at."),
    "project-id": ("project_id field enabled", "project_id next to tenant_id."),
    "agent": ("agent", "The agents resource: status and last applied revision per host."),
    "pagination": ("Pagination support", "limit and marker with <collection>_links."),
    "sorting": ("Sorting support", "sort_key and sort_dir."),
    "fields": ("Fields", "fields= selects attributes."),
}


def extension(alias: str) -> dict[str, Any]:
    name, desc = EXTENSIONS[alias]
    return {"alias": alias, "name": name, "description": desc, "updated": _UPDATED,
            "links": []}


def all_extensions() -> list[dict[str, Any]]:
    return [extension(a) for a in EXTENSIONS]
