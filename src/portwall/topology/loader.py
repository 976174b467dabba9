"""Topology files: Neutron resources declared by name in YAML or JSON, plus a ``lab:`` section.

The document uses Neutron's own field names (``network_id``, ``fixed_ips``,
``security_group_rules``, ``allowed_address_pairs``, ...). References may use names instead of
ids; ids are derived from the names, so the same file always yields the same ids and the same
rendered rules. Every resource goes through :class:`portwall.model.Model`, exactly as an API
call would, and an error is reported with the file, line and field it comes from.

Portwall extensions (not Neutron fields):

* ``fixed_ips`` entries may be plain addresses (``- 10.0.0.5``);
* a security group may say ``default_egress_rules: false`` to start without Neutron's
  automatic egress-any rules (the API equivalent is deleting them);
* a router may list ``interfaces`` (subnet names) instead of add_router_interface calls.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from portwall.model.errors import InvalidInput, PortwallError
from portwall.model.store import Model, stable_ids

SECTIONS = (
    "project", "description", "networks", "subnets", "security_groups", "ports", "routers",
    "floating_ips", "firewall_rules", "firewall_policies", "firewall_groups", "lab",
)


class TopologyError(PortwallError):
    """A problem in a topology file, with where it is."""

    status = 400
    neutron_type = "InvalidInput"

    def __init__(self, message: str, *, path: str, line: int | None, location: str,
                 cause: PortwallError | None = None):
        super().__init__(message, field=location)
        self.path, self.line, self.location, self.cause = path, line, location, cause

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line else self.path
        return f"{where}: {self.location}: {self.message}"


@dataclass
class Route:
    destination: str
    via: str


@dataclass
class VM:
    """A lab machine: a network namespace owning one or more ports."""

    name: str
    ports: list[str]  # port ids, in interface order (eth0, eth1, ...)
    forward: bool = False
    gateway: str | None = None
    routes: list[Route] = field(default_factory=list)


@dataclass
class Expect:
    """A connectivity expectation checked with real traffic by ``portwall lab check``."""

    src: str  # VM name
    dst: str  # VM name or IP address
    proto: str  # icmp | tcp | udp
    port: int | None
    verdict: str  # allow | deny
    line: int | None = None

    def describe(self) -> str:
        what = self.proto + (f"/{self.port}" if self.port is not None else "")
        return f"{self.src} -> {self.dst} {what}"


@dataclass
class LabSpec:
    vms: dict[str, VM] = field(default_factory=dict)
    expect: list[Expect] = field(default_factory=list)


@dataclass
class Topology:
    model: Model
    lab: LabSpec
    path: str
    project: str = "default"
    description: str = ""

    def vm_of_port(self, port_id: str) -> VM | None:
        for vm in self.lab.vms.values():
            if port_id in vm.ports:
                return vm
        return None


# ------------------------------------------------------------ line tracking
def _index_nodes(node: yaml.Node, prefix: str, out: dict[str, int]) -> None:
    out[prefix] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            key = f"{prefix}.{k.value}" if prefix else str(k.value)
            out[key] = k.start_mark.line + 1
            _index_nodes(v, key, out)
            out[key] = k.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            _index_nodes(v, f"{prefix}[{i}]", out)


class _Locator:
    """Maps a dotted path (``ports[3].fixed_ips[0].ip_address``) to a line in the file."""

    def __init__(self, text: str, is_json: bool):
        self.lines: dict[str, int] = {}
        try:
            node = yaml.compose(text)  # JSON is YAML: one locator serves both
        except yaml.YAMLError:
            node = None
        if node is not None:
            _index_nodes(node, "", self.lines)

    def line(self, location: str) -> int | None:
        loc = location
        while loc:
            if loc in self.lines:
                return self.lines[loc]
            cut = max(loc.rfind("."), loc.rfind("["))
            loc = loc[:cut] if cut > 0 else ""
        return None


# ------------------------------------------------------------------- loader
def load_topology(path: str | Path) -> Topology:
    """Read and validate a topology file (YAML or JSON)."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise TopologyError(e.strerror or str(e), path=str(p), line=None, location="file") from None
    return loads_topology(text, str(p))


def loads_topology(text: str, path: str = "<string>") -> Topology:
    is_json = path.endswith(".json")
    locator = _Locator(text, is_json)
    try:
        doc = json.loads(text) if is_json else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        mark = getattr(e, "problem_mark", None)
        line = getattr(e, "lineno", None) or (mark.line + 1 if mark else None)
        raise TopologyError(f"not valid {'JSON' if is_json else 'YAML'}: {e}", path=path,
                            line=line, location="file") from None
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise TopologyError("the document must be a mapping of sections", path=path, line=1,
                            location="file")
    return _Builder(doc, path, locator).build()


class _Builder:
    def __init__(self, doc: dict[str, Any], path: str, locator: _Locator):
        self.doc, self.path, self.locator = doc, path, locator
        self.project = str(doc.get("project") or "default")
        self.model = Model(stable_ids(self.project))

    def fail(self, location: str, message: str, cause: PortwallError | None = None) -> TopologyError:
        return TopologyError(message, path=self.path, line=self.locator.line(location),
                             location=location, cause=cause)

    def items(self, section: str) -> list[tuple[str, dict[str, Any]]]:
        raw = self.doc.get(section) or []
        if not isinstance(raw, list):
            raise self.fail(section, f"'{section}' must be a list")
        out = []
        for i, item in enumerate(raw):
            loc = f"{section}[{i}]"
            if not isinstance(item, dict):
                raise self.fail(loc, "each entry must be a mapping of fields")
            out.append((loc, dict(item)))
        return out

    def call(self, loc: str, fn: Any, *args: Any) -> Any:
        """Run a model operation; a model error is re-raised with the file location."""
        try:
            return fn(*args)
        except TopologyError:
            raise
        except PortwallError as e:
            inner = e.field or ""
            location = loc
            if e.resource and e.resource.startswith("security_group_rules["):
                location = f"{loc}.{e.resource}"
            if inner:
                location = f"{location}.{inner}"
            raise self.fail(location, e.message, cause=e) from None

    def with_project(self, body: dict[str, Any]) -> dict[str, Any]:
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
        lab = self._lab()
        return Topology(model=m, lab=lab, path=self.path, project=self.project,
                        description=str(self.doc.get("description") or ""))

    def _security_groups(self) -> None:
        """Groups first, rules second: a rule may name a group declared after it."""
        m = self.model
        staged: list[tuple[str, Any, list[Any]]] = []
        for loc, body in self.items("security_groups"):
            rules = body.pop("security_group_rules", None) or []
            keep_defaults = body.pop("default_egress_rules", True)
            if body.get("name") == "default":
                extra = set(body) - {"name", "description", "project_id"}
                if extra:
                    raise self.fail(f"{loc}.{sorted(extra)[0]}",
                                    "the default group only takes rules and a description")
                sg = m.ensure_default_group(self.with_project(body)["project_id"])
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
                    m.create_security_group_rule(body)
                except PortwallError as e:
                    if e.neutron_type == "SecurityGroupRuleExists" and self._is_default(sg, body):
                        continue  # restating an automatic egress-any rule is harmless
                    raise self.fail(f"{rloc}.{e.field}" if e.field else rloc, e.message,
                                    cause=e) from None

    @staticmethod
    def _is_default(sg: Any, body: Mapping[str, Any]) -> bool:
        keys = set(body) - {"security_group_id", "ethertype", "direction", "remote_ip_prefix",
                            "description"}
        prefix = body.get("remote_ip_prefix")
        return body.get("direction") == "egress" and not keys and prefix in (
            None, "0.0.0.0/0", "::/0")

    def _lab(self) -> LabSpec:
        raw = self.doc.get("lab") or {}
        if not isinstance(raw, dict):
            raise self.fail("lab", "'lab' must be a mapping with 'vms' and 'expect'")
        for k in raw:
            if k not in ("vms", "expect"):
                raise self.fail(f"lab.{k}", f"unknown lab field '{k}' (expected vms, expect)")
        lab = LabSpec()
        vms = raw.get("vms") or {}
        if not isinstance(vms, dict):
            raise self.fail("lab.vms", "'vms' must map VM names to their settings")
        owner: dict[str, str] = {}
        for name, spec in vms.items():
            loc = f"lab.vms.{name}"
            spec = spec or {}
            if not isinstance(spec, dict):
                raise self.fail(loc, "a VM must be a mapping (ports, forward, gateway, routes)")
            unknown = set(spec) - {"ports", "forward", "gateway", "routes"}
            if unknown:
                raise self.fail(f"{loc}.{sorted(unknown)[0]}", f"unknown VM field "
                                f"'{sorted(unknown)[0]}' (expected ports, forward, gateway, routes)")
            if len(str(name)) > 12 or not str(name).replace("-", "").replace("_", "").isalnum():
                raise self.fail(loc, f"VM name '{name}' must be 1-12 letters, digits, - or _")
            ports = []
            for j, ref in enumerate(spec.get("ports") or []):
                port = self.call(f"{loc}.ports[{j}]", self.model.get, "port", str(ref))
                if port.id in owner:
                    raise self.fail(f"{loc}.ports[{j}]",
                                    f"port {ref} already belongs to VM {owner[port.id]}")
                owner[port.id] = str(name)
                ports.append(port.id)
            if not ports:
                raise self.fail(f"{loc}.ports", f"VM {name} needs at least one port")
            gateway = spec.get("gateway")
            if gateway is not None:
                self._check_ip(f"{loc}.gateway", gateway)
            routes = []
            for j, r in enumerate(spec.get("routes") or []):
                if not isinstance(r, dict) or set(r) != {"destination", "via"}:
                    raise self.fail(f"{loc}.routes[{j}]", "a route is {destination: CIDR, via: IP}")
                try:
                    ipaddress.ip_network(str(r["destination"]), strict=False)
                except ValueError:
                    raise self.fail(f"{loc}.routes[{j}].destination",
                                    f"'{r['destination']}' is not a CIDR") from None
                self._check_ip(f"{loc}.routes[{j}].via", r["via"])
                routes.append(Route(str(r["destination"]), str(r["via"])))
            lab.vms[str(name)] = VM(str(name), ports, bool(spec.get("forward", False)),
                                    None if gateway is None else str(gateway), routes)
        expects = raw.get("expect") or []
        if not isinstance(expects, list):
            raise self.fail("lab.expect", "'expect' must be a list")
        for j, e in enumerate(expects):
            loc = f"lab.expect[{j}]"
            if not isinstance(e, dict):
                raise self.fail(loc, "an expectation is {from, to, proto, port, verdict}")
            unknown = set(e) - {"from", "to", "proto", "port", "verdict"}
            if unknown:
                raise self.fail(f"{loc}.{sorted(unknown)[0]}", "unknown field (expected from, "
                                "to, proto, port, verdict)")
            src, dst = str(e.get("from", "")), str(e.get("to", ""))
            if src not in lab.vms:
                raise self.fail(f"{loc}.from", f"'{src}' is not a VM of lab.vms")
            if dst not in lab.vms:
                self._check_ip(f"{loc}.to", dst, what="a VM of lab.vms or an IP address")
            proto = str(e.get("proto", "icmp")).lower()
            if proto not in ("icmp", "tcp", "udp"):
                raise self.fail(f"{loc}.proto", f"proto must be icmp, tcp or udp, not '{proto}'")
            port = e.get("port")
            if proto == "icmp" and port is not None:
                raise self.fail(f"{loc}.port", "icmp has no port")
            if proto != "icmp" and (not isinstance(port, int) or not 1 <= port <= 65535):
                raise self.fail(f"{loc}.port", f"{proto} needs a port 1-65535")
            verdict = str(e.get("verdict", "")).lower()
            if verdict not in ("allow", "deny"):
                raise self.fail(f"{loc}.verdict", "verdict must be allow or deny")
            lab.expect.append(Expect(src, dst, proto, port, verdict,
                                     self.locator.line(loc)))
        return lab

    def _check_ip(self, loc: str, value: Any, what: str = "an IP address") -> None:
        try:
            ipaddress.ip_address(str(value))
        except ValueError:
            raise self.fail(loc, f"'{value}' is not {what}") from None


def check(topology: Topology) -> None:
    """Extra cross-checks a file needs beyond the model's (kept for the validate command)."""
    for vm in topology.lab.vms.values():
        if vm.gateway is None:
            continue
        gw = ipaddress.ip_address(vm.gateway)
        nets = [ipaddress.ip_network(f"{a}") for pid in vm.ports
                for s in topology.model.subnets_of(topology.model.ports[pid].network_id)
                for a in [s.cidr]]
        if not any(gw in n for n in nets):
            raise InvalidInput(f"gateway {gw} of VM {vm.name} is on none of its networks",
                               field=f"lab.vms.{vm.name}.gateway")
