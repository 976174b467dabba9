"""The one small interface every dataplane backend implements.

A backend is one package under :mod:`portwall.backends` (``iptables``, ``nftables``, ``ovs``)
that turns the IR into kernel state. It is three things, nothing more:

* a :class:`Renderer` -- ``HostPlan -> Ruleset``; pure (no I/O), may keep caches between
  calls so that a small plan change re-renders only what changed;
* a :class:`Ruleset` -- the backend's own objects, which carry their provenance
  (``rid -> Origin`` for every rule/flow/element written), so an apply error or a drift line
  is explained in the user's terms without re-deriving anything;
* an :class:`Applier` -- makes one network namespace (or OVS bridge) match a ruleset:
  atomically, incrementally, owning only what portwall created.

Callers (lab, CLI, benchmarks, the agent) pick a backend by name through
:func:`portwall.backends.get` and never import a backend's modules directly. Adding a backend
adds a package and one line in the registry; it touches no other backend.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar, runtime_checkable

from portwall.ir.types import HostPlan, Origin
from portwall.model.errors import PortwallError

if TYPE_CHECKING:
    from portwall.ir.l3 import RouterPlan

R = TypeVar("R")


@dataclass
class ApplyReport:
    """What one :meth:`Applier.apply` changed, in backend-neutral counts.

    ``noop`` means nothing was written at all. ``changes`` holds backend-specific counters
    (``chains_written``, ``set_elements_added``, ``flows_added`` ...) under stable names so
    benchmarks and metrics can print them without knowing the backend.
    """

    backend: str
    noop: bool = True
    seconds: float = 0.0
    changes: dict[str, int] = field(default_factory=dict)
    conntrack_checked: int = 0  # entries evaluated against the new plan
    conntrack_deleted: int = 0  # connections the new plan no longer allows, cut
    timings: dict[str, float] = field(default_factory=dict)  # phase -> seconds
    write_commands: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    #: what was written ("~ ...") or removed ("- ..."), one short line per object, for people
    touched: list[str] = field(default_factory=list)
    #: the backend's own, richer report (tests and debugging may look inside; callers that
    #: want to stay backend-neutral use the fields above)
    native: Any = None

    def summary(self) -> str:
        if self.noop:
            return f"in sync, nothing written ({self.seconds * 1000:.1f} ms)"
        parts = [f"{v} {k.replace('_', ' ')}" for k, v in self.changes.items() if v]
        parts.append(f"{self.conntrack_deleted} connections cut")
        return f"{self.backend}: " + ", ".join(parts) + f"; {self.seconds * 1000:.1f} ms"


class ApplyError(PortwallError):
    """The kernel refused part of a ruleset; the previous state is still enforced.

    Names the failing line/flow, its rule id and, via the ruleset's provenance, the resource
    behind it."""

    status = 500
    neutron_type = "ApplyError"

    def __init__(self, message: str, *, command: str = "", line: str | None = None,
                 line_no: int | None = None, chain: str | None = None, rid: str | None = None,
                 origin: Origin | None = None, stderr: str = "",
                 rolled_back: bool = False) -> None:
        parts = [message]
        if line is not None:
            parts.append(f"line {line_no}: {line}" if line_no else f"line: {line}")
        if rid is not None:
            parts.append(f"rule id {rid}")
        if origin is not None:
            name = f" '{origin.resource_name}'" if origin.resource_name else ""
            detail = f" ({origin.detail})" if origin.detail else ""
            parts.append(f"from {origin.resource_type} {origin.resource_id}{name}{detail}")
        if stderr:
            parts.append(f"{command or 'kernel'} said: {stderr.strip()}")
        super().__init__("; ".join(parts), resource="apply")
        self.command, self.line, self.line_no, self.chain = command, line, line_no, chain
        self.rid, self.origin, self.stderr, self.rolled_back = rid, origin, stderr, rolled_back


@runtime_checkable
class Ruleset(Protocol):
    """A backend's rendered state for one host."""

    backend: str

    def provenance(self) -> Mapping[str, Origin]:
        """rid -> Origin for everything this ruleset writes (rules, spoof entries, flows)."""
        ...

    def counts(self) -> dict[str, int]:
        """Sizes a person or a benchmark wants to see: rules, chains, sets, elements, flows."""
        ...

    def sections(self) -> list[tuple[str, str]]:
        """(title, text) parts for ``portwall render``: each titled with how to load it."""
        ...


class Renderer(Protocol):
    """IR -> backend objects. Keep one per host to render incrementally."""

    def render(self, plan: HostPlan) -> Ruleset: ...


class Applier(Protocol):
    """Makes one namespace match a ruleset. Keep one per namespace (it caches kernel state).

    ``ruleset`` is typed ``Any`` because each applier takes only its own backend's Ruleset."""

    def apply(self, ruleset: Any, plan: HostPlan | None = None) -> ApplyReport:
        """Atomic and incremental; with ``plan``, cuts connections it no longer allows."""
        ...

    def drift(self, ruleset: Any) -> list[str]:
        """Human-readable differences between the kernel and ``ruleset`` ([] when in sync)."""
        ...

    def remove_all(self) -> None:
        """Remove everything portwall owns in the namespace; nothing else."""
        ...

    def close(self) -> None: ...

    def __enter__(self) -> Applier: ...

    def __exit__(self, *exc: object) -> None: ...


@dataclass(frozen=True)
class Backend:
    """A registered dataplane: its name, a one-line description and two factories."""

    name: str
    description: str
    renderer: Callable[[], Renderer]  # a fresh (incremental) renderer
    applier: Callable[[str | None], Applier]  # an applier for one namespace
    #: what the lab must build for this backend's ports: Linux bridges ("linux") or an
    #: Open vSwitch integration bridge ("ovs")
    bridge: str = "linux"

    def render(self, plan: HostPlan) -> Ruleset:
        """One-shot render (a fresh renderer, no cache)."""
        return self.renderer().render(plan)


class RouterRenderCache(Generic[R]):
    """Renders every router of a plan with a backend's ``render_router``, reusing a router's
    output while its plan is equal: one floating IP change re-renders one router. Each L3
    backend is this cache over its own render function."""

    def __init__(self, render_router: Callable[[RouterPlan], R]) -> None:
        self._render_router = render_router
        self._cache: dict[str, tuple[RouterPlan, R]] = {}

    def render(self, routers: Iterable[RouterPlan]) -> dict[str, R]:
        out: dict[str, R] = {}
        for r in routers:
            hit = self._cache.get(r.id)
            if hit is None or (hit[0] is not r and hit[0] != r):
                hit = self._cache[r.id] = (r, self._render_router(r))
            out[r.id] = hit[1]
        for rid in [k for k in self._cache if k not in out]:
            del self._cache[rid]
        return out
