"""``lab up`` reports where it is (VM i/n, routers, policy) through a step callback, which
the CLI shows beside its spinner."""

from __future__ import annotations

from pathlib import Path

from portwall.cli.common import progress
from portwall.lab import netns
from portwall.lab.sandbox import Sandbox
from portwall.topology import load_topology

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_sandbox_up_reports_each_vm_then_the_policy() -> None:
    topo = load_topology(EXAMPLES / "seed002-web-db.yaml")
    steps: list[str] = []
    box, _ = Sandbox.up(topo, netns.unique_name("pwt-prog"), on_step=steps.append)
    try:
        n = len(topo.lab.vms)
        assert steps[:n] == [f"VM {i}/{n} {vm}" for i, vm in enumerate(topo.lab.vms, 1)]
        assert steps[-1].startswith("applying the policy")
    finally:
        box.down()


def test_progress_off_a_terminal_is_silent_but_still_takes_steps() -> None:
    with progress("work") as step:  # pytest's stderr is not a terminal
        step("half way")  # must not fail nor print
