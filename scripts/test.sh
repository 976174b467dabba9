#!/usr/bin/env bash
# Installs what portwall needs (Debian packages + .venv) and runs the whole suite:
# ruff, mypy, then pytest (unit and end-to-end tests in throw-away network namespaces).
# Run as root on Debian/Ubuntu. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
echo "== ruff";  .venv/bin/ruff check src tests bench
echo "== mypy";  .venv/bin/mypy
echo "== pytest"
set +e
.venv/bin/pytest -n 2 "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
    echo "pytest collected no tests: that is a failure" >&2
    exit 1
fi
exit "$rc"
