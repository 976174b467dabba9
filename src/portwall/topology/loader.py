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
import re
from collections import defaultdict
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
from portwall.topology.lab import EXPECT_FIELDS, LAB_FIELDS, ROUTE_FIELDS, VM_FIELDS, parse_lab
from portwall.topology.locate import SAFE_LOADER, SourceMap
from portwall.topology.spec import (
    VM,
    Expect,
    LabSpec,
    Route,
    Topology,
    TopologyError,
    TopologyErrors,
)
from portwall.topology.syntax import explain_json, explain_yaml

__all__ = [
    "SECTIONS",
    "VM",
    "Expect",
    "LabSpec",
    "Route",
    "Topology",
    "TopologyError",
    "TopologyErrors",
    "accepted_fields",
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
    (``*.json``) or YAML. Raises :class:`TopologyErrors` holding every problem found."""
    is_json = path.endswith(".json")
    try:
        doc = json.loads(text) if is_json else yaml.load(text, Loader=SAFE_LOADER)
    except json.JSONDecodeError as e:
        line, msg = explain_json(e)
        raise TopologyErrors([TopologyError(msg, path=path, line=line, location="file")]
                             ) from None
    except yaml.YAMLError as e:
        yline, msg = explain_yaml(text, e)
        raise TopologyErrors([TopologyError(msg, path=path, line=yline, location="file")]
                             ) from None
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise TopologyErrors([TopologyError(
            "the document must be a mapping of sections (networks, ports, ...)",
            path=path, line=1, location="file")])
    source = SourceMap.of(text)
    if source.duplicates:  # the parsed document is not what the file shows: stop here
        raise TopologyErrors([TopologyError(
            f"'{d.path.rsplit('.', 1)[-1]}' is given twice (first at line {d.first_line});"
            " only one would be used", path=path, line=d.line, location=d.path)
            for d in source.duplicates])
    return _Builder(doc, path, source).build()


class _Builder:
    """Feeds one document's sections to a :class:`Model` in dependency order, collecting
    every error instead of stopping at the first; an entry that failed is remembered so
    that references to it do not report the same problem again."""

    def __init__(self, doc: dict[str, Any], path: str, source: SourceMap):
        self.doc, self.path, self.source = doc, path, source
        self.project = str(doc.get("project") or "default")
        self.model = Model(stable_ids(self.project))
        self.rule_locations: dict[str, str] = {}  # rule id -> where the file declares it
        self.declared: dict[str, str] = {}  # resource id -> where the file declares it
        self.errors: list[TopologyError] = []
        #: kind -> names of entries that were refused (or skipped as duplicates)
        self.failed: dict[str, set[str]] = defaultdict(set)
        self.duplicates: dict[str, set[str]] = defaultdict(set)

    # ------------------------------------------------------------------ errors
    def fail(self, location: str, message: str, cause: PortwallError | None = None
             ) -> TopologyError:
        return TopologyError(message, path=self.path, line=self.source.line(location),
                             location=location, cause=cause, subject=self._subject(location))

    def report(self, err: TopologyError) -> None:
        """Keep ``err`` unless it only repeats an earlier one (a reference to an entry that
        was refused, or to a name declared twice)."""
        cause = err.cause
        if cause is not None and cause.resource:
            kind = cause.resource
            quoted = _QUOTED.search(cause.message)
            name = quoted.group(1) if quoted else None
            if name is not None and (
                    (isinstance(cause, NotFound) and name in self.failed[kind])
                    or (" are named " in cause.message and name in self.duplicates[kind])):
                return
        self.errors.append(err)

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

    def call(self, loc: str, fn: Callable[..., Any], *args: Any, kind: str = "",
             name: Any = None) -> Any:
        """Run a model operation; a model error is recorded with the file location and
        None returned (``kind``/``name`` then remember the entry as refused)."""
        try:
            out = fn(*args)
        except PortwallError as e:
            if isinstance(e, TopologyError):
                self.report(e)
            else:
                location = loc
                if e.resource and e.resource.startswith("security_group_rules["):
                    location = f"{loc}.{e.resource}"
                if e.field:
                    location = f"{location}.{e.field}"
                self.report(self.fail(location, self._explain(e), cause=e))
            if kind and name:
                self.failed[kind].add(str(name))
            return None
        if hasattr(out, "id") and isinstance(out.id, str):
            self.declared.setdefault(out.id, loc)
        return out

    def _explain(self, e: PortwallError) -> str:
        """The model's message, plus what a person needs to fix it; ids become names."""
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
        return self._names_for_ids(e.message)

    def _names_for_ids(self, message: str) -> str:
        """``network 3f2a...`` -> ``network 'tenant'``: people wrote names, not ids."""
        m = self.model
        tables: dict[str, Mapping[str, Any]] = {"network": m.networks, "subnet": m.subnets, "port": m.ports,
                  "security group": m.security_groups, "router": m.routers}

        def name_of(match: re.Match[str]) -> str:
            rid = match.group(0)
            for kind, table in tables.items():
                res = table.get(rid)
                if res is not None and res.name:
                    before = message[:match.start()].rstrip().lower()
                    return f"'{res.name}'" if before.endswith(kind) else f"{kind} '{res.name}'"
            return rid

        return _UUID.sub(name_of, message)

    # ------------------------------------------------------------------ sections
    def items(self, section: str, kind: str = "") -> list[tuple[str, dict[str, Any]]]:
        raw = self.doc.get(section) or []
        if not isinstance(raw, list):
            self.report(self.fail(section, f"'{section}' must be a list of mappings"))
            return []
        out = []
        for i, item in enumerate(raw):
            loc = f"{section}[{i}]"
            if not isinstance(item, dict):
                self.report(self.fail(loc, "each entry must be a mapping of fields"))
                continue
            out.append((loc, dict(item)))
        return out

    def unique(self, kind: str, entries: list[tuple[str, dict[str, Any]]],
               seen: dict[str, str] | None = None) -> list[tuple[str, dict[str, Any]]]:
        """The entries whose name was not declared before (in this kind); a repeated name
        is reported where it is declared, and the repeat is left out: references by name
        then mean the first one."""
        seen = {} if seen is None else seen
        out = []
        for loc, body in entries:
            name = body.get("name")
            if isinstance(name, str) and name:
                if name in seen:
                    first = self.source.line(seen[name])
                    self.report(self.fail(
                        f"{loc}.name", f"the {kind.replace('_', ' ')} name '{name}' is already "
                        f"declared at {seen[name]}" + (f" (line {first})" if first else "")
                        + ": names must be unique in a file, since references use them"))
                    self.duplicates[kind].add(name)
                    continue
                seen[name] = f"{loc}.name"
            out.append((loc, body))
        return out

    def with_project(self, body: dict[str, Any]) -> dict[str, Any]:
        if "tenant_id" not in body:
            body.setdefault("project_id", self.project)
        return body

    def build(self) -> Topology:
        for key in self.doc:
            if key not in SECTIONS:
                self.report(self.fail(str(key), f"unknown section '{key}' (expected one of: "
                                      f"{', '.join(SECTIONS)})"))
        m = self.model
        subnet_names: dict[str, str] = {}
        for loc, body in self.unique("network", self.items("networks")):
            subnets = body.pop("subnets", None) or []
            net = self.call(loc, m.create_network, self.with_project(body), kind="network",
                            name=body.get("name"))
            if not isinstance(subnets, list):
                self.report(self.fail(f"{loc}.subnets", "subnets must be a list of mappings"))
                continue
            inline = []
            for j, sub in enumerate(subnets):
                if not isinstance(sub, dict):
                    self.report(self.fail(f"{loc}.subnets[{j}]", "each subnet must be a mapping"))
                    continue
                inline.append((f"{loc}.subnets[{j}]", sub))
            for sloc, sub in self.unique("subnet", inline, subnet_names):
                if net is None:
                    self.failed["subnet"].add(str(sub.get("name") or ""))
                    continue
                self.call(sloc, m.create_subnet, self.with_project({"network_id": net.id, **sub}),
                          kind="subnet", name=sub.get("name"))
        for loc, body in self.unique("subnet", self.items("subnets"), subnet_names):
            self.call(loc, m.create_subnet, self.with_project(body), kind="subnet",
                      name=body.get("name"))
        self._security_groups()
        for loc, body in self.unique("port", self.items("ports")):
            fixed = body.get("fixed_ips")
            if isinstance(fixed, list):
                body["fixed_ips"] = [{"ip_address": f} if isinstance(f, str) else f for f in fixed]
            self.call(loc, m.create_port, self.with_project(body), kind="port",
                      name=body.get("name"))
        for loc, body in self.unique("router", self.items("routers")):
            interfaces = body.pop("interfaces", None) or []
            routes = body.pop("routes", None)  # extraroute: nexthops need the interfaces
            router = self.call(loc, m.create_router, self.with_project(body), kind="router",
                               name=body.get("name"))
            if router is None:
                continue
            for j, ref in enumerate(interfaces):
                req = ref if isinstance(ref, dict) else {"subnet_id": ref}
                self.call(f"{loc}.interfaces[{j}]", m.add_router_interface, router.id, req)
            if routes:
                from portwall.model.l3 import set_routes

                self.call(loc, set_routes, m, router.id, routes)
        for section, kind, fn in (
                ("floating_ips", "floatingip", m.create_floatingip),
                ("firewall_rules", "firewall_rule", m.create_firewall_rule),
                ("firewall_policies", "firewall_policy", m.create_firewall_policy),
                ("firewall_groups", "firewall_group", m.create_firewall_group)):
            entries = self.items(section)
            if section != "floating_ips":
                entries = self.unique(kind, entries)
            for loc, body in entries:
                self.call(loc, fn, self.with_project(body), kind=kind, name=body.get("name"))
        lab = parse_lab(self.doc.get("lab"), m, self.fail, self.source.line, self.report,
                        self.failed["port"] | self.duplicates["port"])
        if self.errors:
            self.errors.sort(key=lambda e: (e.line or 0))
            raise TopologyErrors(self.errors)
        return Topology(model=m, lab=lab, path=self.path, project=self.project,
                        description=str(self.doc.get("description") or ""),
                        declared=self.declared)

    def _security_groups(self) -> None:
        """Groups first, rules second: a rule may name a group declared after it."""
        m = self.model
        staged: list[tuple[str, SecurityGroup, list[Any]]] = []
        for loc, body in self.unique("security_group", self.items("security_groups")):
            rules = body.pop("security_group_rules", None) or []
            keep_defaults = body.pop("default_egress_rules", True)
            if not isinstance(keep_defaults, bool):
                self.report(self.fail(f"{loc}.default_egress_rules", "must be true or false"))
                keep_defaults = True
            if body.get("name") == "default":
                extra = sorted(set(body) - {"name", "description", "project_id", "tenant_id"})
                if extra:
                    self.report(self.fail(f"{loc}.{extra[0]}", "the project's default group only"
                                          " takes rules and a description here"))
                    continue
                body = self.with_project(body)
                sg = m.ensure_default_group(str(body.get("project_id") or body["tenant_id"]))
                self.declared[sg.id] = loc
            else:
                sg = self.call(loc, m.create_security_group, self.with_project(body),
                               kind="security_group", name=body.get("name"))
                if sg is None:
                    continue
            if not keep_defaults:
                for r in list(sg.security_group_rules):
                    m.delete_security_group_rule(r.id)
            if not isinstance(rules, list):
                self.report(self.fail(f"{loc}.security_group_rules", "must be a list of rules"))
                continue
            staged.append((loc, sg, rules))
        for loc, sg, rules in staged:
            for j, rule in enumerate(rules):
                rloc = f"{loc}.security_group_rules[{j}]"
                if not isinstance(rule, dict):
                    self.report(self.fail(rloc, "each rule must be a mapping"))
                    continue
                body = {**rule, "security_group_id": sg.id}
                try:
                    created = m.create_security_group_rule(body)
                except PortwallError as e:
                    if e.neutron_type == "SecurityGroupRuleExists" and _restates_default(
                            e, sg, body, self.rule_locations):
                        continue  # restating an automatic egress-any rule is harmless
                    self.report(self.fail(f"{rloc}.{e.field}" if e.field else rloc,
                                          self._explain(e), cause=e))
                    continue
                self.rule_locations[created.id] = rloc
                self.declared[created.id] = rloc


_QUOTED = re.compile(r"'([^']*)'")
_UUID = re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b")


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


#: Section -> model resource, for :func:`accepted_fields`.
_SECTION_RESOURCE = {
    "networks": "network", "subnets": "subnet", "security_groups": "security_group",
    "ports": "port", "routers": "router", "floating_ips": "floatingip",
    "firewall_rules": "firewall_rule", "firewall_policies": "firewall_policy",
    "firewall_groups": "firewall_group",
}
#: Fields the loader itself adds to a section (portwall extensions, not Neutron's).
_EXTENSIONS = {
    "networks": ["subnets"], "security_groups": ["default_egress_rules"],
    "routers": ["interfaces"],
}


def accepted_fields() -> dict[str, list[str]]:
    """Every key a topology file may use, by section: ``{"ports": ["name", ...,
    "fixed_ips[].ip_address", ...], "lab.vms.<vm>": [...], ...}``. Introspected from the
    model's classes and the loader's own lists, so the documentation test sees a new field
    the moment the loader accepts it."""
    from pydantic import BaseModel

    def walk(cls: type[BaseModel], prefix: str = "") -> list[str]:
        out = []
        for name, f in cls.model_fields.items():
            key = f.alias or name
            out.append(prefix + key)
            inner = f.annotation
            for arg in (*getattr(inner, "__args__", ()), inner):
                for sub in (arg, *getattr(arg, "__args__", ())):
                    if isinstance(sub, type) and issubclass(sub, BaseModel):
                        many = "[]" if "list" in str(inner) else ""
                        out += walk(sub, f"{prefix}{key}{many}.")
        return list(dict.fromkeys(out))

    fields: dict[str, list[str]] = {"top": list(SECTIONS)}
    for section, resource in _SECTION_RESOURCE.items():
        keys = ["id", "tenant_id", *walk(_RESOURCE_CLASSES[resource])]
        keys += _EXTENSIONS.get(section, [])
        fields[section] = list(dict.fromkeys(keys))
    fields["lab"] = list(LAB_FIELDS)
    fields["lab.vms.<vm>"] = list(VM_FIELDS) + [f"routes[].{k}" for k in ROUTE_FIELDS]
    fields["lab.expect[]"] = list(EXPECT_FIELDS)
    return fields


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
