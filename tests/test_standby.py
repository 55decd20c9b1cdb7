"""A streaming hot standby serves the models the primary trains and deploys, from its own copy.

The standby (``make standby``: 127.0.0.1, port ``$PGML_PORT + 1``) replicates the test database.
On it, every prediction form answers as on the primary, a new deployment is served as soon as it is
replayed, training and deploying fail as writes do on a standby (25006), the wrapper reads the
standby's data and never the primary's, and failed predictions leave no connections behind.
"""
from __future__ import annotations

import os
import socket
import time
from typing import Iterator, List, Tuple

import psycopg2
import pytest

from conftest import DATABASE, LOCAL_ROOT, NOT_LOCAL, PORT, Session, make_table

STANDBY_PORT = PORT + 1
FEATURES = '{"x": 2}'


def _reachable(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


# The standby is the local server's (make standby); a PGML_TEST_DSN server has none we know of.
if not LOCAL_ROOT:
    pytest.skip(f"{NOT_LOCAL} (its streaming standby)", allow_module_level=True)
# Outside CI a developer may not have started the standby; in CI (make test starts it) its absence
# is a failure.
if not os.environ.get("CI") and not _reachable(STANDBY_PORT):
    pytest.skip(f"no standby on 127.0.0.1:{STANDBY_PORT}: make standby starts one", allow_module_level=True)


class Standby(Session):
    """A session on the standby: Session's helpers, over a connection of its own."""

    def __init__(self, database: str = DATABASE) -> None:
        self.conn = psycopg2.connect(f"host=127.0.0.1 port={STANDBY_PORT} dbname={database} user=postgres")
        self.conn.autocommit = True


def wait_for_replay(standby: Session, lsn: str, timeout: float = 10.0) -> None:
    """Waits until the standby has replayed the primary's WAL up to lsn."""
    deadline = time.monotonic() + timeout
    while not standby.one("SELECT coalesce(pg_last_wal_replay_lsn() >= %s::pg_lsn, false)", (lsn,)):
        assert time.monotonic() < deadline, f"the standby did not replay up to {lsn} within {timeout} s"
        time.sleep(0.02)


def wait_visible(standby: Session, model_id: str, timeout: float = 10.0) -> None:
    """Waits until a model version trained on the primary is on the standby."""
    deadline = time.monotonic() + timeout
    while not standby.one("SELECT count(*) FROM pgml.models WHERE id = %s", (model_id,)):
        assert time.monotonic() < deadline, f"{model_id} did not reach the standby within {timeout} s"
        time.sleep(0.05)


def line_rows(slope: float, intercept: float, n: int = 60) -> List[Tuple[float, float]]:
    return [(x / 4, slope * x / 4 + intercept) for x in range(n)]


def served_version(session: Session, model: str) -> int:
    return session.one("SELECT version FROM pgml.predictions WHERE model = %s AND features = %s", (model, FEATURES))


@pytest.fixture
def standby(db: Session) -> Iterator[Standby]:
    """A session on the standby's copy of the test database, once the standby has replayed the
    primary's WAL as of now (the database is made anew on the primary for every run)."""
    lsn = db.one("SELECT pg_current_wal_lsn()")
    maintenance = Standby("postgres")
    try:
        wait_for_replay(maintenance, lsn)
    finally:
        maintenance.close()
    session = Standby()
    yield session
    session.close()


@pytest.fixture
def two_versions(db: Session, standby: Standby, name: str) -> dict:
    """The test's model with version 1 (y = 3x + 1, deployed) and version 2 (y = 5x + 2, not
    deployed) on the primary and replayed on the standby; the primary's score of FEATURES by version."""
    make_table(db, "standby_line", "x float8, y float8", line_rows(3, 1))
    make_table(db, "standby_steep", "x float8, y float8", line_rows(5, 2))
    assert db.one("SELECT pgml.train('standby_line', 'y', name => %s)", (name,)) == f"{name}_1"
    assert db.one("SELECT pgml.train('standby_steep', 'y', name => %s, deploy => false)", (name,)) == f"{name}_2"
    wait_visible(standby, f"{name}_2")
    scores = {v: db.one("SELECT pgml.score(%s, %s::jsonb)", (f"{name}_{v}", FEATURES)) for v in (1, 2)}
    assert scores[1] == pytest.approx(7) and scores[2] == pytest.approx(12)
    return scores


def test_the_standby_is_a_hot_standby_with_sockets_of_its_own(db: Session, standby: Standby) -> None:
    assert standby.one("SELECT pg_is_in_recovery()") is True
    assert db.one("SELECT pg_is_in_recovery()") is False
    assert standby.one("SELECT current_setting('port')::int") == STANDBY_PORT
    assert standby.one("SELECT current_setting('unix_socket_directories')") \
        != db.one("SELECT current_setting('unix_socket_directories')")


def test_every_form_answers_on_the_standby_as_on_the_primary(db: Session, standby: Standby, name: str) -> None:
    make_table(db, "standby_line", "x float8, y float8", line_rows(3, 1))
    make_table(db, "standby_inputs", "id int, x float8", [(i, float(i)) for i in range(20)])
    model_id = db.one("SELECT pgml.train('standby_line', 'y', name => %s)", (name,))
    assert model_id == f"{name}_1"
    wait_visible(standby, model_id)  # and the tables before it: replay is in order

    expected = db.one("SELECT pgml.score(%s, %s::jsonb)", (name, FEATURES))
    assert expected == pytest.approx(7)
    assert standby.one("SELECT pgml.score(%s, %s::jsonb)", (name, FEATURES)) == pytest.approx(expected, rel=1e-12)
    assert standby.one("SELECT prediction FROM pgml.predictions WHERE model = %s AND features = %s",
                       (name, FEATURES)) == pytest.approx(expected, rel=1e-12)

    lateral = standby.rows(
        "SELECT i.id, p.prediction, p.version FROM standby_inputs i "
        "CROSS JOIN LATERAL pgml.prediction(%s, jsonb_build_object('x', i.x)) p ORDER BY i.id", (name,))
    assert [r[0] for r in lateral] == list(range(20))
    assert all(p == pytest.approx(3 * i + 1, abs=1e-6) and v == 1 for i, p, v in lateral)

    batch = standby.rows("SELECT key, prediction FROM pgml.predictions "
                         "WHERE model = %s AND relation = 'standby_inputs' AND key_column = 'id'", (name,))
    assert sorted(int(k) for k, _ in batch) == list(range(20))
    assert all(p == pytest.approx(3 * int(k) + 1, abs=1e-6) for k, p in batch)

    assert standby.rows("SELECT id, version, deployed FROM pgml.models WHERE name = %s", (name,)) \
        == [(model_id, 1, True)]


def test_a_new_deployment_is_served_within_a_second_of_its_replay(
        db: Session, standby: Standby, two_versions: dict, name: str) -> None:
    watcher = Standby()  # waits for replay, so that the predicting session only predicts
    try:
        assert served_version(standby, name) == 1  # now cached by the standby's backend
        for version in (2, 1, 2):
            db.one("SELECT pgml.deploy(%s, %s)", (name, version))
            lsn = db.one("SELECT pg_current_wal_lsn()")
            wait_for_replay(watcher, lsn)
            start = time.monotonic()
            while (served := served_version(standby, name)) != version and time.monotonic() - start < 5:
                time.sleep(0.01)
            elapsed = time.monotonic() - start
            assert served == version, f"version {served} still served {elapsed:.1f} s after version {version}'s replay"
            assert elapsed < 1.0, f"version {version} was served {elapsed:.2f} s after its replay"
            assert standby.one("SELECT pgml.score(%s, %s::jsonb)", (name, FEATURES)) \
                == pytest.approx(two_versions[version], rel=1e-12)
    finally:
        watcher.close()


@pytest.mark.parametrize("statement", [
    "SELECT pgml.train('standby_line', 'y', name => %(name)s)",
    "INSERT INTO pgml.training_runs (relation, y_column, name) VALUES ('standby_line', 'y', %(name)s)",
    "SELECT pgml.deploy(%(name)s, 1)",
    "SELECT pgml.deploy(%(name)s, 'most_recent')",
])
def test_training_and_deploying_on_the_standby_are_read_only_errors(
        db: Session, standby: Standby, name: str, statement: str) -> None:
    make_table(db, "standby_line", "x float8, y float8", line_rows(3, 1))
    model_id = db.one("SELECT pgml.train('standby_line', 'y', name => %s)", (name,))
    wait_visible(standby, model_id)
    pid = standby.pid()
    error = standby.error(statement, {"name": name})
    assert error.pgcode == "25006", f"{error.pgcode}: {error.pgerror}"
    assert standby.pid() == pid  # the backend lives on, and still predicts
    assert standby.one("SELECT pgml.score(%s, %s::jsonb)", (name, FEATURES)) == pytest.approx(7)
    assert db.rows("SELECT id FROM pgml.models WHERE name = %s", (name,)) == [(model_id,)]


def test_the_standby_serves_its_own_copy_while_replay_is_paused(
        db: Session, standby: Standby, two_versions: dict, name: str) -> None:
    """With replay paused, the standby has received a deployment it has not applied: it must serve
    what its own data says (the old version), not what the primary's does."""
    assert served_version(standby, name) == 1
    control = Standby()
    control.run("SELECT pg_wal_replay_pause()")
    try:
        db.one("SELECT pgml.deploy(%s, 2)", (name,))
        lsn = db.one("SELECT pg_current_wal_lsn()")
        deadline = time.monotonic() + 10
        while not control.one("SELECT coalesce(pg_last_wal_receive_lsn() >= %s::pg_lsn, false)", (lsn,)):
            assert time.monotonic() < deadline, "the standby did not receive the deployment within 10 s"
            time.sleep(0.02)
        assert not control.one("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (lsn,))
        for _ in range(5):
            assert served_version(standby, name) == 1
            assert standby.one("SELECT pgml.score(%s, %s::jsonb)", (name, FEATURES)) \
                == pytest.approx(two_versions[1], rel=1e-12)
            time.sleep(0.1)
        fresh = Standby()  # a session with nothing cached reads the same
        try:
            assert served_version(fresh, name) == 1
        finally:
            fresh.close()
    finally:
        control.run("SELECT pg_wal_replay_resume()")
    try:
        wait_for_replay(control, lsn)
    finally:
        control.close()
    start = time.monotonic()
    while (served := served_version(standby, name)) != 2 and time.monotonic() - start < 5:
        time.sleep(0.01)
    assert served == 2 and time.monotonic() - start < 1.0


def _wrapper_backends(session: Session) -> int:
    return session.one("SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'pgml_fdw%'")


def test_failed_predictions_on_the_standby_leave_no_connections_behind(
        db: Session, standby: Standby, name: str) -> None:
    make_table(db, "standby_line", "x float8, y float8", line_rows(3, 1))
    model_id = db.one("SELECT pgml.train('standby_line', 'y', name => %s)", (name,))
    wait_visible(standby, model_id)
    observer = Standby()
    try:
        def fail() -> None:
            error = standby.error("SELECT prediction FROM pgml.predictions "
                                  "WHERE model = 'no_such_model_on_the_standby' AND features = '[1]'")
            assert error.pgcode == "42704", f"{error.pgcode}: {error.pgerror}"

        fail()  # the wrapper opens what it keeps open
        before = _wrapper_backends(observer)
        for _ in range(20):
            fail()
        deadline = time.monotonic() + 5  # a connection being closed takes a moment to end
        while (after := _wrapper_backends(observer)) > before and time.monotonic() < deadline:
            time.sleep(0.1)
        assert after <= before, f"{after - before} more pgml_fdw backends after 20 failed predictions"
        assert standby.one("SELECT pgml.score(%s, %s::jsonb)", (name, FEATURES)) == pytest.approx(7)
    finally:
        observer.close()
