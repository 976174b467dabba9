"""The ``portwall`` command. Each command group lives in its own module next to this one."""

from __future__ import annotations

import click

from portwall import __version__
from portwall.cli.agent import agent_cmd
from portwall.cli.analyze import audit_cmd, trace_cmd
from portwall.cli.core import render_cmd, validate_cmd
from portwall.cli.demo import demo_cmd
from portwall.cli.host import apply_cmd, remove_cmd
from portwall.cli.io import export_cmd, import_cmd
from portwall.cli.lab import lab_group
from portwall.cli.server import server_cmd


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="portwall")
def main() -> None:
    """portwall: Neutron-style security groups, address pairs and port security,
    enforced on a Linux host and explained.

    \b
    The pipeline every command shares:
      model (your topology file, validated like Neutron's API)
        -> compile (a per-host plan: ports, address sets, ordered rules)
        -> render (a backend: nftables by default, iptables, ovs)
        -> apply (atomic, incremental, only what portwall owns)
    trace and audit evaluate the same plan the renderers consume.

    Start with:  portwall validate examples/seed000-router-vm.yaml
    """


main.add_command(validate_cmd)
main.add_command(render_cmd)
main.add_command(trace_cmd)
main.add_command(audit_cmd)
main.add_command(lab_group)
main.add_command(demo_cmd)
main.add_command(apply_cmd)
main.add_command(remove_cmd)
main.add_command(server_cmd)
main.add_command(agent_cmd)
main.add_command(import_cmd)
main.add_command(export_cmd)
