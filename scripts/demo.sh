#!/usr/bin/env bash
# Installs what portwall needs (Debian packages + .venv) and runs the main job: a demo of
# the seed scenarios with real packets in a throw-away sandbox of network namespaces.
# Run as root on Debian/Ubuntu. The root namespace's firewall and interfaces are not touched.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/portwall demo "$@"
