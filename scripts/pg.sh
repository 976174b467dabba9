#!/usr/bin/env bash
# Runs a command against a throw-away PostgreSQL on loopback, removed afterwards:
#   scripts/pg.sh .venv/bin/portwall server --admin-token T --db '$PORTWALL_PG_URL'
# The URL is in $PORTWALL_PG_URL for the command (a fresh database of a fresh cluster).
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python - "$@" <<'PY'
import os, subprocess, sys
from portwall.store.pgtemp import TempPostgres, unavailable
why = unavailable()
if why:
    sys.exit(f"pg.sh: {why}")
with TempPostgres() as pg:
    url = pg.create_database()
    env = {**os.environ, "PORTWALL_PG_URL": url}
    argv = [a.replace("$PORTWALL_PG_URL", url) for a in sys.argv[1:]]
    print(f"pg.sh: {url}", file=sys.stderr)
    sys.exit(subprocess.call(argv, env=env) if argv else 0)
PY
