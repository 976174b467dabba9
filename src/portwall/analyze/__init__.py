"""Analysis over the IR: the evaluator (one verdict definition for everyone), trace and audit."""

from portwall.analyze.evaluate import (
    DirectionResult,
    HopResult,
    Packet,
    PlanIndex,
    StepResult,
    evaluate_direction,
    evaluate_hop,
    match_packet,
    plan_index,
    spoof_entry_for,
)

__all__ = [
    "DirectionResult",
    "HopResult",
    "Packet",
    "PlanIndex",
    "StepResult",
    "evaluate_direction",
    "evaluate_hop",
    "match_packet",
    "plan_index",
    "spoof_entry_for",
]
