"""Routers in the lab: one namespace per Neutron router, wired like the L3 agent's.

Each router namespace gets, per router port, a veth pair: the host end (``tap`` + port id)
on the network's bridge in the compute-host namespace, the router end ``qr-...`` (internal
subnets) or ``qg-...`` (external gateway) with the port's MAC and addresses; the gateway
also carries every floating IP as a /32 (so it answers ARP for them, as Neutron's agent
does), and the default route points at the external subnet's gateway. Forwarding is on.
NAT and FWaaS are the backend's (:func:`l3_backend`); a tiny HTTP responder on the
router's metadata port answers ``169.254.169.254`` with the instance's identity.

``python -m portwall.lab.routers metadata --port P --map FILE`` is that responder: it looks
the client's address up in FILE (written by the lab on every sync) and answers
``{"name": ..., "port_id": ..., "fixed_ip": ...}``.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from portwall.backends.iptables.l3 import L3Applier, L3Renderer, reconcile_router
from portwall.backends.nftables.l3 import NftL3Renderer
from portwall.backends.nftables.l3apply import NftL3Applier
from portwall.ir.l3 import RouterInterface, RouterPlan
from portwall.ir.types import HostPlan
from portwall.lab import netns
from portwall.lab import state as st
from portwall.lab.state import LabError

if TYPE_CHECKING:
    from portwall.lab.sandbox import LabReport, Sandbox
    from portwall.topology import Topology

IFA_F_NODAD = 0x02
RESPONDER = "portwall.lab.routers"
_ROUTER_SYSCTLS = {
    "net.ipv4.ip_forward": "1",
    "net.ipv6.conf.all.forwarding": "1",
    "net.ipv6.conf.all.accept_dad": "0",
    "net.ipv6.conf.default.accept_dad": "0",
    "net.ipv4.conf.all.send_redirects": "0",  # hairpin: in and out by the same qr-
    "net.ipv4.conf.default.send_redirects": "0",
    # A network with a v4 and a v6 subnet gets two router ports on one bridge: only the
    # interface that owns an address answers ARP for it (else REDIRECT, which rewrites to
    # the incoming interface's address, meets the interface without one).
    "net.ipv4.conf.all.arp_ignore": "1",
    "net.ipv4.conf.default.arp_ignore": "1",
    "net.ipv4.conf.all.arp_announce": "2",
    "net.ipv4.conf.default.arp_announce": "2",
}
# One renderer and one applier per router namespace, for the life of this process.
_RENDERERS: dict[str, L3Renderer | NftL3Renderer] = {}
_APPLIERS: dict[str, L3Applier | NftL3Applier] = {}
_LAST: dict[str, RouterPlan] = {}


def l3_backend(name: str) -> str:
    """The backend that programs router namespaces: iptables and nftables render L3; a
    sandbox on another backend (ovs) gets its routers from iptables (the host's port
    filtering stays on the chosen backend). A backend adds its L3 module and its name here."""
    return {"iptables": "iptables", "nftables": "nftables"}.get(name, "iptables")


def _l3_parts(backend: str, ns: str) -> tuple[L3Renderer | NftL3Renderer,
                                              L3Applier | NftL3Applier]:
    """This namespace's renderer and applier for ``backend`` (made on first use)."""
    nft = l3_backend(backend) == "nftables"
    have = _APPLIERS.get(ns)
    if have is not None and isinstance(have, NftL3Applier) != nft:
        _drop(ns)
    if ns not in _APPLIERS:
        _RENDERERS[ns] = NftL3Renderer() if nft else L3Renderer()
        _APPLIERS[ns] = NftL3Applier(ns) if nft else L3Applier(ns)
    return _RENDERERS[ns], _APPLIERS[ns]


def _drop(ns: str) -> None:
    """Forget a namespace's L3 state; close its applier (threads and sockets inside the
    namespace would keep it, and its interfaces, alive)."""
    applier = _APPLIERS.pop(ns, None)
    if applier is not None:
        applier.close()
    _RENDERERS.pop(ns, None)
    _LAST.pop(ns, None)


def router_ns(sandbox_id: str, router_id: str) -> str:
    return f"pwr-{sandbox_id}-{router_id[:6]}"


def metadata_map_path(name: str) -> Path:
    return st.state_dir() / f"{name}.metadata.json"


# ------------------------------------------------------------------ wiring
def _ipr(ns: str) -> IPRoute:
    if not netns.exists(ns):
        raise LabError(f"namespace {ns} does not exist")
    return IPRoute(netns=ns)


def _bridge(hip: IPRoute, name: str) -> int:
    found = hip.link_lookup(ifname=name)
    if found:
        return int(found[0])
    hip.link("add", ifname=name, kind="bridge", br_mcast_snooping=0, br_forward_delay=0)
    idx = int(hip.link_lookup(ifname=name)[0])
    hip.link("set", index=idx, state="up")
    return idx


def _addr(ip: IPRoute, idx: int, cidr: str) -> None:
    import ipaddress

    iface = ipaddress.ip_interface(cidr)
    kw: dict[str, object] = {"flags": IFA_F_NODAD} if iface.version == 6 else {}
    try:
        ip.addr("add", index=idx, address=str(iface.ip), prefixlen=iface.network.prefixlen, **kw)
    except NetlinkError as e:
        if e.code != 17:
            raise


def _want_addrs(r: RouterPlan, itf: RouterInterface) -> set[str]:
    out = {str(a) for a in itf.addresses}
    if itf.gateway:
        out |= {f"{f.floating}/32" for f in r.floating_ips}
    return out


def _plug(host_ns: str, ns: str, r: RouterPlan, itf: RouterInterface) -> None:
    from portwall.ir.compile import tap_name

    tap = tap_name(itf.port_id)
    with _ipr(host_ns) as hip:
        br = _bridge(hip, itf.bridge)
        if not hip.link_lookup(ifname=tap):
            with netns.fd(ns) as nsfd:
                hip.link("add", ifname=tap, kind="veth",
                         peer={"ifname": itf.device, "net_ns_fd": nsfd,
                               **({"address": itf.mac} if itf.mac else {})})
            idx = hip.link_lookup(ifname=tap)[0]
            hip.link("set", index=idx, master=br, state="up")
    with _ipr(ns) as rip:
        idx = rip.link_lookup(ifname=itf.device)[0]
        rip.link("set", index=idx, state="up")
        have = {f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}" for a in rip.get_addr(index=idx)}
        want = _want_addrs(r, itf)
        for a in sorted(want - have):
            _addr(rip, idx, a)
        for a in sorted(have - want):
            if not a.startswith("fe80:"):
                ip_, plen = a.split("/")
                with contextlib.suppress(NetlinkError):
                    rip.addr("del", index=idx, address=ip_, prefixlen=int(plen))


def _routes(ns: str, r: RouterPlan) -> None:
    """Every route with a next hop (the default, extra routes) with ``ip route replace``,
    as the L3 agent does; next-hop routes the plan no longer has are deleted."""
    want = {(str(rt.destination), str(rt.via)) for rt in r.routes if rt.via is not None}
    with _ipr(ns) as rip:
        for fam in (socket.AF_INET, socket.AF_INET6):
            for kr in rip.get_routes(family=fam, table=254):
                gw = kr.get_attr("RTA_GATEWAY")
                if gw is None:
                    continue
                dst = kr.get_attr("RTA_DST") or ("0.0.0.0" if fam == socket.AF_INET else "::")
                key = (str(ipaddress.ip_network(f"{dst}/{kr['dst_len']}")),
                       str(ipaddress.ip_address(gw)))
                if key not in want:
                    with contextlib.suppress(NetlinkError):
                        rip.route("del", dst=key[0], gateway=key[1], family=fam)
        for rt in r.routes:
            if rt.via is None:
                continue
            fam = socket.AF_INET if rt.via.version == 4 else socket.AF_INET6
            with contextlib.suppress(NetlinkError):
                rip.route("replace", dst=str(rt.destination), gateway=str(rt.via), family=fam)


def _unplug_gone(host_ns: str, ns: str, r: RouterPlan) -> None:
    from portwall.ir.compile import tap_name

    want = {i.device for i in r.all_interfaces()}
    with _ipr(ns) as rip:
        gone = [link.get_attr("IFLA_IFNAME") for link in rip.get_links()]
    gone = [d for d in gone if d and d.startswith(("qr-", "qg-")) and d not in want]
    if not gone:
        return
    with _ipr(host_ns) as hip:
        for dev in gone:
            for idx in hip.link_lookup(ifname=tap_name(dev[3:])):
                hip.link("del", index=idx)


# ------------------------------------------------------------------ sync
def sync_routers(box: Sandbox, topo: Topology, plan: HostPlan, report: LabReport) -> None:
    """Make the router namespaces match ``plan.routers``: create, rewire, program, remove."""
    state = box.state
    want = {router_ns(state.id, rid): r for rid, r in plan.routers.items()}
    for ns in [n for n in state.routers if n not in want]:
        _remove_router(box, ns, report)
    _write_metadata_map(box, topo)
    vm_of = {pid: vm.name for vm in topo.lab.vms.values() for pid in vm.ports}
    state.floating = {str(f.floating): vm_of[f.port_id] for r in plan.routers.values()
                      for f in r.floating_ips if f.port_id in vm_of}
    st.save(state)
    for ns, r in want.items():
        if ns not in state.routers:
            if ns not in state.namespaces:
                state.namespaces.append(ns)
            st.save(state)
            netns.create(ns)
            netns.run(ns, ["sysctl", "-q", "-w", *(f"{k}={v}" for k, v in
                                                   _ROUTER_SYSCTLS.items())])
            netns.run(ns, ["ip", "link", "set", "lo", "up"])
            state.routers[ns] = r.id
            st.save(state)
            report.changes.append(f"router {r.name or r.id} (namespace {ns})")
            _drop(ns)
        _unplug_gone(box.host_ns, ns, r)
        for itf in r.all_interfaces():
            _plug(box.host_ns, ns, r, itf)
        _routes(ns, r)
        _ensure_responder(box, ns, r)
        program_router(ns, plan, r, report, state.backend)


def program_router(ns: str, plan: HostPlan, r: RouterPlan, report: LabReport | None,
                   backend: str | None = None) -> int:
    """Render and apply one router's NAT/FWaaS rules with ``backend``'s L3 (the default
    backend's when None); cut what they no longer allow. Returns how many connections
    were cut."""
    from portwall import backends
    from portwall.analyze.l3eval import route_packet
    from portwall.backends.iptables.l3 import RouterCt

    renderer, applier = _l3_parts(backend or backends.DEFAULT, ns)
    rs = renderer.render([r])[r.id]
    res = applier.apply(rs)  # type: ignore[arg-type]  # each applier takes its renderer's

    def allowed(e: RouterCt) -> bool:
        import ipaddress

        from portwall.analyze.evaluate import Packet

        try:
            pkt = Packet(e.family, ipaddress.ip_address(e.src),  # type: ignore[arg-type]
                         ipaddress.ip_address(e.dst), e.protocol,
                         e.sport if e.protocol in (6, 17) else None,
                         e.dport if e.protocol in (6, 17) else None,
                         e.icmp_type if e.protocol in (1, 58) else None)
        except ValueError:
            return True
        inbound = next((i for i in r.interfaces if any(pkt.src in n for n in i.networks())),
                       r.gateway)
        return inbound is None or route_packet(plan, r, pkt, inbound).allowed

    cut = reconcile_router(applier.runner, _LAST.get(ns), r, allowed, applier.ct)
    _LAST[ns] = r
    if report is not None and (not res.noop or cut):
        report.changes.append(f"router {r.name or r.id}: rules "
                              f"{'rewritten' if not res.noop else 'unchanged'}, {cut} "
                              "connections cut")
    return cut


def _remove_router(box: Sandbox, ns: str, report: LabReport) -> None:
    state = box.state
    _stop_responder(state, ns)
    _drop(ns)
    if netns.exists(ns):
        netns.delete(ns)  # the veth pairs go with it, host ends included
    state.routers.pop(ns, None)
    state.namespaces = [n for n in state.namespaces if n != ns]
    st.save(state)
    report.changes.append(f"removed router namespace {ns}")


def teardown(state: st.SandboxState) -> None:
    """Stop every responder (by the pid recorded); namespaces go with the sandbox's."""
    for ns in list(state.pids):
        _stop_responder(state, ns)
    for ns in list(state.routers):
        _drop(ns)
    with contextlib.suppress(FileNotFoundError):
        metadata_map_path(state.name).unlink()


# ------------------------------------------------------------------ metadata
def _write_metadata_map(box: Sandbox, topo: Topology) -> None:
    vm_of = {pid: vm.name for vm in topo.lab.vms.values() for pid in vm.ports}
    doc: dict[str, dict[str, str]] = {}
    for p in topo.model.ports.values():
        if p.is_trusted:
            continue
        for a in p.addresses():
            doc[str(a)] = {"name": vm_of.get(p.id, p.name), "port_id": p.id,
                           "port_name": p.name, "fixed_ip": str(a)}
    path = metadata_map_path(box.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc))
    os.replace(tmp, path)


def _alive(pid: int) -> bool:
    try:
        return RESPONDER in Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")
    except OSError:
        return False


def _ensure_responder(box: Sandbox, ns: str, r: RouterPlan) -> None:
    if r.metadata is None:
        return
    pid = box.state.pids.get(ns)
    if pid is not None and _alive(pid):
        return
    argv = ["ip", "netns", "exec", ns, sys.executable, "-m", RESPONDER, "metadata",
            "--port", str(r.metadata.local_port), "--map", str(metadata_map_path(box.name))]
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, start_new_session=True, text=True)
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != "ready":
        proc.kill()
        proc.wait()
        raise LabError(f"metadata responder in {ns} did not start")
    proc.stdout.close()
    box.state.pids[ns] = proc.pid
    st.save(box.state)


def _stop_responder(state: st.SandboxState, ns: str) -> None:
    pid = state.pids.pop(ns, None)
    if pid is not None and _alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, 0)


def serve_metadata(port: int, map_file: str) -> int:
    """Answer every GET with the identity of the instance whose fixed IP asks."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            try:
                doc: dict[str, Any] = json.loads(Path(map_file).read_text())
            except (OSError, ValueError):
                doc = {}
            ident = doc.get(self.client_address[0])
            body = json.dumps(ident or {"error": "unknown instance"}).encode()
            self.send_response(200 if ident else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    srv = ThreadingHTTPServer(("0.0.0.0", port), Handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    with contextlib.suppress(OSError):
        os.close(1)
    srv.serve_forever()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog=f"python -m {RESPONDER}")
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("metadata")
    m.add_argument("--port", type=int, required=True)
    m.add_argument("--map", required=True)
    a = ap.parse_args(argv)
    return serve_metadata(a.port, a.map)


if __name__ == "__main__":
    sys.exit(main())
