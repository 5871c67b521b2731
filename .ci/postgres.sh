#!/usr/bin/env bash
# A throw-away PostgreSQL server on 127.0.0.1 for the parallel-sweep test (tests/test_sweep.py).
# Installs Debian's postgresql when it is missing, starts a cluster in $PGTEST_DIR on $PGTEST_PORT
# (idempotent: a running one is reused) and prints its URL on stdout; everything else on stderr.
set -euo pipefail
DIR=${PGTEST_DIR:-/tmp/cxrlab-pgtest}
PORT=${PGTEST_PORT:-55432}
DB=optuna_test

find_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1; }
BIN=$(find_bin)
if [ -z "$BIN" ] || [ ! -x "$BIN/postgres" ]; then
  source "$(dirname "$0")/apt.sh"
  apt_install postgresql
  BIN=$(find_bin)
fi

# the server refuses to run as root: use the postgres account the package creates
as_pg() {
  if [ "$(id -u)" = 0 ]; then
    su postgres -s /bin/bash -c "$*"
  else
    bash -c "$*"
  fi
}

if [ ! -f "$DIR/PG_VERSION" ]; then
  mkdir -p "$DIR"
  [ "$(id -u)" = 0 ] && chown postgres "$DIR"
  # trust on loopback only: a test server that lives for one CI run
  as_pg "'$BIN/initdb' -D '$DIR' -U postgres -A trust --no-sync" >&2
fi
if ! as_pg "'$BIN/pg_ctl' -D '$DIR' status" >/dev/null 2>&1; then
  as_pg "'$BIN/pg_ctl' -D '$DIR' -w -t 60 -l '$DIR/server.log' \
    -o \"-c listen_addresses=127.0.0.1 -p $PORT -k /tmp -c fsync=off\" start" >&2
fi
if ! as_pg "'$BIN/psql' -h 127.0.0.1 -p $PORT -U postgres -tAc \"SELECT 1 FROM pg_database WHERE datname='$DB'\"" | grep -q 1; then
  as_pg "'$BIN/createdb' -h 127.0.0.1 -p $PORT -U postgres $DB" >&2
fi
echo "postgresql://postgres@127.0.0.1:$PORT/$DB"
