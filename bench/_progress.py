"""Progress lines for long benchmarks, on stderr (stdout keeps only the result tables).

rich's ``Console.log`` stamps each line with the time, so a person watching a run of several
minutes sees which phase it is in and how long each took."""

from __future__ import annotations

from rich.console import Console

_err = Console(stderr=True, highlight=False)


def step(message: str) -> None:
    """One line: ``[hh:mm:ss] message``."""
    _err.log(message, _stack_offset=2)
