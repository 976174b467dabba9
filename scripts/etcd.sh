#!/usr/bin/env bash
# etcd for portwall on loopback (Debian's etcd 3.4).
#   scripts/etcd.sh install                 apt-get install etcd-server etcd-client if missing
#   scripts/etcd.sh start [-n 1|3]          start a cluster on free 127.0.0.1 ports, data in a
#                                           temp dir; prints its store URL and its directory
#   scripts/etcd.sh stop DIR                stop that cluster and remove its directory
#   scripts/etcd.sh run [-n 1|3] CMD...     start, run CMD with $PORTWALL_ETCD_URL, always stop
# e.g.  scripts/etcd.sh run -n 3 .venv/bin/portwall server --db '$PORTWALL_ETCD_URL' ...
set -euo pipefail
cd "$(dirname "$0")/.."
say() { printf '\033[1metcd.sh:\033[0m %s\n' "$*" >&2; }

install() {
    if command -v etcd >/dev/null && command -v etcdctl >/dev/null; then
        say "etcd already installed ($(etcd --version | head -1))"
        return
    fi
    AS_ROOT=()
    [ "$(id -u)" -eq 0 ] || AS_ROOT=(sudo)
    say "[1/2] apt-get update"
    "${AS_ROOT[@]}" apt-get update
    say "[2/2] apt-get install etcd-server etcd-client (each package shown as it is set up)"
    "${AS_ROOT[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y \
        --no-install-recommends -o Dpkg::Progress-Fancy=0 etcd-server etcd-client
    # Debian enables a system etcd on 2379; portwall starts its own clusters instead.
    if command -v systemctl >/dev/null && systemctl is-active --quiet etcd 2>/dev/null; then
        "${AS_ROOT[@]}" systemctl disable --now etcd || true
    fi
    say "installed $(etcd --version | head -1)"
}

members=1
cmd=${1:-}
[ -n "$cmd" ] || { sed -n 2,9p "$0"; exit 2; }
shift
if [ "${1:-}" = "-n" ]; then members=$2; shift 2; fi
PY=.venv/bin/python
[ -x "$PY" ] || PY=python3

case "$cmd" in
install) install ;;
start)
    command -v etcd >/dev/null || install
    exec env PYTHONPATH=src "$PY" - "$members" <<'PY'
import sys
from portwall.store.etcdtemp import TempEtcd, detach
c = TempEtcd(int(sys.argv[1]))
try:
    c.start()
except BaseException:
    c.remove()
    raise
state = detach(c)
print(f"etcd.sh: {c.n} member(s) up, data in {c.dir}", file=sys.stderr)
print(f"etcd.sh: stop with: bash scripts/etcd.sh stop {c.dir}", file=sys.stderr)
print(c.url())
print(c.dir)
PY
    ;;
stop)
    exec env PYTHONPATH=src "$PY" -c '
import sys; from pathlib import Path
from portwall.store.etcdtemp import stop_dir
print("etcd.sh: stopped pids", *stop_dir(Path(sys.argv[1])), file=sys.stderr)' "$1"
    ;;
run)
    command -v etcd >/dev/null || install
    exec env PYTHONPATH=src "$PY" - "$members" "$@" <<'PY'
import os, subprocess, sys
from portwall.store.etcdtemp import TempEtcd
with TempEtcd(int(sys.argv[1])) as c:
    url = c.url()
    print(f"etcd.sh: {url}", file=sys.stderr)
    argv = [a.replace("$PORTWALL_ETCD_URL", url) for a in sys.argv[2:]]
    env = {**os.environ, "PORTWALL_ETCD_URL": url}
    rc = subprocess.call(argv, env=env) if argv else 0
sys.exit(rc)
PY
    ;;
*) say "unknown command '$cmd'"; sed -n 2,9p "$0"; exit 2 ;;
esac
