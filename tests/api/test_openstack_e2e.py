"""The real clients against a real server, and the agent enforcing what they did in a lab
sandbox with real packets.

Seed 000 as its author did it, with python-openstackclient only: vm0 routes between two
subnets; its anti-spoof check drops what it forwards until `openstack port set
--allowed-address ip-address=<other subnet>` on both of its ports. Seed 001's VIP with the
SDK plus the CLI: the VIP answers only once it is an allowed address pair."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from serverproc import TOKEN, VENV_BIN, ServerProcess, openstack

from portwall.agent.httpstore import HttpStore
from portwall.agent.runner import Agent, AgentOptions
from portwall.cli.io import Client, export_topology
from portwall.lab.harness import Lab, LabBox

pytestmark = [
    pytest.mark.e2e, pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
    pytest.mark.skipif(not (VENV_BIN / "openstack").exists(),
                       reason="python-openstackclient is not installed in the venv"),
]
HOST = "compute-e2e"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    srv = ServerProcess(f"sqlite:///{tmp_path}/pw.db").start(tmp_path)
    try:
        yield srv
    finally:
        srv.stop()


class RunningAgent:
    """An agent thread following the server over HTTP, enforcing in the lab's host."""

    def __init__(self, url: str, netns: str) -> None:
        self.store = HttpStore(url, TOKEN)
        self.store.wait = 2.0
        self.agent = Agent(self.store, AgentOptions(host=HOST, netns=netns, poll_interval=0.0,
                                                    resync_interval=3600))
        self.thread: threading.Thread | None = None

    def __enter__(self) -> RunningAgent:
        self.thread = self.agent.start_thread()
        return self

    def caught_up(self, timeout: float = 20.0) -> None:
        """Wait until the agent enforced the server's current revision."""
        head = HttpStore(self.store.url, TOKEN).head()
        deadline = time.monotonic() + timeout
        while self.agent.applied_revision < head:
            assert time.monotonic() < deadline, (self.agent.applied_revision, head,
                                                 self.agent.last_error)
            time.sleep(0.05)

    def __exit__(self, *exc: object) -> None:
        self.agent.stop()
        self.store.close()


def lab_from_server(lab: Lab, url: str, lab_section: dict[str, Any],
                    tweak: Any = None) -> LabBox:
    """A sandbox wired from the server's own resources (same ids, MACs, addresses), with
    no policy applied: enforcing it is the agent's job."""
    doc = export_topology(Client(url, TOKEN))
    if tweak is not None:
        tweak(doc)
    doc["lab"] = lab_section
    return lab.up(yaml.safe_dump(doc, sort_keys=False), apply=False)


def test_seed000_with_openstack_cli_and_agent(server: ServerProcess) -> None:
    os_ = lambda *a: openstack(server.url, *a)  # noqa: E731
    for i, gw in ((0, None), (1, "10.0.1.1"), (2, "10.0.2.1")):
        os_("network", "create", f"demo-net{i}")
        sub = ["subnet", "create", "--network", f"demo-net{i}", "--subnet-range",
               f"10.0.{i}.0/24", f"demo-subnet{i}"]
        if gw:
            sub[-1:-1] = ["--gateway", gw]
        os_(*sub)
    os_("security", "group", "create", "open")
    os_("security", "group", "rule", "create", "--ingress", "--protocol", "icmp", "open")
    os_("security", "group", "rule", "create", "--ingress", "--protocol", "tcp",
        "--dst-port", "1:65535", "open")
    os_("security", "group", "rule", "create", "--ingress", "--protocol", "tcp",
        "--remote-group", "open", "open")
    for name, net, ip in (("vm0-net0", 0, "10.0.0.135"), ("vm0-net1", 1, "10.0.1.1"),
                          ("vm0-net2", 2, "10.0.2.1"), ("serverX-port", 1, "10.0.1.100"),
                          ("serverY-port", 2, "10.0.2.101")):
        os_("port", "create", "--network", f"demo-net{net}", "--fixed-ip",
            f"ip-address={ip}", "--security-group", "open", "--host", HOST, name)
    section = {"vms": {"vm0": {"ports": ["vm0-net0", "vm0-net1", "vm0-net2"], "forward": True},
                       "serverX": {"ports": ["serverX-port"], "gateway": "10.0.1.1"},
                       "serverY": {"ports": ["serverY-port"], "gateway": "10.0.2.1"}}}
    with Lab("pwt-osc") as lab:
        box = lab_from_server(lab, server.url, section)
        # Without policy everything passes: proves the agent is what blocks below.
        assert box.reach("serverX", "serverY")
        with RunningAgent(server.url, box.host_ns) as ag:
            ag.caught_up()
            assert box.reach("serverX", "vm0")
            assert not box.reach("serverX", "serverY")  # vm0's anti-spoof drops it
            os_("port", "set", "--allowed-address", "ip-address=10.0.2.0/24", "vm0-net1")
            os_("port", "set", "--allowed-address", "ip-address=10.0.1.0/24", "vm0-net2")
            ag.caught_up()
            assert box.reach("serverX", "serverY")
            assert box.reach("serverY", "serverX")
            # and undone (Neutron stores the pair with the port's MAC, so OSC's `port unset`
            # would need it too; `--no-allowed-address` clears the list)
            os_("port", "set", "--no-allowed-address", "vm0-net1")
            ag.caught_up()
            assert not box.reach("serverX", "serverY")
            assert box.reach("serverX", "vm0")
        agents = openstack(server.url, "network", "agent", "list", "-f", "value", "-c", "Host")
        assert HOST in agents


def test_seed001_vip_with_sdk_and_cli(server: ServerProcess) -> None:
    import openstack as sdk

    conn = sdk.connect(auth_type="admin_token", auth={"endpoint": server.url, "token": TOKEN},
                       network_endpoint_override=server.url)
    net = conn.network.create_network(name="tenant")
    conn.network.create_subnet(network_id=net.id, name="tenant-v4", cidr="10.1.1.0/24",
                               ip_version=4, gateway_ip="10.1.1.1")
    vip = conn.network.create_security_group(name="vip")
    conn.network.create_security_group_rule(
        security_group_id=vip.id, direction="ingress", ethertype="IPv4", protocol="icmp",
        remote_ip_prefix="10.1.1.0/24")
    conn.network.create_security_group_rule(
        security_group_id=vip.id, direction="ingress", ethertype="IPv4", protocol="vrrp",
        remote_group_id=vip.id)
    for name, ip, groups in (("vip-a-port", "10.1.1.11", [vip.id]),
                             ("vip-b-port", "10.1.1.12", [vip.id]),
                             ("client-port", "10.1.1.30", None)):
        kw: dict[str, Any] = {"security_group_ids": groups} if groups else {}
        conn.network.create_port(network_id=net.id, name=name, binding_host_id=HOST,
                                 fixed_ips=[{"ip_address": ip}], **kw)
    assert len(list(conn.network.ports())) == 3

    def vip_on_a(doc: dict[str, Any]) -> None:
        # The lab puts the VIP on vip-a (keepalived's master); the server does not have
        # the pair yet, so the agent must refuse vip-a's answers from it.
        for p in doc["ports"]:
            if p["name"] == "vip-a-port":
                p["allowed_address_pairs"] = [{"ip_address": "10.1.1.2"}]

    section = {"vms": {"vip-a": {"ports": ["vip-a-port"]}, "vip-b": {"ports": ["vip-b-port"]},
                       "client": {"ports": ["client-port"]}}}
    with Lab("pwt-sdk") as lab:
        box = lab_from_server(lab, server.url, section, vip_on_a)
        assert box.reach("client", "10.1.1.2")
        with RunningAgent(server.url, box.host_ns) as ag:
            ag.caught_up()
            assert box.reach("client", "vip-a")
            assert not box.reach("client", "10.1.1.2")
            openstack(server.url, "port", "set", "--allowed-address", "ip-address=10.1.1.2",
                      "vip-a-port")
            ag.caught_up()
            assert box.reach("client", "10.1.1.2")
            port = conn.network.find_port("vip-a-port")
            assert [p["ip_address"] for p in port.allowed_address_pairs] == ["10.1.1.2"]
