"""Bad input: an ERROR that names the problem and the fix, no model left behind, the backend alive."""
from __future__ import annotations

import pytest

from conftest import Session, linear_rows, make_table, role


@pytest.fixture
def line(db: Session) -> str:
    return make_table(db, "err_line", "x float8, y float8", linear_rows(100))


@pytest.mark.parametrize(
    "call, message, hint",
    [
        ("pgml.train('no_such_table', 'y', name => %s)", 'relation "no_such_table" does not exist', "table or view"),
        ("pgml.train('err_line', 'nope', name => %s)", 'column "nope" does not exist', "x, y"),
        ("pgml.train('err_line', 'y', 'no_such_algorithm', name => %s)", "no_such_algorithm", "linear"),
        ("pgml.train('err_line', 'y', hyperparams => '{\"bogus\": 1}', name => %s)", "bogus", "fit_intercept"),
        ("pgml.train('err_nulls', 'y', name => %s)", "no rows", "known value"),
        ("pgml.train('err_empty', 'y', name => %s)", "no rows", "known value"),
        ("pgml.train('err_line', 'y', test_size => 1.5, name => %s)", "test_size", "held-out"),
    ],
)
def test_training_errors(db: Session, line: str, name: str, call: str, message: str, hint: str) -> None:
    make_table(db, "err_nulls", "x float8, y float8", [(1.0, None), (2.0, None)])
    make_table(db, "err_empty", "x float8, y float8", [])
    pid = db.pid()
    error = db.error(f"SELECT {call}", (name,))
    assert message in error.diag.message_primary
    assert hint in (error.diag.message_hint or "")
    assert db.pid() == pid
    assert db.one("SELECT count(*) FROM pgml.model_versions WHERE name = %s", (name,)) == 0


def test_prediction_errors(db: Session, line: str, name: str) -> None:
    db.one("SELECT pgml.train('err_line', 'y', name => %s)", (name,))
    pid = db.pid()
    cases = [
        ("SELECT pgml.score('no_such_model', 1.0)", "no model", "pgml.models"),
        (f"SELECT prediction FROM pgml.predictions WHERE model = '{name}' AND features = '[1, 2]'",
         "takes 1 features, not 2", "x"),
        (f"SELECT prediction FROM pgml.predictions WHERE model = '{name}' AND features = '{{\"z\": 1}}'",
         "no feature 'z'", "x"),
        (f"SELECT prediction FROM pgml.predictions WHERE model = '{name}' AND features = '[\"abc\"]'",
         "cannot take the value 'abc'", "number"),
        (f"SELECT prediction FROM pgml.predictions WHERE model = '{name}' AND features = '[1e400]'",
         "cannot take the value 1000", "number"),
        (f"SELECT prediction FROM pgml.predictions WHERE model = '{name}'", "needs WHERE model", "features"),
    ]
    for query, message, hint in cases:
        error = db.error(query)
        assert message in error.diag.message_primary, query
        assert hint in (error.diag.message_hint or ""), query
    assert db.pid() == pid


def test_role_without_select_cannot_train(db: Session, line: str, name: str) -> None:
    intruder = role(db, "pgml_intruder", ["GRANT INSERT, SELECT (id) ON pgml.training_runs TO {role}",
                                          "GRANT SELECT ON pgml.predictions TO {role}"])
    session = Session(user=intruder)
    error = session.error("SELECT pgml.train('err_line', 'y', name => %s)", (name,))
    assert "permission denied" in error.diag.message_primary
    assert "GRANT SELECT" in error.diag.message_hint
    session.close()
    assert db.one("SELECT count(*) FROM pgml.model_versions WHERE name = %s", (name,)) == 0


def test_training_reads_with_the_callers_row_level_security(db: Session, name: str) -> None:
    make_table(db, "err_rls", "x float8, y float8, owner text",
               [(x, y, "mine") for x, y in linear_rows(60)] + [(x, -y, "theirs") for x, y in linear_rows(60, seed=1)])
    trainer = role(db, "pgml_trainer", ["GRANT INSERT, SELECT (id) ON pgml.training_runs TO {role}",
                                        "GRANT SELECT ON err_rls TO {role}"])
    db.run("ALTER TABLE err_rls ENABLE ROW LEVEL SECURITY")
    db.run("CREATE POLICY only_mine ON err_rls FOR SELECT USING (owner = 'mine')")
    session = Session(user=trainer)
    model_id = session.one("SELECT pgml.train('err_rls', 'y', name => %s)", (name,))
    session.close()
    rows = db.one("SELECT train_rows + test_rows FROM pgml.model_versions WHERE id = %s", (model_id,))
    assert rows == 60  # only the rows the policy lets the trainer see


@pytest.mark.parametrize("escalation", ["SET SESSION AUTHORIZATION postgres", "SET ROLE postgres", "RESET ROLE"])
def test_view_code_cannot_take_over_the_wrappers_connection(db: Session, name: str, escalation: str) -> None:
    """The wrapper reads a trainer's view on a connection of the extension owner's: code in the
    view runs inside a function owned by the trainer, where PostgreSQL refuses to change role."""
    # Its objects go in its own schema: as from PostgreSQL 15, PUBLIC may not create in public.
    trainer = role(db, "pgml_sneaky", ["GRANT INSERT, SELECT (id) ON pgml.training_runs TO {role}"], schema=True)
    session = Session(user=trainer)
    session.run(f"CREATE FUNCTION sneaky_escalate() RETURNS float8 LANGUAGE plpgsql VOLATILE AS "
                f"$$ BEGIN {escalation}; RETURN 0; END $$")
    session.run("CREATE TABLE sneaky_data AS SELECT g::float8 AS x, 2.0 * g AS y FROM generate_series(1, 50) g")
    session.run("CREATE VIEW sneaky_view AS SELECT x, y + sneaky_escalate() AS y FROM sneaky_data")
    error = session.error(f"SELECT pgml.train('{trainer}.sneaky_view', 'y', name => %s)", (name,))
    session.close()
    assert "cannot set parameter" in error.diag.message_primary
    assert "within security-definer function" in error.diag.message_primary
    assert db.one("SELECT count(*) FROM pgml.model_versions WHERE name = %s", (name,)) == 0


def test_a_trainer_cannot_claim_another_role(db: Session, line: str, name: str) -> None:
    """trained_by is always the role whose INSERT it is, whatever the row says; the function that
    trains as the extension owner cannot be called, nor attached to another table."""
    trainer = role(db, "pgml_claimer", ["GRANT INSERT, SELECT (id) ON pgml.training_runs TO {role}",
                                        "GRANT SELECT ON err_line TO {role}"])
    session = Session(user=trainer)
    session.run("INSERT INTO pgml.training_runs (relation, y_column, name, trained_by) "
                "VALUES ('err_line', 'y', %s, 'postgres')", (name,))
    assert db.one("SELECT trained_by FROM pgml.model_versions WHERE name = %s", (name,)) == trainer
    assert session.error("SELECT pgml._train()").pgcode == "42501"
    session.run("CREATE TEMP TABLE claims (a int)")
    assert session.error("CREATE TRIGGER claim AFTER INSERT ON claims "
                         "FOR EACH ROW EXECUTE FUNCTION pgml._train()").pgcode == "42501"
    session.close()


def test_code_in_a_trainers_view_runs_as_the_trainer(db: Session, name: str) -> None:
    """Planning a view constant-folds its immutable functions: the wrapper's privileged connection
    must never plan a trainer's view, or their code would run as the extension owner."""
    trainer = role(db, "pgml_planner", ["GRANT INSERT, SELECT (id) ON pgml.training_runs TO {role}"], schema=True)
    session = Session(user=trainer)
    session.run("CREATE TABLE seen_as (who name)")
    session.run("CREATE FUNCTION record_user() RETURNS boolean LANGUAGE plpgsql VOLATILE AS "
                "$$ BEGIN INSERT INTO seen_as VALUES (current_user); RETURN true; END $$")
    session.run("CREATE FUNCTION looks_pure() RETURNS boolean LANGUAGE sql IMMUTABLE AS $$ SELECT record_user() $$")
    session.run("CREATE TABLE planner_data AS SELECT g::float8 AS x, 2.0 * g AS y FROM generate_series(1, 50) g")
    session.run("CREATE VIEW planner_view AS SELECT x, y FROM planner_data WHERE looks_pure()")
    session.one(f"SELECT pgml.train('{trainer}.planner_view', 'y', name => %s)", (name,))
    assert {r[0] for r in session.rows("SELECT who FROM seen_as")} <= {trainer}
    session.close()


@pytest.mark.parametrize("condition", ["model IN ('{m}', 'other')", "model LIKE '{m}%'", "features @> '{{\"x\": 1}}'"])
def test_a_condition_other_than_equality_on_a_key_is_refused(db: Session, line: str, name: str, condition: str) -> None:
    """Only "=" says what to compute: anything else could drop the row that carries an error, and
    the query would answer nothing instead of saying why."""
    pid = db.pid()
    where = condition.format(m=name)
    error = db.error(f"SELECT prediction FROM pgml.predictions WHERE {where} AND model = 'nope' AND features = '[1]'")
    assert "with = only" in error.diag.message_detail
    assert db.pid() == pid


def test_a_lock_held_by_the_callers_own_transaction_is_a_clear_error(db: Session, line: str, name: str) -> None:
    """Training reads through another connection: a lock the caller's transaction holds on the
    relation would make it wait forever; it waits a few seconds and says why."""
    session = Session(autocommit=False)
    session.run("LOCK TABLE err_line IN ACCESS EXCLUSIVE MODE")
    error = session.error("SELECT pgml.train('err_line', 'y', name => %s)", (name,))
    assert error.pgcode == "55P03" and "waited too long for a lock" in error.diag.message_primary
    session.close()
