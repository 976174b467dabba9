"""The record of what a sandbox created, kept on disk so that ``lab down`` always works.

The state file is written *before* anything is created and rewritten after every change,
so a crash half-way through ``lab up`` still leaves a file naming every namespace that may
exist; ``lab down`` deletes those (a missing one is fine) and every interface inside them
goes with them. Nothing is ever created in the root namespace.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import secrets
from collections.abc import Iterator
from pathlib import Path

from pydantic import BaseModel, Field, ValidationError

#: Where state files live; tests and unprivileged dry runs may point it elsewhere.
STATE_DIR_ENV = "PORTWALL_LAB_STATE_DIR"
DEFAULT_STATE_DIR = "/run/portwall/lab"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class LabError(RuntimeError):
    """A sandbox operation that cannot proceed (unknown sandbox, name clash, bad file)."""


class PortState(BaseModel):
    """One plugged port: the VM-side interface and the host-side tap on its bridge."""

    id: str
    name: str
    ifname: str  # eth0, eth1, ... inside the VM
    device: str  # the tap (host end of the veth pair)
    bridge: str
    network_id: str
    mac: str
    addresses: list[str] = Field(default_factory=list)  # "ip/prefixlen", fixed IPs + VIPs


class RouteState(BaseModel):
    destination: str
    via: str


class VMState(BaseModel):
    name: str
    netns: str
    host: str = ""  # multi-host sandboxes: the compute host (binding:host_id) it runs on
    forward: bool = False
    gateway: str | None = None
    routes: list[RouteState] = Field(default_factory=list)
    ports: list[PortState] = Field(default_factory=list)


class HostState(BaseModel):
    """One compute host of a multi-host sandbox (:mod:`portwall.lab.multihost`)."""

    name: str  # the ports' binding:host_id
    netns: str
    underlay_ip: str  # its VXLAN endpoint on the underlay bridge
    agent_pid: int | None = None  # `portwall agent --host` enforcing it (store mode)
    agent_log: str = ""


class SandboxState(BaseModel):
    """Everything a sandbox owns. ``namespaces`` is the teardown list: it only grows
    before creation and shrinks after deletion, so it never misses a namespace."""

    name: str
    id: str
    topology: str
    host_netns: str
    #: the dataplane backend enforcing this sandbox (by name; always written by ``up``: a
    #: state file without it is from before backends had names, when all were iptables)
    backend: str = "iptables"
    namespaces: list[str] = Field(default_factory=list)
    bridges: list[str] = Field(default_factory=list)
    vms: dict[str, VMState] = Field(default_factory=dict)
    routers: dict[str, str] = Field(default_factory=dict)  # router namespace -> router id
    pids: dict[str, int] = Field(default_factory=dict)  # namespace -> helper (metadata) pid
    outside: str | None = None  # the outside namespace (lab.outside)
    outside_address: str | None = None
    floating: dict[str, str] = Field(default_factory=dict)  # floating IP -> VM behind it
    # Multi-host sandboxes only (empty otherwise): compute hosts by name, the underlay
    # namespace joining them, one VXLAN VNI per tenant network, the store agents follow.
    hosts: dict[str, HostState] = Field(default_factory=dict)
    underlay: str | None = None
    vnis: dict[str, int] = Field(default_factory=dict)
    store: str | None = None

    def vm(self, name: str) -> VMState:
        try:
            return self.vms[name]
        except KeyError:
            raise LabError(f"sandbox {self.name} has no VM '{name}' (VMs: "
                           f"{', '.join(sorted(self.vms)) or 'none'})") from None


def short_token() -> str:
    """A few random hex digits for names that must not collide across runs."""
    return secrets.token_hex(3)


def state_dir() -> Path:
    return Path(os.environ.get(STATE_DIR_ENV, DEFAULT_STATE_DIR))


def check_name(name: str) -> str:
    if not _NAME_RE.match(name):
        raise LabError(f"invalid sandbox name '{name}': use letters, digits, '.', '_' or '-'")
    return name


def state_path(name: str) -> Path:
    return state_dir() / f"{check_name(name)}.json"


def save(state: SandboxState) -> None:
    """Write atomically (temp file + rename): a crash never leaves a truncated record."""
    path = state_path(state.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(state.model_dump_json(indent=1))
    os.replace(tmp, path)


def load(name: str) -> SandboxState:
    path = state_path(name)
    try:
        return SandboxState.model_validate_json(path.read_text())
    except FileNotFoundError:
        raise LabError(f"no sandbox named '{name}' (see `portwall lab status`)") from None
    except ValidationError as e:
        raise LabError(f"state file {path} is damaged ({e.error_count()} errors): remove "
                       "the namespaces it names by hand (ip netns del) and the file") from None


def remove(name: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        state_path(name).unlink()
    with contextlib.suppress(FileNotFoundError):  # written by `lab up --server`
        (state_dir() / f"{check_name(name)}.server.yaml").unlink()


def names() -> list[str]:
    d = state_dir()
    if not d.is_dir():
        return []
    # routers keep a ``<name>.metadata.json`` beside the state: not a sandbox of its own
    return sorted(p.stem for p in d.glob("*.json") if not p.name.endswith(".metadata.json"))


@contextlib.contextmanager
def locked(name: str) -> Iterator[None]:
    """Serialise operations on one sandbox (two `lab apply` runs must not interleave)."""
    d = state_dir()
    d.mkdir(parents=True, exist_ok=True)
    with open(d / f".{check_name(name)}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
