#!/usr/bin/env bash
# The local development server: PostgreSQL 13 with Multicorn 1.4 and this package, in a Debian bullseye
# root built with debootstrap under .pgml/ in the checkout.
#
#   local/server.sh up      build the root once (about two minutes), then start PostgreSQL on
#                           127.0.0.1:$PGML_PORT (default 5433) with the database pgml and the extension
#   local/server.sh standby start a streaming hot standby of it on 127.0.0.1:$PGML_PORT+1, made
#                           with pg_basebackup the first time (up does not start it)
#   local/server.sh down    stop both
#   local/server.sh psql    a psql prompt on the database pgml, as postgres
#   local/server.sh run CMD run CMD inside the root, in the checkout (tests, benchmarks, the demo)
#
# A development server: the superuser postgres logs in from loopback without a password.
#
# Mounts (/proc, and the checkout at /opt/pgml_fdw so code changes reach new connections without a
# rebuild) live in a private mount namespace that exists only while its processes do: stopping the
# server, or killing it, leaves nothing mounted, so removing the checkout is always an ordinary rm.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
HOME_DIR=${PGML_HOME:-$REPO/.pgml}
ROOT=$HOME_DIR/root
PORT=${PGML_PORT:-5433}
MIRROR=${PGML_DEBIAN_MIRROR:-http://deb.debian.org/debian}
DATA=/var/lib/pgml/data          # inside the root
LOG=/var/lib/pgml/postgresql.log # inside the root
CODE=/opt/pgml_fdw               # where the checkout is mounted inside the root
SOCKETS=/var/run/postgresql      # the primary's unix socket directory, inside the root
STANDBY_PORT=$((PORT + 1))
STANDBY_DATA=/var/lib/pgml/standby
STANDBY_LOG=/var/lib/pgml/standby.log
# The standby's own sockets: the wrapper on the standby must talk to the standby, never the primary.
STANDBY_SOCKETS=/var/run/postgresql-standby
PROVISION=/usr/local/sbin/pgml-provision # local/provision.sh, inside the root

say() { printf '==> %s\n' "$*" >&2; }
die() { printf 'server.sh: %s\n' "$*" >&2; exit 1; }

# Run a command in the root with a clean environment (host variables such as PIP_FIND_LINKS mean
# nothing in there).
in_root() {
    env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 \
        DEBIAN_FRONTEND=noninteractive PIP_CERT=/etc/ssl/certs/host-ca.crt \
        PIP_DISABLE_PIP_VERSION_CHECK=1 PGML_PORT="$PORT" CI="${CI:-}" \
        chroot "$ROOT" "$@"
}

# Run a command in the root inside a private mount namespace with /proc and the checkout mounted.
# With HIDE set (a directory of the root, symlinks resolved), an empty tmpfs covers it in there.
in_namespace() {
    unshare --mount --propagation private -- bash -euc '
        root=$1; repo=$2; code=$3; hide=$4; shift 4
        mount -t proc proc "$root/proc"
        mount --bind "$repo" "$root$code"
        if [ -n "$hide" ]; then mount -t tmpfs -o size=64k,mode=0755 hidden "$root$hide"; fi
        exec "$@"' _ "$ROOT" "$REPO" "$CODE" "${HIDE:-}" \
        env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 \
        PGML_PORT="$PORT" PGML_BENCH_QUICK="${PGML_BENCH_QUICK:-}" PGML_TEST_DATABASE="${PGML_TEST_DATABASE:-pgml_test}" PGML_TEST_DSN="${PGML_TEST_DSN:-}" \
        CI="${CI:-}" TERM="${TERM:-dumb}" \
        chroot "$ROOT" "$@"
}

as_postgres() { in_root su postgres -s /bin/sh -c "$*"; }

# Everything that decides what the root holds; its hash is the build stamp, so a change here, in the
# shared install script or in the requirements rebuilds the root, and nothing else does.
build_root() {
    local tmp=$HOME_DIR/root.building
    if ! command -v debootstrap >/dev/null; then
        say "installing debootstrap on this machine"
        apt-get update -qq && apt-get install -y -qq debootstrap >/dev/null
    fi
    rm -rf --one-file-system "$tmp"
    say "building a Debian bullseye root in $ROOT (first time only, about two minutes)"
    debootstrap --variant=minbase --include=ca-certificates bullseye "$tmp" "$MIRROR" >"$HOME_DIR/debootstrap.log" 2>&1 \
        || die "debootstrap failed; see $HOME_DIR/debootstrap.log"
    cp /etc/ssl/certs/ca-certificates.crt "$tmp/etc/ssl/certs/host-ca.crt"
    # The same install as docker/Dockerfile's, and the script stays in the root for setting up the cluster.
    cp "$REPO/local/provision.sh" "$tmp$PROVISION"
    cp "$REPO/local/requirements.txt" "$tmp/tmp/requirements.txt"
    local saved=$ROOT; ROOT=$tmp
    say "installing PostgreSQL 13, Multicorn, Python 3.9 and local/requirements.txt (local/provision.sh)"
    in_root "$PROVISION" install /tmp/requirements.txt >"$HOME_DIR/provision.log" 2>&1 \
        || die "local/provision.sh install failed; see $HOME_DIR/provision.log"
    ROOT=$saved
    rm -rf --one-file-system "$ROOT"
    mv "$tmp" "$ROOT"
}

stamp() {
    { declare -f build_root; cat "$REPO/local/provision.sh" "$REPO/local/requirements.txt"; } | sha256sum | cut -c1-16
}

running() { [ -f "$ROOT$DATA/postmaster.pid" ] && as_postgres "/usr/lib/postgresql/13/bin/pg_ctl status -D $DATA" >/dev/null 2>&1; }
standby_running() {
    [ -f "$ROOT$STANDBY_DATA/postmaster.pid" ] \
        && as_postgres "/usr/lib/postgresql/13/bin/pg_ctl status -D $STANDBY_DATA" >/dev/null 2>&1
}

psql_root() { in_root psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PORT" -U postgres "$@"; }
psql_standby() { in_root psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$STANDBY_PORT" -U postgres "$@"; }

port_taken() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

up() {
    [ "$(id -u)" = 0 ] || die "run as root: the root is built with debootstrap and chroot"
    mkdir -p "$HOME_DIR"
    if [ "$(cat "$HOME_DIR/stamp" 2>/dev/null)" != "$(stamp)" ]; then
        if [ -d "$ROOT" ] && { running || standby_running; }; then
            say "the build recipe changed: stopping the server to rebuild (its databases go with the old root)"
            down
        fi
        build_root
        stamp >"$HOME_DIR/stamp"
    fi
    # The extension's files are links into the mounted checkout (so through the namespace).
    in_namespace "$PROVISION" link
    if ! [ -f "$ROOT$DATA/PG_VERSION" ]; then
        say "creating the database cluster"
        in_root "$PROVISION" initdb $DATA 127.0.0.1
    fi
    if running; then
        say "already running on 127.0.0.1:$PORT"
    else
        if port_taken "$PORT"; then
            die "port $PORT is taken by another program; choose another with PGML_PORT=NNNN"
        fi
        say "starting PostgreSQL 13 on 127.0.0.1:$PORT"
        in_namespace su postgres -s /bin/sh -c \
            "/usr/lib/postgresql/13/bin/pg_ctl start -w -D $DATA -l $LOG -o '-p $PORT' >/dev/null" \
            || die "PostgreSQL did not start; its log: $ROOT$LOG"
    fi
    in_root "$PROVISION" database -h 127.0.0.1 -p "$PORT" -U postgres
    say "ready: psql -h 127.0.0.1 -p $PORT -U postgres pgml   (or: make psql)"
}

# The standby: a streaming hot standby of the primary, for the wrapper's tests on a read-only replica.
# Its data directory is a pg_basebackup of the primary; the settings that depend on PGML_PORT are
# rewritten at every start. No replication slot: a stopped standby must not make the primary keep
# WAL forever, so one that fell too far behind is copied anew instead. It runs in a namespace of its
# own in which the primary's socket directory is an empty tmpfs, so that a wrapper on the standby
# that followed the replicated dsn fails there rather than quietly reads the primary.
standby_settings() {
    in_root su postgres -s /bin/sh -c "cat >$STANDBY_DATA/pgml_standby.conf" <<EOF
# Written by local/server.sh at every start of the standby.
port = $STANDBY_PORT
unix_socket_directories = '$STANDBY_SOCKETS'
hot_standby = on
hot_standby_feedback = on
primary_conninfo = 'host=127.0.0.1 port=$PORT user=postgres application_name=pgml_standby'
EOF
}

copy_primary() {
    say "copying the primary into the standby's data directory with pg_basebackup"
    in_root rm -rf $STANDBY_DATA
    as_postgres "/usr/lib/postgresql/13/bin/pg_basebackup -h 127.0.0.1 -p $PORT -U postgres -D $STANDBY_DATA -X stream -c fast" \
        || die "pg_basebackup failed"
    as_postgres "touch $STANDBY_DATA/standby.signal"
    echo "include 'pgml_standby.conf'" >>"$ROOT$STANDBY_DATA/postgresql.conf"
}

start_standby() {
    in_root install -d -o postgres -g postgres -m 2775 $STANDBY_SOCKETS
    standby_settings
    HIDE=$(in_root readlink -f $SOCKETS) in_namespace su postgres -s /bin/sh -c \
        "/usr/lib/postgresql/13/bin/pg_ctl start -w -t 60 -D $STANDBY_DATA -l $STANDBY_LOG >/dev/null"
}

stop_standby() { as_postgres "/usr/lib/postgresql/13/bin/pg_ctl stop -w -m $1 -D $STANDBY_DATA" >/dev/null; }

# Waits (a minute at most) until the standby has replayed the primary's WAL up to the LSN $1. Gives
# up at once if the primary no longer has the WAL the standby asks for (logged past byte $2 of its log).
caught_up() {
    local i
    for i in $(seq 300); do
        [ "$(psql_standby -At -d postgres -c "SELECT coalesce(pg_last_wal_replay_lsn() >= '$1', false)" 2>/dev/null)" = t ] \
            && return 0
        ! tail -c "+$(($2 + 1))" "$ROOT$STANDBY_LOG" 2>/dev/null | grep -q 'has already been removed' || return 1
        sleep 0.2
    done
    return 1
}

# Starts the standby and waits for it to catch up with the primary as of now.
start_and_catch_up() {
    local target logged
    target=$(psql_root -At -d postgres -c "SELECT pg_current_wal_lsn()")
    logged=$(stat -c %s "$ROOT$STANDBY_LOG" 2>/dev/null || echo 0)
    start_standby && caught_up "$target" "$logged"
}

standby() {
    [ "$(id -u)" = 0 ] || die "run as root: the root is built with debootstrap and chroot"
    { [ -d "$ROOT" ] && running; } || die "the primary is not running: make up"
    if standby_running; then
        say "the standby is already running on 127.0.0.1:$STANDBY_PORT"
        return
    fi
    if port_taken "$STANDBY_PORT"; then
        die "port $STANDBY_PORT (the standby's: PGML_PORT + 1) is taken by another program; choose another PGML_PORT"
    fi
    # A copy of another cluster (the primary's was made anew) can never follow this one.
    local primary
    primary=$(psql_root -At -d postgres -c "SELECT system_identifier FROM pg_control_system()")
    if [ -f "$ROOT$STANDBY_DATA/PG_VERSION" ] && [ "$(as_postgres "/usr/lib/postgresql/13/bin/pg_controldata -D $STANDBY_DATA" \
            | sed -n 's/^Database system identifier: *//p')" != "$primary" ]; then
        say "the standby's data is a copy of another cluster"
        in_root rm -rf $STANDBY_DATA
    fi
    [ -f "$ROOT$STANDBY_DATA/PG_VERSION" ] || copy_primary
    say "starting the standby on 127.0.0.1:$STANDBY_PORT"
    if ! start_and_catch_up; then
        say "the standby did not start or catch up (its log: $ROOT$STANDBY_LOG); making it anew"
        ! standby_running || stop_standby immediate
        copy_primary
        start_and_catch_up || die "the standby did not start or catch up; its log: $ROOT$STANDBY_LOG"
    fi
    say "standby ready (read-only): psql -h 127.0.0.1 -p $STANDBY_PORT -U postgres pgml"
}

down() {
    if [ -d "$ROOT" ] && standby_running; then
        say "stopping the standby"
        stop_standby fast
    fi
    if [ -d "$ROOT" ] && running; then
        say "stopping PostgreSQL"
        as_postgres "/usr/lib/postgresql/13/bin/pg_ctl stop -w -m fast -D $DATA" >/dev/null
    else
        say "not running"
    fi
}

case "${1:-}" in
    up) up ;;
    standby) standby ;;
    down) down ;;
    psql) shift; running || die "not running: make up"; psql_root -d pgml "$@" ;;
    run) shift; [ -d "$ROOT" ] || die "no root yet: make up"; in_namespace sh -c "cd $CODE && exec \"\$@\"" _ "$@" ;;
    *) die "usage: server.sh up|standby|down|psql|run CMD..." ;;
esac
