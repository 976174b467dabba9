"""What a loaded topology file is: the model, the lab's VMs and expectations, and its errors."""

from __future__ import annotations

from dataclasses import dataclass, field

from portwall.model.errors import PortwallError
from portwall.model.store import Model


class TopologyError(PortwallError):
    """A problem in a topology file, with where it is.

    ``location`` is the dotted path of the offending value (``ports[2].fixed_ips[0]``),
    ``line`` its line in ``path``; ``cause`` is the model's own error when the model
    refused the resource, whose HTTP status and Neutron type this error then carries.
    """

    status = 400
    neutron_type = "InvalidInput"

    def __init__(self, message: str, *, path: str, line: int | None, location: str,
                 cause: PortwallError | None = None, subject: str = ""):
        super().__init__(message, field=location)
        self.path, self.line, self.location, self.cause = path, line, location, cause
        self.subject = subject  # e.g. "port 'vm0-net1'": what a person calls the entry
        if cause is not None:
            self.status, self.neutron_type = cause.status, cause.neutron_type

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line else self.path
        about = f" ({self.subject})" if self.subject else ""
        return f"{where}: {self.location}{about}: {self.message}"


class TopologyErrors(TopologyError):
    """Every problem found in one file, in file order. Behaves as the first one (its line,
    location, status) for callers that handle a single error; ``errors`` holds them all."""

    def __init__(self, errors: list[TopologyError]):
        first = errors[0]
        super().__init__(first.message, path=first.path, line=first.line,
                         location=first.location, cause=first.cause, subject=first.subject)
        self.errors = errors

    def __str__(self) -> str:
        return "\n".join(TopologyError.__str__(e) for e in self.errors)


@dataclass
class Route:
    destination: str
    via: str


@dataclass
class VM:
    """A lab machine: a network namespace owning one or more ports."""

    name: str
    ports: list[str]  # port ids, in interface order (eth0, eth1, ...)
    forward: bool = False
    gateway: str | None = None
    routes: list[Route] = field(default_factory=list)
    #: the compute host (binding:host_id) of a multi-host lab; None: the lab picks one
    host: str | None = None


@dataclass
class Expect:
    """A connectivity expectation checked with real traffic by ``portwall lab check``."""

    src: str  # VM name
    dst: str  # VM name or IP address
    proto: str  # icmp | tcp | udp
    port: int | None
    verdict: str  # allow | deny
    line: int | None = None

    def describe(self) -> str:
        what = self.proto + (f"/{self.port}" if self.port is not None else "")
        return f"{self.src} -> {self.dst} {what}"


@dataclass
class Outside:
    """``lab.outside``: a host standing for the world beyond an external network.

    ``address`` lies outside every subnet; the host also answers ``gateway`` (the external
    subnet's gateway IP, the routers' default next hop) on ``network_id``."""

    network_id: str
    address: str
    gateway: str
    prefixlen: int


@dataclass
class LabSpec:
    vms: dict[str, VM] = field(default_factory=dict)
    expect: list[Expect] = field(default_factory=list)
    outside: Outside | None = None


@dataclass
class Topology:
    model: Model
    lab: LabSpec
    path: str
    project: str = "default"
    description: str = ""
    #: id -> where the file declares it (``ports[2]``): what the user wrote. Resources
    #: the model made by itself (the project's ``default`` group, a group's automatic
    #: egress rules) are absent, so audit and validate can leave them out.
    declared: dict[str, str] = field(default_factory=dict)

    def written(self, resource_id: str) -> bool:
        """True if the file declares this resource (False for automatic ones)."""
        return resource_id in self.declared

    def vm_of_port(self, port_id: str) -> VM | None:
        for vm in self.lab.vms.values():
            if port_id in vm.ports:
                return vm
        return None
