"""Where Neutron's driver (the peer to beat) lives, for the bench scripts.

The peer is at ``../shared/peer/neutron`` relative to the project root, or wherever
``PORTWALL_NEUTRON_PEER`` points; its venv (made by the peer's ``setup.sh``) is
``NEUTRON_PEER_VENV``, by default the peer README's location. Nothing here is absolute
except that documented default, so a checkout anywhere finds its peer.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_VENV = "/opt/neutron-peer-venv"  # the peer's README and setup.sh default


def _roots() -> list[Path]:
    """This checkout's root, then (for a ``git worktree`` elsewhere) the main checkout's."""
    roots = [ROOT]
    try:
        common = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--git-common-dir"],
                                capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        common = ""
    if common:
        roots.append((ROOT / common).resolve().parent)
    return roots


def peer_dir() -> Path:
    """The peer's directory (it may not exist: callers say so and skip the peer)."""
    env = os.environ.get("PORTWALL_NEUTRON_PEER")
    if env:
        return Path(env)
    found = [r / ".." / "shared" / "peer" / "neutron" for r in _roots()]
    return next((p.resolve() for p in found if p.exists()), found[0].resolve())


def peer_python() -> Path | None:
    """The peer venv's python, or None when the peer is not installed."""
    py = Path(os.environ.get("NEUTRON_PEER_VENV", DEFAULT_VENV)) / "bin" / "python"
    return py if py.exists() and (peer_dir() / "neutron_fw.py").exists() else None


def missing_reason() -> str:
    if not (peer_dir() / "neutron_fw.py").exists():
        return f"no peer at {peer_dir()} (set PORTWALL_NEUTRON_PEER)"
    return f"peer venv missing: run {peer_dir() / 'setup.sh'} (or set NEUTRON_PEER_VENV)"


def gen_ports(n: int, out: Path) -> Path:
    """The peer's own workload file of ``n`` ports (its ``gen_ports.py``)."""
    subprocess.run([sys.executable, str(peer_dir() / "gen_ports.py"), str(n), "-o", str(out)],
                   check=True, capture_output=True)
    return out
