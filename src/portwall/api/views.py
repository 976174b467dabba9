"""Model resources -> the JSON Neutron returns for them (with revision and timestamps).

Rendering 10,000 ports per list must be cheap, so each resource's dict is cached against
the stored object (objects are replaced on change) and its store revision."""

from __future__ import annotations

from typing import Any

from portwall.model import Model, SecurityGroup, SecurityGroupRule
from portwall.model.resources import Resource
from portwall.store import Record

_EXTRA: dict[str, dict[str, Any]] = {
    "network": {"status": "ACTIVE", "availability_zones": [], "availability_zone_hints": [],
                "ipv4_address_scope": None, "ipv6_address_scope": None,
                "is_default": False, "qos_policy_id": None, "provider:network_type": "local",
                "provider:physical_network": None, "provider:segmentation_id": None},
    "subnet": {"subnetpool_id": None, "service_types": [], "segment_id": None},
    "port": {"binding:vnic_type": "normal", "binding:profile": {}, "binding:vif_details": {},
             "extra_dhcp_opts": [], "dns_name": "", "qos_policy_id": None},
    "router": {"status": "ACTIVE", "routes": [], "distributed": False, "ha": False,
               "availability_zones": [], "availability_zone_hints": [],
               "flavor_id": None},
    "floatingip": {"port_details": None, "qos_policy_id": None, "dns_name": "",
                   "dns_domain": "", "port_forwardings": []},
    "firewall_group": {"status": "ACTIVE"},
    "firewall_policy": {},
    "firewall_rule": {},
    "security_group": {},
}


def _common(meta: Record | None, project_id: str) -> dict[str, Any]:
    return {
        "tenant_id": project_id, "project_id": project_id, "tags": [],
        "revision_number": meta.revision_number if meta else 0,
        "created_at": meta.created_at if meta else "", "updated_at": meta.updated_at if meta else "",
    }


def rule_view(rule: SecurityGroupRule, meta: Record | None) -> dict[str, Any]:
    d = rule.model_dump(mode="json")
    d.pop("name", None)
    d.update(_common(meta, rule.project_id))
    d["normalized_cidr"] = rule.remote_ip_prefix
    d["belongs_to_default_sg"] = None
    return d


class Views:
    def __init__(self) -> None:
        self._cache: dict[tuple[str, str], tuple[object, int, dict[str, Any]]] = {}

    def render(self, m: Model, kind: str, obj: Resource, meta: Record | None) -> dict[str, Any]:
        key = (kind, obj.id)
        rev = meta.revision_number if meta else 0
        hit = self._cache.get(key)
        if hit is not None and hit[0] is obj and hit[1] == rev and kind not in (
                "network", "floatingip", "router", "security_group"):
            return hit[2]
        d = obj.model_dump(by_alias=True, mode="json")
        for k, v in _EXTRA.get(kind, {}).items():  # defaults of fields portwall lacks
            d.setdefault(k, v)
        d.update(_common(meta, obj.project_id))
        if kind == "network":
            d["subnets"] = [s.id for s in m.subnets_of(obj.id)]
        elif kind == "port":
            d["status"] = "ACTIVE" if d.get("binding:host_id") else "DOWN"
            d["binding:vif_type"] = "bridge" if d.get("binding:host_id") else "unbound"
            d["port_security_enabled"] = bool(d.get("port_security_enabled"))
            d["security_groups"] = d.get("security_groups") or []
        elif kind == "security_group" and isinstance(obj, SecurityGroup):
            d["security_group_rules"] = [rule_view(r, meta) for r in obj.security_group_rules]
            d["shared"] = False
        elif kind == "router":
            d["interfaces_info"] = [
                {"port_id": pid, "subnet_id": f.subnet_id, "ip_address": f.ip_address}
                for pid in m.router_interfaces.get(obj.id, []) if pid in m.ports
                for f in m.ports[pid].fixed_ips]
        elif kind == "firewall_policy":
            d["firewall_rules"] = list(d.get("firewall_rules") or [])
        self._cache[key] = (obj, rev, d)
        return d

    def forget(self, key: tuple[str, str]) -> None:
        self._cache.pop(key, None)
