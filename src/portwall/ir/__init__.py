"""Stage 2 of the spine: the intermediate representation and the compiler that builds it."""

from portwall.ir.compile import compile_plan, compile_rule
from portwall.ir.types import (
    Action,
    AddressSet,
    CtState,
    HostPlan,
    Jump,
    Match,
    Origin,
    OriginKind,
    PortPlan,
    PortRange,
    Rule,
    RuleSet,
    SetMember,
    SetRef,
    SpoofCheck,
    SpoofEntry,
    Step,
)

__all__ = [
    "Action",
    "AddressSet",
    "CtState",
    "HostPlan",
    "Jump",
    "Match",
    "Origin",
    "OriginKind",
    "PortPlan",
    "PortRange",
    "Rule",
    "RuleSet",
    "SetMember",
    "SetRef",
    "SpoofCheck",
    "SpoofEntry",
    "Step",
    "compile_plan",
    "compile_rule",
]
