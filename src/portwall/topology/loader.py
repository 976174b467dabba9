"""Topology files: Neutron resources declared by name in YAML or JSON, plus a ``lab:`` section.

The document uses Neutron's own field names (``network_id``, ``fixed_ips``,
``security_group_rules``, ``allowed_address_pairs``, ...). References may use names instead of
ids; ids are derived from the names, so the same file always yields the same ids and the same
rendered rules. Every resource goes through :class:`portwall.model.Model`, exactly as an API
call would, and an error is reported with the file, line and field it comes from, e.g.::

    topo.yaml:14: ports[2].fixed_ips[0].ip_address (port 'web-1'): IP address 10.9.9.9 is
    not a valid IP for any subnet on network ...

Portwall extensions (not Neutron fields):

* ``fixed_ips`` entries may be plain addresses (``- 10.0.0.5``);
* a network may list its ``subnets`` inline;
* a security group may say ``default_egress_rules: false`` to start without Neutron's
  automatic egress-any rules (the API equivalent is deleting them), and may be named
  ``default`` to add rules to the project's default group;
* a router may list ``interfaces`` (subnet names) instead of add_router_interface calls.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml

from portwall.model.errors import InvalidInput, NotFound, PortwallError
from portwall.model.resources import (
    FirewallGroup,
    FirewallPolicy,
    FirewallRule,
    FloatingIP,
    Network,
    Port,
    Resource,
    Router,
    SecurityGroup,
    SecurityGroupRule,
    Subnet,
)
from portwall.model.store import Model, stable_ids
from portwall.topology.lab import parse_lab
from portwall.topology.locate import SAFE_LOADER, SourceMap
from portwall.topology.spec import VM, Expect, LabSpec, Route, Topology, TopologyError

__all__ = [
    "SECTIONS",
    "VM",
    "Expect",
    "LabSpec",
    "Route",
    "Topology",
    "TopologyError",
    "check",
    "load_topology",
    "loads_topology",
]

SECTIONS = (
    "project", "description", "networks", "subnets", "security_groups", "ports", "routers",
    "floating_ips", "firewall_rules", "firewall_policies", "firewall_groups", "lab",
)
#: Section -> the model's resource kind, for naming entries in messages.
_KIND = {
    "networks": "network", "subnets": "subnet", "security_groups": "security group",
    "ports": "port", "routers": "router", "floating_ips": "floating IP",
    "firewall_rules": "firewall rule", "firewall_policies": "firewall policy",
    "firewall_groups": "firewall group",
}

_RESOURCE_CLASSES: dict[str, type[Resource]] = {
    "network": Network, "subnet": Subnet, "port": Port, "security_group": SecurityGroup,
    "security_group_rule": SecurityGroupRule, "router": Router, "floatingip": FloatingIP,
    "firewall_rule": FirewallRule, "firewall_policy": FirewallPolicy,
    "firewall_group": FirewallGroup,
}


def load_topology(path: str | Path) -> Topology:
    """Read and validate a topology file (YAML, or JSON when it ends in ``.json``)."""
    p = Path(path)
    try:
        text = p.read_text()
    except (OSError, UnicodeDecodeError) as e:
        reason = getattr(e, "strerror", None) or str(e)
        raise TopologyError(f"cannot read the file: {reason}", path=str(p), line=None,
                            location="file") from None
    return loads_topology(text, str(p))


def loads_topology(text: str, path: str = "<string>") -> Topology:
    """Validate a topology given as text; ``path`` names it in messages and picks JSON
    (``*.json``) or YAML."""
    is_json = path.endswith(".json")
    try:
        doc = json.loads(text) if is_json else yaml.load(text, Loader=SAFE_LOADER)
    except json.JSONDecodeError as e:
        raise TopologyError(f"not valid JSON: {e.msg} (column {e.colno})", path=path,
                            line=e.lineno, location="file") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        problem = getattr(e, "problem", None) or str(e)
        col = f" (column {mark.column + 1})" if mark else ""
        raise TopologyError(f"not valid YAML: {problem}{col}", path=path,
                            line=mark.line + 1 if mark else None, location="file") from None
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise TopologyError("the document must be a mapping of sections (networks, ports, ...)",
                            path=path, line=1, location="file")
    source = SourceMap.of(text)
    if source.duplicates:
        d = source.duplicates[0]
        raise TopologyError(f"'{d.path.rsplit('.', 1)[-1]}' is given twice (first at line"
                            f" {d.first_line}); only one would be used", path=path,
                            line=d.line, location=d.path)
    return _Builder(doc, path, source).build()


class _Builder:
    """Feeds one document's sections to a :class:`Model` in dependency order."""

    def __init__(self, doc: dict[str, Any], path: str, source: SourceMap):
        self.doc, self.path, self.source = doc, path, source
        self.project = str(doc.get("project") or "default")
        self.model = Model(stable_ids(self.project))
        self.rule_locations: dict[str, str] = {}  # rule id -> where the file declares it

    # ------------------------------------------------------------------ errors
    def fail(self, location: str, message: str, cause: PortwallError | None = None
             ) -> TopologyError:
        return TopologyError(message, path=self.path, line=self.source.line(location),
                             location=location, cause=cause, subject=self._subject(location))

    def _subject(self, location: str) -> str:
        """"port 'web-1'" for a location inside the ports section's entry named web-1."""
        parts = location.split(".")
        entry = _entry(self.doc, parts[0])
        if entry is None or parts[0].split("[")[0] not in _KIND:
            return ""
        what = f"{_KIND[parts[0].split('[')[0]]} '{entry.get('name')}'" if entry.get("name") \
            else ""
        if len(parts) > 1 and parts[1].startswith("subnets["):  # an inline subnet
            sub = _entry(entry, parts[1])
            if sub is not None and sub.get("name"):
                return f"subnet '{sub['name']}'" + (f" of {what}" if what else "")
        return what

    def call(self, loc: str, fn: Callable[..., Any], *args: Any) -> Any:
        """Run a model operation; a model error is re-raised with the file location."""
        try:
            return fn(*args)
        except TopologyError:
            raise
        except PortwallError as e:
            location = loc
            if e.resource and e.resource.startswith("security_group_rules["):
                location = f"{loc}.{e.resource}"
            if e.field:
                location = f"{location}.{e.field}"
            raise self.fail(location, self._explain(e), cause=e) from None

    def _explain(self, e: PortwallError) -> str:
        """The model's message, plus what a person needs to fix it."""
        if isinstance(e, NotFound) and e.resource in ("network", "subnet", "port",
                                                      "security_group", "router",
                                                      "firewall_rule", "firewall_policy"):
            names = self.model.names(e.resource)
            return f"{e.message} (declared: {', '.join(names) or 'none'})"
        if e.message.startswith("Unrecognized attribute") and e.field and e.resource and \
                "." not in e.field and "[" not in e.field:
            fields = _fields_of(e.resource)
            if fields:
                return f"{e.message}: a {e.resource.replace('_', ' ')} takes {', '.join(fields)}"
        if e.neutron_type == "SecurityGroupRuleExists":
            where = self.rule_locations.get(e.ref or "")
            if where is not None:
                line = self.source.line(where)
                return (f"this rule repeats {where}" + (f" (line {line})" if line else "")
                        + ": the same direction, ethertype, protocol, ports and remote"
                        " (a protocol's name and number, and 0.0.0.0/0 and no prefix, count"
                        " as the same)")
            return e.message + " (an automatic rule of the group already says this)"
        return e.message

    # ------------------------------------------------------------------ sections
    def items(self, section: str) -> list[tuple[str, dict[str, Any]]]:
        raw = self.doc.get(section) or []
        if not isinstance(raw, list):
            raise self.fail(section, f"'{section}' must be a list of mappings")
        out = []
        for i, item in enumerate(raw):
            loc = f"{section}[{i}]"
            if not isinstance(item, dict):
                raise self.fail(loc, "each entry must be a mapping of fields")
            out.append((loc, dict(item)))
        return out

    def with_project(self, body: dict[str, Any]) -> dict[str, Any]:
        if "tenant_id" not in body:
            body.setdefault("project_id", self.project)
        return body

    def build(self) -> Topology:
        for key in self.doc:
            if key not in SECTIONS:
                raise self.fail(str(key), f"unknown section '{key}' (expected one of: "
                                f"{', '.join(SECTIONS)})")
        m = self.model
        for loc, body in self.items("networks"):
            subnets = body.pop("subnets", None) or []
            net = self.call(loc, m.create_network, self.with_project(body))
            if not isinstance(subnets, list):
                raise self.fail(f"{loc}.subnets", "subnets must be a list of mappings")
            for j, sub in enumerate(subnets):
                if not isinstance(sub, dict):
                    raise self.fail(f"{loc}.subnets[{j}]", "each subnet must be a mapping")
                self.call(f"{loc}.subnets[{j}]", m.create_subnet,
                          self.with_project({"network_id": net.id, **sub}))
        for loc, body in self.items("subnets"):
            self.call(loc, m.create_subnet, self.with_project(body))
        self._security_groups()
        for loc, body in self.items("ports"):
            fixed = body.get("fixed_ips")
            if isinstance(fixed, list):
                body["fixed_ips"] = [{"ip_address": f} if isinstance(f, str) else f for f in fixed]
            self.call(loc, m.create_port, self.with_project(body))
        for loc, body in self.items("routers"):
            interfaces = body.pop("interfaces", None) or []
            router = self.call(loc, m.create_router, self.with_project(body))
            for j, ref in enumerate(interfaces):
                req = ref if isinstance(ref, dict) else {"subnet_id": ref}
                self.call(f"{loc}.interfaces[{j}]", m.add_router_interface, router.id, req)
        for loc, body in self.items("floating_ips"):
            self.call(loc, m.create_floatingip, self.with_project(body))
        for loc, body in self.items("firewall_rules"):
            self.call(loc, m.create_firewall_rule, self.with_project(body))
        for loc, body in self.items("firewall_policies"):
            self.call(loc, m.create_firewall_policy, self.with_project(body))
        for loc, body in self.items("firewall_groups"):
            self.call(loc, m.create_firewall_group, self.with_project(body))
        lab = parse_lab(self.doc.get("lab"), m, self.fail, self.source.line)
        return Topology(model=m, lab=lab, path=self.path, project=self.project,
                        description=str(self.doc.get("description") or ""))

    def _security_groups(self) -> None:
        """Groups first, rules second: a rule may name a group declared after it."""
        m = self.model
        staged: list[tuple[str, SecurityGroup, list[Any]]] = []
        for loc, body in self.items("security_groups"):
            rules = body.pop("security_group_rules", None) or []
            keep_defaults = body.pop("default_egress_rules", True)
            if not isinstance(keep_defaults, bool):
                raise self.fail(f"{loc}.default_egress_rules", "must be true or false")
            if body.get("name") == "default":
                extra = sorted(set(body) - {"name", "description", "project_id", "tenant_id"})
                if extra:
                    raise self.fail(f"{loc}.{extra[0]}", "the project's default group only takes"
                                    " rules and a description here")
                body = self.with_project(body)
                sg = m.ensure_default_group(str(body.get("project_id") or body["tenant_id"]))
            else:
                sg = self.call(loc, m.create_security_group, self.with_project(body))
            if not keep_defaults:
                for r in list(sg.security_group_rules):
                    m.delete_security_group_rule(r.id)
            if not isinstance(rules, list):
                raise self.fail(f"{loc}.security_group_rules", "must be a list of rules")
            staged.append((loc, sg, rules))
        for loc, sg, rules in staged:
            for j, rule in enumerate(rules):
                rloc = f"{loc}.security_group_rules[{j}]"
                if not isinstance(rule, dict):
                    raise self.fail(rloc, "each rule must be a mapping")
                body = {**rule, "security_group_id": sg.id}
                try:
                    created = m.create_security_group_rule(body)
                except PortwallError as e:
                    if e.neutron_type == "SecurityGroupRuleExists" and _restates_default(
                            e, sg, body, self.rule_locations):
                        continue  # restating an automatic egress-any rule is harmless
                    raise self.fail(f"{rloc}.{e.field}" if e.field else rloc, self._explain(e),
                                    cause=e) from None
                self.rule_locations[created.id] = rloc


def _entry(container: Mapping[str, Any], step: str) -> dict[str, Any] | None:
    """``container["ports"][2]`` for the path step ``ports[2]``, if it is a mapping."""
    key, _, index = step.partition("[")
    items = container.get(key)
    try:
        item = items[int(index.rstrip("]"))] if isinstance(items, list) else None
    except (ValueError, IndexError):
        return None
    return item if isinstance(item, dict) else None


def _fields_of(resource: str) -> list[str]:
    """The fields a resource accepts, as a file spells them."""
    cls = _RESOURCE_CLASSES.get(resource)
    if cls is None:
        return []
    return [f.alias or name for name, f in cls.model_fields.items() if name != "id"]


def _restates_default(e: PortwallError, sg: SecurityGroup, body: Mapping[str, Any],
                      declared: Mapping[str, str]) -> bool:
    """True if the duplicate is one of the group's automatic egress-any rules (not a rule
    the file itself declared twice)."""
    if e.ref in declared:
        return False
    keys = set(body) - {"security_group_id", "ethertype", "direction", "remote_ip_prefix",
                        "description"}
    return body.get("direction") == "egress" and not keys and body.get(
        "remote_ip_prefix") in (None, "0.0.0.0/0", "::/0")


def check(topology: Topology) -> None:
    """Cross-checks of the lab against the model, for a topology changed after loading (the
    loader runs the same checks on every file): a VM gateway must be on one of its subnets."""
    for vm in topology.lab.vms.values():
        if vm.gateway is None:
            continue
        gw = ipaddress.ip_address(vm.gateway)
        nets = [s.network for pid in vm.ports
                for s in topology.model.subnets_of(topology.model.ports[pid].network_id)]
        if not any(gw in n for n in nets):
            raise InvalidInput(f"gateway {gw} of VM {vm.name} is on none of its networks",
                               field=f"lab.vms.{vm.name}.gateway")
