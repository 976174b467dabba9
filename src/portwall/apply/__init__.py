"""Make a kernel match a rendered ruleset: atomic, incremental, owning only ``pw-`` state."""

from portwall.apply.iptables import IptablesApplier
from portwall.apply.report import ApplyError, ApplyReport

__all__ = ["ApplyError", "ApplyReport", "IptablesApplier"]
