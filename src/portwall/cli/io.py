"""``portwall import FILE`` (a topology file -> the API, ids kept) and ``portwall export``
(the API -> a topology file that ``portwall validate`` and ``lab up`` read)."""

from __future__ import annotations

import json
import re
import sys
from typing import Any

import click
import httpx
import yaml

from portwall.cli.common import fail, load_or_exit

_ROUTER_OWNED = ("network:router_interface", "network:router_gateway")


class Client:
    def __init__(self, url: str, token: str) -> None:
        self.http = httpx.Client(base_url=url.rstrip("/"), headers={"X-Auth-Token": token},
                                 timeout=60)

    def call(self, method: str, path: str, body: Any = None) -> Any:
        r = self.http.request(method, path, json=body)
        if r.status_code >= 400:
            try:
                err = r.json()["NeutronError"]
                msg = f"{err['type']}: {err['message']}"
            except (ValueError, KeyError):
                msg = r.text
            raise click.ClickException(f"{method} {path}: {r.status_code} {msg}")
        return r.json() if r.content else None

    def create(self, path: str, member: str, body: dict[str, Any]) -> dict[str, Any]:
        return self.call("POST", f"/v2.0/{path}", {member: body})[member]

    def list(self, path: str, key: str) -> list[dict[str, Any]]:
        return self.call("GET", f"/v2.0/{path}")[key]


def _dump(obj: Any, **kw: Any) -> dict[str, Any]:
    return obj.model_dump(by_alias=True, mode="json", exclude_none=True, **kw)


def import_topology(file: str, client: Client, bind_host: str | None = None) -> dict[str, int]:
    """Create every resource of ``file`` through the API, keeping its ids. Default groups
    are the server's own (ids mapped); their extra rules are added."""
    topo = load_or_exit(file)
    m = topo.model
    # Which lab VM owns each port: Nova writes the instance into device_id; so do we, so a
    # sandbox built from the server (`portwall lab up --server`) finds the same VMs.
    vm_of = {pid: vm.name for vm in topo.lab.vms.values() for pid in vm.ports}
    counts: dict[str, int] = {}

    def made(kind: str) -> None:
        counts[kind] = counts.get(kind, 0) + 1

    for n in m.networks.values():
        client.create("networks", "network", _dump(n))
        made("networks")
    for s in m.subnets.values():
        client.create("subnets", "subnet", _dump(s))
        made("subnets")
    sg_map: dict[str, str] = {}
    for g in m.security_groups.values():
        if g.name == "default":
            got = client.call("GET", f"/v2.0/security-groups?name=default&project_id="
                              f"{g.project_id}")["security_groups"]
            sg_map[g.id] = got[0]["id"]
        else:
            client.create("security-groups", "security_group",
                          {**_dump(g, exclude={"security_group_rules"}),
                           "security_group_rules": []})
            sg_map[g.id] = g.id
            made("security_groups")
    for g in m.security_groups.values():
        for r in g.security_group_rules:
            body = _dump(r, exclude={"name"})
            body["security_group_id"] = sg_map[g.id]
            if r.remote_group_id:
                body["remote_group_id"] = sg_map.get(r.remote_group_id, r.remote_group_id)
            if g.name == "default":
                body.pop("id", None)
            res = client.http.post("/v2.0/security-group-rules", json={"security_group_rule": body})
            if res.status_code == 409 and g.name == "default":
                continue  # the server's default group already has it
            if res.status_code >= 400:
                raise click.ClickException(f"rule {r.id}: {res.text}")
            made("security_group_rules")
    for p in m.ports.values():
        if p.device_owner in _ROUTER_OWNED:
            continue
        body = _dump(p)
        body["security_groups"] = [sg_map.get(g, g) for g in p.security_groups or []]
        if not p.port_security_enabled:
            body.pop("security_groups")
        if bind_host is not None and not p.is_trusted:
            body["binding:host_id"] = bind_host
        if p.id in vm_of and not p.device_id:
            body["device_id"] = vm_of[p.id]
            body["device_owner"] = p.device_owner or "compute:portwall-lab"
        client.create("ports", "port", body)
        made("ports")
    for rid, router in m.routers.items():
        body = _dump(router)
        gw = body.get("external_gateway_info")
        if gw:
            gw.pop("external_fixed_ips", None)
        client.create("routers", "router", body)
        made("routers")
        for pid in m.router_interfaces.get(rid, []):
            sub = m.ports[pid].fixed_ips[0].subnet_id
            client.call("PUT", f"/v2.0/routers/{rid}/add_router_interface", {"subnet_id": sub})
    for f in m.floating_ips.values():
        body = {k: v for k, v in _dump(f).items() if k not in ("router_id", "status")}
        client.create("floatingips", "floatingip", body)
        made("floatingips")
    for kind, coll, member in (("firewall_rules", "fwaas/firewall_rules", "firewall_rule"),
                               ("firewall_policies", "fwaas/firewall_policies",
                                "firewall_policy"),
                               ("firewall_groups", "fwaas/firewall_groups", "firewall_group")):
        for obj in getattr(m, kind).values():
            client.create(coll, member, _dump(obj))
        made(kind)
    return counts


_DROP = {"tenant_id", "tags", "revision_number", "created_at", "updated_at", "status",
         "availability_zones", "availability_zone_hints", "ipv4_address_scope",
         "ipv6_address_scope", "is_default", "qos_policy_id", "provider:network_type",
         "provider:physical_network", "provider:segmentation_id", "subnets",
         "subnetpool_id", "service_types", "segment_id", "binding:vnic_type",
         "binding:profile", "binding:vif_details", "binding:vif_type", "extra_dhcp_opts",
         "dns_name", "routes", "distributed", "ha", "flavor_id", "interfaces_info",
         "port_details", "dns_domain", "port_forwardings", "normalized_cidr",
         "belongs_to_default_sg"}


def _clean(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if k not in _DROP and v not in (None, [], "")}


def export_topology(client: Client) -> dict[str, Any]:
    """The server's resources as a topology document (ids kept; references by id)."""
    doc: dict[str, Any] = {"description": "exported from a portwall server"}
    doc["networks"] = [_clean(n) for n in client.list("networks", "networks")]
    doc["subnets"] = [_clean(s) for s in client.list("subnets", "subnets")]
    groups = []
    defaults: dict[str, str] = {}  # default group id -> how the file names it
    for g in client.list("security-groups", "security_groups"):
        if g["name"] == "default":
            defaults[g["id"]] = "default"
    for g in client.list("security-groups", "security_groups"):
        gid = g["id"]
        rules = []
        for r in g.pop("security_group_rules"):
            r = _clean({k: v for k, v in r.items()
                        if k not in ("id", "security_group_id", "project_id")})
            if r.get("remote_group_id") in defaults:
                r["remote_group_id"] = defaults[r["remote_group_id"]]
            rules.append(r)
        g = _clean({k: v for k, v in g.items() if k != "shared"})
        if gid in defaults:
            # The loader makes the project's default group with Neutron's four rules
            # (its id is the loader's own): list only the rules added to it.
            g = {k: v for k, v in g.items() if k in ("name", "description", "project_id")}
            standard = [{"direction": "egress", "ethertype": e} for e in ("IPv4", "IPv6")] + [
                {"direction": "ingress", "ethertype": e, "remote_group_id": "default"}
                for e in ("IPv4", "IPv6")]
            rules = [r for r in rules if r not in standard]
        else:
            g["default_egress_rules"] = False
        g["security_group_rules"] = rules
        groups.append(g)
    doc["security_groups"] = groups
    routers = client.list("routers", "routers")
    router_ports = set()
    for r in routers:
        r["interfaces"] = [{"subnet_id": i["subnet_id"]} for i in r.get("interfaces_info", [])]
        router_ports |= {i["port_id"] for i in r.get("interfaces_info", [])}
        gw = r.get("external_gateway_info")
        if gw:
            gw.pop("external_fixed_ips", None)
    ports = [_clean(p) for p in client.list("ports", "ports")
             if p["device_owner"] not in _ROUTER_OWNED and p["id"] not in router_ports]
    for p in ports:
        if "security_groups" in p:
            p["security_groups"] = [defaults.get(g, g) for g in p["security_groups"]]
    doc["ports"] = ports
    doc["routers"] = [_clean(r) for r in routers]
    doc["floating_ips"] = [_clean(f) for f in client.list("floatingips", "floatingips")]
    for key, path in (("firewall_rules", "fwaas/firewall_rules"),
                      ("firewall_policies", "fwaas/firewall_policies"),
                      ("firewall_groups", "fwaas/firewall_groups")):
        doc[key] = [_clean(x) for x in client.list(path, key)]
    return {k: v for k, v in doc.items() if v}


def lab_from_server(doc: dict[str, Any]) -> dict[str, Any]:
    """A ``lab:`` section for an exported document: one VM per ``device_id`` (the instance
    that owns the port, as Nova sets it), ports in name order; ports without one are a VM
    each. VM names are the device id (or port name) cut to what the lab accepts.

    Routing is inferred the way a Neutron user wires it: a VM holding some subnet's
    ``gateway_ip`` is that subnet's router (it forwards); any other VM uses its first
    subnet's gateway."""
    gateways = {s["id"]: s.get("gateway_ip") for s in doc.get("subnets", [])}
    gateway_ips = {g for g in gateways.values() if g}
    owners: dict[str, list[dict[str, Any]]] = {}
    for port in doc.get("ports", []):
        if (port.get("device_owner") or "").startswith("network:"):
            continue
        key = port.get("device_id") or port.get("name") or port["id"]
        owners.setdefault(key, []).append(port)
    vms: dict[str, Any] = {}
    for owner, ports in sorted(owners.items()):
        base = re.sub(r"[^A-Za-z0-9_-]", "-", owner).strip("-_")[:12] or "vm"
        name, n = base, 1
        while name in vms:
            n += 1
            name = f"{base[:10]}{n}"
        ports = sorted(ports, key=lambda p: p.get("name", ""))
        ips = [f for p in ports for f in p.get("fixed_ips", [])]
        vm: dict[str, Any] = {"ports": [p["id"] for p in ports]}
        if any(f.get("ip_address") in gateway_ips for f in ips):
            vm["forward"] = True
        elif ips and gateways.get(ips[0].get("subnet_id")):
            vm["gateway"] = gateways[ips[0]["subnet_id"]]
        vms[name] = vm
    return {"vms": vms}


def _client(url: str, token: str | None) -> Client:
    if not token:
        fail("the admin token is needed (--token or PORTWALL_ADMIN_TOKEN)")
    return Client(url, token)


@click.command("import")
@click.argument("file", type=click.Path(dir_okay=False, exists=True))
@click.option("--server", "url", default="http://127.0.0.1:9696", show_default=True)
@click.option("--token", envvar="PORTWALL_ADMIN_TOKEN", default=None,
              help="Admin token (also PORTWALL_ADMIN_TOKEN).")
@click.option("--bind-host", default=None, help="Set binding:host_id of the VM ports.")
@click.option("--json", "as_json", is_flag=True, help="Counts as JSON.")
def import_cmd(file: str, url: str, token: str | None, bind_host: str | None,
               as_json: bool) -> None:
    """Create the resources of a topology FILE through a portwall server's API."""
    counts = import_topology(file, _client(url, token), bind_host)
    if as_json:
        click.echo(json.dumps({"file": file, "imported": counts}))
        return
    click.echo(f"{file}: imported " + ", ".join(f"{v} {k}" for k, v in counts.items()))


@click.command("export")
@click.option("--server", "url", default="http://127.0.0.1:9696", show_default=True)
@click.option("--token", envvar="PORTWALL_ADMIN_TOKEN", default=None,
              help="Admin token (also PORTWALL_ADMIN_TOKEN).")
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None,
              help="Write here instead of standard output.")
@click.option("--json", "as_json", is_flag=True, help="JSON instead of YAML (same content).")
def export_cmd(url: str, token: str | None, output: str | None, as_json: bool) -> None:
    """Write a portwall server's resources as a topology file (YAML, or JSON with --json)."""
    doc = export_topology(_client(url, token))
    text = (json.dumps(doc, indent=2) + "\n") if as_json else yaml.safe_dump(doc, sort_keys=False)
    if output:
        with open(output, "w") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
