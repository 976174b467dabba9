"""The topology loader: errors point at file:line and the field, in YAML and in JSON, and
read as a sentence a person can act on; the file's extensions do what the docs say."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from portwall.topology import TopologyError, load_topology, loads_topology

BASE = """\
project: t
networks:
  - name: net
    subnets:
      - {name: sub, cidr: 10.0.0.0/24}
      - {name: sub6, cidr: "2001:db8::/64"}
security_groups:
  - name: web
    security_group_rules:
      - {direction: ingress, protocol: tcp, port_range_min: 80, port_range_max: 80}
ports:
  - {name: a-port, network_id: net, fixed_ips: [10.0.0.10], security_groups: [web]}
  - {name: b-port, network_id: net, fixed_ips: [10.0.0.11, "2001:db8::11"]}
lab:
  vms:
    a: {ports: [a-port]}
    b: {ports: [b-port]}
  expect:
    - {from: b, to: a, proto: tcp, port: 80, verdict: allow}
"""


def line_of(text: str, needle: str, nth: int = 1) -> int:
    """1-based line of the nth occurrence of needle."""
    at = -1
    for _ in range(nth):
        at = text.index(needle, at + 1)
    return text[:at].count("\n") + 1


def as_format(yaml_text: str, fmt: str) -> tuple[str, str]:
    """The same document as YAML or as indented JSON, with a matching file name."""
    if fmt == "yaml":
        return yaml_text, "topo.yaml"
    return json.dumps(yaml.safe_load(yaml_text), indent=2), "topo.json"


def error(text: str, path: str) -> TopologyError:
    with pytest.raises(TopologyError) as info:
        loads_topology(text, path)
    return info.value


def test_base_document_loads() -> None:
    topo = loads_topology(BASE, "base.yaml")
    assert set(topo.lab.vms) == {"a", "b"} and topo.project == "t"
    assert topo.lab.expect[0].line == line_of(BASE, "- {from: b")


FORMATS = pytest.mark.parametrize("fmt", ["yaml", "json"])


# ----------------------------------------------------------------- located errors
@FORMATS
def test_bad_cidr_in_nested_subnet(fmt: str) -> None:
    text, path = as_format(BASE.replace('cidr: "2001:db8::/64"', "cidr: 10.0.0.0/33"), fmt)
    err = error(text, path)
    assert err.location == "networks[0].subnets[1].cidr"
    assert err.line == line_of(text, "10.0.0.0/33")
    assert str(err).startswith(f"{path}:{err.line}: networks[0].subnets[1].cidr (subnet 'sub6'"
                               " of network 'net'): ")
    assert "10.0.0.0/33" in err.message and err.status == 400


@FORMATS
def test_unknown_port_field(fmt: str) -> None:
    text, path = as_format(BASE.replace("network_id: net, fixed_ips: [10.0.0.11",
                                        "colour: red, network_id: net, fixed_ips: [10.0.0.11"),
                           fmt)
    err = error(text, path)
    assert err.location == "ports[1].colour"
    assert err.line == line_of(text, "colour")
    assert err.neutron_type == "HTTPBadRequest"
    assert "Unrecognized attribute(s) 'colour'" in err.message
    assert "fixed_ips" in err.message  # tells what a port does take
    assert "(port 'b-port')" in str(err)


@FORMATS
def test_unknown_security_group_in_a_port(fmt: str) -> None:
    text, path = as_format(BASE.replace("security_groups: [web]}", "security_groups: [web, dbb]}"),
                           fmt)
    err = error(text, path)
    assert err.location == "ports[0].security_groups[1]"
    assert err.line == line_of(text, "dbb")
    assert (err.status, err.neutron_type) == (404, "SecurityGroupNotFound")
    assert "'dbb' could not be found" in err.message and "web" in err.message


@FORMATS
def test_duplicate_rule_names_the_first_one(fmt: str) -> None:
    dup = ("      - {direction: ingress, protocol: tcp, port_range_min: 80, port_range_max: 80}\n"
           "      - {direction: ingress, protocol: '6', port_range_min: 80, port_range_max: 80,"
           " remote_ip_prefix: 0.0.0.0/0}\n")
    text, path = as_format(BASE.replace(
        "      - {direction: ingress, protocol: tcp, port_range_min: 80, port_range_max: 80}\n",
        dup), fmt)
    err = error(text, path)
    assert err.location == "security_groups[0].security_group_rules[1]"
    # JSON: an entry's line is its opening brace, the line before its first key
    assert err.line == (line_of(text, "0.0.0.0/0") if fmt == "yaml"
                        else line_of(text, '"direction"', 2) - 1)
    first = (line_of(text, "port_range_min") if fmt == "yaml"
             else line_of(text, '"direction"') - 1)
    assert f"repeats security_groups[0].security_group_rules[0] (line {first})" in err.message
    assert (err.status, err.neutron_type) == (409, "SecurityGroupRuleExists")


@FORMATS
def test_bad_rule_field(fmt: str) -> None:
    text, path = as_format(BASE.replace("port_range_min: 80, port_range_max: 80}",
                                        "port_range_min: 90, port_range_max: 80}"), fmt)
    err = error(text, path)
    assert err.location == "security_groups[0].security_group_rules[0].port_range_min"
    assert err.line == line_of(text, "port_range_min")
    assert err.neutron_type == "SecurityGroupInvalidPortRange"


@FORMATS
@pytest.mark.parametrize(
    ("old", "new", "location", "needle", "words"),
    [
        ("a: {ports: [a-port]}", "a: {ports: [nope]}", "lab.vms.a.ports[0]", "nope",
         "'nope' could not be found"),
        ("a: {ports: [a-port]}", "a: {ports: [b-port]}", "lab.vms.b.ports[0]", "b: {ports",
         "already belongs to VM a"),
        ("a: {ports: [a-port]}", "averyverylongname: {ports: [a-port]}",
         "lab.vms.averyverylongname", "averyverylongname", "1-12 letters"),
        ("a: {ports: [a-port]}", "a: {ports: [a-port], cpu: 2}", "lab.vms.a.cpu", "cpu",
         "unknown VM field 'cpu'"),
        ("a: {ports: [a-port]}", "a: {ports: [a-port], gateway: 10.9.9.1}", "lab.vms.a.gateway",
         "gateway", "on none of the VM's subnets"),
        ("a: {ports: [a-port]}", "a: {ports: [a-port], routes: [{destination: 10.5.0.0/16,"
         " via: 10.0.0.99}, {destination: 10.6.0.0/16, via: 10.7.0.1}]}",
         "lab.vms.a.routes[1].via", "10.7.0.1", "on none of the VM's subnets"),
        ("a: {ports: [a-port]}", "a: {ports: []}", "lab.vms.a.ports", "ports: []",
         "needs a list of one or more ports"),
        ("{from: b, to: a,", "{from: c, to: a,", "lab.expect[0].from", "from", "'c' is not a VM"),
        ("{from: b, to: a,", "{from: b, to: b,", "lab.expect[0].to", "from", "to itself"),
        ("{from: b, to: a,", "{from: b, to: 10.0.0.99,", "lab.expect[0].to", "from",
         "no lab VM has the address 10.0.0.99"),
        ("{from: b, to: a,", "{from: a, to: '2001:db8::11',", "lab.expect[0].to", "from",
         "a has no IPv6 address"),
        ("proto: tcp, port: 80, verdict: allow}", "proto: sctp, port: 80, verdict: allow}",
         "lab.expect[0].proto", "from", "proto must be icmp, tcp or udp"),
        ("proto: tcp, port: 80, verdict: allow}", "proto: tcp, verdict: allow}",
         "lab.expect[0].port", "from", "tcp needs a port"),
        ("proto: tcp, port: 80, verdict: allow}", "proto: icmp, port: 80, verdict: allow}",
         "lab.expect[0].port", "from", "icmp has no port"),
        ("proto: tcp, port: 80, verdict: allow}", "proto: tcp, port: 80, verdict: maybe}",
         "lab.expect[0].verdict", "from", "allow or deny"),
        ("proto: tcp, port: 80, verdict: allow}", "proto: tcp, port: 80, verdict: allow, via: x}",
         "lab.expect[0].via", "from", "unknown field 'via'"),
    ],
)
def test_bad_lab(fmt: str, old: str, new: str, location: str, needle: str, words: str) -> None:
    assert old in BASE
    text, path = as_format(BASE.replace(old, new), fmt)
    err = error(text, path)
    assert err.location == location
    if fmt == "yaml":
        assert err.line == line_of(text, needle)
    else:
        assert err.line is not None and err.line > line_of(text, '"lab"')
    assert words in err.message
    assert str(err).startswith(f"{path}:{err.line}: {location}: ")


# ------------------------------------------------------------ document-level errors
def test_yaml_syntax_error_has_line() -> None:
    err = error("networks:\n  - name: n\n    subnets: [\n", "bad.yaml")
    assert err.location == "file" and err.line is not None and "not valid YAML" in err.message


def test_json_syntax_error_has_line() -> None:
    err = error('{\n  "networks": [\n    {"name": "n",}\n  ]\n}\n', "bad.json")
    assert (err.location, err.line) == ("file", 3) and "not valid JSON" in err.message


def test_duplicate_key_is_an_error() -> None:
    text = BASE + "ports:\n  - {name: c-port, network_id: net}\n"
    err = error(text, "dup.yaml")
    assert (err.location, err.line) == ("ports", line_of(text, "ports:\n  - {name: c-port"))
    assert f"first at line {line_of(text, 'ports:')}" in err.message


def test_duplicate_key_in_json() -> None:
    text = '{"project": "a",\n "project": "b"}'
    err = error(text, "dup.json")
    assert (err.location, err.line) == ("project", 2)


def test_unknown_section() -> None:
    err = error(BASE + "volumes: []\n", "x.yaml")
    assert err.location == "volumes" and "unknown section 'volumes'" in err.message


def test_document_must_be_a_mapping() -> None:
    assert error("- a\n- b\n", "x.yaml").location == "file"


def test_section_must_be_a_list() -> None:
    err = error("ports: {name: x}\n", "x.yaml")
    assert (err.location, err.line) == ("ports", 1)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(TopologyError) as info:
        load_topology(tmp_path / "nope.yaml")
    assert info.value.location == "file" and "cannot read" in info.value.message


def test_load_from_disk_json(tmp_path: Path) -> None:
    p = tmp_path / "t.json"
    p.write_text(json.dumps(yaml.safe_load(BASE), indent=1))
    assert set(load_topology(p).lab.vms) == {"a", "b"}


def test_tabs_in_json_keep_lines() -> None:
    doc = yaml.safe_load(BASE.replace("port_range_max: 80}", "port_range_max: 8}"))
    text = json.dumps(doc, indent="\t")
    err = error(text, "tabs.json")
    assert err.line == line_of(text, '"port_range_min"')


# --------------------------------------------------------------------- extensions
def test_same_file_same_ids() -> None:
    a, b = loads_topology(BASE), loads_topology(BASE)
    assert list(a.model.ports) == list(b.model.ports)
    assert [p.mac_address for p in a.model.ports.values()] == \
        [p.mac_address for p in b.model.ports.values()]


def test_default_group_rules_and_no_default_egress() -> None:
    text = BASE.replace("security_groups:\n", """security_groups:
  - name: default
    security_group_rules:
      - {direction: ingress, protocol: icmp}
  - name: quiet
    default_egress_rules: false
""")
    topo = loads_topology(text)
    default = topo.model.default_group("t")
    assert default is not None and any(r.protocol == "icmp" for r in default.security_group_rules)
    assert topo.model.get("security_group", "quiet").security_group_rules == []


def test_restating_the_automatic_egress_rule_is_harmless() -> None:
    text = BASE.replace("      - {direction: ingress, protocol: tcp",
                        "      - {direction: egress, ethertype: IPv4}\n"
                        "      - {direction: ingress, protocol: tcp")
    web = loads_topology(text).model.get("security_group", "web")
    assert sum(r.direction == "egress" for r in web.security_group_rules) == 2


def test_an_egress_rule_declared_twice_is_still_a_duplicate() -> None:
    text = BASE.replace("      - {direction: ingress, protocol: tcp",
                        "      - {direction: egress, ethertype: IPv4, protocol: udp}\n"
                        "      - {direction: egress, ethertype: IPv4, protocol: udp}\n"
                        "      - {direction: ingress, protocol: tcp")
    err = error(text, "x.yaml")
    assert err.location == "security_groups[0].security_group_rules[1]"


def test_tenant_id_and_project() -> None:
    topo = loads_topology(BASE.replace("- {name: a-port,", "- {tenant_id: other, name: a-port,"))
    assert topo.model.get("port", "a-port").project_id == "other"
    assert topo.model.get("port", "b-port").project_id == "t"


def test_router_interfaces_and_floating_ip() -> None:
    text = BASE.replace("ports:\n", """routers:
  - name: r1
    external_gateway_info: {network_id: public}
    interfaces: [sub]
floating_ips:
  - {floating_network_id: public, port_id: a-port}
ports:
""", 1).replace("networks:\n", """networks:
  - name: public
    router:external: true
    subnets: [{name: public-v4, cidr: 203.0.113.0/24}]
""", 1)
    # routers come after ports in the document order the loader uses
    topo = loads_topology(text)
    [fip] = topo.model.floating_ips.values()
    assert fip.fixed_ip_address == "10.0.0.10" and fip.router_id is not None


def test_rule_naming_a_group_declared_later() -> None:
    text = BASE.replace("port_range_max: 80}", "port_range_max: 80, remote_group_id: late}") \
        .replace("ports:\n", "  - name: late\nports:\n", 1)
    web = loads_topology(text).model.get("security_group", "web")
    late = loads_topology(text).model.get("security_group", "late")
    assert any(r.remote_group_id == late.id for r in web.security_group_rules)


def test_vip_is_a_valid_expect_target() -> None:
    text = BASE.replace("fixed_ips: [10.0.0.10], security_groups: [web]}",
                        "fixed_ips: [10.0.0.10], security_groups: [web],"
                        " allowed_address_pairs: [{ip_address: 10.0.0.2}]}").replace(
        "{from: b, to: a,", "{from: b, to: 10.0.0.2,")
    assert loads_topology(text).lab.expect[0].dst == "10.0.0.2"


def test_trusted_port_cannot_be_plugged() -> None:
    text = BASE.replace("- {name: b-port, network_id: net,",
                        "- {name: b-port, device_owner: 'network:dhcp', network_id: net,")
    err = error(text, "x.yaml")
    assert err.location == "lab.vms.b.ports[0]" and "owned by the network" in err.message
