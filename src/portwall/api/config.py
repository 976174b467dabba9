"""Server and agent configuration: a TOML file, overridden by flags and the environment.

```toml
[server]
port = 9696
db = "sqlite:////var/lib/portwall/portwall.db"
admin_token = "..."            # or PORTWALL_ADMIN_TOKEN, or --admin-token

[projects.demo]                # a project and the tokens that act as it
tokens = ["demo-secret"]

[agent]
host = "compute1"
backend = "nftables"            # or iptables, ovs (default: portwall.backends.DEFAULT)
netns = "pw-host"              # namespace to enforce in (default: the agent's own)
resync_interval = 30
metrics_port = 9697
```
There is no default token: without an admin token or project tokens every request is 401.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Config:
    port: int = 9696
    bind: str = "127.0.0.1"
    db: str = "sqlite:///portwall.db"
    admin_token: str | None = None
    #: token -> project id
    project_tokens: dict[str, str] = field(default_factory=dict)
    agent: dict[str, Any] = field(default_factory=dict)


def load(path: str | Path | None = None, **overrides: Any) -> Config:
    """The configuration from ``path`` (optional), then ``overrides`` that are not None,
    then ``PORTWALL_ADMIN_TOKEN`` when no admin token was set otherwise."""
    cfg = Config()
    if path is not None:
        data = tomllib.loads(Path(path).read_text())
        server = data.get("server", {})
        for k in ("port", "bind", "db", "admin_token"):
            if k in server:
                setattr(cfg, k, server[k])
        for project, spec in data.get("projects", {}).items():
            for tok in spec.get("tokens", []):
                cfg.project_tokens[str(tok)] = str(spec.get("id", project))
        cfg.agent = dict(data.get("agent", {}))
    for k, v in overrides.items():
        if v is not None:
            setattr(cfg, k, v)
    if not cfg.admin_token:
        cfg.admin_token = os.environ.get("PORTWALL_ADMIN_TOKEN") or None
    return cfg
