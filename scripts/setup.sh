#!/usr/bin/env bash
# Installs everything portwall needs on a fresh Debian/Ubuntu machine: the kernel tools it
# drives (apt, with its progress shown) and a Python venv in .venv with portwall and its
# test tools. Run as root (sudo is used only when not root and present). Idempotent: a
# second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { echo "portwall setup: $*"; }

# root runs apt itself (a fresh Debian has no sudo); anyone else needs sudo
if [ "$(id -u)" -eq 0 ]; then
    AS_ROOT=()
elif command -v sudo >/dev/null 2>&1; then
    AS_ROOT=(sudo)
else
    say "not root and no sudo: run as root, e.g.  su -c 'bash scripts/setup.sh'" >&2
    exit 1
fi

PKGS="iptables ipset conntrack nftables python3-nftables python3-venv python3-pip
      iproute2 ethtool tcpdump iputils-ping iputils-arping netcat-openbsd openvswitch-switch
      postgresql etcd-server etcd-client"
missing=""
for p in $PKGS; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
    n=$(echo $missing | wc -w)
    say "installing Debian packages ($n):$missing"
    export DEBIAN_FRONTEND=noninteractive
    say "[1/2] apt-get update"
    "${AS_ROOT[@]}" apt-get update
    say "[2/2] apt-get install (each package is shown as it is fetched and set up)"
    # shellcheck disable=SC2086
    "${AS_ROOT[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y --no-install-recommends -o Dpkg::Progress-Fancy=0 $missing
    say "Debian packages installed"
else
    say "Debian packages already installed"
fi

# The venv is made from Debian's python3 with system site-packages so that
# python3-nftables (libnftables bindings, not on PyPI) is importable.
PY=/usr/bin/python3
# Reinstall when pyproject.toml changed since the last install (a new dependency).
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
have=$(cat .venv/.portwall-deps 2>/dev/null || true)
if [ ! -x .venv/bin/python ] || [ "$want" != "$have" ] || \
        ! .venv/bin/python -c 'import portwall, pytest, nftables' 2>/dev/null; then
    say "creating .venv and installing portwall[test] (pip shows each package)"
    "$PY" -m venv --system-site-packages .venv
    .venv/bin/pip install -q --upgrade pip
    .venv/bin/pip install --progress-bar off -e '.[test]' 2>&1 \
        | grep -E '^(Collecting|Successfully|ERROR)' || true
    .venv/bin/python -c 'import portwall, pytest' || { say "pip install failed" >&2; exit 1; }
    echo "$want" > .venv/.portwall-deps
fi
say "ready (.venv/bin/portwall)"
