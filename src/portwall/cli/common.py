"""Helpers shared by the command modules: loading a file, reporting errors, and fitting
text for people into 100 columns (or the terminal, when narrower)."""

from __future__ import annotations

import json
import shutil
import sys
import textwrap
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NoReturn

import click

from portwall.model.errors import PortwallError
from portwall.topology import Topology, load_topology
from portwall.topology.spec import TopologyError, TopologyErrors

#: Output for people never gets wider than this.
MAX_WIDTH = 100


def width() -> int:
    """Columns to fill: the terminal's (``COLUMNS`` counts), never more than 100."""
    return max(40, min(MAX_WIDTH, shutil.get_terminal_size((MAX_WIDTH, 24)).columns))


def wrap(text: str, indent: str = "", first: str = "") -> str:
    """``text`` broken at spaces into lines of :func:`width`: the first line starts with
    ``first``, the others with ``indent`` (a hanging indent). Words are never split (ids
    and addresses stay whole)."""
    return textwrap.fill(text, width(), initial_indent=first,
                         subsequent_indent=indent, break_long_words=False,
                         break_on_hyphens=False)


def plural(n: int, word: str, many: str | None = None) -> str:
    """``1 finding``, ``2 findings``."""
    return f"{n} {word if n == 1 else (many or word + 's')}"


def short(rid: str) -> str:
    """The first 8 characters of an id: enough to tell resources apart on one screen."""
    return rid[:8]


@contextmanager
def progress(description: str, enabled: bool = True) -> Iterator[Callable[[str], None]]:
    """A spinner with elapsed time on stderr while long work runs (only on a terminal;
    stdout is left alone, so tables and JSON stay clean). Yields ``step(text)``, which shows
    where the work is ("VM 3/20 web-3") after the description."""
    if not enabled or not sys.stderr.isatty():
        yield lambda text: None
        return
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                  console=Console(stderr=True), transient=True, redirect_stdout=False,
                  redirect_stderr=False) as bar:
        task = bar.add_task(description, total=None)
        yield lambda text: bar.update(task, description=f"{description}: {text}")


def echo_json(doc: Any) -> None:
    click.echo(json.dumps(doc, indent=2))


def fail(message: str, code: int = 2) -> NoReturn:
    click.secho(wrap(f"error: {message}", "  "), fg="red", err=True)
    sys.exit(code)


def error_lines(err: TopologyError) -> str:
    """``file:line: field (subject)`` then the reason, indented and wrapped."""
    where = f"{err.path}:{err.line}" if err.line else err.path
    about = f" ({err.subject})" if err.subject else ""
    return wrap(f"{where}: {err.location}{about}", "    ") + "\n" + wrap(err.message, "    ", "    ")


def error_json(err: TopologyError) -> dict[str, Any]:
    return {"file": err.path, "line": err.line, "field": err.location, "subject": err.subject,
            "message": err.message, "type": err.neutron_type, "status": err.status}


def load_or_exit(path: str, as_json: bool = False) -> Topology:
    """Load a topology file, or print every error (file:line: field, then why) and exit 2."""
    try:
        return load_topology(path)
    except TopologyError as e:
        errors = e.errors if isinstance(e, TopologyErrors) else [e]
        if as_json:
            echo_json({"file": path, "valid": False, "errors": [error_json(x) for x in errors]})
            sys.exit(2)
        for x in errors:
            click.secho("error: " + error_lines(x), fg="red", err=True)
        if len(errors) > 1:
            click.secho(f"{plural(len(errors), 'error')} in {path}", fg="red", err=True)
        sys.exit(2)
    except PortwallError as e:
        fail(str(e))
