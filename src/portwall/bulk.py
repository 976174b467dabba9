"""Helpers for the stages that build large object graphs (compile, render, audit)."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Callable, Iterator


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while building a large plan or ruleset.

    Both create hundreds of thousands of small acyclic objects (freed by reference counting
    anyway); each allocation burst triggers full collections that walk every live object,
    which doubled compile and render time at 10,000 ports."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


@contextlib.contextmanager
def cached_build(reset: Callable[[], None]) -> Iterator[None]:
    """One incremental build (:class:`~portwall.ir.compile.PlanCompiler`,
    :class:`~portwall.backends.iptables.render.IptablesRenderer`): GC paused, and on any failure the
    caches are dropped, so a half-updated cache is never reused."""
    with gc_paused():
        try:
            yield
        except BaseException:
            reset()
            raise
