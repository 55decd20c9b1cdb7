"""Exactly the committed state is served: by every backend, after savepoints, rollbacks, failed
statements, deleted versions and deployments made through other connections.

Each test checks what is *served* (a prediction), not only what is stored.
"""
from __future__ import annotations

import psycopg2
import pytest

from conftest import Session, linear_rows, make_table


@pytest.fixture(scope="module")
def tables(database: None) -> None:
    db = Session()
    make_table(db, "cs_up", "x float8, y float8", linear_rows())                       # y = 3x + 1
    make_table(db, "cs_down", "x float8, y float8", [(x, -x) for x, _ in linear_rows()])  # y = -x
    db.close()


UP, DOWN = 7.0, -2.0  # their predictions at x = 2


def by_name(session: Session, ref: str) -> float:
    return session.one("SELECT prediction FROM pgml.predictions WHERE model = %s AND features = '[2]'", (ref,))


def scored(session: Session, ref: str) -> float:
    return session.one("SELECT pgml.score(%s, 2.0)", (ref,))


def train_up_then_down(db: Session, name: str) -> None:
    """Version 1 of ``name`` on cs_up, deployed (it answers UP); version 2 on cs_down, not deployed."""
    db.one("SELECT pgml.train('cs_up', 'y', name => %s)", (name,))
    db.one("SELECT pgml.train('cs_down', 'y', name => %s, deploy => false)", (name,))


def test_rolled_back_savepoint_is_never_served(db: Session, tables: None, name: str) -> None:
    db.one("SELECT pgml.train('cs_up', 'y', name => %s)", (name,))
    session = Session(autocommit=False)
    assert by_name(session, name) == pytest.approx(UP, abs=0.05)
    session.run("SAVEPOINT s")
    assert session.one("SELECT pgml.train('cs_down', 'y', name => %s)", (name,)) == f"{name}_2"
    # Inside the savepoint the new version is deployed (other data) and served, by name and id.
    assert by_name(session, name) == pytest.approx(DOWN, abs=0.05)
    assert scored(session, f"{name}_2") == pytest.approx(DOWN, abs=0.05)
    session.run("ROLLBACK TO SAVEPOINT s")
    assert by_name(session, name) == pytest.approx(UP, abs=0.05)
    assert scored(session, name) == pytest.approx(UP, abs=0.05)
    for query in ("SELECT prediction FROM pgml.predictions WHERE model = %s AND features = '[2]'",
                  "SELECT pgml.score(%s, 2.0)"):
        session.run("SAVEPOINT probe")
        error = session.error_in_transaction(query, (f"{name}_2",))
        assert error.pgcode == "42704", error.pgerror
        session.run("ROLLBACK TO SAVEPOINT probe")
    session.conn.commit()
    # The id the rolled-back run returned never names another model: the next run, in another
    # session, gets the next number, and this backend, which had the rolled-back model in hand
    # under that id, never serves it again.
    other = Session()
    assert other.one("SELECT pgml.train('cs_up', 'y', name => %s, deploy => false)", (name,)) == f"{name}_3"
    other.close()
    session.conn.autocommit = True
    for query in ("SELECT prediction FROM pgml.predictions WHERE model = %s AND features = '[2]'",
                  "SELECT pgml.score(%s, 2.0)"):
        assert session.error(query, (f"{name}_2",)).pgcode == "42704"
    assert by_name(session, f"{name}_3") == pytest.approx(UP, abs=0.05)
    assert scored(session, f"{name}_3") == pytest.approx(UP, abs=0.05)
    session.close()


def test_failed_statement_after_training_is_never_served(db: Session, tables: None, name: str) -> None:
    db.one("SELECT pgml.train('cs_up', 'y', name => %s)", (name,))
    session = Session(autocommit=False)
    session.run("SAVEPOINT before_statement")  # what psql's ON_ERROR_ROLLBACK and ORMs do
    with pytest.raises(psycopg2.Error):
        session.run("SELECT pgml.train('cs_down', 'y', name => %s), 1 / 0", (name,))
    session.run("ROLLBACK TO SAVEPOINT before_statement")
    assert by_name(session, name) == pytest.approx(UP, abs=0.05)
    session.conn.commit()
    assert db.rows("SELECT version FROM pgml.model_versions WHERE name = %s", (name,)) == [(1,)]
    session.close()


def test_own_uncommitted_deployment_served_then_rolled_back(db: Session, tables: None, name: str) -> None:
    train_up_then_down(db, name)
    session = Session(autocommit=False)
    assert by_name(session, name) == pytest.approx(UP, abs=0.05)
    session.one("SELECT pgml.deploy(%s, 2)", (name,))
    assert by_name(session, name) == pytest.approx(DOWN, abs=0.05)
    assert scored(session, name) == pytest.approx(DOWN, abs=0.05)
    assert by_name(db, name) == pytest.approx(UP, abs=0.05)  # not committed: others see version 1
    session.conn.rollback()
    assert by_name(session, name) == pytest.approx(UP, abs=0.05)
    session.one("SELECT pgml.deploy(%s, 2)", (name,))
    session.conn.commit()
    assert by_name(db, name) == pytest.approx(DOWN, abs=0.05)
    session.close()


def test_deployment_through_another_connection_is_served_next_statement(db: Session, tables: None, name: str) -> None:
    train_up_then_down(db, name)
    reader = Session()
    for version, expected in [(2, DOWN), (1, UP)] * 25:
        db.one("SELECT pgml.deploy(%s, %s)", (name, version))
        assert by_name(reader, name) == pytest.approx(expected, abs=0.05)
        assert reader.one("SELECT version FROM pgml.predictions WHERE model = %s AND features = '[2]'",
                          (name,)) == version
    reader.close()


def test_repeatable_read_sees_its_snapshot(db: Session, tables: None, name: str) -> None:
    train_up_then_down(db, name)
    session = Session(autocommit=False)
    session.run("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
    assert by_name(session, name) == pytest.approx(UP, abs=0.05)
    db.one("SELECT pgml.deploy(%s, 2)", (name,))
    assert scored(session, name) == pytest.approx(UP, abs=0.05)
    session.conn.commit()
    assert by_name(session, name) == pytest.approx(DOWN, abs=0.05)
    session.close()


def test_deleted_versions_are_not_served_and_numbers_not_reused(db: Session, tables: None, name: str) -> None:
    db.one("SELECT pgml.train('cs_up', 'y', name => %s)", (name,))
    db.one("SELECT pgml.train('cs_down', 'y', name => %s)", (name,))
    reader = Session()
    assert by_name(reader, name) == pytest.approx(DOWN, abs=0.05)
    assert scored(reader, f"{name}_2") == pytest.approx(DOWN, abs=0.05)
    db.run("DELETE FROM pgml.model_versions WHERE id = %s", (f"{name}_2",))
    # Its deployments went with it: the name answers with the version deployed before.
    assert by_name(reader, name) == pytest.approx(UP, abs=0.05)
    for query in ("SELECT pgml.score(%s, 2.0)",
                  "SELECT prediction FROM pgml.predictions WHERE model = %s AND features = '[2]'"):
        assert reader.error(query, (f"{name}_2",)).pgcode == "42704"
    assert db.one("SELECT pgml.train('cs_down', 'y', name => %s)", (name,)) == f"{name}_3"
    # Deleting the name deletes every version.
    db.run("DELETE FROM pgml.model_names WHERE name = %s", (name,))
    assert reader.error("SELECT pgml.score(%s, 2.0)", (name,)).pgcode == "42704"
    assert reader.error("SELECT prediction FROM pgml.predictions WHERE model = %s AND features = '[2]'",
                        (name,)).pgcode == "42704"
    # Trained again, the name goes on from its last number: no id comes back.
    assert db.one("SELECT pgml.train('cs_up', 'y', name => %s)", (name,)) == f"{name}_4"
    for old in (f"{name}_1", f"{name}_2", f"{name}_3"):
        assert reader.error("SELECT pgml.score(%s, 2.0)", (old,)).pgcode == "42704"
    reader.close()


def test_uncommitted_delete_is_seen_by_its_own_transaction(db: Session, tables: None, name: str) -> None:
    db.one("SELECT pgml.train('cs_up', 'y', name => %s)", (name,))
    session = Session(autocommit=False)
    assert by_name(session, name) == pytest.approx(UP, abs=0.05)
    session.run("DELETE FROM pgml.model_names WHERE name = %s", (name,))
    session.run("SAVEPOINT s")
    assert session.error_in_transaction(
        "SELECT prediction FROM pgml.predictions WHERE model = %s AND features = '[2]'", (name,)).pgcode == "42704"
    session.run("ROLLBACK TO SAVEPOINT s")
    session.conn.rollback()
    assert by_name(session, name) == pytest.approx(UP, abs=0.05)
    session.close()


def test_concurrent_serializable_commits_of_model_changes(db: Session, tables: None, name: str) -> None:
    """Publishing a change at commit must not make transactions that commit at the same time fail
    with a serialization error."""
    other = f"{name}b"
    train_up_then_down(db, name)
    db.one("SELECT pgml.train('cs_up', 'y', name => %s)", (other,))
    first, second = Session(autocommit=False), Session(autocommit=False)
    for session in (first, second):
        session.run("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE")
        session.one("SELECT 1")  # takes the snapshot
    first.one("SELECT pgml.deploy(%s, 2)", (name,))
    second.one("SELECT pgml.deploy(%s, 1)", (other,))
    first.conn.commit()
    second.conn.commit()
    assert by_name(db, name) == pytest.approx(DOWN, abs=0.05)
    first.close()
    second.close()
    db.run("DELETE FROM pgml.model_names WHERE name = %s", (other,))


def test_settings_set_by_hand_change_nothing(db: Session, tables: None, name: str) -> None:
    """pgml.changed and pgml.published are the extension's transaction-local notes: a session-level
    SET of them (which a transaction pooler hands to the next client) must not change an answer
    nor stop a deployment from being seen."""
    train_up_then_down(db, name)
    meddler, reader = Session(), Session()
    meddler.run("SET pgml.changed = %s", (f"1 * {name}=abc !",))
    meddler.run("SET pgml.published = 'yes'")
    assert by_name(meddler, name) == pytest.approx(UP, abs=0.05)
    assert by_name(reader, name) == pytest.approx(UP, abs=0.05)
    meddler.one("SELECT pgml.deploy(%s, 2)", (name,))
    assert by_name(reader, name) == pytest.approx(DOWN, abs=0.05)
    assert by_name(meddler, name) == pytest.approx(DOWN, abs=0.05)
    meddler.close()
    reader.close()


def test_the_internal_table_without_a_context_says_so(db: Session, tables: None, name: str) -> None:
    db.one("SELECT pgml.train('cs_up', 'y', name => %s)", (name,))
    error = db.one("SELECT error FROM pgml._predictions WHERE model = %s AND features = '[2]'", (name,))
    assert (error["sqlstate"], error["message"]) == ("22023", "pgml.predictions was called without its context")
    assert "the view pgml.predictions" in error["hint"]
