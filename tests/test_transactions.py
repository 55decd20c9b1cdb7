"""A training run belongs to the caller's transaction, whatever the session has done before."""
from __future__ import annotations

import threading

import psycopg2
import pytest

from conftest import DATABASE, MAINTENANCE, Session, dsn, linear_rows, make_table

# Named after the run's database, so that a run on a PGML_TEST_DSN server removes it with the rest.
FRESH = f"{DATABASE}_fresh"


@pytest.fixture
def line(db: Session) -> str:
    return make_table(db, "tx_line", "x float8, y float8", linear_rows())


def versions(db: Session, name: str) -> list:
    return [r[0] for r in db.rows("SELECT version FROM pgml.model_versions WHERE name = %s ORDER BY 1", (name,))]


def test_rollback_leaves_no_model(db: Session, line: str, name: str) -> None:
    session = Session(autocommit=False)
    assert session.one("SELECT pgml.train('tx_line', 'y', name => %s)", (name,)) == f"{name}_1"
    session.conn.rollback()
    session.close()
    assert versions(db, name) == []
    assert db.one("SELECT count(*) FROM pgml.deployments WHERE name = %s", (name,)) == 0
    # Its number is not given again, as a sequence's would not be, and nothing answers for it.
    assert db.one("SELECT pgml.train('tx_line', 'y', name => %s)", (name,)) == f"{name}_2"
    assert db.one("SELECT pgml.score(%s, 1.0)", (name,)) == pytest.approx(4, abs=0.05)
    assert db.error("SELECT pgml.score(%s, 1.0)", (f"{name}_1",)).pgcode == "42704"


def test_train_then_score_in_one_transaction(db: Session, line: str, name: str) -> None:
    session = Session(autocommit=False)
    model_id = session.one("SELECT pgml.train('tx_line', 'y', name => %s)", (name,))
    assert session.one("SELECT pgml.score(%s, 2.0)", (model_id,)) == pytest.approx(7, abs=0.05)
    by_name = session.one("SELECT prediction FROM pgml.predictions WHERE model = %s AND features = '[2]'", (name,))
    assert by_name == pytest.approx(7, abs=0.05)
    # Another session sees nothing until the commit.
    assert versions(db, name) == []
    session.conn.commit()
    assert versions(db, name) == [1]
    assert db.one("SELECT pgml.score(%s, 2.0)", (name,)) == pytest.approx(7, abs=0.05)
    session.close()


def test_rolled_back_model_is_not_served_afterwards(db: Session, line: str, name: str) -> None:
    session = Session(autocommit=False)
    session.one("SELECT pgml.train('tx_line', 'y', name => %s)", (name,))
    session.conn.rollback()
    error = session.error("SELECT prediction FROM pgml.predictions WHERE model = %s AND features = '[2]'",
                          (f"{name}_1",))
    assert "no model" in error.pgerror
    session.close()


def test_savepoint_rollback_drops_only_its_run(db: Session, line: str, name: str) -> None:
    session = Session(autocommit=False)
    session.one("SELECT pgml.train('tx_line', 'y', name => %s)", (name,))
    session.run("SAVEPOINT s")
    session.one("SELECT pgml.train('tx_line', 'y', name => %s)", (name,))
    session.run("ROLLBACK TO SAVEPOINT s")
    session.conn.commit()
    session.close()
    assert versions(db, name) == [1]


def test_failed_statement_in_a_transaction_keeps_nothing(db: Session, line: str, name: str) -> None:
    session = Session(autocommit=False)
    session.error("SELECT pgml.train('tx_line', 'y', 'no_such_algorithm', name => %s)", (name,))
    session.one("SELECT pgml.train('tx_line', 'y', name => %s)", (name,))
    session.conn.commit()
    session.close()
    # The failed run took number 1, as a serial column's failed INSERT takes a value: a gap.
    assert versions(db, name) == [2]


def test_first_statements_after_create_extension(name: str, database: None) -> None:
    """A fresh database: the first statements right after CREATE EXTENSION, in the same session."""
    admin = psycopg2.connect(dsn(MAINTENANCE))
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS {FRESH} WITH (FORCE)")
        cur.execute(f"CREATE DATABASE {FRESH}")
    try:
        for autocommit in (True, False):
            conn = psycopg2.connect(dsn(FRESH))
            conn.autocommit = autocommit
            with conn.cursor() as cur:
                cur.execute("SELECT to_regclass('pgml.model_names') IS NOT NULL")
                if cur.fetchone()[0]:
                    cur.execute("TRUNCATE pgml.model_names CASCADE")  # DROP EXTENSION keeps models otherwise
                cur.execute("DROP EXTENSION IF EXISTS pgml_fdw")
                if not autocommit:
                    conn.commit()  # the drop; the extension is made anew inside the transaction
                cur.execute("CREATE EXTENSION pgml_fdw CASCADE")
                cur.execute("CREATE TABLE IF NOT EXISTS t AS SELECT x::float8, 2 * x::float8 AS y "
                            "FROM generate_series(1, 50) x")
                cur.execute("SELECT pgml.train('t', 'y', name => %s)", (name,))
                assert cur.fetchone()[0] == f"{name}_1"
                cur.execute("SELECT pgml.score(%s, 10.0)", (name,))
                assert cur.fetchone()[0] == pytest.approx(20, abs=1e-6)
            conn.close()
    finally:
        with admin.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS {FRESH} WITH (FORCE)")
        admin.close()


def test_concurrent_runs_of_one_name_get_distinct_versions(db: Session, line: str, name: str) -> None:
    results: list = []

    def train() -> None:
        session = Session()
        results.append(session.one("SELECT pgml.train('tx_line', 'y', name => %s)", (name,)))
        session.close()

    threads = [threading.Thread(target=train) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [f"{name}_1", f"{name}_2", f"{name}_3"]
    assert versions(db, name) == [1, 2, 3]


def test_new_version_reaches_other_sessions(db: Session, line: str, name: str) -> None:
    reader = Session()
    db.one("SELECT pgml.train('tx_line', 'y', name => %s)", (name,))
    first = reader.one("SELECT prediction FROM pgml.predictions WHERE model = %s AND features = '[1]'", (name,))
    make_table(db, "tx_line2", "x float8, y float8", [(x, 5 * x) for x, _ in linear_rows()])
    db.one("SELECT pgml.train('tx_line2', 'y', name => %s)", (name,))
    db.one("SELECT pgml.deploy(%s, 2)", (name,))
    # The notification travels asynchronously: wait for it briefly, as a client would retry.
    for _ in range(50):
        second = reader.one("SELECT prediction FROM pgml.predictions WHERE model = %s AND features = '[1]'", (name,))
        if second != first:
            break
        reader.one("SELECT pg_sleep(0.02)")
    assert first == pytest.approx(4, abs=0.05) and second == pytest.approx(5, abs=0.05)
    assert reader.one("SELECT pgml.score(%s, 1.0)", (name,)) == pytest.approx(5, abs=0.05)
    reader.close()


def test_a_transaction_that_changed_too_many_models_to_list_still_scores(db: Session, line: str, name: str) -> None:
    # The context lists the names a transaction changed up to a length, then only says "too many"
    # ('!'): pgml.predictions then cannot tell what a name stands for, the scoring functions resolve
    # it in SQL.
    db.one("SELECT pgml.train('tx_line', 'y', name => %s)", (name,))
    session = Session(autocommit=False)
    try:
        session.run("SELECT set_config('pgml.changed', txid_current()::text || repeat(' x', 11000), true)")
        assert session.one("SELECT pgml.train('tx_line', 'y', name => %s)", (name,)) == f"{name}_2"
        assert session.one("SELECT right(current_setting('pgml.changed'), 2)") == " !"
        assert session.one("SELECT pgml.score(%s, 2.0)", (name,)) == pytest.approx(7, abs=0.05)
        deployed = session.one("SELECT version FROM pgml.deployed_models WHERE name = %s", (name,))
        assert session.one("SELECT version FROM pgml.prediction(%s, '[2]'::jsonb)", (name,)) == deployed
        error = session.error_in_transaction(
            "SELECT prediction FROM pgml.predictions WHERE model = %s AND features = '[2]'", (name + "_other",))
        assert "too many models" in error.diag.message_primary
    finally:
        session.conn.rollback()
        session.close()
