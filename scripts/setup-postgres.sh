#!/usr/bin/env bash
# Starts (or stops) a throwaway PostgreSQL server for openshell's tests.
#
#   scripts/setup-postgres.sh [start] [DIR]   start (idempotent) and print the DSN line
#   scripts/setup-postgres.sh stop [DIR]      stop the server via its pid file
#   scripts/setup-postgres.sh dsn [DIR]       print the DSN line only
#
# DIR defaults to $OPENSHELL_TEST_PGDATA, else /tmp/openshell-test-pg. The server listens
# on 127.0.0.1:$OPENSHELL_TEST_PGPORT (default 55432) and on a Unix socket in DIR/sock,
# trusts local connections (test data only!), and has database openshell_test.
# Use it as:  eval "$(scripts/setup-postgres.sh | grep ^OPENSHELL_TEST_POSTGRES_DSN=)"
#             export OPENSHELL_TEST_POSTGRES_DSN; go test ./gateway/store/postgres/
# (Without the variable, the Go tests start their own private server when the
# PostgreSQL binaries are installed.)
set -euo pipefail

cmd=start
case "${1:-}" in
start | stop | dsn) cmd=$1; shift ;;
esac
DIR=${1:-${OPENSHELL_TEST_PGDATA:-/tmp/openshell-test-pg}}
PORT=${OPENSHELL_TEST_PGPORT:-55432}
DB=openshell_test

log() { echo "setup-postgres: $*" >&2; }
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

DIR=$(realpath -m -- "$DIR")
DATA=$DIR/data
SOCK=$DIR/sock
DSN="postgres://postgres@127.0.0.1:${PORT}/${DB}?sslmode=disable"

find_bindir() {
	local d
	for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
		if [[ -x $d/initdb && -x $d/pg_ctl ]]; then
			echo "$d"
			return 0
		fi
	done
	return 1
}

# PostgreSQL refuses to run as root: run its tools as the postgres user then.
as_pg() {
	if [[ $(id -u) == 0 ]]; then
		setpriv --reuid=postgres --regid=postgres --init-groups -- "$@"
	else
		"$@"
	fi
}

if [[ $cmd == dsn ]]; then
	echo "OPENSHELL_TEST_POSTGRES_DSN=$DSN"
	exit 0
fi

if ! BIN=$(find_bindir); then
	if [[ $cmd == stop ]]; then
		log "no PostgreSQL installed; nothing to stop"
		exit 0
	fi
	apt_install postgresql
	BIN=$(find_bindir) || { log "postgresql installed but no /usr/lib/postgresql/*/bin/initdb"; exit 1; }
fi
log "using $BIN"

if [[ $cmd == stop ]]; then
	if [[ ! -f $DATA/postmaster.pid ]]; then
		log "no pid file in $DATA; server not running"
		exit 0
	fi
	log "stopping server (pid $(head -n1 "$DATA/postmaster.pid")) in $DATA"
	as_pg "$BIN/pg_ctl" stop -D "$DATA" -m fast -w >/dev/null
	log "stopped; remove $DIR to discard its data"
	exit 0
fi

if [[ $(id -u) == 0 ]] && ! id postgres >/dev/null 2>&1; then
	log "user postgres does not exist (the Debian package creates it); install postgresql"
	exit 1
fi

mkdir -p "$DIR" "$SOCK"
chmod 0700 "$DIR"
if [[ $(id -u) == 0 ]]; then
	chown -R postgres:postgres "$DIR"
	if ! setpriv --reuid=postgres --regid=postgres --init-groups -- test -w "$DIR"; then
		log "user postgres cannot write $DIR (is a parent directory private?); pick a DIR under /tmp"
		exit 1
	fi
fi

if [[ ! -f $DATA/PG_VERSION ]]; then
	log "initdb in $DATA"
	as_pg "$BIN/initdb" -D "$DATA" -U postgres --auth=trust -E UTF8 --no-sync >"$DIR/initdb.log" 2>&1 ||
		{ cat "$DIR/initdb.log" >&2; exit 1; }
fi

if as_pg "$BIN/pg_ctl" status -D "$DATA" >/dev/null 2>&1; then
	log "server already running in $DATA"
else
	log "starting server on 127.0.0.1:$PORT and $SOCK (log: $DIR/server.log)"
	# Durability is pointless for test data; turning it off makes tests fast.
	as_pg "$BIN/pg_ctl" start -D "$DATA" -w -t 60 -l "$DIR/server.log" \
		-o "-c listen_addresses=127.0.0.1 -p $PORT -k $SOCK -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200" >/dev/null ||
		{ tail -n 20 "$DIR/server.log" >&2; exit 1; }
fi

psql=("$BIN/psql" -X -q -h "$SOCK" -p "$PORT" -U postgres -d postgres -v ON_ERROR_STOP=1)
if [[ $(as_pg "${psql[@]}" -tAc "SELECT 1 FROM pg_database WHERE datname = '$DB'") != 1 ]]; then
	log "creating database $DB"
	as_pg "${psql[@]}" -c "CREATE DATABASE $DB"
fi

log "ready; stop with: $0 stop $DIR"
echo "OPENSHELL_TEST_POSTGRES_DSN=$DSN"
