"""Through PgBouncer in transaction pool mode, where each transaction of a client may run on another
server backend: a deployment is what the very next statement predicts with, whichever backend runs
it, and a model trained through the pooler is predicted right after."""
from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from contextlib import contextmanager
from typing import Iterator, List, Tuple

import psycopg2
import psycopg2.extensions
import pytest

from conftest import DATABASE, LOCAL_ROOT, NOT_LOCAL, PORT, Session, make_table

PGBOUNCER = "/usr/sbin/pgbouncer"
FEATURES = '{"x": 2}'

# The pooler is the local root's pgbouncer, pointed at the local server.
if not LOCAL_ROOT:
    pytest.skip(f"{NOT_LOCAL} (its pgbouncer)", allow_module_level=True)
# Outside CI pgbouncer may be missing (a root built before it was added); in CI its absence is a failure.
if not os.environ.get("CI") and not os.path.exists(PGBOUNCER):
    pytest.skip(f"{PGBOUNCER} is not installed: make up rebuilds the root with it", allow_module_level=True)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def connect(port: int) -> "psycopg2.extensions.connection":
    conn = psycopg2.connect(f"host=127.0.0.1 port={port} dbname={DATABASE} user=postgres")
    conn.autocommit = True
    return conn


@pytest.fixture(scope="module")
def pooler(database: None) -> Iterator[int]:
    """A PgBouncer of the module's own in front of the primary's test database, in transaction pool
    mode; its port. It runs as postgres (it refuses to run as root) from a temporary directory."""
    assert os.path.exists(PGBOUNCER), f"{PGBOUNCER} is not installed"
    postgres = pwd.getpwnam("postgres")
    workdir = tempfile.mkdtemp(prefix="pgml_pooler_")
    os.chown(workdir, postgres.pw_uid, postgres.pw_gid)
    port = _free_port()
    config = os.path.join(workdir, "pgbouncer.ini")
    with open(os.path.join(workdir, "users.txt"), "w") as users:
        users.write('"postgres" ""\n')  # trust: no password, but the user must be listed
    with open(config, "w") as ini:
        ini.write(f"""[databases]
{DATABASE} = host=127.0.0.1 port={PORT} dbname={DATABASE}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {workdir}/users.txt
admin_users = postgres
pool_mode = transaction
default_pool_size = 6
min_pool_size = 6
; the server connection idle the longest serves the next transaction: a client's transactions
; take turns on every one of them
server_round_robin = 1
logfile = {workdir}/pgbouncer.log
pidfile = {workdir}/pgbouncer.pid
""")
    process = subprocess.Popen([PGBOUNCER, config], user=postgres.pw_uid, group=postgres.pw_gid, extra_groups=[],
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                connect(port).close()
                break
            except psycopg2.OperationalError as exc:
                if process.poll() is not None or time.monotonic() > deadline:
                    log = os.path.join(workdir, "pgbouncer.log")
                    why = open(log).read() if os.path.exists(log) else f"exit {process.poll()}"
                    raise AssertionError(f"pgbouncer did not start: {why}") from exc
                time.sleep(0.05)
        yield port
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        shutil.rmtree(workdir, ignore_errors=True)


@contextmanager
def predicting(port: int, model: str, clients: int = 3) -> Iterator[None]:
    """Other clients predicting with the model through the pooler meanwhile, so that the server
    connections change hands between one client's transactions. Their errors fail the test."""
    stop = threading.Event()
    errors: List[Exception] = []

    def predict() -> None:
        try:
            conn = connect(port)
            try:
                with conn.cursor() as cur:
                    while not stop.is_set():
                        cur.execute("SELECT version FROM pgml.predictions WHERE model = %s AND features = %s",
                                    (model, FEATURES))
                        cur.fetchall()
                        time.sleep(0.002)  # leaves server connections idle for the others to take
            finally:
                conn.close()
        except Exception as exc:  # noqa: BLE001 - reported by the test, in its own thread
            errors.append(exc)

    threads = [threading.Thread(target=predict, daemon=True) for _ in range(clients)]
    for thread in threads:
        thread.start()
    try:
        yield
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    assert not errors, f"a concurrent client failed: {errors[0]!r}"


def line_rows(slope: float, intercept: float, noise: float = 0.0, n: int = 60) -> List[Tuple[float, float]]:
    return [(x / 4, slope * x / 4 + intercept + noise * ((x * 7919) % 13 - 6) / 6) for x in range(n)]


def test_every_prediction_after_a_deployment_uses_it(db: Session, pooler: int, name: str) -> None:
    make_table(db, "pooler_line", "x float8, y float8", line_rows(3, 1))
    make_table(db, "pooler_steep", "x float8, y float8", line_rows(5, 2))
    db.one("SELECT pgml.train('pooler_line', 'y', name => %s)", (name,))
    db.one("SELECT pgml.train('pooler_steep', 'y', name => %s, deploy => false)", (name,))
    expected = {v: db.one("SELECT pgml.score(%s, %s::jsonb)", (f"{name}_{v}", FEATURES)) for v in (1, 2)}
    assert expected[1] == pytest.approx(7) and expected[2] == pytest.approx(12)

    client = connect(pooler)
    stale: List[Tuple[int, int, int, float]] = []
    backends = set()
    moved = 0  # iterations whose prediction ran on another backend than their deployment
    try:
        with predicting(pooler, name), client.cursor() as cur:
            for i in range(200):
                version = 2 - i % 2
                cur.execute("SELECT pgml.deploy(%s, %s), pg_backend_pid()", (name, version))
                deployed_on = cur.fetchone()[1]
                cur.execute("SELECT version, pg_backend_pid() FROM pgml.predictions WHERE model = %s AND features = %s",
                            (name, FEATURES))
                served, predicted_on = cur.fetchone()
                cur.execute("SELECT pgml.score(%s, %s::jsonb), pg_backend_pid()", (name, FEATURES))
                score, scored_on = cur.fetchone()
                if served != version or score != pytest.approx(expected[version], rel=1e-12):
                    stale.append((i, version, served, score))
                backends.update((deployed_on, predicted_on, scored_on))
                moved += predicted_on != deployed_on
    finally:
        client.close()
    assert not stale, f"{len(stale)} stale answers in 200 (iteration, deployed, served, score): {stale[:5]}"
    assert len(backends) > 1 and moved > 0, \
        f"the pooler never moved the client: {len(backends)} backend(s), {moved} moves"


def test_a_model_trained_through_the_pooler_is_predicted_right_after(db: Session, pooler: int, name: str) -> None:
    make_table(db, "pooler_noisy", "x float8, y float8", line_rows(3, 1, noise=0.5))
    make_table(db, "pooler_exact", "x float8, y float8", line_rows(5, 2))
    client = connect(pooler)
    try:
        with client.cursor() as cur:
            cur.execute("SELECT pgml.train('pooler_noisy', 'y', name => %s)", (name,))
            assert cur.fetchone()[0] == f"{name}_1"
            cur.execute("SELECT version, prediction FROM pgml.predictions WHERE model = %s AND features = %s",
                        (name, FEATURES))
            version, prediction = cur.fetchone()
            assert version == 1 and prediction == pytest.approx(7, abs=0.5)
            with predicting(pooler, name):  # every server connection has version 1 cached
                time.sleep(0.2)
                # Better on its held-out rows (exact), so it is deployed with the training.
                cur.execute("SELECT pgml.train('pooler_exact', 'y', name => %s)", (name,))
                assert cur.fetchone()[0] == f"{name}_2"
                for _ in range(20):
                    cur.execute("SELECT version, prediction FROM pgml.predictions WHERE model = %s AND features = %s",
                                (name, FEATURES))
                    assert cur.fetchone() == (2, pytest.approx(12))
                    cur.execute("SELECT pgml.score(%s, %s::jsonb)", (name, FEATURES))
                    assert cur.fetchone()[0] == pytest.approx(12)
    finally:
        client.close()
    assert db.one("SELECT version FROM pgml.models WHERE name = %s AND deployed", (name,)) == 2
