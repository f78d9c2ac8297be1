#!/bin/sh
# PostgreSQL container entry point. On first start (an empty data volume) creates the
# cluster with the superuser $POSTGRES_USER, whose password is the first line of
# $POSTGRES_PASSWORD_FILE, and the database $POSTGRES_DB it owns; then runs postgres as
# PID 1 (exec), listening on every address of the container. Connections over the
# network need the password (scram-sha-256); only the container's own socket trusts.
set -eu
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    if [ ! -s "$POSTGRES_PASSWORD_FILE" ]; then
        echo "postgres-entrypoint: no password in $POSTGRES_PASSWORD_FILE" >&2
        exit 1
    fi
    initdb --username="$POSTGRES_USER" --pwfile="$POSTGRES_PASSWORD_FILE" \
        --auth-local=trust --auth-host=scram-sha-256 \
        --encoding=UTF8 --locale=C.UTF-8 >/dev/null
    echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
    # Single-user mode: no listening socket before the database exists.
    echo "CREATE DATABASE \"$POSTGRES_DB\" OWNER \"$POSTGRES_USER\"" \
        | postgres --single -D "$PGDATA" -j postgres >/dev/null
    echo "postgres-entrypoint: created the cluster and database $POSTGRES_DB" >&2
fi
exec postgres -c listen_addresses='*' "$@"
