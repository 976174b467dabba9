"""Where a namespace's private Open vSwitch lives, and OVSDB access through ovsdbapp.

portwall never talks to the machine's own ovs-vswitchd: each "compute host" namespace gets
its own ovsdb-server and ovs-vswitchd (started by :mod:`portwall.lab.ovs_host`), whose
database, sockets and logs live in :func:`run_dir` of that namespace. The applier finds
them by the namespace name alone, which is all the backend interface passes it.

Bridges, ports and OpenFlow port numbers go through OVSDB (ovsdbapp), never by parsing
``ovs-vsctl`` output.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

from portwall.model.errors import PortwallError

#: Overrides the base directory of the private OVS instances (default: the lab state dir).
OVS_DIR_ENV = "PORTWALL_OVS_DIR"
BRIDGE = "br-int"


class OvsError(PortwallError):
    status = 500
    neutron_type = "OvsError"

    def __init__(self, message: str) -> None:
        super().__init__(message, resource="ovs")


def base_dir() -> Path:
    env = os.environ.get(OVS_DIR_ENV)
    if env:
        return Path(env)
    from portwall.lab.state import state_dir

    return state_dir() / "ovs"


def run_dir(netns: str) -> Path:
    return base_dir() / netns


def db_sock(netns: str) -> Path:
    return run_dir(netns) / "db.sock"


def mgmt(netns: str, bridge: str = BRIDGE) -> str:
    """The OpenFlow management socket of ``bridge`` (what ovs-ofctl connects to)."""
    return f"unix:{run_dir(netns) / (bridge + '.mgmt')}"


def vswitchd_ctl(netns: str) -> str:
    return str(run_dir(netns) / "ovs-vswitchd.ctl")


def _import_ovs_without_eventlet() -> None:
    """Import the ovs library as if eventlet were absent: ``ovs.poller`` probes for it (it
    comes with os-ken) and importing eventlet warns and hooks every fork(); portwall never
    monkey-patches, so the probe's answer would be "not patched" anyway."""
    if "ovs.poller" in sys.modules or "eventlet" in sys.modules:
        return
    sys.modules["eventlet"] = None  # type: ignore[assignment]  # -> ImportError
    try:
        import ovs.poller  # noqa: F401
    finally:
        del sys.modules["eventlet"]


#: columns ovs-vswitchd rewrites all the time (counters, link state): not monitored. With a
#: thousand ports, parsing their updates every few seconds in the IDL thread holds the GIL
#: for tens of milliseconds, right in the middle of whatever change is being applied.
#: ``error``: rewritten on every interface at each reconfiguration (a port added), which
#: would make every row "changed" for :meth:`Ovsdb.ofports`.
VOLATILE = frozenset({"error", "statistics", "status", "link_resets", "link_state", "link_speed",
                      "duplex", "mtu", "admin_state", "lacp_current", "ifindex", "bfd_status",
                      "cfm_fault", "cfm_fault_status", "cfm_health", "cfm_remote_mpids",
                      "cfm_remote_opstate", "cfm_flap_count"})


class _NotClean(Exception):
    """A row with changes of a local transaction not yet confirmed: read it the slow way."""


def _raw(row: Any, column: str) -> list[Any]:
    """A column's atoms (UUIDs, ints, strings) straight from the row's server data."""
    if row._changes or row._mutations or row._data is None:
        raise _NotClean
    datum = row._data.get(column)
    return [] if datum is None else [a.value for a in datum.values]


def _tracking_idl_class(base: type) -> type:
    """``base`` (ovsdbapp's IDL) noting which rows the server changed: :meth:`notify` runs
    in the connection's thread after a row changed, so a row read after its change was
    taken is read again next time."""
    global _TRACKING_IDL
    if _TRACKING_IDL is None or _TRACKING_IDL.__base__ is not base:

        class TrackingIdl(base):
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                self.pw_lock = threading.Lock()
                self.pw_events = 0
                self.pw_changed: set[tuple[str, Any]] | None = set()
                super().__init__(*args, **kwargs)

            def notify(self, event: Any, row: Any, updates: Any = None) -> None:
                with self.pw_lock:
                    self.pw_events += 1
                    if self.pw_changed is not None:
                        self.pw_changed.add((row._table.name, row.uuid))
                        if len(self.pw_changed) > _MANY_CHANGES:
                            self.pw_changed = None  # a resync: read everything
                super().notify(event, row, updates)

        _TRACKING_IDL = TrackingIdl
    return _TRACKING_IDL


_TRACKING_IDL: type | None = None
#: more changed rows than this and the next read walks every row again
_MANY_CHANGES = 256


class _BridgePorts:
    """One bridge's ports, interfaces and their numbers as last read from the rows' server
    data; :meth:`update` re-reads only the rows that changed."""

    def __init__(self, bridge: str) -> None:
        self.bridge = bridge
        self.uuid: Any = None  # the bridge row
        self.ports: dict[Any, tuple[Any, ...]] = {}  # port row -> its interface rows
        self.ifaces: dict[Any, tuple[str, int]] = {}  # interface row -> (name, ofport)

    def update(self, tables: Any, changed: set[tuple[str, Any]] | None) -> bool:
        """Bring the state up to date (``changed`` None: read every row); False when it
        cannot be done from ``changed`` (the caller starts afresh)."""
        brows = tables["Bridge"].rows
        prows = getattr(tables["Port"].rows, "data", tables["Port"].rows)
        irows = getattr(tables["Interface"].rows, "data", tables["Interface"].rows)
        dirty_ifaces: set[Any] = set()
        if changed is None:
            self.ports, self.ifaces = {}, {}
            brs = [b for b in list(brows.values()) if _raw(b, "name") == [self.bridge]]
            self.uuid = brs[0].uuid if brs else None
            dirty_ports = set(_raw(brs[0], "ports")) if brs else set()
        else:
            if self.uuid is None or any(t == "Bridge" and u != self.uuid for t, u in changed):
                return False  # a bridge came or went: start afresh
            dirty_ports = {u for t, u in changed if t == "Port" and u in self.ports}
            dirty_ifaces = {u for t, u in changed if t == "Interface" and u in self.ifaces}
            if ("Bridge", self.uuid) in changed:
                br = brows.get(self.uuid)
                if br is None:
                    return False
                now = set(_raw(br, "ports"))
                for pu in self.ports.keys() - now:
                    for iu in self.ports.pop(pu):
                        self.ifaces.pop(iu, None)
                dirty_ports |= now - self.ports.keys()
        for pu in dirty_ports:
            old = self.ports.pop(pu, ())
            port = prows.get(pu)
            new = tuple(_raw(port, "interfaces")) if port is not None else ()
            for iu in set(old) - set(new):
                self.ifaces.pop(iu, None)
            if port is not None:
                self.ports[pu] = new
            dirty_ifaces.update(new)
        for iu in dirty_ifaces:
            iface = irows.get(iu)
            if iface is None:
                self.ifaces.pop(iu, None)
                continue
            no = _raw(iface, "ofport")
            self.ifaces[iu] = (_raw(iface, "name")[0], int(no[0]) if no else -1)
        return True

    def ofports(self) -> dict[str, int]:
        return {name: no for name, no in self.ifaces.values() if no > 0}


class Ovsdb:
    """An ovsdbapp connection to one private ovsdb-server (close it when done)."""

    def __init__(self, netns: str, timeout: float = 60) -> None:
        _import_ovs_without_eventlet()
        from ovsdbapp.backend.ovs_idl import connection
        from ovsdbapp.schema.open_vswitch import impl_idl

        sock = db_sock(netns)
        if not sock.exists():
            raise OvsError(f"no Open vSwitch for namespace {netns} ({sock} missing): is the "
                           "sandbox built for the ovs backend?")
        from ovsdbapp.backend.ovs_idl import idlutils

        remote = f"unix:{sock}"
        helper = idlutils.get_schema_helper(remote, "Open_vSwitch")
        for table, spec in helper.schema_json["tables"].items():
            helper.register_columns(table, [c for c in spec["columns"] if c not in VOLATILE])
        idl = _tracking_idl_class(connection.OvsdbIdl)(remote, helper)
        self._conn = connection.Connection(idl=idl, timeout=timeout)
        # ovsdbapp keeps one connection per API class: a class of our own per server
        api_cls = type("PortwallOvsIdl", (impl_idl.OvsdbIdl,), {"_ovsdb_connection": None})
        self.api: Any = api_cls(self._conn)
        self._ofports: tuple[int, str, dict[str, int]] | None = None
        self._ports_of: _BridgePorts | None = None  # what the last raw read saw, per row

    def close(self) -> None:
        self._conn.stop()

    def __enter__(self) -> Ovsdb:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ reads
    def _rows(self, table: str) -> list[Any]:
        return list(self.api.tables[table].rows.values())

    def bridges(self) -> list[str]:
        return [r.name for r in self._rows("Bridge")]

    def ofports(self, bridge: str = BRIDGE) -> dict[str, int]:
        """Interface name -> OpenFlow port number, for the ports of ``bridge`` that
        ovs-vswitchd has attached (a port it could not open has none). Cached until the
        database changes, then brought up to date from the rows that changed (the IDL's
        notifications): walking a thousand ports' rows costs milliseconds, and every new
        port's device is such a change."""
        idl = self._conn.idl
        with idl.pw_lock:
            events, changed = idl.pw_events, idl.pw_changed
            idl.pw_changed = set()
        if self._ofports is not None and self._ofports[:2] == (events, bridge):
            return dict(self._ofports[2])
        try:
            state = self._ports_of
            if state is None or state.bridge != bridge or not state.update(self.api.tables,
                                                                           changed):
                state = _BridgePorts(bridge)
                state.update(self.api.tables, None)
            out = state.ofports()
            self._ports_of = state
        except _NotClean:
            self._ports_of = None
            out = {}
            for br in self._rows("Bridge"):
                if br.name != bridge:
                    continue
                for port in br.ports:
                    for iface in port.interfaces:
                        no = iface.ofport[0] if iface.ofport else -1
                        if no > 0:
                            out[iface.name] = int(no)
        self._ofports = (events, bridge, out)
        return dict(out)

    def _ofports_raw(self, bridge: str) -> dict[str, int]:
        """:meth:`ofports` read afresh from every row (what the incremental reads are
        checked against)."""
        state = _BridgePorts(bridge)
        state.update(self.api.tables, None)
        return state.ofports()

    # ----------------------------------------------------------------- writes
    def ensure_bridge(self, bridge: str = BRIDGE) -> None:
        """The integration bridge, userspace datapath, no flows of its own: in secure fail
        mode a bridge without portwall's flows drops everything instead of switching."""
        with self.api.transaction(check_error=True) as txn:
            txn.add(self.api.add_br(bridge, datapath_type="netdev"))
            txn.add(self.api.db_set("Bridge", bridge, ("fail_mode", "secure"),
                                    ("other_config", {"disable-in-band": "true"})))

    def add_port(self, device: str, bridge: str = BRIDGE, timeout: float = 10) -> int:
        """Attach ``device``; returns its OpenFlow port number once ovs-vswitchd set it."""
        self.api.add_port(bridge, device).execute(check_error=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            no = self.ofports(bridge).get(device)
            if no:
                return no
            time.sleep(0.02)
        raise OvsError(f"ovs-vswitchd did not attach {device} to {bridge}")

    def del_port(self, device: str, bridge: str = BRIDGE) -> None:
        self.api.del_port(device, bridge=bridge, if_exists=True).execute(check_error=True)
