#!/bin/sh
# Entry point of the Debian-packaged PostgreSQL image (deploy/debian-images/Dockerfile): on the
# first start, initialise PGDATA like the official image does — superuser POSTGRES_USER with
# POSTGRES_PASSWORD, database POSTGRES_DB, password (SCRAM) authentication for every network
# client, trust only on the container's own unix socket (the healthcheck's pg_isready) — then
# run postgres in the foreground, listening on all interfaces of the container.
set -eu
: "${PGDATA:=/var/lib/postgresql/data}"
if [ "${1:-}" = postgres ]; then
    shift
    if [ ! -s "$PGDATA/PG_VERSION" ]; then
        if [ -z "${POSTGRES_PASSWORD:-}" ]; then
            echo "postgres-entrypoint: POSTGRES_PASSWORD is empty; refusing to create a database without a password" >&2
            exit 2
        fi
        user=${POSTGRES_USER:-postgres}
        db=${POSTGRES_DB:-$user}
        pwfile=$(mktemp)
        printf '%s\n' "$POSTGRES_PASSWORD" > "$pwfile"
        initdb -D "$PGDATA" --username="$user" --pwfile="$pwfile" --encoding=UTF8 --locale=C.UTF-8 \
            --auth-local=trust --auth-host=scram-sha-256 >/dev/null
        rm -f "$pwfile"
        echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
        if [ "$db" != postgres ]; then
            # While initialising: no TCP, and the socket in a private directory, so nothing —
            # not even the healthcheck's pg_isready — sees a server before the real one runs
            # (otherwise compose could start migrate against a server about to go away).
            init_socket=$(mktemp -d)
            pg_ctl -D "$PGDATA" -o "-c listen_addresses='' -c unix_socket_directories=$init_socket" -w start >/dev/null
            createdb --host="$init_socket" --username="$user" "$db"
            pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
            rmdir "$init_socket"
        fi
        echo "postgres-entrypoint: initialised $PGDATA (user $user, database $db)"
    fi
    exec postgres -D "$PGDATA" -c listen_addresses='*' "$@"
fi
exec "$@"
