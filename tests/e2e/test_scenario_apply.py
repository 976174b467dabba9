"""The applier in a live sandbox: a second apply writes nothing, other programs' rules
survive, drift is repaired by ``lab apply``, and 100 unrelated updates neither drop a packet
of an allowed flow nor leak one of a denied flow."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from portwall import backends
from portwall.backends.iptables.render import ingress_chain
from portwall.ir import compile_plan
from portwall.lab.harness import Lab, LabBox
from portwall.lab.traffic import Server, finish, stream
from portwall.model.store import Model

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]

TOPOLOGY = """
project: apply
networks:
  - name: net
    subnets: [{name: v4, cidr: 10.11.0.0/24}]
security_groups:
  - name: srv
    security_group_rules:
      - {direction: ingress, protocol: udp, port_range_min: 5000, port_range_max: 5000,
         remote_ip_prefix: 10.11.0.20/32}
      - {direction: ingress, protocol: tcp, port_range_min: 80, port_range_max: 80}
  - name: other
    security_group_rules:
      - {direction: ingress, protocol: tcp, port_range_min: 999, port_range_max: 999}
ports:
  - {name: srv-port, network_id: net, fixed_ips: [10.11.0.10], security_groups: [srv]}
  - {name: good-port, network_id: net, fixed_ips: [10.11.0.20]}
  - {name: bad-port, network_id: net, fixed_ips: [10.11.0.30]}
  - {name: busy-port, network_id: net, fixed_ips: [10.11.0.40], security_groups: [other]}
lab:
  vms:
    srv: {ports: [srv-port]}
    good: {ports: [good-port]}
    bad: {ports: [bad-port]}
    busy: {ports: [busy-port]}
"""
PORTWALL = [sys.executable, "-c", "from portwall.cli import main; main()"]
# What a container runtime adds on a compute host (seed 003): portwall must keep it.
DOCKER_LIKE = [
    ["iptables", "-t", "nat", "-N", "DOCKER"],
    ["iptables", "-t", "nat", "-A", "POSTROUTING", "-s", "172.17.0.0/16", "!", "-o", "docker0",
     "-j", "MASQUERADE"],
    ["iptables", "-N", "DOCKER-USER"],
    ["iptables", "-A", "FORWARD", "-j", "DOCKER-USER"],
    ["iptables", "-A", "DOCKER-USER", "-s", "192.0.2.0/24", "-j", "DROP"],
]


@pytest.fixture
def lab(backend_name: str) -> Iterator[Lab]:
    with Lab("pwt-apply", backend=backend_name) as lab:
        yield lab


def _foreign(box: object, host: object) -> list[str]:
    out = []
    for table in ("filter", "nat"):
        text = host(["iptables-save", "-t", table])  # type: ignore[operator]
        out += [ln for ln in text.splitlines() if "DOCKER" in ln or "MASQUERADE" in ln]
    return out


def test_converges_and_keeps_foreign_rules(lab: Lab, backend_name: str) -> None:
    box = lab.up(TOPOLOGY)
    for argv in DOCKER_LIKE:
        box.host(argv)
    before = _foreign(box, box.host)
    assert len(before) >= 5
    again = box.apply()
    assert again.policy is not None and not again.policy.changed, again.policy.summary
    assert again.policy.detail.noop and not again.changes
    # a real change, then back: foreign rules untouched throughout
    box.update(lambda m: m.create_security_group_rule(
        {"security_group_id": "other", "direction": "ingress", "protocol": "tcp",
         "port_range_min": 22, "port_range_max": 22}))
    assert _foreign(box, box.host) == before
    assert box.drift() == []
    fwd = [ln for ln in box.host(["iptables", "-S", "FORWARD"]).splitlines() if "-j" in ln]
    assert any("DOCKER-USER" in ln for ln in fwd)  # docker's jump is still in FORWARD
    if backend_name == "iptables":
        assert "pw-" in fwd[0]  # and portwall's hook comes first


def _tamper(box: LabBox, backend_name: str) -> None:
    """Someone removes portwall's state behind its back: on iptables one flushed chain (the
    repair must rewrite exactly it), elsewhere everything portwall owns."""
    if backend_name == "iptables":
        box.host(["iptables", "-F", ingress_chain(compile_plan(box.topo.model).port("srv-port"))])
        return
    b = backends.get(backend_name)
    with b.applier(box.host_ns) as applier:
        applier.remove_all()


def test_lab_apply_repairs_a_flushed_chain(lab: Lab, tmp_path: object, backend_name: str,
                                           backend_bridge: str) -> None:
    path = f"{tmp_path}/apply.yaml"
    with open(path, "w") as fh:
        fh.write(TOPOLOGY)
    box = lab.up(path)
    with Server(box.vm("srv"), tcp=[80, 81]):
        assert not box.reach("bad", "srv", "tcp", 81)
        _tamper(box, backend_name)
        assert box.drift(), "the applier must see the drift"
        if backend_bridge == "linux":  # a Linux bridge without filter forwards everything
            assert box.reach("bad", "srv", "tcp", 81), "sanity: the tampering opened the port"
        cli = subprocess.run([*PORTWALL, "lab", "apply", path,
                              "--name", box.box.name], capture_output=True, text=True)
        assert cli.returncode == 0, cli.stderr
        assert "nothing to change" not in cli.stdout, cli.stdout
        if backend_name == "iptables":
            assert "1 chains written" in cli.stdout, cli.stdout
        assert box.drift() == []
        assert not box.reach("bad", "srv", "tcp", 81)
        assert box.reach("bad", "srv", "tcp", 80)


class Drained:
    """Reads a probe server's log while it runs: it writes a line per datagram to a pipe,
    and a full pipe (~3,270 lines, reached when 100 updates take longer than ~16 s, e.g. on
    a loaded machine or a slower backend) would block it and stop its echoes."""

    def __init__(self, srv: Server) -> None:
        self.srv, self.lines = srv, list[str]()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        assert self.srv.proc.stdout is not None
        for line in self.srv.proc.stdout:
            if line.strip():
                self.lines.append(line.strip())

    def stop(self) -> list[str]:
        self.srv.proc.terminate()
        self.thread.join(10)
        return self.lines + self.srv.stop()


def test_no_blink_while_100_unrelated_updates_apply(lab: Lab, backend_name: str) -> None:
    box = lab.up(TOPOLOGY)
    srv_ip = box.ip("srv")
    with Server(box.vm("srv"), udp=[5000]) as server:
        srv = Drained(server)
        allowed = stream(box.vm("good"), srv_ip, 5000, interval=0.005)
        denied = stream(box.vm("bad"), srv_ip, 5000, interval=0.005)
        time.sleep(0.3)  # both streams are flowing before the first update
        written: set[str] = set()
        for i in range(100):
            def flip(m: Model, i: int = i) -> None:
                sg = m.get("security_group", "other")
                for r in list(sg.security_group_rules):
                    if r.direction == "ingress":
                        m.delete_security_group_rule(r.id)
                m.create_security_group_rule(
                    {"security_group_id": "other", "direction": "ingress", "protocol": "tcp",
                     "port_range_min": 1000 + i, "port_range_max": 1000 + i})
            report = box.update(flip)
            assert report.policy is not None and report.policy.changed
            assert report.policy.detail.touched, "a change must say what it wrote"
            if backend_name == "iptables":
                written |= {c for _, _, c in report.policy.detail.native.written}
        good, bad = finish(allowed), finish(denied)
        seen = srv.stop()
    assert good.sent > 300 and bad.sent > 300, (good, bad)  # the streams spanned the updates
    assert good.received == good.sent, f"allowed flow lost {good.missing}"
    assert bad.received == 0
    from_bad = [ln for ln in seen if ln.endswith(" 10.11.0.30")]
    assert from_bad == [], f"{len(from_bad)} packets of the denied flow reached the server"
    assert len([ln for ln in seen if ln.endswith(" 10.11.0.20")]) == good.sent
    assert all(c.startswith("pw-gi") for c in written), written  # only group other's chain
