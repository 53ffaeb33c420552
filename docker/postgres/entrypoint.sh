#!/bin/sh
# Entrypoint of the Lenkwerk test PostgreSQL image (docker/postgres).
# "postgres [-c name=value …]": initialise $PGDATA on first start (initdb as
# the postgres user, wal_level=logical, listening on all addresses, host
# access by trust or by password), then run the server in the foreground
# with the given flags. Anything else is executed as is.
set -eu
if [ "${1#-}" != "$1" ]; then
	set -- postgres "$@"
fi
if [ "$1" != postgres ]; then
	exec "$@"
fi
shift
user=${POSTGRES_USER:-postgres}
if [ ! -s "$PGDATA/PG_VERSION" ]; then
	auth=${POSTGRES_HOST_AUTH_METHOD:-}
	pwfile=
	if [ -n "${POSTGRES_PASSWORD:-}" ]; then
		pwfile=$(mktemp)
		printf '%s\n' "$POSTGRES_PASSWORD" >"$pwfile"
		auth=${auth:-scram-sha-256}
	fi
	auth=${auth:-trust}
	initdb --username="$user" --encoding=UTF8 --locale=C.UTF-8 \
		--auth-local=trust --auth-host="$auth" ${pwfile:+--pwfile="$pwfile"} \
		-D "$PGDATA" >/dev/null
	[ -z "$pwfile" ] || rm -f "$pwfile"
	# Logical replication connections name a database, so "all" covers them.
	printf 'host all all all %s\n' "$auth" >>"$PGDATA/pg_hba.conf"
	cat >>"$PGDATA/postgresql.conf" <<CONF
listen_addresses = '*'
wal_level = logical
max_wal_senders = 10
max_replication_slots = 10
jit = off
CONF
	db=${POSTGRES_DB:-$user}
	if [ "$db" != postgres ]; then
		echo "CREATE DATABASE \"$db\"" | postgres --single -D "$PGDATA" postgres >/dev/null
	fi
	echo "lenkwerk postgres: initialised $PGDATA (host auth: $auth)"
fi
exec postgres -D "$PGDATA" "$@"
