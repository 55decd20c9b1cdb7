#!/usr/bin/env bash
# What pgml_fdw's stack is made of, and how its database is set up. The local server's root
# (local/server.sh) and the Docker image (docker/Dockerfile) both run this very script, as root inside
# a Debian bullseye system, so that what the tests run on is what the image does.
#
#   provision.sh install REQUIREMENTS  PostgreSQL 13, Multicorn 1.4 and Python 3.9 from Debian, the
#                                      Python packages of REQUIREMENTS from PyPI, and the package's
#                                      place, /opt/pgml_fdw (a mounted checkout, or a copy), on Python's path
#   provision.sh link                  link the extension's files of /opt/pgml_fdw/sql into PostgreSQL's
#                                      extension directory
#   provision.sh initdb DIR LISTEN [PASSWORD_FILE]
#                                      make a cluster in DIR that listens on LISTEN; TCP logins are
#                                      trusted, or need the password of postgres kept in PASSWORD_FILE
#   provision.sh database PSQL_OPTION...
#                                      create the database pgml and the extension in it, on the server
#                                      that psql reaches with these options
set -euo pipefail

CODE=/opt/pgml_fdw
BIN=/usr/lib/postgresql/13/bin
SOCKETS=/var/run/postgresql
EXTENSIONS=/usr/share/postgresql/13/extension

die() { printf 'provision.sh: %s\n' "$*" >&2; exit 1; }

install_stack() {
    local requirements=$1
    # No service starts during the installs, and no default cluster is made: the cluster is initdb's below.
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    mkdir -p /etc/postgresql-common
    echo 'create_main_cluster = false' >/etc/postgresql-common/createcluster.conf
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # confold: dpkg keeps the createcluster.conf above rather than ask about it. pgbouncer is for the
    # tests of pgml_fdw behind a pooler (tests/test_pooler.py); libgomp1 is the OpenMP runtime that
    # LightGBM's wheel links against without carrying it.
    apt-get install -y -qq --no-install-recommends -o Dpkg::Options::=--force-confold \
        ca-certificates postgresql-13 postgresql-13-python3-multicorn python3-pip python3-psycopg2 pgbouncer \
        libgomp1
    pip3 install -q --no-cache-dir -r "$requirements"
    apt-get clean
    rm -rf /var/lib/apt/lists/*
    # The package is imported from /opt/pgml_fdw, and the extension's SQL files are read there.
    mkdir -p "$CODE"
    echo "$CODE" >/usr/lib/python3/dist-packages/pgml_fdw.pth
    install -d -o postgres -g postgres -m 2775 "$SOCKETS"
}

# Links rather than copies: with a mounted checkout, an edited script is what the next CREATE
# EXTENSION or ALTER EXTENSION runs.
link_extension() {
    local f
    for f in "$CODE"/sql/pgml_fdw.control "$CODE"/sql/pgml_fdw--*.sql; do
        [ -f "$f" ] || die "no $f: is the package at $CODE?"
        ln -sfn "$f" "$EXTENSIONS/$(basename "$f")"
    done
}

make_cluster() {
    local dir=$1 listen=$2 password_file=${3:-}
    local auth=(--auth=trust)
    # The wrapper connects back over the Unix socket as roles without a password (sql/: "Connections
    # back to this database"), so local logins are trusted; only processes of this system reach them.
    [ -z "$password_file" ] || auth=(--auth-local=trust --auth-host=scram-sha-256 "--pwfile=$password_file")
    install -d -o postgres -g postgres -m 2775 "$(dirname "$dir")"
    runuser -u postgres -- "$BIN/initdb" -D "$dir" -U postgres "${auth[@]}" -E UTF8 --locale=C.UTF-8 >/dev/null
    # mmap for dynamic shared memory: a chroot has no /dev/shm of its own, and Docker's is 64MB.
    cat >>"$dir/postgresql.conf" <<EOF
listen_addresses = '$listen'
unix_socket_directories = '$SOCKETS'
dynamic_shared_memory_type = mmap
max_connections = 100
shared_buffers = 256MB
logging_collector = off
EOF
    # initdb allows TCP from loopback only; with a password, from anywhere (the container's network).
    [ -z "$password_file" ] || echo 'host all all all scram-sha-256' >>"$dir/pg_hba.conf"
}

create_database() {
    local psql=(psql -X -q -v ON_ERROR_STOP=1 "$@")
    if [ "$("${psql[@]}" -At -d postgres -c "SELECT count(*) FROM pg_database WHERE datname = 'pgml'")" = 0 ]; then
        "${psql[@]}" -d postgres -c "CREATE DATABASE pgml"
    fi
    "${psql[@]}" -d pgml -c "CREATE EXTENSION IF NOT EXISTS pgml_fdw CASCADE"
}

case "${1:-}" in
    install) [ $# = 2 ] || die "usage: provision.sh install REQUIREMENTS"; install_stack "$2" ;;
    link) link_extension ;;
    initdb) [ $# = 3 ] || [ $# = 4 ] || die "usage: provision.sh initdb DIR LISTEN [PASSWORD_FILE]"; shift; make_cluster "$@" ;;
    database) shift; create_database "$@" ;;
    *) die "usage: provision.sh install|link|initdb|database ..." ;;
esac
