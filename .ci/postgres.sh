#!/usr/bin/env bash
# A throwaway PostgreSQL server for the shared-study tests (tests/test_study_postgres.py): its own data folder in
# a temporary directory, a free loopback port, one role and database, stopped and deleted on exit.
#
#   source .ci/postgres.sh          # start it; exports EDGEPACK_TEST_POSTGRES_URL; stops when the shell exits
#                                   # (or call edgepack_postgres_stop)
#   bash .ci/postgres.sh CMD ...    # start it, run CMD with the URL exported, stop it
#
# Needs PostgreSQL's server binaries (Debian: apt-get install postgresql). PostgreSQL refuses to run as root:
# as root the server runs as the `postgres` system user the Debian package creates.

_edgepack_pg_bindir() {
  local dir
  if command -v pg_config >/dev/null && dir=$(pg_config --bindir 2>/dev/null) && [ -x "$dir/initdb" ]; then
    echo "$dir"
    return
  fi
  # Debian keeps initdb off PATH, in /usr/lib/postgresql/<version>/bin: take the newest.
  dir=$(find /usr/lib/postgresql -maxdepth 3 -path '*/bin/initdb' 2>/dev/null | sort -V | tail -n 1)
  if [ -n "$dir" ]; then
    dirname "$dir"
  elif command -v initdb >/dev/null; then
    dirname "$(command -v initdb)"
  else
    echo "postgres.sh: no PostgreSQL server binaries (initdb) found; install them (Debian: apt-get install postgresql)" >&2
    return 1
  fi
}

_edgepack_pg_free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

edgepack_postgres_stop() {
  [ -n "${EDGEPACK_PG_DIR:-}" ] || return 0
  if [ -f "$EDGEPACK_PG_DIR/data/postmaster.pid" ]; then
    "${EDGEPACK_PG_AS[@]}" "$EDGEPACK_PG_BIN/pg_ctl" -D "$EDGEPACK_PG_DIR/data" -m fast -w stop >/dev/null
  fi
  rm -rf "$EDGEPACK_PG_DIR"
  unset EDGEPACK_PG_DIR EDGEPACK_PG_BIN EDGEPACK_PG_AS EDGEPACK_TEST_POSTGRES_URL
}

_edgepack_pg_chain_exit_trap() {
  # Run edgepack_postgres_stop on exit, before whatever EXIT trap the shell already had.
  local previous=""
  if [ -n "$(trap -p EXIT)" ]; then
    eval "set -- $(trap -p EXIT)"  # trap -- 'COMMAND' EXIT
    previous=$3
  fi
  # shellcheck disable=SC2064  # expand $previous now
  trap "edgepack_postgres_stop; $previous" EXIT
}

edgepack_postgres_start() {
  local bin port dir
  if [ -n "${EDGEPACK_PG_DIR:-}" ]; then
    echo "postgres.sh: already running ($EDGEPACK_TEST_POSTGRES_URL)" >&2
    return 0
  fi
  bin=$(_edgepack_pg_bindir) || return 1
  port=$(_edgepack_pg_free_port) || return 1
  dir=$(mktemp -d "${TMPDIR:-/tmp}/edgepack-postgres.XXXXXX") || return 1
  EDGEPACK_PG_AS=()
  if [ "$(id -u)" -eq 0 ]; then
    EDGEPACK_PG_AS=(runuser -u postgres --)
    chown postgres: "$dir"
  fi
  EDGEPACK_PG_DIR=$dir EDGEPACK_PG_BIN=$bin
  _edgepack_pg_chain_exit_trap
  _edgepack_pg_launch "$bin" "$port" "$dir" || {
    edgepack_postgres_stop
    return 1
  }
}

_edgepack_pg_launch() {
  local bin=$1 port=$2 dir=$3 password user=edgepack db=edgepack_test
  password=$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')
  # Local connections (the socket in $dir) trust the OS user; TCP ones need the role's password.
  if ! "${EDGEPACK_PG_AS[@]}" "$bin/initdb" -D "$dir/data" -U postgres --auth-local=trust \
    --auth-host=scram-sha-256 --no-sync >"$dir/initdb.log" 2>&1; then
    echo "postgres.sh: initdb failed:" >&2
    cat "$dir/initdb.log" >&2
    return 1
  fi
  if ! "${EDGEPACK_PG_AS[@]}" "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w \
    -o "-c listen_addresses=127.0.0.1 -p $port -c unix_socket_directories=$dir -c fsync=off" start >/dev/null; then
    echo "postgres.sh: the server did not start:" >&2
    cat "$dir/server.log" >&2
    return 1
  fi
  "${EDGEPACK_PG_AS[@]}" "$bin/psql" -q -v ON_ERROR_STOP=1 -h "$dir" -p "$port" -U postgres -d postgres \
    -c "CREATE ROLE $user LOGIN PASSWORD '$password'" -c "CREATE DATABASE $db OWNER $user" || return 1
  export EDGEPACK_TEST_POSTGRES_URL="postgresql+psycopg://$user:$password@127.0.0.1:$port/$db"
  echo "postgres.sh: PostgreSQL $("$bin/postgres" --version | awk '{print $3}') on 127.0.0.1:$port, data in $dir"
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then  # run, not sourced
  if [ $# -eq 0 ]; then
    echo "usage: source .ci/postgres.sh   or   bash .ci/postgres.sh COMMAND [ARG ...]" >&2
    exit 2
  fi
  edgepack_postgres_start || exit 1
  "$@"
else
  edgepack_postgres_start
fi
