#!/usr/bin/env bash
# Start a throw-away PostgreSQL server for the multi-machine tests and print the URL to use.
# Its password holds '{', '%' and '@' on purpose: no output may ever show it.
set -euo pipefail
if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
  (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql) >&2
fi
bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
dir=$(mktemp -d /tmp/sweeper-pg.XXXXXX)
port=${SWEEPER_PG_PORT:-55432}
as_postgres() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
if [ "$(id -u)" = 0 ]; then chown postgres "$dir"; fi
as_postgres "$bin/initdb" -D "$dir/data" -U postgres --auth-local=trust --auth-host=scram-sha-256 >&2
as_postgres "$bin/pg_ctl" -D "$dir/data" -o "-p $port -k $dir -c listen_addresses=127.0.0.1" \
  -l "$dir/log" -w start >&2
as_postgres "$bin/psql" -h "$dir" -p "$port" -U postgres -q -c \
  "CREATE ROLE sweeper LOGIN PASSWORD 'p{a%ss@w0rd'" -c "CREATE DATABASE sweeper_test OWNER sweeper" >&2
echo "$dir" > /tmp/sweeper-pg.dir
echo "postgresql://sweeper:p%7Ba%25ss%40w0rd@127.0.0.1:$port/sweeper_test"
