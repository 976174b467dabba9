#!/usr/bin/env bash
# Installs everything portwall needs on a fresh Debian/Ubuntu machine (run as root):
# the kernel tools it drives, and a Python venv with portwall and its test tools.
# Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."

PKGS="iptables ipset conntrack nftables python3-nftables python3-venv python3-pip
      iproute2 ethtool tcpdump iputils-ping iputils-arping netcat-openbsd openvswitch-switch
      postgresql"
missing=""
for p in $PKGS; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
    echo "portwall setup: installing Debian packages:$missing"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    apt-get install -y -q --no-install-recommends $missing >/dev/null
fi

# The venv is made from Debian's python3 with system site-packages so that
# python3-nftables (libnftables bindings, not on PyPI) is importable.
PY=/usr/bin/python3
# Reinstall when pyproject.toml changed since the last install (a new dependency).
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
have=$(cat .venv/.portwall-deps 2>/dev/null || true)
if [ ! -x .venv/bin/python ] || [ "$want" != "$have" ] || \
        ! .venv/bin/python -c 'import portwall, pytest, nftables' 2>/dev/null; then
    echo "portwall setup: creating .venv and installing portwall[test]"
    "$PY" -m venv --system-site-packages .venv
    .venv/bin/pip install -q --upgrade pip
    .venv/bin/pip install -q -e '.[test]'
    echo "$want" > .venv/.portwall-deps
fi
echo "portwall setup: ready (.venv/bin/portwall)"
