"""0.5.0's PostgresML surfaces under the rules of model ownership and consistency: projects,
PostgresML's pgml.train, pgml.load_dataset, pgml.explain and uids written by hand.

Two roles with only the documented grants (README, Privileges). Each test here failed on 0.5.0
(fixed in 0.5.1).
"""
from __future__ import annotations

import os
from typing import Iterator, Tuple

import psycopg2
import pytest

from conftest import Session, linear_rows, make_table, role

TRAINING_GRANTS = ["GRANT INSERT, SELECT (id) ON pgml.training_runs TO {role}",
                   "GRANT SELECT ON pgml.predictions TO {role}"]
TOKEN = f"aud{os.getpid()}"  # in project names: this run's own
VIRGINICA = "ARRAY[6.5, 3.0, 5.8, 2.2]"  # an iris of class 2


@pytest.fixture
def audit_roles(db: Session) -> Iterator[Tuple[Session, Session, str, str]]:
    """alice and mallory may train and predict; alice may read aud_line (y = 3x + 1)."""
    alice = role(db, "pgml_aud_alice", TRAINING_GRANTS, schema=True)
    mallory = role(db, "pgml_aud_mallory", TRAINING_GRANTS, schema=True)
    make_table(db, "aud_line", "x float8, y float8", linear_rows())
    db.run(f"GRANT SELECT ON aud_line TO {alice}")
    as_alice, as_mallory = Session(alice), Session(mallory)
    yield as_alice, as_mallory, alice, mallory
    as_alice.close()
    as_mallory.close()
    db.run("DELETE FROM pgml.model_names WHERE name IN (SELECT model FROM pgml.project_names WHERE name LIKE %s)",
           (f"%{TOKEN}%",))
    db.run("DELETE FROM pgml.model_names WHERE name LIKE 'aud\\_%'")


# --------------------------------------------------------------------------------------------------
# Rule 3: a rolled-back or deleted model is never served, by any backend
# --------------------------------------------------------------------------------------------------

def test_rolled_back_project_model_is_not_explained_by_uid(audit_roles) -> None:
    """A PostgresML project trained in a savepoint that is rolled back: its model never existed, yet
    the backend that trained it keeps its bytes by uid, and pgml._model_explanations (granted to
    PUBLIC in 0.5.0) and pgml.predictions serve it to whoever names that uid."""
    as_alice, _, _, _ = audit_roles
    project = f"Rolled Back {TOKEN}"
    session = as_alice
    session.conn.autocommit = False
    session.run("SAVEPOINT s")
    session.one("SELECT * FROM pgml.train(%s, 'regression'::pgml.task, 'aud_line', 'y')", (project,))
    model = session.one("SELECT model FROM pgml.project_names WHERE name = %s", (project,))
    uid = session.one("SELECT pgml._find(%s)", (model,))
    assert uid is not None
    session.run("ROLLBACK TO SAVEPOINT s")
    assert session.one("SELECT pgml._find(%s)", (model,)) is None  # gone in SQL
    for query in ("SELECT contribution FROM pgml._model_explanations WHERE model = %s AND features = '[2]'",
                  "SELECT prediction FROM pgml.predictions WHERE model = %s AND features = '[2]'"):
        session.run("SAVEPOINT probe")
        with pytest.raises(psycopg2.Error) as caught:
            rows = session.rows(query, (uid,))
            raise AssertionError(f"the rolled-back model was served by uid: {query} -> {rows}")
        assert caught.value.pgcode == "42704", caught.value.pgerror
        session.run("ROLLBACK TO SAVEPOINT probe")
    session.conn.rollback()
    # Nor after the whole transaction rolled back.
    session.conn.autocommit = True
    error = session.error("SELECT contribution FROM pgml._model_explanations WHERE model = %s AND features = '[2]'",
                          (uid,))
    assert error.pgcode == "42704", error.pgerror


def test_deleted_model_is_not_explained_by_uid_from_a_backends_cache(db: Session, audit_roles) -> None:
    """A version deleted (and committed) is served no more: a backend that had it cached still
    explains and predicts it by uid, while a fresh backend says it does not exist."""
    as_alice, _, _, _ = audit_roles
    project = f"Deleted {TOKEN}"
    as_alice.one("SELECT * FROM pgml.train(%s, 'regression'::pgml.task, 'aud_line', 'y')", (project,))
    model = db.one("SELECT model FROM pgml.project_names WHERE name = %s", (project,))
    uid = as_alice.one("SELECT pgml._find(%s)", (model,))
    assert as_alice.one("SELECT pgml.predict(%s, ARRAY[2.0])", (project,)) == pytest.approx(7, abs=0.05)
    assert len(as_alice.rows("SELECT * FROM pgml.explain(%s, ARRAY[2.0])", (project,))) == 2
    db.run("DELETE FROM pgml.model_names WHERE name = %s", (model,))
    assert as_alice.error("SELECT pgml.predict(%s, ARRAY[2.0])", (project,)).pgcode == "42704"
    for query in ("SELECT contribution FROM pgml._model_explanations WHERE model = %s AND features = '[2]'",
                  "SELECT prediction FROM pgml.predictions WHERE model = %s AND features = '[2]'"):
        with pytest.raises(psycopg2.Error) as caught:
            rows = as_alice.rows(query, (uid,))
            raise AssertionError(f"the deleted model was served by uid: {query} -> {rows}")
        assert caught.value.pgcode == "42704", caught.value.pgerror


def test_a_forged_context_does_not_unlock_a_deleted_models_uid(db: Session, audit_roles) -> None:
    """pgml.changed is a setting any role may write: saying "too many changes to list" ('!') must
    not let a uid written by hand reach a model this backend still holds after its deletion."""
    as_alice, _, _, _ = audit_roles
    as_alice.one("SELECT pgml.train('aud_line', 'y', name => 'aud_forged')")
    uid = as_alice.one("SELECT pgml._find('aud_forged')")
    assert as_alice.one("SELECT pgml.score('aud_forged', 2.0)") == pytest.approx(7, abs=0.05)  # cached now
    db.run("DELETE FROM pgml.model_names WHERE name = 'aud_forged'")
    session = as_alice
    session.conn.autocommit = False
    session.one("SELECT txid_current()")
    session.one("SELECT set_config('pgml.changed', txid_current()::text || ' !', true)")
    with pytest.raises(psycopg2.Error) as caught:
        rows = session.rows("SELECT prediction FROM pgml.predictions WHERE model = %s AND features = '[2]'", (uid,))
        raise AssertionError(f"the deleted model was served by uid under a forged context: {rows}")
    assert caught.value.pgcode == "42704", caught.value.pgerror
    session.conn.rollback()
    session.conn.autocommit = True


def test_a_callers_own_condition_sees_no_explanation_of_a_deleted_model(db: Session, audit_roles) -> None:
    """pgml._model_explanations is no security barrier: a cheap condition of the caller's could run
    before a check in the view's. The wrapper checks the uid before it explains anything."""
    as_alice, _, alice, _ = audit_roles
    as_alice.one("SELECT pgml.train('aud_line', 'y', name => 'aud_leaky')")
    uid = as_alice.one("SELECT pgml._find('aud_leaky')")
    assert len(as_alice.rows("SELECT * FROM pgml.explain('aud_leaky', '[2]'::jsonb)")) == 2  # cached now
    as_alice.run("CREATE FUNCTION pg_temp.seen(c float8) RETURNS boolean LANGUAGE plpgsql COST 0.0001 AS "
                 "$$ BEGIN RAISE NOTICE 'seen %', c; RETURN true; END $$")
    db.run("DELETE FROM pgml.model_names WHERE name = 'aud_leaky'")
    as_alice.conn.notices.clear()
    error = as_alice.error("SELECT 1 FROM pgml._model_explanations WHERE pg_temp.seen(contribution) "
                           "AND model = %s AND features = '[2]'", (uid,))
    assert error.pgcode == "42704", error.pgerror
    # At most the error row went by, which holds no contribution.
    assert [n.strip() for n in as_alice.conn.notices if "seen" in n] in ([], ["NOTICE:  seen <NULL>"]), \
        as_alice.conn.notices


# --------------------------------------------------------------------------------------------------
# Rule 2: a role with the documented grants cannot change what another role's application is served
# --------------------------------------------------------------------------------------------------

@pytest.fixture
def iris_loaded_by(db: Session, audit_roles) -> Iterator[None]:
    """pgml.iris as mallory loads it (she got there first), put back as the suite loads it afterwards."""
    _, as_mallory, _, _ = audit_roles
    db.run("DROP TABLE IF EXISTS pgml.iris")
    db.run("DELETE FROM pgml.dataset_tables WHERE name = 'iris'")
    assert as_mallory.one("SELECT * FROM pgml.load_dataset('iris')") == ("pgml.iris", 150)
    yield
    db.run("DROP TABLE IF EXISTS pgml.iris")
    db.run("DELETE FROM pgml.dataset_tables WHERE name = 'iris'")
    db.rows("SELECT * FROM pgml.load_dataset('iris')")


def test_dataset_loader_cannot_change_what_another_roles_project_serves(db: Session, audit_roles,
                                                                        iris_loaded_by: None) -> None:
    """mallory loaded pgml.iris first (PostgresML's walkthroughs all start with load_dataset), so
    alice trains her project on mallory's table. mallory loads it again with a limit: only the
    first 100 rows, classes 0 and 1. alice retrains her project as PostgresML does
    (pgml.train(project), on its last training data): the same relation, target and features, so
    auto-deploy compares scores, and the two-class model's f1 of 1.0 beats 0.97: alice's
    application now never predicts class 2."""
    as_alice, as_mallory, _, _ = audit_roles
    project = f"Iris {TOKEN}"
    as_alice.one("SELECT * FROM pgml.train(%s, 'classification'::pgml.task, 'pgml.iris', 'target')", (project,))
    assert as_alice.one(f"SELECT pgml.predict(%s, {VIRGINICA})", (project,)) == 2.0
    error = as_mallory.error("SELECT * FROM pgml.load_dataset('iris', \"limit\" => 100)")
    assert error.pgcode == "42501" and "were trained on it" in error.pgerror, error.pgerror
    assert as_mallory.one("SELECT count(*) FROM pgml.iris") == 150
    as_alice.one("SELECT * FROM pgml.train(%s)", (project,))
    assert as_alice.one(f"SELECT pgml.predict(%s, {VIRGINICA})", (project,)) == 2.0, \
        "mallory's reload of pgml.iris changed the model alice's project serves"


# --------------------------------------------------------------------------------------------------
# What other roles may learn of a project: its name and model only (README, Privileges)
# --------------------------------------------------------------------------------------------------

def test_other_roles_cannot_read_a_projects_training_data(db: Session, audit_roles) -> None:
    """README: "Project names and their model names are readable by any role". pgml._project, a
    SECURITY DEFINER function PUBLIC may execute, hands anyone the whole row: the relation, target,
    test_size and preprocessing; and training another role's project names its relation."""
    as_alice, as_mallory, _, _ = audit_roles
    nobody = role(db, "pgml_aud_nobody")
    as_nobody = Session(nobody)
    project = f"Secret {TOKEN}"
    try:
        as_alice.one("SELECT * FROM pgml.train(%s, 'regression'::pgml.task, 'aud_line', 'y', "
                     "preprocess => '{\"x\": {\"impute\": \"min\"}}')", (project,))
        for session in (as_mallory, as_nobody):
            try:
                leaked = session.rows("SELECT relation, y_column, preprocess FROM pgml._project(%s)", (project,))
            except psycopg2.Error as exc:
                assert exc.pgcode == "42501", exc.pgerror
            else:
                assert leaked == [(None, None, None)], f"another role reads the project's training data: {leaked}"
        error = as_mallory.error("SELECT * FROM pgml.train(%s)", (project,))
        assert error.pgcode == "42501" and "aud_line" not in error.pgerror, error.pgerror
    finally:
        as_nobody.close()


def test_load_dataset_does_not_drop_a_table_it_did_not_make(db: Session, audit_roles) -> None:
    """pgml.dataset_tables keys its rows by name, not by table: once the table mallory loaded is
    dropped (by an administrator, say) its row stays, and a table of that name made later by
    someone else passes for hers. load_dataset, running as the extension's owner, drops it."""
    _, as_mallory, _, _ = audit_roles
    db.run("DROP TABLE IF EXISTS pgml.linnerud")
    db.run("DELETE FROM pgml.dataset_tables WHERE name = 'linnerud'")
    try:
        assert as_mallory.one("SELECT * FROM pgml.load_dataset('linnerud')") == ("pgml.linnerud", 20)
        db.run("DROP TABLE pgml.linnerud")
        db.run("CREATE TABLE pgml.linnerud (kept text)")
        db.run("INSERT INTO pgml.linnerud VALUES ('the administrator''s row')")
        try:
            as_mallory.rows("SELECT * FROM pgml.load_dataset('linnerud')")
        except psycopg2.Error as exc:
            assert exc.pgcode in ("42P07", "42501"), exc.pgerror
        assert db.rows("SELECT * FROM pgml.linnerud") == [("the administrator's row",)], \
            "mallory's load_dataset dropped a table of schema pgml she did not load"
    finally:
        db.run("DROP TABLE IF EXISTS pgml.linnerud")
        db.run("DELETE FROM pgml.dataset_tables WHERE name = 'linnerud'")
