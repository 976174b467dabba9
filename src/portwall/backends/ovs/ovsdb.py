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
VOLATILE = frozenset({"statistics", "status", "link_resets", "link_state", "link_speed",
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
        idl = connection.OvsdbIdl(remote, helper)
        self._conn = connection.Connection(idl=idl, timeout=timeout)
        # ovsdbapp keeps one connection per API class: a class of our own per server
        api_cls = type("PortwallOvsIdl", (impl_idl.OvsdbIdl,), {"_ovsdb_connection": None})
        self.api: Any = api_cls(self._conn)
        self._ofports: tuple[int, str, dict[str, int]] | None = None

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
        database changes: walking a thousand ports' rows costs milliseconds."""
        seqno = self._conn.idl.change_seqno
        if self._ofports is not None and self._ofports[:2] == (seqno, bridge):
            return dict(self._ofports[2])
        try:
            out = self._ofports_raw(bridge)
        except _NotClean:
            out = {}
            for br in self._rows("Bridge"):
                if br.name != bridge:
                    continue
                for port in br.ports:
                    for iface in port.interfaces:
                        no = iface.ofport[0] if iface.ofport else -1
                        if no > 0:
                            out[iface.name] = int(no)
        self._ofports = (seqno, bridge, out)
        return dict(out)

    def _ofports_raw(self, bridge: str) -> dict[str, int]:
        """:meth:`ofports` from the rows' data as the server sent it. Reading a column as a
        row attribute converts its whole datum to Python and back (``ovs.db.idl``): ~35 ms
        for a thousand ports, paid whenever anything in the database changed -- e.g. the
        device of the very port being added. Rows with local changes: :class:`_NotClean`."""
        tables = self.api.tables
        # the tables' plain dicts when they are UserDicts (a lookup through the mapping
        # ABC costs more than the rest)
        ports = getattr(tables["Port"].rows, "data", tables["Port"].rows)
        ifaces = getattr(tables["Interface"].rows, "data", tables["Interface"].rows)
        out: dict[str, int] = {}
        for br in list(tables["Bridge"].rows.values()):
            if _raw(br, "name") != [bridge]:
                continue
            for pu in _raw(br, "ports"):
                port = ports.get(pu)
                for iu in _raw(port, "interfaces") if port is not None else ():
                    iface = ifaces.get(iu)
                    if iface is None:
                        continue
                    no = _raw(iface, "ofport")
                    if no and no[0] > 0:
                        out[_raw(iface, "name")[0]] = int(no[0])
        return out

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
