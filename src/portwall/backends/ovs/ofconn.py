"""How the applier talks to the bridge: one small interface, three transports.

:class:`Transport` is all the applier needs: an atomic bundle of deletes (by cookie/mask)
and adds (flow texts), and a diff of the bridge's flows against a list of flow texts.

* :class:`OpenFlowTransport` (default): one long-lived OpenFlow 1.5 connection to the
  bridge's management socket (``<rundir>/br-int.mgmt``). Messages are os-ken's ofproto
  parser classes (:mod:`.ofmsg`), the transport is a plain blocking unix socket of our own:
  os-ken's app manager (``osken-manager``, ``OSKenApp``, ``Datapath``) is an eventlet
  controller framework that listens for switches and dispatches events to apps, far more
  than a one-shot applier that opens one connection, sends one bundle and waits for one
  reply. Connecting once saves the ~17 ms an ``ovs-ofctl`` process costs per apply.
* :class:`OfctlTransport`: the same through one ``ovs-ofctl`` process per call (the
  fallback: ``PORTWALL_OVS_TRANSPORT=ofctl``, or os-ken missing).
* :class:`MemoryTransport`: an in-memory flow table, so the applier's decisions (what is
  sent, when nothing is) are unit-tested without a switch (like httpx's MockTransport).

Atomicity is the switch's: a bundle is opened ``OFPBF_ATOMIC|OFPBF_ORDERED``, filled, and
committed only after a barrier shows no add was refused (Open vSwitch answers a refused add
with an error and would commit the rest); otherwise it is discarded. A bundle never
committed (the applier killed) is dropped by the switch when the connection closes.
"""

from __future__ import annotations

import os
import re
import socket
import struct
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from portwall.backends.base import ApplyError

if TYPE_CHECKING:
    from portwall.backends.ovs.ofmsg import FlowKey

OFCTL = ["ovs-ofctl", "-O", "OpenFlow15"]
TRANSPORT_ENV = "PORTWALL_OVS_TRANSPORT"
_COOKIE = re.compile(r"cookie=(0x[0-9a-f]+)")

Delete = tuple[int, int]  # (cookie, cookie mask); (0, 0) deletes every flow


@dataclass(frozen=True, slots=True)
class DiffLine:
    """A flow the bridge lacks (``+``, rendered text) or has extra (``-``, its dump)."""

    sign: str
    cookie: int
    text: str


class Transport(Protocol):
    #: one human-readable line per write, for the apply report
    log: list[str]

    def bundle(self, deletes: list[Delete], adds: list[str], removes: Sequence[str] = ()) -> None:
        """Deletes by cookie, then ``removes`` (flow texts deleted by table, priority and
        match), then adds, as one atomic bundle; ApplyError (rolled back) if refused."""

    def diff(self, desired: list[str]) -> list[DiffLine]:
        """The bridge's flows against ``desired`` (flow texts)."""

    def close(self) -> None: ...


def default_transport(target: str) -> Transport:
    """``target`` is ``unix:<path>``; OpenFlow over it unless the fallback is asked for."""
    if os.environ.get(TRANSPORT_ENV, "openflow") == "ofctl":
        return OfctlTransport(target)
    try:
        import os_ken  # noqa: F401
    except ImportError:  # pragma: no cover - os-ken is a dependency
        return OfctlTransport(target)
    return OpenFlowTransport(target.removeprefix("unix:"))


# ---------------------------------------------------------------------------- OpenFlow
class OpenFlowTransport:
    """A persistent OpenFlow 1.5 connection to a unix socket (blocking, one caller)."""

    def __init__(self, path: str, timeout: float = 300) -> None:
        self.path, self.timeout = path, timeout
        self.log: list[str] = []
        self._sock: socket.socket | None = None
        self._buf = bytearray()
        self._xid = 0
        self._bundle_id = 0
        self.timings: dict[str, float] = {}  # phases of the last bundle, seconds

    # ---------------------------------------------------------------- connection
    def _next_xid(self) -> int:
        self._xid = (self._xid + 1) & 0xFFFFFFFF or 1
        return self._xid

    def _connect(self) -> socket.socket:
        from portwall.backends.ovs import ofmsg

        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        try:
            s.connect(self.path)
        except OSError as e:
            s.close()
            raise ApplyError(f"cannot connect to the bridge at {self.path}: {e}") from e
        self._sock, self._buf = s, bytearray()
        hello = ofmsg.parser.OFPHello(ofmsg.DP)
        self._send_msg(hello)
        version, mtype, _xid, _body = self._recv()
        if mtype != ofmsg.ofp.OFPT_HELLO or version < ofmsg.ofp.OFP_VERSION:
            self.close()
            raise ApplyError(f"the bridge at {self.path} does not speak OpenFlow 1.5 "
                             f"(hello version {version})")
        return s

    def _alive(self) -> socket.socket:
        """The connection, answering echo requests queued while idle; reconnects if the
        switch closed it (only ever between bundles: nothing is lost)."""
        s = self._sock
        if s is None:
            return self._connect()
        s.setblocking(False)
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    raise ConnectionResetError
                self._buf += chunk
        except BlockingIOError:
            pass
        except OSError:
            self.close()
            return self._connect()
        finally:
            if self._sock is not None:
                self._sock.settimeout(self.timeout)
        while (m := self._pop()) is not None:
            self._async(m)
        return s

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    # --------------------------------------------------------------- framing
    def _send_msg(self, msg: object) -> int:
        xid = self._next_xid()
        msg.set_xid(xid)  # type: ignore[attr-defined]
        msg.serialize()  # type: ignore[attr-defined]
        self._sendall(bytes(msg.buf))  # type: ignore[attr-defined]
        return xid

    def _sendall(self, data: bytes) -> None:
        assert self._sock is not None
        try:
            self._sock.sendall(data)
        except OSError as e:
            self.close()
            raise ApplyError(f"lost the OpenFlow connection to {self.path}: {e}") from e

    def _pop(self) -> tuple[int, int, int, bytes] | None:
        if len(self._buf) < 8:
            return None
        version, mtype, length, xid = struct.unpack_from("!BBHI", self._buf)
        if len(self._buf) < length:
            return None
        body = bytes(self._buf[8:length])
        del self._buf[:length]
        return version, mtype, xid, body

    def _recv(self) -> tuple[int, int, int, bytes]:
        assert self._sock is not None
        while (m := self._pop()) is None:
            try:
                chunk = self._sock.recv(1 << 20)
            except OSError as e:
                self.close()
                raise ApplyError(f"lost the OpenFlow connection to {self.path}: {e}") from e
            if not chunk:
                self.close()
                raise ApplyError(f"the bridge at {self.path} closed the OpenFlow connection")
            self._buf += chunk
        return m

    def _async(self, m: tuple[int, int, int, bytes]) -> bool:
        """Handle a message nobody waits for; True if it was one."""
        from portwall.backends.ovs.ofmsg import ofp

        if m[1] == ofp.OFPT_ECHO_REQUEST:
            self._sendall(struct.pack("!BBHI", ofp.OFP_VERSION, ofp.OFPT_ECHO_REPLY,
                                      8 + len(m[3]), m[2]) + m[3])
            return True
        return m[1] in (ofp.OFPT_PORT_STATUS, ofp.OFPT_PACKET_IN, ofp.OFPT_FLOW_REMOVED)

    def _wait(self, xid: int, errors: dict[int, bytes]) -> tuple[int, bytes]:
        """Messages until the reply to ``xid``; errors for other xids are collected."""
        from portwall.backends.ovs.ofmsg import ofp

        while True:
            m = self._recv()
            if self._async(m):
                continue
            _v, mtype, mxid, body = m
            if mtype == ofp.OFPT_ERROR:
                errors.setdefault(mxid, body)
                if mxid == xid:
                    return mtype, body
                continue
            if mxid == xid:
                return mtype, body

    # ------------------------------------------------------------------ bundles
    def _ctrl(self, bundle_id: int, kind: int, errors: dict[int, bytes]) -> int:
        from portwall.backends.ovs.ofmsg import DP, ofp, parser

        msg = parser.OFPBundleCtrlMsg(DP, bundle_id, kind, ofp.OFPBF_ATOMIC | ofp.OFPBF_ORDERED, [])
        xid = self._send_msg(msg)
        mtype, _ = self._wait(xid, errors)
        return xid if mtype == ofp.OFPT_ERROR else 0

    def bundle(self, deletes: list[Delete], adds: list[str], removes: Sequence[str] = ()) -> None:
        from portwall.backends.ovs import ofmsg
        from portwall.backends.ovs.ofmsg import ofp

        t0 = time.perf_counter()
        mods = [ofmsg.delete_mod(c, m) for c, m in deletes]
        mods += [ofmsg.delete_strict_mod(t) for t in removes]
        mods += [ofmsg.add_mod(t)[0] for t in adds]
        self._alive()
        t1 = time.perf_counter()
        self._bundle_id = (self._bundle_id + 1) & 0xFFFFFFFF
        bid = self._bundle_id
        errors: dict[int, bytes] = {}
        self.log.append(f"openflow bundle {bid}: {len(deletes) + len(removes)} deletes, "
                        f"{len(adds)} adds -> {self.path}")
        # open, adds and barrier in one write, one wait: the barrier's reply comes after the
        # open's reply and every add's error (a switch answers in order)
        flags = ofp.OFPBF_ATOMIC | ofp.OFPBF_ORDERED
        opener = ofmsg.parser.OFPBundleCtrlMsg(ofmsg.DP, bid, ofp.OFPBCT_OPEN_REQUEST, flags, [])
        opener.set_xid(self._next_xid())
        opener.serialize()
        chunk = bytearray(opener.buf)
        first = self._xid + 1
        head = struct.Struct("!BBHII2xH")  # ofp_bundle_add_msg up to the inner message
        for mod in mods:
            xid = self._next_xid()
            inner = mod[:4] + struct.pack("!I", xid) + mod[8:]
            chunk += head.pack(ofp.OFP_VERSION, ofp.OFPT_BUNDLE_ADD_MESSAGE, 16 + len(inner),
                               xid, bid, flags) + inner
            if len(chunk) > 1 << 20:
                self._sendall(bytes(chunk))
                chunk.clear()
        barrier = ofmsg.parser.OFPBarrierRequest(ofmsg.DP)
        barrier.set_xid(self._next_xid())
        barrier.serialize()
        self._sendall(bytes(chunk + barrier.buf))
        self._wait(barrier.xid, errors)
        t2 = time.perf_counter()
        if errors:
            self._ctrl(bid, ofp.OFPBCT_DISCARD_REQUEST, {})
            bad = min(errors)
            line = None
            n = bad - first - len(deletes) - len(removes)
            if 0 <= n < len(adds):
                line = adds[n]
            raise ApplyError("the bridge refused the bundle; it keeps its previous flows",
                             command=self.log[-1], line=line, stderr=_error_text(errors),
                             rolled_back=True)
        if self._ctrl(bid, ofp.OFPBCT_COMMIT_REQUEST, errors):
            raise ApplyError("the bridge refused to commit the bundle; it keeps its previous "
                             "flows", command=self.log[-1], stderr=_error_text(errors),
                             rolled_back=True)
        self.timings = {"encode": t1 - t0, "open+add+barrier": t2 - t1,
                        "commit": time.perf_counter() - t2}

    # --------------------------------------------------------------------- dump
    def keys(self) -> list[FlowKey]:
        """Identities of every flow on the bridge (one OFPMP_FLOW_DESC request)."""
        from portwall.backends.ovs import ofmsg
        from portwall.backends.ovs.ofmsg import DP, ofp, parser

        self._alive()
        req = parser.OFPFlowDescStatsRequest(DP, 0, ofp.OFPTT_ALL, ofp.OFPP_ANY, ofp.OFPG_ANY,
                                             0, 0, parser.OFPMatch())
        xid = self._send_msg(req)
        out: list[FlowKey] = []
        errors: dict[int, bytes] = {}
        while True:
            mtype, body = self._wait(xid, errors)
            if mtype == ofp.OFPT_ERROR:
                raise ApplyError("the bridge refused a flow dump", stderr=_error_text(errors))
            _kind, flags = struct.unpack_from("!HH", body)
            out += ofmsg.keys_from_flow_desc(body[8:])
            if not flags & ofp.OFPMPF_REPLY_MORE:
                return out

    def diff(self, desired: list[str]) -> list[DiffLine]:
        from portwall.backends.ovs import ofmsg

        have = set(self.keys())
        if not have:  # an empty bridge (a fresh one): everything is missing, no need to encode
            return [DiffLine("+", _cookie(t), t) for t in desired]
        want = {ofmsg.add_mod(t)[1]: t for t in desired}
        out = [DiffLine("+", k[0], t) for k, t in want.items() if k not in have]
        out += [DiffLine("-", k[0], ofmsg.describe(k)) for k in have if k not in want]
        return out



def _error_text(errors: dict[int, bytes]) -> str:
    parts = []
    for xid, body in sorted(errors.items())[:5]:
        etype, code = struct.unpack_from("!HH", body) if len(body) >= 4 else (0, 0)
        parts.append(f"xid {xid}: OpenFlow error type {etype} code {code}")
    more = f" (+{len(errors) - 5} more)" if len(errors) > 5 else ""
    return "; ".join(parts) + more


# ---------------------------------------------------------------------------- ovs-ofctl
class OfctlTransport:
    """One ``ovs-ofctl`` process per call (what the backend did before the connection)."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.log: list[str] = []

    def bundle(self, deletes: list[Delete], adds: list[str], removes: Sequence[str] = ()) -> None:
        lines = [f"delete cookie={c:#x}/{m:#x}" if m else "delete" for c, m in deletes]
        lines += [f"delete_strict {flow_slot(t)}" for t in removes]
        lines += [f"add {t}" for t in adds]
        text = "\n".join(lines) + "\n"
        with tempfile.NamedTemporaryFile("w", suffix=".flows", delete=False) as fh:
            fh.write(text)
        argv = [*OFCTL, "--bundle", "add-flows", self.target, fh.name]
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=300)
        finally:
            os.unlink(fh.name)
        self.log.append(" ".join(argv[:-1]) + " <flows>")
        if proc.returncode != 0:
            line = None
            m = re.search(r":(\d+): ", proc.stderr)
            if m and 0 < int(m.group(1)) <= len(lines):
                line = lines[int(m.group(1)) - 1]
            raise ApplyError("ovs-ofctl bundle refused; the bridge keeps its previous flows",
                             command=" ".join(argv[:5]), line=line, stderr=proc.stderr,
                             rolled_back=True)

    def diff(self, desired: list[str]) -> list[DiffLine]:
        with tempfile.NamedTemporaryFile("w", suffix=".flows", delete=False) as fh:
            fh.write("\n".join(desired) + "\n")
        argv = [*OFCTL, "diff-flows", self.target, fh.name]
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=300)
        finally:
            os.unlink(fh.name)
        if proc.returncode not in (0, 2):
            raise ApplyError("ovs-ofctl diff-flows failed", command=" ".join(argv),
                             stderr=proc.stderr)
        out = []
        for ln in proc.stdout.splitlines():
            if ln[:1] in "+-":
                m = _COOKIE.search(ln)
                out.append(DiffLine(ln[0], int(m.group(1), 16) if m else 0, ln[1:].strip()))
        return out

    def close(self) -> None:
        pass


# ---------------------------------------------------------------------------- memory
@dataclass
class MemoryTransport:
    """A flow table in memory, keyed like a switch's (table, priority, match): for tests.

    ``refuse`` makes the next bundle fail (as a refused add would) without changing it."""

    flows: dict[tuple[str, str, str], str] = field(default_factory=dict)
    log: list[str] = field(default_factory=list)
    bundles: list[tuple[list[Delete], list[str]]] = field(default_factory=list)
    removed: list[list[str]] = field(default_factory=list)
    refuse: bool = False

    @staticmethod
    def _key(text: str) -> tuple[str, str, str]:
        head, _, _actions = text.partition(" actions=")
        parts = head.split(",")
        table = next(p for p in parts if p.startswith("table="))
        prio = next(p for p in parts if p.startswith("priority="))
        match = ",".join(p for p in parts if not p.startswith(("cookie=", "table=", "priority=")))
        return table, prio, match

    def bundle(self, deletes: list[Delete], adds: list[str], removes: Sequence[str] = ()) -> None:
        self.bundles.append((list(deletes), list(adds)))
        self.removed.append(list(removes))
        self.log.append(f"memory bundle: {len(deletes) + len(removes)} deletes, {len(adds)} adds")
        if self.refuse:
            self.refuse = False
            raise ApplyError("refused (test)", line=adds[0] if adds else None, rolled_back=True)
        new = dict(self.flows)
        for c, m in deletes:
            new = {k: t for k, t in new.items() if (_cookie(t) & m) != (c & m)}
        for t in removes:
            new.pop(self._key(t), None)
        for t in adds:
            new[self._key(t)] = t
        self.flows = new

    def diff(self, desired: list[str]) -> list[DiffLine]:
        have, want = set(self.flows.values()), set(desired)
        return ([DiffLine("+", _cookie(t), t) for t in desired if t not in have]
                + [DiffLine("-", _cookie(t), t) for t in have - want])

    def close(self) -> None:
        pass


def _cookie(text: str) -> int:
    m = _COOKIE.search(text)
    return int(m.group(1), 16) if m else 0


def flow_slot(text: str) -> str:
    """``table=..,priority=..[,match]`` of a rendered flow text: what a switch keys it by."""
    return text[text.index("table="):text.index(" actions=")]
