"""Configuration: TOML file, flags, PORTWALL_ADMIN_TOKEN; no token means no server."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from portwall.api import config
from portwall.cli import main


def test_toml_flags_and_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "pw.toml"
    f.write_text('[server]\nport = 9000\ndb = "sqlite:///x.db"\n'
                 '[projects.demo]\ntokens = ["t1", "t2"]\n'
                 '[projects.web]\nid = "abc"\ntokens = ["t3"]\n'
                 '[agent]\nhost = "c1"\nresync_interval = 5\n')
    monkeypatch.setenv("PORTWALL_ADMIN_TOKEN", "from-env")
    cfg = config.load(f, port=9100)
    assert cfg.port == 9100 and cfg.db == "sqlite:///x.db"
    assert cfg.project_tokens == {"t1": "demo", "t2": "demo", "t3": "abc"}
    assert cfg.admin_token == "from-env"
    assert cfg.agent == {"host": "c1", "resync_interval": 5}
    assert config.load(f, admin_token="flag").admin_token == "flag"


def test_server_refuses_to_start_without_any_token(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PORTWALL_ADMIN_TOKEN", raising=False)
    r = CliRunner().invoke(main, ["server", "--db", f"sqlite:///{tmp_path}/x.db"])
    assert r.exit_code == 2
    assert "no token configured" in r.output
