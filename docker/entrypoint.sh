#!/usr/bin/env bash
# The image's entrypoint. On the first start (no cluster in /var/lib/pgml) it makes the cluster, the
# database pgml with the extension in it and, with PGML_DEMO=1, the demo's tables and models; then, at
# every start, it runs PostgreSQL in the foreground, its log on stderr.
set -euo pipefail

DATA=/var/lib/pgml/data
# The first start's cluster is made here and moved to DATA once it is complete: a start that failed
# halfway leaves no cluster that the next start would take for a ready one.
NEW=/var/lib/pgml/data.new
BIN=/usr/lib/postgresql/13/bin

die() { printf 'pgml-entrypoint: %s\n' "$*" >&2; exit 1; }
as_postgres() { runuser -u postgres -- "$@"; }

if ! [ -f "$DATA/PG_VERSION" ]; then
    [ -n "${POSTGRES_PASSWORD:-}" ] || die "set POSTGRES_PASSWORD: the password of the superuser postgres, for connections over TCP"
    rm -rf "$NEW"
    password_file=$(mktemp)
    printf '%s\n' "$POSTGRES_PASSWORD" >"$password_file"
    chown postgres "$password_file"
    pgml-provision initdb "$NEW" '*' "$password_file"
    rm -f "$password_file"
    # Started on its Unix socket only: nobody connects from outside before the setup is done.
    as_postgres "$BIN/pg_ctl" start -w -D "$NEW" -o "-c listen_addresses=''" -l /var/lib/pgml/setup.log >/dev/null \
        || die "PostgreSQL did not start for the setup; its log: $(cat /var/lib/pgml/setup.log)"
    pgml-provision database -U postgres
    if [ "${PGML_DEMO:-0}" = 1 ]; then
        printf 'pgml-entrypoint: loading the demo (demo/demo.sql) into the database pgml\n' >&2
        psql -X -q -v ON_ERROR_STOP=1 -U postgres -d pgml -f /opt/pgml_fdw/demo/demo.sql
    fi
    as_postgres "$BIN/pg_ctl" stop -w -m fast -D "$NEW" >/dev/null
    mv "$NEW" "$DATA"
    printf 'pgml-entrypoint: the database pgml is ready, with the extension pgml_fdw\n' >&2
fi
exec setpriv --reuid=postgres --regid=postgres --init-groups --reset-env "$BIN/postgres" -D "$DATA"
