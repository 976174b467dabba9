"""What an apply did, and how it failed."""

from __future__ import annotations

from dataclasses import dataclass, field

from portwall.ir.types import Origin
from portwall.model.errors import PortwallError


@dataclass
class ApplyReport:
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


class ApplyError(PortwallError):
    """The kernel refused part of a ruleset. Names the failing line, its rule id (the
    comment portwall wrote) and, when the plan was given, the resource behind it."""

    status = 500
    neutron_type = "ApplyError"

    def __init__(
        self,
        message: str,
        *,
        command: str = "",
        line: str | None = None,
        line_no: int | None = None,
        chain: str | None = None,
        rid: str | None = None,
        origin: Origin | None = None,
        stderr: str = "",
        rolled_back: bool = False,
    ) -> None:
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
        self.command = command
        self.line = line
        self.line_no = line_no
        self.chain = chain
        self.rid = rid
        self.origin = origin
        self.stderr = stderr
        self.rolled_back = rolled_back
