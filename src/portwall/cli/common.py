"""Helpers shared by the command modules: loading a file and reporting errors."""

from __future__ import annotations

import sys
from typing import NoReturn

import click

from portwall.model.errors import PortwallError
from portwall.topology import Topology, load_topology


def fail(message: str, code: int = 2) -> NoReturn:
    click.secho(f"error: {message}", fg="red", err=True)
    sys.exit(code)


def load_or_exit(path: str) -> Topology:
    """Load a topology file, or print the error (file:line: field: reason) and exit 2."""
    try:
        return load_topology(path)
    except PortwallError as e:
        fail(str(e))
