"""``portwall agent``: enforce this host's ports from the server's (or store's) feed."""

from __future__ import annotations

import signal
from typing import Any

import click

from portwall import backends
from portwall.cli.common import fail


@click.command("agent")
@click.option("--config", "config_file", type=click.Path(dir_okay=False, exists=True),
              default=None, help="TOML configuration ([agent] section).")
@click.option("--host", default=None, help="This host's name (ports' binding:host_id).")
@click.option("--server", default=None, help="Follow a portwall server: http://HOST:9696.")
@click.option("--token", default=None, envvar="PORTWALL_ADMIN_TOKEN",
              help="Admin token for --server (also PORTWALL_ADMIN_TOKEN).")
@click.option("--db", default=None, help="Or read the store directly: sqlite:///..., postgresql://... or "
              "etcd://H:P[,H:P...] (this host's view only).")
@click.option("--backend", default=None, help=f"Dataplane backend [default: {backends.DEFAULT}].")
@click.option("--netns", default=None, help="Network namespace to enforce in [default: own].")
@click.option("--resync-interval", type=float, default=None,
              help="Seconds between drift checks [default: 30].")
@click.option("--metrics-port", type=int, default=None,
              help="Serve Prometheus metrics on 127.0.0.1:PORT.")
def agent_cmd(config_file: str | None, host: str | None, server: str | None,
              token: str | None, db: str | None, backend: str | None, netns: str | None,
              resync_interval: float | None, metrics_port: int | None) -> None:
    """Follow the change feed and enforce the ports bound to --host.

    \b
    portwall agent --host compute1 --server http://127.0.0.1:9696 --token T
    portwall agent --host compute1 --db sqlite:///var/lib/portwall/pw.db
    portwall agent --host compute1 --db etcd://10.0.0.1:2379,10.0.0.2:2379,10.0.0.3:2379
    """
    from portwall.agent.runner import Agent, AgentOptions
    from portwall.api import config as cfgmod

    cfg = cfgmod.load(config_file)
    server = server or cfg.agent.get("server")
    db = db or cfg.agent.get("db") or (None if server else cfg.db)
    if bool(server) == bool(db):
        fail("give exactly one of --server URL or --db URL")
    opts = AgentOptions.from_config(cfg.agent, host=host, backend=backend, netns=netns,
                                    resync_interval=resync_interval,
                                    metrics_port=metrics_port)
    store: Any
    if server:
        from portwall.agent.httpstore import HttpStore

        tok = token or cfg.admin_token
        if not tok:
            fail("--server needs the admin token (--token or PORTWALL_ADMIN_TOKEN)")
        store = HttpStore(server, tok)
        store.wait = 10.0
        opts.poll_interval = 0.0
    else:
        from portwall.store import open_store

        store = open_store(db or "", host=opts.host)  # etcd: this host's view only
    agent = Agent(store, opts)
    signal.signal(signal.SIGTERM, lambda *_: agent._stop.set())
    click.echo(f"portwall agent: host {opts.host or '(all ports)'}, backend "
               f"{agent.backend.name}, namespace {opts.netns or '(own)'}", err=True)
    try:
        agent.run()
    except KeyboardInterrupt:
        pass
    finally:
        agent.stop()
        store.close()
