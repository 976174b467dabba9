"""What an apply did, and how it failed."""

from __future__ import annotations

from dataclasses import dataclass, field

from portwall.backends.base import ApplyError


@dataclass
class IptablesReport:
    """Counts of what one :meth:`IptablesApplier.apply` changed in the kernel.

    ``sets_updated`` counts existing sets whose members changed, in place or by a swap
    (``sets_swapped``); ``noop`` means nothing was written at all (no write process ran).
    """

    chains_written: int = 0
    chains_deleted: int = 0
    hooks_fixed: int = 0
    sets_created: int = 0
    sets_updated: int = 0
    sets_deleted: int = 0
    set_entries_added: int = 0
    set_entries_removed: int = 0
    conntrack_deleted: int = 0
    seconds: float = 0.0
    noop: bool = True
    #: (family, table, chain) of every chain created, rewritten or edited in place
    written: list[tuple[int, str, str]] = field(default_factory=list)
    deleted: list[tuple[int, str, str]] = field(default_factory=list)
    sets_swapped: int = 0
    l2_added: int = 0  # bridge-table elements added / removed (l2.py)
    l2_removed: int = 0
    rules_written: int = 0  # lines in the iptables-restore input(s)
    conntrack_checked: int = 0  # entries evaluated against the new plan
    #: True when the kernel state was taken from the cache (nf_tables generation unchanged)
    cached_read: bool = False
    write_commands: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def summary(self) -> str:
        if self.noop:
            return f"in sync, nothing written ({self.seconds * 1000:.1f} ms)"
        return (
            f"{self.chains_written} chains written, {self.chains_deleted} deleted, "
            f"{self.hooks_fixed} hooks fixed; sets +{self.sets_created} ~{self.sets_updated}"
            f" -{self.sets_deleted} (entries +{self.set_entries_added}"
            f" -{self.set_entries_removed}); {self.conntrack_deleted} connections cut;"
            f" {self.seconds * 1000:.1f} ms"
        )


__all__ = ["ApplyError", "IptablesReport"]
