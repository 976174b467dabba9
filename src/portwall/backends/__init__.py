"""Dataplane backends, chosen by name: ``get("nftables").render(plan)``.

Each backend is a package here exposing ``BACKEND: Backend`` (see :mod:`.base`). The
registry maps names to module paths and imports lazily, so a machine without Open vSwitch
can still use nftables, and adding a backend is one line here plus its own package.
"""

from __future__ import annotations

import importlib

from portwall.backends.base import (
    Applier,
    ApplyError,
    ApplyReport,
    Backend,
    Renderer,
    Ruleset,
)

#: name -> module that defines ``BACKEND``. Order is the order shown to users.
REGISTRY: dict[str, str] = {
    "iptables": "portwall.backends.iptables",
    "nftables": "portwall.backends.nftables",
    "ovs": "portwall.backends.ovs",
}

#: The backend used when none is named: the one place every default (CLI flags, the
#: agent, the lab, ``render``) derives from. ``--backend iptables`` still selects iptables.
DEFAULT = "nftables"


class UnknownBackend(ValueError):
    def __init__(self, name: str) -> None:
        super().__init__(f"unknown backend '{name}' (choose from: {', '.join(REGISTRY)})")


def names() -> list[str]:
    return list(REGISTRY)


def get(name: str | None = None) -> Backend:
    """The backend called ``name`` (the default one when None)."""
    key = name or DEFAULT
    if key not in REGISTRY:
        raise UnknownBackend(key)
    backend: Backend = importlib.import_module(REGISTRY[key]).BACKEND
    return backend


__all__ = ["DEFAULT", "REGISTRY", "Applier", "ApplyError", "ApplyReport", "Backend",
           "Renderer", "Ruleset", "UnknownBackend", "get", "names"]
