"""``portwall server``: the Neutron v2.0 API (and, with ``--with-agent``, this host's agent)."""

from __future__ import annotations

import click

from portwall import backends
from portwall.cli.common import fail


@click.command("server")
@click.option("--config", "config_file", type=click.Path(dir_okay=False, exists=True),
              default=None, help="TOML configuration (see docs/server.md).")
@click.option("--port", type=int, default=None, help="TCP port [default: 9696].")
@click.option("--bind", default=None, help="Address to listen on [default: 127.0.0.1].")
@click.option("--db", default=None,
              help="Store URL: sqlite:///PATH (default sqlite:///portwall.db) or postgresql://...")
@click.option("--admin-token", default=None, envvar="PORTWALL_ADMIN_TOKEN",
              help="Token that acts as admin (also PORTWALL_ADMIN_TOKEN).")
@click.option("--with-agent", is_flag=True, help="Also run this host's agent in-process.")
@click.option("--host", "agent_host", default=None, help="Agent: this host's binding:host_id.")
@click.option("--backend", default=None, help=f"Agent: dataplane backend [default: {backends.DEFAULT}].")
@click.option("--netns", default=None, help="Agent: namespace to enforce in.")
def server_cmd(config_file: str | None, port: int | None, bind: str | None, db: str | None,
               admin_token: str | None, with_agent: bool, agent_host: str | None,
               backend: str | None, netns: str | None) -> None:
    """Serve Neutron's v2.0 API (networks, subnets, ports, security groups and rules,
    routers, floating IPs, FWaaS v2) for the openstack client and SDK.

    \b
    portwall server --admin-token T --db sqlite:///var/lib/portwall/pw.db
    openstack --os-auth-type admin_token --os-token T \\
              --os-endpoint http://127.0.0.1:9696 network list
    """
    import uvicorn

    from portwall.api import config as cfgmod
    from portwall.api.app import create_app

    cfg = cfgmod.load(config_file, port=port, bind=bind, db=db, admin_token=admin_token)
    if not cfg.admin_token and not cfg.project_tokens:
        fail("no token configured: pass --admin-token, set PORTWALL_ADMIN_TOKEN, or list"
             " project tokens in --config (there is no default token)")
    try:
        app = create_app(cfg)
    except ValueError as e:
        fail(str(e))
    agent = None
    if with_agent:
        from portwall.agent.runner import Agent, AgentOptions

        opts = AgentOptions.from_config(cfg.agent, host=agent_host, backend=backend,
                                        netns=netns)
        agent = Agent(app.state.server.store, opts, wake=app.state.server.cond)
        agent.start_thread()
    click.echo(f"portwall server on http://{cfg.bind}:{cfg.port} (store {cfg.db})", err=True)
    try:
        uvicorn.run(app, host=cfg.bind, port=cfg.port, log_level="warning")
    finally:
        if agent is not None:
            agent.stop()
