"""``portwall trace``: why is A -> B allowed or denied, hop by hop, in the user's terms.

The path is worked out from the topology (which port a VM sends on, its gateway and routes,
VMs that forward with ``ip_forward``, Neutron routers' interfaces), then every hop between two
ports is judged by :func:`portwall.analyze.evaluate.evaluate_hop` on the same plan the
renderers consume, so trace can never disagree with what the kernel enforces.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any, Literal

from portwall.analyze.describe import member_label, rule_label
from portwall.analyze.evaluate import (
    DirectionResult,
    HopResult,
    IPAddress,
    Packet,
    evaluate_hop,
    plan_index,
)
from portwall.analyze.l3eval import router_of_port
from portwall.analyze.l3trace import from_outside, leave, through_router
from portwall.ir.l3 import RouterInterface, RouterPlan
from portwall.ir.types import (
    CtState,
    Family,
    HostPlan,
    OriginKind,
    PortPlan,
    Rule,
    SpoofCheck,
)
from portwall.model.protocols import (
    ICMP,
    ICMP_PROTOCOLS,
    ICMPV6,
    PORT_PROTOCOLS,
    protocol_name,
    protocol_number,
)
from portwall.model.resources import Port
from portwall.model.store import Model
from portwall.topology.loader import VM, LabSpec, Topology

MAX_HOPS = 8
#: An address pair at least this wide (prefix length <= this) is worth a warning.
WIDE_PREFIX = {4: 8, 6: 32}


class TraceError(ValueError):
    """The request cannot be traced (unknown endpoint, missing port number, ...)."""


@dataclass(frozen=True)
class TraceStep:
    """One line of the explanation; the keys of ``--json``'s ``steps``."""

    stage: str  # resolve | route | anti-spoof | egress | ingress | forward | deliver
    resource_type: str
    resource_id: str
    resource_name: str
    detail: str
    outcome: Literal["allow", "deny", "info"] = "info"

    def to_json(self) -> dict[str, str]:
        return {"stage": self.stage, "resource_type": self.resource_type,
                "resource_id": self.resource_id, "resource_name": self.resource_name,
                "detail": self.detail, "outcome": self.outcome}


@dataclass(frozen=True)
class Hop:
    """One L2 hop: the port that sends, the port that receives, and the evaluator's verdict."""

    sender: str  # port name (or router / "outside")
    receiver: str
    result: HopResult


@dataclass
class TraceResult:
    packet: Packet
    allowed: bool
    steps: list[TraceStep] = field(default_factory=list)
    hops: list[Hop] = field(default_factory=list)
    hint: str | None = None
    hint_priority: int = 0  # 3: fixes a denial, 2: explains a leak, 1: a caution
    #: the path left everything modelled before the destination: neither allow nor deny
    unknown: str | None = None
    #: the packet as it arrives, after the routers' NAT (None: never translated)
    translated: Packet | None = None
    #: every router hop (portwall.analyze.l3eval.RouterResult), in path order
    routed: list[Any] = field(default_factory=list)

    def suggest(self, text: str, priority: int) -> None:
        """Keep the most useful hint: the first one of the highest priority."""
        if priority > self.hint_priority:
            self.hint, self.hint_priority = text, priority

    @property
    def verdict(self) -> str:
        if self.unknown is not None:
            return "unknown"
        return "allow" if self.allowed else "deny"

    def leaves_model(self, why: str) -> None:
        """The path leaves what portwall models: no verdict can be claimed for it."""
        if self.unknown is None:
            self.unknown = why

    def to_json(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "packet": self.packet.describe(),
            "translated": self.translated.describe() if self.translated else None,
            "unknown": self.unknown,
            "steps": [s.to_json() for s in self.steps],
            "hint": self.hint,
            "hops": [{"from": h.sender, "to": h.receiver, "allowed": h.result.allowed}
                     for h in self.hops],
        }


# ------------------------------------------------------------------ topology view
@dataclass
class _Sender:
    """Something that sends: a VM (one or more ports), a lone port, or a Neutron router."""

    label: str
    ports: list[Port]
    vm: VM | None = None
    router_id: str | None = None


class Tracer:
    """Traces packets over one topology; build once, trace many (indexes are reused)."""

    def __init__(self, model: Model, plan: HostPlan, lab: LabSpec | None = None):
        self.model, self.plan, self.lab = model, plan, lab or LabSpec()
        self.idx = plan_index(plan)
        self._vm_of: dict[str, VM] = {pid: vm for vm in self.lab.vms.values() for pid in vm.ports}
        # Addresses come from the compiled plan (already parsed); only ports the plan leaves
        # out (Neutron's own router/DHCP ports) are parsed from the model.
        self._by_ip: dict[IPAddress, list[Port]] = {}
        self._pairs: list[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, Port]] = []
        self._by_name: dict[str, list[Port]] = {}
        planned = {p.id: p for p in plan.ports}
        for p in model.ports.values():
            self._by_name.setdefault(p.name, []).append(p)
            pp = planned.get(p.id)
            addrs = [n.network_address for n in pp.addresses] if pp else p.addresses()
            for a in addrs:
                self._by_ip.setdefault(a, []).append(p)
            for pair in p.allowed_address_pairs:
                if "/" not in pair.ip_address:  # only single addresses (VIPs) own hosts
                    self._pairs.append((pair.network, p))
        self._router_of: dict[str, str] = {
            pid: rid for rid, pids in model.router_interfaces.items() for pid in pids}
        self._subnets: dict[str, list[ipaddress.IPv4Network | ipaddress.IPv6Network]] = {}
        self._gateways: dict[str, list[IPAddress]] = {}
        for s in model.subnets.values():
            self._subnets.setdefault(s.network_id, []).append(s.network)
            if s.gateway_ip:
                self._gateways.setdefault(s.network_id, []).append(ipaddress.ip_address(s.gateway_ip))

    @classmethod
    def for_topology(cls, topo: Topology, plan: HostPlan) -> Tracer:
        return cls(topo.model, plan, topo.lab)

    # -------------------------------------------------------------- lookups
    def _pplan(self, port: Port) -> PortPlan | None:
        return self.idx.port(port.id)

    def _label(self, port: Port) -> str:
        vm = self._vm_of.get(port.id)
        return f"{port.label()} (VM {vm.name})" if vm else port.label()

    def _owner(self, addr: IPAddress, network_id: str | None = None) -> Port | None:
        """The port that answers for ``addr`` (on ``network_id``): its fixed IP, else a
        single-address allowed address pair (a VIP). A wider pair lets a port *send* from
        a range (a router or NAT VM); it does not make the port the owner of those hosts."""
        for p in self._by_ip.get(addr, ()):
            if network_id is None or p.network_id == network_id:
                return p
        for net, p in self._pairs:
            if (network_id is None or p.network_id == network_id) and addr in net:
                return p
        return None

    def _port(self, ref: str) -> Port:
        if ref in self.model.ports:
            return self.model.ports[ref]
        named = self._by_name.get(ref, [])
        if len(named) == 1:
            return named[0]
        if named:
            raise TraceError(f"{len(named)} ports are named '{ref}': use the id")
        raise TraceError(f"'{ref}' is not a VM of the lab section, a port or an IP address")

    def _resolve(self, ref: str, family: Family | None) -> tuple[_Sender | None, IPAddress | None,
                                                                   Port | None]:
        """(sender, address, port) for an endpoint given as VM name, port name/id or IP."""
        outside = self.lab_outside()
        if ref == "outside" and outside is not None and ref not in self.lab.vms:
            return None, outside, None
        if ref in self.lab.vms:
            vm = self.lab.vms[ref]
            return _Sender(f"VM {vm.name}", [self.model.ports[p] for p in vm.ports], vm), None, None
        try:
            addr = ipaddress.ip_address(ref)
        except ValueError:
            addr = None
        if addr is not None:
            port = self._owner(addr)
            if port is None:
                return None, addr, None
            return self._sender_of(port), addr, port
        port = self._port(ref)
        return self._sender_of(port), None, port

    def _sender_of(self, port: Port) -> _Sender:
        vm = self._vm_of.get(port.id)
        if vm is not None:
            return _Sender(f"VM {vm.name}", [self.model.ports[p] for p in vm.ports], vm)
        return _Sender(f"port {port.label()}", [port])

    def lab_outside(self) -> IPAddress | None:
        """The lab's outside host address (``lab.outside``), if the file has one."""
        o = self.lab.outside
        return None if o is None else ipaddress.ip_address(o.address)

    def _address_of(self, port: Port, family: Family) -> IPAddress | None:
        return next((a for a in port.addresses() if a.version == family), None)

    def _on_link(self, port: Port, addr: IPAddress) -> bool:
        return any(addr in n for n in self._subnets.get(port.network_id, ()))

    # -------------------------------------------------------------- routing
    def _egress(self, sender: _Sender, dst: IPAddress) -> tuple[Port, IPAddress, str] | None:
        """(port to send on, next-hop address, why) as the sender's routing table decides."""
        direct = [p for p in sender.ports if self._on_link(p, dst)]
        if direct:
            p = direct[0]
            return p, dst, f"{dst} is on the subnet of port {p.label()}: sent directly"
        if sender.router_id is not None:
            return None
        vm = sender.vm
        candidates: list[tuple[int, IPAddress, str]] = []
        if vm is not None:
            for r in vm.routes:
                net = ipaddress.ip_network(r.destination, strict=False)
                if dst.version == net.version and dst in net:
                    candidates.append((net.prefixlen, ipaddress.ip_address(r.via),
                                       f"route {net} via {r.via}"))
            if vm.gateway is not None and ipaddress.ip_address(vm.gateway).version == dst.version:
                candidates.append((0, ipaddress.ip_address(vm.gateway), f"default gateway {vm.gateway}"))
        if not candidates:  # Neutron's DHCP hands out the subnet's gateway as default route
            for p in sender.ports:
                for gw in self._gateways.get(p.network_id, ()):
                    if gw.version == dst.version:
                        candidates.append((0, gw, f"subnet gateway {gw} of port {p.label()}"))
        for _, via, why in sorted(candidates, key=lambda c: -c[0]):
            for p in sender.ports:
                if self._on_link(p, via):
                    return p, via, f"{why}, on port {p.label()}"
        return None

    # -------------------------------------------------------------- trace
    def trace(self, src: str, dst: str, proto: str | int, *, sport: int | None = None,
              dport: int | None = None, state: str = "new", icmp_type: int | None = None,
              icmp_code: int | None = None, family: Family | None = None) -> TraceResult:
        """Trace one packet from ``src`` to ``dst`` (VM names, port names/ids or addresses)."""
        src_sender, src_addr, src_port = self._resolve(src, family)
        dst_sender, dst_addr, dst_port = self._resolve(dst, family)
        fam: Family = family or (src_addr.version if src_addr else dst_addr.version if dst_addr
                                 else 4)
        if src_sender is None and src_addr is None:
            raise TraceError(f"cannot resolve source '{src}'")
        steps: list[TraceStep] = []

        # --- the destination address
        if dst_addr is None:
            assert dst_sender is not None
            cands = [dst_port] if dst_port is not None else list(dst_sender.ports)
            # a VM with several ports: prefer the one that shares a network with the source
            if src_sender is not None and dst_port is None:
                src_nets = {p.network_id for p in src_sender.ports}
                cands.sort(key=lambda p: p.network_id not in src_nets)
            for p in cands:
                a = self._address_of(p, fam)
                if a is not None:
                    dst_addr, dst_port = a, p
                    break
            if dst_addr is None:
                raise TraceError(f"{dst} has no IPv{fam} address")
        # --- the source address and the port it leaves from
        if src_addr is None:
            assert src_sender is not None
            out = self._egress(src_sender, dst_addr)
            first = src_port or (out[0] if out else src_sender.ports[0])
            src_addr = self._address_of(first, fam)
            if src_addr is None:
                raise TraceError(f"{src} has no IPv{fam} address on port {first.label()}")
        if src_addr.version != dst_addr.version:
            raise TraceError(f"source {src_addr} and destination {dst_addr} are not the same family")

        pnum = _protocol(proto, fam)
        if pnum in PORT_PROTOCOLS:
            if dport is None:
                raise TraceError(f"{protocol_name(pnum)} needs --dport")
            sport = 40000 if sport is None else sport
        else:
            if sport is not None or dport is not None:
                raise TraceError(f"{protocol_name(pnum)} has no ports")
            if pnum in ICMP_PROTOCOLS and icmp_type is None:
                icmp_type, icmp_code = (8, 0) if pnum == ICMP else (128, 0)
        ct = CtState(state)
        pkt = Packet(fam, src_addr, dst_addr, pnum, sport, dport, icmp_type, icmp_code, None, ct)
        result = TraceResult(pkt, True, steps)

        steps.append(TraceStep("resolve", "packet", "", "", f"{pkt.describe()}"))
        if src_sender is None and from_outside(self, result, pkt):
            return self._finish(result)
        if src_sender is None:
            steps.append(TraceStep(
                "resolve", "address", str(src_addr), "",
                f"source {src_addr} is not a portwall port (outside, e.g. the internet): "
                "only the destination's ingress filtering applies"))
            recv = dst_port
            if recv is None:
                result.allowed = True
                steps.append(TraceStep("deliver", "address", str(dst_addr), "",
                                       "neither end is a portwall port: nothing filters this"))
                return result
            self._hop(result, None, recv, pkt, "outside")
            return self._finish(result)

        self._walk(result, src_sender, dst_addr, pkt)
        return self._finish(result)

    def _walk(self, result: TraceResult, sender: _Sender, dst: IPAddress, pkt: Packet,
              forced: tuple[Port, IPAddress, str] | None = None) -> None:
        steps = result.steps
        for _ in range(MAX_HOPS):
            out = forced or self._egress(sender, dst)
            forced = None
            if out is None:
                result.allowed = False
                steps.append(TraceStep(
                    "route", "vm" if sender.vm else "port", sender.label, sender.label,
                    f"{sender.label} has no route to {dst} (no port on its subnet, no route, no"
                    " gateway on a connected subnet)", "deny"))
                result.suggest((f"give {sender.label} a route or gateway towards "
                                              f"{dst} in the lab section"), 3)
                return
            port, via, why = out
            steps.append(TraceStep("route", "port", port.id, port.name, f"{sender.label}: {why}"))
            receiver = self._owner(via, port.network_id)
            if receiver is not None and receiver.id == port.id:
                receiver = None
            if receiver is None:
                pp = self._pplan(port)
                if via != dst and via not in self._gateways.get(port.network_id, ()):
                    result.allowed = False
                    steps.append(TraceStep("route", "address", str(via), "",
                                           f"no port on {port.label()}'s network owns next hop "
                                           f"{via}", "deny"))
                    return
                hop_pkt = _with_mac(pkt, port.mac_address)
                res = evaluate_hop(self.plan, _ct_for(hop_pkt, pp, None), pp, None)
                self._record(result, Hop(port.label(), str(dst), res), sender)
                self._leave(result, sender, port, via, dst)
                return
            rp = self._pplan(receiver)
            hop_pkt = _with_mac(pkt, port.mac_address)
            res = evaluate_hop(self.plan, _ct_for(hop_pkt, self._pplan(port), rp),
                               self._pplan(port), rp)
            self._record(result, Hop(port.label(), receiver.label(), res), sender)
            # where does the packet go next?
            rvm = self._vm_of.get(receiver.id)
            owners = [self.model.ports[p] for p in rvm.ports] if rvm else [receiver]
            local = any(self._owner(dst, o.network_id) is o for o in owners)
            if local:
                steps.append(TraceStep("deliver", "port", receiver.id, receiver.name,
                                       f"{dst} belongs to {self._label(receiver)}: end of the "
                                       "path"))
                return
            if receiver.is_router_port:
                routed = router_of_port(self.plan, receiver.id)
                if routed is not None:
                    nxt = self._through_router(result, routed[0], routed[1], pkt)
                    if nxt is None:
                        return
                    sender, forced, pkt = nxt
                    dst = pkt.dst
                    continue
                rid = self._router_of.get(receiver.id, receiver.device_id)
                router = self.model.routers.get(rid)
                name = router.label() if router else rid
                steps.append(TraceStep("forward", "router", rid, router.name if router else "",
                                       f"router {name} routes the packet (router ports are not "
                                       "filtered)"))
                ports = [self.model.ports[p] for p in self.model.router_interfaces.get(rid, [])]
                sender = _Sender(f"router {name}", ports, router_id=rid)
                continue
            if rvm is not None and rvm.forward:
                steps.append(TraceStep("forward", "vm", rvm.name, rvm.name,
                                       f"VM {rvm.name} forwards the packet (ip_forward), keeping "
                                       f"source {pkt.src}"))
                sender = _Sender(f"VM {rvm.name}", owners, rvm)
                continue
            result.allowed = False
            who = f"VM {rvm.name}" if rvm else f"port {receiver.label()}"
            steps.append(TraceStep("forward", "port", receiver.id, receiver.name,
                                   f"{who} received a packet for {dst} but does not forward "
                                   "(no 'forward: true')", "deny"))
            result.suggest(f"set forward: true on {who} in the lab section", 3)
            return
        result.allowed = False
        steps.append(TraceStep("route", "packet", "", "", f"more than {MAX_HOPS} hops: a routing "
                               "loop?", "deny"))

    def _through_router(self, result: TraceResult, router: RouterPlan, inbound: RouterInterface,
                        pkt: Packet) -> tuple[_Sender, tuple[Port, IPAddress, str], Packet] | None:
        return through_router(self, result, router, inbound, pkt)

    def _leave(self, result: TraceResult, sender: _Sender, port: Port, via: IPAddress,
               dst: IPAddress) -> None:
        leave(self, result, sender, port, via, dst)

    def _hop(self, result: TraceResult, sender: PortPlan | None, receiver: Port, pkt: Packet,
             sender_label: str) -> None:
        rp = self._pplan(receiver)
        res = evaluate_hop(self.plan, _ct_for(pkt, sender, rp), sender, rp)
        self._record(result, Hop(sender_label, receiver.label(), res), None)

    def _record(self, result: TraceResult, hop: Hop, sender: _Sender | None) -> None:
        result.hops.append(hop)
        for d in (hop.result.egress, hop.result.ingress):
            if d is not None:
                self._explain(result, d, hop.result.packet, sender)
        if hop.result.ingress is None and hop.result.egress is None:
            return
        if not hop.result.allowed:
            result.allowed = False

    # -------------------------------------------------------------- explanations
    def _explain(self, result: TraceResult, d: DirectionResult, pkt: Packet,
                 sender: _Sender | None) -> None:
        steps, port = result.steps, d.port
        who = self._label_pp(port)
        if d.origin.kind == OriginKind.UNFILTERED:
            steps.append(TraceStep(d.direction, "port", port.id, port.name,
                                   f"{who}: port security is disabled, nothing is filtered", "allow"))
            return
        if d.direction == "egress" and d.nd_target_denied:
            steps.append(TraceStep(
                "anti-spoof", "port", port.id, port.name,
                f"{who} advertises {pkt.nd_target} (neighbour advertisement), which is not "
                f"among its fixed IPs, address pairs or link-local address: dropped", "deny"))
            result.suggest(f"if {who} legitimately answers for {pkt.nd_target}, add an "
                           f"allowed address pair {pkt.nd_target} to port {port.name}", 3)
            return
        if d.direction == "egress" and d.spoof_checked:
            if d.spoof_entry is not None:
                e = d.spoof_entry
                what = {OriginKind.FIXED_IP: "fixed IP", OriginKind.ADDRESS_PAIR:
                        "allowed address pair", OriginKind.MAC_ONLY: "MAC-only entry",
                        OriginKind.LINK_LOCAL: "link-local address"}.get(e.origin.kind, "entry")
                steps.append(TraceStep("anti-spoof", "port", port.id, port.name,
                                       f"source {pkt.src} (MAC {pkt.src_mac}) leaving {who} matches"
                                       f" its {what} {e.cidr or 'any'} {e.mac}", "allow"))
                own = any(pkt.src == a.network_address for a in port.addresses)
                if e.cidr is not None and e.origin.kind == OriginKind.ADDRESS_PAIR and \
                        e.cidr.prefixlen <= WIDE_PREFIX[e.family] and not own:
                    result.suggest((
                        f"{who} may send from any address in {e.cidr} (allowed address pair): "
                        "fine for a NAT/router VM, but keep that port out of groups other rules "
                        "use as a remote group"), 1)
            elif isinstance(d.decided_by, SpoofCheck):
                vm = self._vm_of.get(port.id)
                forwarding = len(result.hops) > 1  # a VM forwarded it to this hop
                pairs = [str(e.cidr) for e in port.spoof
                         if e.origin.kind == OriginKind.ADDRESS_PAIR and e.family == pkt.family]
                fixed = [str(a.network_address) for a in port.addresses]
                known = ", ".join(fixed + pairs) or "none"
                origin_name = self._origin_of_src(pkt.src)
                subj = f"{origin_name}'s packets leave" if origin_name else "packets leave"
                where = f"VM {vm.name}" if vm else f"port {port.name}"
                steps.append(TraceStep(
                    "anti-spoof", "port", port.id, port.name,
                    f"{subj} {where} with source {pkt.src}, which is not among "
                    f"{where}'s fixed IPs or allowed address pairs on port {port.name} "
                    f"({known}): dropped", "deny"))
                cidr = self._suggest_pair(pkt.src)
                if forwarding:
                    result.suggest((
                        f"add an allowed address pair {cidr} to port {port.name} (e.g. "
                        f"`openstack port set --allowed-address {'ip-address=' + cidr} {port.name}`)"
                        f" so {where} may forward packets from {cidr}"), 3)
                else:
                    result.suggest((
                        f"{where} does not own {pkt.src}; if it legitimately sends from it, add an "
                        f"allowed address pair {pkt.src} to port {port.name}"), 3)
                return
        stage = d.direction
        if d.allowed and isinstance(d.decided_by, Rule):
            r = d.decided_by
            if d.via is not None:
                g = d.via.origin
                text = (f"{who}: allowed by {rule_label(self.plan, r, d.direction)} of security group "
                        f"{g.resource_name or g.resource_id}")
                if d.member is not None:
                    m = d.member
                    text += (f"; {pkt.src if d.direction == 'ingress' else pkt.dst} is in the "
                             f"group's address set via member {member_label(m)}")
                    if m.kind == OriginKind.ADDRESS_PAIR and m.cidr.prefixlen <= WIDE_PREFIX[
                            m.cidr.version]:
                        result.suggest((
                            f"this is allowed only because port {m.port_name} has the wide "
                            f"allowed address pair {m.cidr} and is a member of the remote group: "
                            f"every address in {m.cidr} is let in. Move {m.port_name} to a "
                            "security group no remote-group rule refers to"), 2)
                steps.append(TraceStep(stage, "security_group_rule", r.origin.resource_id,
                                       r.origin.resource_name, text, "allow"))
            else:
                steps.append(TraceStep(stage, r.origin.resource_type, r.origin.resource_id,
                                       r.origin.resource_name,
                                       f"{who}: allowed by {r.origin.detail or r.rid}", "allow"))
            return
        # denied
        dr = d.decided_by if isinstance(d.decided_by, Rule) else None
        if d.origin.kind == OriginKind.FALLBACK:
            groups = [self.plan.rulesets[j.ruleset_id].group_name or j.origin.resource_id
                      for j in _jumps(port, d.direction) if j.ruleset_id in self.plan.rulesets]
            gtext = ", ".join(groups) if groups else "no security group"
            peer = f"from {pkt.src}" if d.direction == "ingress" else f"to {pkt.dst}"
            steps.append(TraceStep(stage, "port", port.id, port.name,
                                   f"{who}: no {d.direction} rule of {gtext} allows "
                                   f"{_what(pkt)} {peer}: dropped by the fallback rule", "deny"))
            if result.hint_priority < 3:
                flag = "--ingress" if d.direction == "ingress" else "--egress"
                remote = f"{pkt.src if d.direction == 'ingress' else pkt.dst}/{pkt.src.max_prefixlen}"
                proto = protocol_name(pkt.protocol)
                extra = f" --dst-port {pkt.dport}" if pkt.dport is not None else ""
                if groups:
                    result.suggest(
                        f"add an {d.direction} rule to security group {groups[0]}, e.g. "
                        f"`openstack security group rule create {flag} --protocol {proto}"
                        f"{extra} --remote-ip {remote} {groups[0]}`", 3)
                else:
                    result.suggest(f"port {port.name} has no security group, so it allows no "
                                   f"{d.direction} traffic: give it a group that allows "
                                   f"{_what(pkt)}", 3)
        elif d.origin.kind == OriginKind.CONNTRACK:
            steps.append(TraceStep(stage, "provider", d.origin.resource_id, d.origin.resource_name,
                                   f"{who}: dropped: {d.origin.detail}", "deny"))
        else:
            text = dr.origin.detail if dr is not None else d.origin.detail
            steps.append(TraceStep(stage, d.origin.resource_type, d.origin.resource_id,
                                   d.origin.resource_name, f"{who}: dropped: {text}", "deny"))

    def _label_pp(self, port: PortPlan) -> str:
        vm = self._vm_of.get(port.id)
        return f"port {port.name} (VM {vm.name})" if vm else f"port {port.name}"

    def _origin_of_src(self, addr: IPAddress) -> str | None:
        for p in self._by_ip.get(addr, ()):
            vm = self._vm_of.get(p.id)
            return vm.name if vm else p.label()
        return None

    def _suggest_pair(self, addr: IPAddress) -> str:
        """The subnet of the address's owner (what seed 000's fix uses), else the address."""
        for p in self._by_ip.get(addr, ()):
            for n in self._subnets.get(p.network_id, ()):
                if addr in n:
                    return str(n)
        return f"{addr}/{addr.max_prefixlen}"

    def _finish(self, result: TraceResult) -> TraceResult:
        if result.allowed and result.unknown is not None:
            # Nothing denied it, but part of the path was never evaluated: not "allowed".
            result.allowed = False
            result.steps.append(TraceStep("verdict", "packet", "", "",
                                          f"unknown: {result.unknown}", "info"))
        elif result.allowed:
            result.steps.append(TraceStep("verdict", "packet", "", "", "allowed on every hop", "allow"))
        else:
            result.unknown = None  # a hop that was evaluated denies it: that is the verdict
            result.steps.append(TraceStep("verdict", "packet", "", "", "denied", "deny"))
        return result


def _jumps(port: PortPlan, direction: str) -> list[Any]:
    from portwall.ir.types import Jump

    return [s for s in port.steps(direction) if isinstance(s, Jump)]  # type: ignore[arg-type]


def _what(pkt: Packet) -> str:
    name = protocol_name(pkt.protocol)
    if pkt.dport is not None:
        return f"{name} port {pkt.dport}"
    if pkt.protocol in ICMP_PROTOCOLS and pkt.icmp_type is not None:
        return f"{name} type {pkt.icmp_type}"
    return name


def _with_mac(pkt: Packet, mac: str | None) -> Packet:
    return Packet(pkt.family, pkt.src, pkt.dst, pkt.protocol, pkt.sport, pkt.dport,
                  pkt.icmp_type, pkt.icmp_code, mac, pkt.ct)


def _ct_for(pkt: Packet, sender: PortPlan | None, receiver: PortPlan | None) -> Packet:
    """The packet as conntrack leaves it on this hop. Conntrack sees every hop with a
    stateful end, so a stateless server's reply to a stateful client is ESTABLISHED; a hop
    between stateless ends (or a stateless port and a non-port) is untracked, which
    :func:`evaluate_hop` applies itself."""
    return pkt


def _protocol(proto: str | int, family: Family) -> int:
    text = str(proto).strip().lower()
    if text in ("icmp", "icmpv6", "ipv6-icmp", "1", "58"):
        return ICMPV6 if family == 6 else ICMP
    try:
        n = protocol_number(text)
    except ValueError:
        n = None
    if n is None:
        raise TraceError(f"unknown protocol '{proto}' (use tcp, udp, icmp, a name or a number)")
    return n


def trace(topo: Topology, plan: HostPlan, src: str, dst: str, proto: str | int,
          **kw: Any) -> TraceResult:
    """Convenience: one trace over a loaded topology and its compiled plan."""
    return Tracer.for_topology(topo, plan).trace(src, dst, proto, **kw)


# Layer 2 (ARP) explanations live next door; re-exported so ``trace`` is one place to look.
from portwall.analyze.arptrace import ArpTrace, trace_arp  # noqa: E402

__all__ = ["ArpTrace", "Hop", "TraceError", "TraceResult", "TraceStep", "Tracer", "trace",
           "trace_arp"]
