"""0.4.0's and 0.5.0's surfaces (PostgresML's pgml.train, projects, pgml.deploy(project, strategy,
algorithm), pgml.load_dataset, pgml.predict / predict_proba on arrays and rows, pgml.explain,
pgml.decompose, pgml.score_table / score_into) under the rules for replicas and poolers: a hot standby
serves every read form from its own copy and refuses every write with 25006 and a message saying to
run it on the primary; read-your-writes through a transaction pooler; connections back that are few,
never leaked and not a superuser's; any database and role name.

Five of these failed on 0.5.0 (fixed in 0.5.1): score_into on a standby got PostgreSQL's bare
read-only error; a batch scoring held three connections back at once; predict_proba of a row, and
score_table and score_into, took no project name.
"""
from __future__ import annotations

import os
import threading
import time
from typing import Any, Iterator, List, Tuple

import psycopg2
import pytest
from psycopg2 import sql

from conftest import DATABASE, LOCAL_ROOT, NOT_LOCAL, Session, login_clause, make_table

if not LOCAL_ROOT:
    pytest.skip(f"{NOT_LOCAL} (its streaming standby and pgbouncer)", allow_module_level=True)

# The standby's and the pooler's fixtures and helpers: importing them skips this module as theirs
# are skipped (no standby started, no pgbouncer installed).
import test_pooler  # noqa: E402
import test_standby  # noqa: E402
from test_lifecycle import Db, create_database, drop_database  # noqa: E402
from test_pooler import connect  # noqa: E402
from test_standby import STANDBY_PORT, Standby, wait_for_replay  # noqa: E402

pooler = test_pooler.pooler  # the fixtures, as this module's own
standby = test_standby.standby

TOKEN = f"a{os.getpid()}"


def plane_rows(slope_a: float, slope_b: float, n: int = 60) -> List[Tuple[float, float, float]]:
    """(a, b, y) with y = slope_a * a + slope_b * b + 1, exactly."""
    return [(x / 4, float(x % 5), slope_a * x / 4 + slope_b * (x % 5) + 1) for x in range(n)]


def class_rows(n: int = 90) -> List[Tuple[float, float, int]]:
    """(a, b, label): three well separated classes."""
    return [(float(c * 10 + i % 3), float(c * 10 + i % 2), c) for i in range(n // 3) for c in range(3)]


@pytest.fixture
def project(db: Session) -> Iterator[str]:
    """A PostgresML project name of the test's own (not a model name: it has spaces); its model,
    and the project with it, go afterwards."""
    name = f"Audit {TOKEN} {os.urandom(3).hex()}"
    yield name
    db.run("DELETE FROM pgml.model_names WHERE name IN (SELECT model FROM pgml.project_names WHERE name = %s)",
           (name,))


def model_of(session: Session, project: str) -> str:
    return session.one("SELECT model FROM pgml.projects WHERE name = %s", (project,))


def two_algorithms(db: Session, project: str) -> None:
    """A regression project with a linear version (y = 3a + 2b + 1, deployed) and a ridge version
    (alpha large: clearly other predictions), both on audit_plane."""
    make_table(db, "audit_plane", "a float8, b float8, y float8", plane_rows(3, 2))
    db.rows("SELECT * FROM pgml.train(%s, 'regression', 'audit_plane', 'y')", (project,))
    db.rows("SELECT * FROM pgml.train(%s, algorithm => 'ridge', hyperparams => '{\"alpha\": 500}', "
            "automatic_deploy => false)", (project,))


def catch_up(db: Session, standby: Standby) -> None:
    wait_for_replay(standby, db.one("SELECT pg_current_wal_lsn()"))


def pgml_fdw_backends(session: Session, database: str = DATABASE) -> List[Tuple[Any, ...]]:
    """The wrapper's connections back into a database: by name or by the role they log in as."""
    return session.rows("SELECT pid, usename, application_name, state, query FROM pg_stat_activity "
                        "WHERE datname = %s AND (application_name LIKE 'pgml_fdw%%' OR usename = 'pgml_fdw')",
                        (database,))


def wait_none_left(session: Session, database: str = DATABASE, timeout: float = 5.0) -> List[Tuple[Any, ...]]:
    deadline = time.monotonic() + timeout
    while (left := pgml_fdw_backends(session, database)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


# --------------------------------------------------------------------------------------------------
# (a) The hot standby
# --------------------------------------------------------------------------------------------------

def test_postgresml_read_forms_answer_on_the_standby_as_on_the_primary(
        db: Session, standby: Standby, project: str) -> None:
    two_algorithms(db, project)
    classes = f"{project} classes"
    make_table(db, "audit_classes", "a float8, b float8, label int", class_rows())
    db.rows("SELECT * FROM pgml.train(%s, 'classification', 'audit_classes', 'label', 'random_forest')", (classes,))
    groups = f"{project} groups"
    db.rows("SELECT * FROM pgml.train(%s, 'clustering', 'audit_classes', algorithm => 'kmeans', "
            "hyperparams => '{\"n_clusters\": 3}')", (groups,))
    parts = f"{project} parts"
    db.rows("SELECT * FROM pgml.train(%s, 'decomposition', 'audit_plane', algorithm => 'pca', "
            "hyperparams => '{\"n_components\": 1}')", (parts,))
    make_table(db, "audit_plane_keyed", "id int, a float8, b float8",
               [(i, a, b) for i, (a, b, _) in enumerate(plane_rows(3, 2))])
    model = model_of(db, project)
    try:
        catch_up(db, standby)
        queries = [
            ("SELECT pgml.predict(%s, ARRAY[2, 1])", (project,)),
            ("SELECT pgml.predict(%s, ARRAY[2.0, 1.0])", (project,)),
            ("SELECT pgml.predict(%s, ARRAY[2, 1]::real[])", (project,)),
            ("SELECT pgml.predict(%s, ARRAY[2, 1]::float8[])", (project,)),
            ("SELECT pgml.predict(%s, ARRAY[2, 1]::bigint[])", (project,)),
            ("SELECT pgml.predict(%s, ROW(2.0, 1.0))", (project,)),
            ("SELECT pgml.predict(%s, p) FROM (SELECT a, b FROM audit_plane LIMIT 1) p", (project,)),
            ("SELECT pgml.predict(%s, ARRAY[2, 1])", (model,)),
            ("SELECT pgml.predict(%s, ARRAY[2, 1])", (f"{model}_2",)),
            ("SELECT pgml.predict(%s, ARRAY[0, 0])", (classes,)),
            ("SELECT pgml.predict_proba(%s, ARRAY[20, 20])", (classes,)),
            ("SELECT pgml.predict_proba(%s, ROW(20.0, 20.0))", (model_of(db, classes),)),
            ("SELECT pgml.predict(%s, ARRAY[10, 10, 1])", (groups,)),
            ("SELECT pgml.decompose(%s, '[2, 1, 7]'::jsonb)", (parts,)),
            ("SELECT pgml.decompose(%s, ROW(2.0, 1.0, 7.0))", (parts,)),
            ("SELECT array_agg(contribution ORDER BY feature) FROM pgml.explain(%s, ARRAY[2, 1])", (project,)),
            ("SELECT array_agg(contribution ORDER BY feature) FROM pgml.explain(%s, '{\"a\": 2, \"b\": 1}'::jsonb)",
             (model,)),
            ("SELECT count(*), sum(prediction) FROM pgml.score_table(%s, 'audit_plane_keyed', 'id')", (model,)),
            ("SELECT count(*), sum(prediction) FROM pgml.score_table(%s, 'audit_plane_keyed')", (f"{model}_2",)),
            ("SELECT count(*), array_agg(label ORDER BY key) FROM pgml.score_table(%s, 'audit_classes')",
             (model_of(db, classes),)),
            ("SELECT name, task, model, owner, relation, y_column FROM pgml.projects WHERE name LIKE %s ORDER BY name",
             (f"{project}%",)),
            ("SELECT id, name, task, algorithm, relation_name, y_column_name, deployed FROM pgml.trained_models "
             "WHERE name LIKE %s ORDER BY id", (f"{project}%",)),
        ]
        for query, params in queries:
            on_primary = db.rows(query, params)
            on_standby = standby.rows(query, params)
            assert on_standby == on_primary, query
        assert db.one("SELECT pgml.predict(%s, ARRAY[2, 1])", (project,)) == pytest.approx(9, abs=1e-4)
    finally:
        db.run("DELETE FROM pgml.model_names WHERE name IN "
               "(SELECT model FROM pgml.project_names WHERE name IN (%s, %s, %s))", (classes, groups, parts))


def test_score_table_by_project_name_on_the_primary_and_the_standby(
        db: Session, standby: Standby, project: str) -> None:
    """pgml.score_table takes a project's name, as pgml.explain and pgml.decompose do, on the
    primary and the standby alike (0.5.0 said 42704 'no model named')."""
    two_algorithms(db, project)
    make_table(db, "audit_plane_keyed", "id int, a float8, b float8",
               [(i, a, b) for i, (a, b, _) in enumerate(plane_rows(3, 2))])
    catch_up(db, standby)
    by_model = db.rows("SELECT key, prediction FROM pgml.score_table(%s, 'audit_plane_keyed', 'id') ORDER BY key::int",
                       (model_of(db, project),))
    assert len(by_model) == 60
    for session in (db, standby):
        assert session.rows("SELECT key, prediction FROM pgml.score_table(%s, 'audit_plane_keyed', 'id') "
                            "ORDER BY key::int", (project,)) == by_model


def test_predict_proba_of_a_row_by_project_name_on_the_primary_and_the_standby(
        db: Session, standby: Standby, project: str) -> None:
    """README, Coming from PostgresML: pgml.predict_proba('P', ...) with 'jsonb or a row' gives
    pgml_fdw's {class: probability}, by a project's name too (0.5.0 said 42704 'no model named')."""
    make_table(db, "audit_classes", "a float8, b float8, label int", class_rows())
    db.rows("SELECT * FROM pgml.train(%s, 'classification', 'audit_classes', 'label', 'random_forest')", (project,))
    catch_up(db, standby)
    model = model_of(db, project)
    expected = db.one("SELECT pgml.predict_proba(%s, ROW(20.0, 20.0))", (model,))
    assert expected == {"0": 0.0, "1": 0.0, "2": 1.0}
    for session in (db, standby):
        assert session.one("SELECT pgml.predict_proba(%s, ROW(20.0, 20.0))", (project,)) == expected
        assert session.one("SELECT pgml.predict_proba(%s, '{\"a\": 20, \"b\": 20}'::jsonb)", (project,)) == expected


@pytest.mark.parametrize("statement", [
    # PostgresML's pgml.train, named form: a new project, and an existing one trained again.
    "SELECT * FROM pgml.train(%(new)s, 'regression'::pgml.task, 'audit_plane', 'y')",
    "SELECT * FROM pgml.train(%(new)s, task => 'regression', relation_name => 'audit_plane', y_column_name => 'y')",
    "SELECT * FROM pgml.train(%(project)s, algorithm => 'ridge')",
    "SELECT * FROM pgml.train(%(project)s)",
    # Its positional form, which pgml_fdw's pgml.train hands over.
    "SELECT pgml.train(%(new)s, 'regression', 'audit_plane', 'y')",
    "SELECT pgml.train(%(project)s, 'regression', 'audit_plane', 'y', 'ridge')",
    # PostgresML's pgml.deploy, and pgml_fdw's with a project.
    "SELECT * FROM pgml.deploy(%(project)s, 'most_recent', 'ridge')",
    "SELECT * FROM pgml.deploy(%(project)s, 'best_score'::pgml.strategy)",
    "SELECT * FROM pgml.deploy(%(project)s, 'rollback'::pgml.strategy, NULL)",
    "SELECT pgml.deploy(%(project)s, 'most_recent')",
    "SELECT pgml.deploy(%(project)s, 2)",
    "SELECT * FROM pgml.load_dataset('iris')",
    "SELECT * FROM pgml.load_dataset('wine', \"limit\" => 10)",
    # 0.4.0's score_into writes a table: a write, on a standby.
    "SELECT pgml.score_into(%(model)s, 'audit_plane_keyed', 'id', 'audit_scores')",
    "SELECT pgml.score_into(%(model_2)s, 'audit_plane_keyed', 'id', 'audit_scores')",
])
def test_postgresml_writes_on_the_standby_say_to_use_the_primary(
        db: Session, standby: Standby, project: str, statement: str) -> None:
    two_algorithms(db, project)
    make_table(db, "audit_plane_keyed", "id int, a float8, b float8",
               [(i, a, b) for i, (a, b, _) in enumerate(plane_rows(3, 2))])
    make_table(db, "audit_scores", "id int, prediction float8", [])
    catch_up(db, standby)
    model = model_of(db, project)
    args = {"project": project, "new": f"{project} new", "model": model, "model_2": f"{model}_2"}
    pid = standby.pid()
    started = time.monotonic()
    error = standby.error(statement, args)
    assert time.monotonic() - started < 10
    assert error.pgcode == "25006", f"{error.pgcode}: {error.pgerror}"
    text = f"{error.diag.message_primary} {error.diag.message_hint or ''}"
    assert "hot standby" in text and "primary" in text, f"no word of the primary: {error.pgerror}"
    assert "Traceback" not in error.pgerror
    assert standby.pid() == pid
    assert standby.one("SELECT pgml.predict(%s, ARRAY[2, 1])", (project,)) == pytest.approx(9, abs=1e-4)


def test_a_project_deployed_on_the_primary_is_served_on_the_standby_within_a_second(
        db: Session, standby: Standby, project: str) -> None:
    two_algorithms(db, project)
    catch_up(db, standby)
    expected = {a: db.one("SELECT pgml.predict(%s, ARRAY[2, 1])", (f"{model_of(db, project)}_{v}",))
                for a, v in (("linear", 1), ("ridge", 2))}
    assert abs(expected["linear"] - expected["ridge"]) > 0.1
    watcher = Standby()
    try:
        assert standby.one("SELECT pgml.predict(%s, ARRAY[2, 1])", (project,)) == expected["linear"]  # now cached
        for strategy, algorithm in (("most_recent", "ridge"), ("most_recent", "linear"), ("rollback", None),
                                    ("best_score", "linear")):
            served_before = standby.one("SELECT pgml.predict(%s, ARRAY[2, 1])", (project,))
            row = db.one("SELECT * FROM pgml.deploy(%s, %s::pgml.strategy, %s)", (project, strategy, algorithm))
            deployed = row[2]
            wait_for_replay(watcher, db.one("SELECT pg_current_wal_lsn()"))
            start = time.monotonic()
            while ((served := standby.one("SELECT pgml.predict(%s, ARRAY[2, 1])", (project,))) != expected[deployed]
                   and time.monotonic() - start < 5):
                time.sleep(0.01)
            elapsed = time.monotonic() - start
            assert served == expected[deployed], \
                f"{strategy}/{algorithm}: {served} (was {served_before}) still served {elapsed:.1f} s after replay"
            assert elapsed < 1.0, f"{strategy}/{algorithm} served {elapsed:.2f} s after its replay"
    finally:
        watcher.close()


# --------------------------------------------------------------------------------------------------
# (b) Through the pooler
# --------------------------------------------------------------------------------------------------

def test_project_deploys_are_read_by_the_next_prediction_through_the_pooler(
        db: Session, pooler: int, project: str) -> None:
    two_algorithms(db, project)
    model = model_of(db, project)
    expected = {a: db.one("SELECT pgml.predict(%s, ARRAY[2, 1])", (f"{model}_{v}",))
                for a, v in (("linear", 1), ("ridge", 2))}
    # Every server connection of the pool has the linear version cached by the project's name.
    others = [connect(pooler) for _ in range(4)]
    client = connect(pooler)
    stale: List[Tuple[int, str, float]] = []
    backends = set()
    try:
        for other in others:
            with other.cursor() as cur:
                cur.execute("SELECT pgml.predict(%s, ARRAY[2, 1])", (project,))
        with client.cursor() as cur:
            for i in range(200):
                algorithm = "ridge" if i % 2 == 0 else "linear"
                cur.execute("SELECT (pgml.deploy(%s, 'most_recent', %s)).algorithm, pg_backend_pid()",
                            (project, algorithm))
                deployed, deployed_on = cur.fetchone()
                assert deployed == algorithm
                cur.execute("SELECT pgml.predict(%s, ARRAY[2, 1]), pg_backend_pid()", (project,))
                served, served_on = cur.fetchone()
                if served != expected[algorithm]:
                    stale.append((i, algorithm, served))
                backends.update((deployed_on, served_on))
                # Another client's transaction between, so the pool hands connections around.
                with others[i % len(others)].cursor() as other:
                    other.execute("SELECT pgml.predict(%s, ARRAY[2, 1])", (project,))
    finally:
        client.close()
        for other in others:
            other.close()
    assert not stale, f"{len(stale)} stale answers in 200 (iteration, deployed, served): {stale[:5]}"
    assert len(backends) > 1, "the pooler never moved the client"


def test_a_postgresml_training_through_the_pooler_is_predicted_right_after(
        db: Session, pooler: int, project: str) -> None:
    make_table(db, "audit_plane", "a float8, b float8, y float8", plane_rows(3, 2))
    make_table(db, "audit_steep", "a float8, b float8, y float8", plane_rows(5, 1))
    client = connect(pooler)
    others = [connect(pooler) for _ in range(4)]
    try:
        with client.cursor() as cur:
            cur.execute("SELECT * FROM pgml.train(%s, 'regression'::pgml.task, 'audit_plane', 'y')", (project,))
            assert cur.fetchone()[3] is True
            for other in others:  # every server connection has the first version cached
                with other.cursor() as ocur:
                    ocur.execute("SELECT pgml.predict(%s, ARRAY[2, 1])", (project,))
                    assert ocur.fetchone()[0] == pytest.approx(9, abs=1e-4)
            cur.execute("SELECT * FROM pgml.train(%s, relation_name => 'audit_steep', y_column_name => 'y', "
                        "automatic_deploy => true)", (project,))
            cur.fetchall()
            cur.execute("SELECT * FROM pgml.deploy(%s, 'most_recent')", (project,))  # the positional form too
            cur.fetchall()
            for _ in range(20):
                cur.execute("SELECT pgml.predict(%s, ARRAY[2, 1])", (project,))
                assert cur.fetchone()[0] == pytest.approx(12, abs=1e-4)
                for other in others:
                    with other.cursor() as ocur:
                        ocur.execute("SELECT 1")
            # The positional form through the pooler, then its prediction.
            cur.execute("SELECT pgml.train(%s, 'regression', 'audit_plane', 'y')", (project,))
            assert cur.fetchone()[0] == f"{model_of(db, project)}_3"
            cur.execute("SELECT pgml.deploy(%s, 3)", (project,))
            for _ in range(20):
                cur.execute("SELECT pgml.predict(%s, ARRAY[2, 1])", (project,))
                assert cur.fetchone()[0] == pytest.approx(9, abs=1e-4)
    finally:
        client.close()
        for other in others:
            other.close()


# --------------------------------------------------------------------------------------------------
# (c) Connections back
# --------------------------------------------------------------------------------------------------

FAILING_READS = [
    ("SELECT pgml.predict('No Such Audit Project', ARRAY[1, 2])", "42704"),
    ("SELECT pgml.predict('no_such_audit_model', ARRAY[1, 2])", "42704"),
    ("SELECT pgml.predict(%(project)s, ARRAY[1, 2, 3])", "22023"),
    ("SELECT pgml.predict(%(project)s, ARRAY[[1, 2], [3, 4]])", "22023"),
    ("SELECT pgml.predict(%(project)s, ROW('x', 'y'))", None),
    ("SELECT pgml.predict_proba(%(project)s, ARRAY[1, 2])", "22023"),
    ("SELECT pgml.predict_proba('No Such Audit Project', ARRAY[1, 2])", "42704"),
    ("SELECT * FROM pgml.explain(%(project)s, ARRAY[1])", "22023"),
    ("SELECT * FROM pgml.explain('No Such Audit Project', ARRAY[1, 2])", "42704"),
    ("SELECT pgml.decompose(%(project)s, '[1, 2]'::jsonb)", None),
    ("SELECT pgml.decompose('No Such Audit Project', '[1, 2]'::jsonb)", "42704"),
    ("SELECT count(*) FROM pgml.score_table(%(model)s, 'audit_wrong_columns')", None),
    ("SELECT count(*) FROM pgml.score_table('no_such_audit_model', 'audit_wrong_columns')", "42704"),
]
FAILING_WRITES = [
    ("SELECT * FROM pgml.train('No Such Audit Project')", None),
    ("SELECT * FROM pgml.train(%(project)s, relation_name => 'audit_wrong_columns', y_column_name => 'nope')", None),
    ("SELECT pgml.train('Audit Bad Columns', 'regression', 'audit_wrong_columns', 'nope')", None),
    ("SELECT * FROM pgml.deploy('No Such Audit Project', 'best_score', 'xgboost')", None),
    ("SELECT * FROM pgml.deploy(%(project)s, 'best_score', 'xgboost')", None),
    ("SELECT * FROM pgml.load_dataset('no_such_dataset')", None),
    ("SELECT pgml.score_into(%(model)s, 'audit_wrong_columns', 'id', 'audit_scores')", None),
]


def _fail_many(session: Session, statements: List[Tuple[str, Any]], args: dict, rounds: int,
               standby: bool = False) -> None:
    for _ in range(rounds):
        for statement, state in statements:
            try:
                error = session.error(statement, args)
            except BaseException as exc:
                raise AssertionError(f"{statement}: {exc}") from None
            assert error.pgcode not in ("XX000", None), f"{statement}: {error.pgcode} {error.pgerror}"
            if standby and statement in dict(FAILING_WRITES):
                continue  # which error comes first is test_postgresml_writes_on_the_standby_say_to_use_the_primary's
            if state is not None:
                assert error.pgcode == state, f"{statement}: {error.pgcode} {error.pgerror}"


def test_failing_postgresml_calls_leave_no_connections_behind(db: Session, project: str) -> None:
    two_algorithms(db, project)
    make_table(db, "audit_wrong_columns", "id int, c text", [(1, "x"), (2, "y")])
    make_table(db, "audit_scores", "id int, prediction float8", [])
    args = {"project": project, "model": model_of(db, project)}
    app = Session()
    try:
        _fail_many(app, FAILING_READS + FAILING_WRITES, args, rounds=5)
        left = wait_none_left(db)
        assert not left, f"{len(left)} connections back left after failing calls: {left}"
        assert app.one("SELECT pgml.predict(%s, ARRAY[2, 1])", (project,)) == pytest.approx(9, abs=1e-4)
    finally:
        app.close()


def test_failing_postgresml_calls_on_the_standby_leave_no_connections_behind(
        db: Session, standby: Standby, project: str) -> None:
    two_algorithms(db, project)
    make_table(db, "audit_wrong_columns", "id int, c text", [(1, "x"), (2, "y")])
    make_table(db, "audit_scores", "id int, prediction float8", [])
    catch_up(db, standby)
    args = {"project": project, "model": model_of(db, project)}
    observer = Standby()
    try:
        _fail_many(standby, FAILING_READS + FAILING_WRITES, args, rounds=5, standby=True)
        left = wait_none_left(observer)
        assert not left, f"{len(left)} connections back left on the standby after failing calls: {left}"
        assert standby.one("SELECT pgml.predict(%s, ARRAY[2, 1])", (project,)) == pytest.approx(9, abs=1e-4)
    finally:
        observer.close()


def test_the_new_functions_connect_back_as_pgml_fdw_only(db: Session, project: str) -> None:
    """While a statement of each new read form runs, the connections back that load its model log
    in as the non-superuser pgml_fdw (serve_user), never as the caller or a superuser; only a batch
    scoring's read of the user's relation goes as the server's read_user (README, Connections)."""
    two_algorithms(db, project)
    model = model_of(db, project)
    # Who the statement's connections back log in as, sampled inside the statement itself (after
    # its call, in the same target list): they end with the statement.
    probe = ("SELECT array_agg(DISTINCT usename::text) FROM pg_stat_activity "
             "WHERE datname = current_database() AND application_name LIKE 'pgml_fdw%%'")
    read_user = dict(o.split("=", 1) for o in db.one(
        "SELECT srvoptions FROM pg_foreign_server WHERE srvname = 'pgml'"))["read_user"]
    classes = f"{project} classes"
    make_table(db, "audit_classes", "a float8, b float8, label int", class_rows())
    db.rows("SELECT * FROM pgml.train(%s, 'classification', 'audit_classes', 'label', 'random_forest')", (classes,))
    seen = set()
    try:
        for query, allowed in (
                ("SELECT pgml.predict(%(p)s, ARRAY[2, 1]), (" + probe + ")", {"pgml_fdw"}),
                ("SELECT pgml.predict_proba(%(c)s, ARRAY[20, 20]), (" + probe + ")", {"pgml_fdw"}),
                ("SELECT pgml.predict(%(p)s, ROW(2.0, 1.0)), (" + probe + ")", {"pgml_fdw"}),
                ("SELECT (SELECT sum(contribution) FROM pgml.explain(%(p)s, ARRAY[2, 1])), (" + probe + ")",
                 {"pgml_fdw"}),
                ("SELECT (SELECT count(*) FROM pgml.score_table(%(m)s, 'audit_plane')), (" + probe + ")",
                 {"pgml_fdw"}),
                ("SELECT (SELECT count(*) FROM pgml.score_table(%(cm)s, 'audit_classes')), (" + probe + ")",
                 {"pgml_fdw", read_user})):
            app = Session()  # nothing cached: the statement must load its model
            try:
                value, users = app.one(query, {"p": project, "m": model, "c": classes, "cm": model_of(db, classes)})
            finally:
                app.close()
            assert value is not None, query
            # A subquery's scan may have ended, and closed its connection, before the probe runs.
            seen.update(users or [])
            assert set(users or []) <= allowed, f"{query}: connections back logged in as {users}"
        assert "pgml_fdw" in seen, f"no connection back as pgml_fdw seen ({seen})"
        assert db.one("SELECT rolsuper FROM pg_roles WHERE rolname = 'pgml_fdw'") is False
    finally:
        db.run("DELETE FROM pgml.model_names WHERE name IN (SELECT model FROM pgml.project_names WHERE name = %s)",
               (classes,))


def test_batch_scoring_opens_one_connection_back_for_its_read(db: Session, project: str) -> None:
    """README, Connections: a backend connects back to load a model and 'a training run or a batch
    scoring opens one more for its read'. pgml.score_table of a model without a SQL form (a random
    forest) holds three at once: the model's (pgml_fdw), the backend's read_user connection, kept
    open while the worker runs, and the worker's own read ('pgml_fdw worker')."""
    classes = f"{project} classes"
    make_table(db, "audit_classes", "a float8, b float8, label int", class_rows())
    db.rows("SELECT * FROM pgml.train(%s, 'classification', 'audit_classes', 'label', 'random_forest')", (classes,))
    model = model_of(db, classes)
    db.run("DROP TABLE IF EXISTS audit_many")
    db.run("CREATE TABLE audit_many AS SELECT g AS id, (g % 31)::float8 AS a, (g % 17)::float8 AS b "
           "FROM generate_series(1, 150000) g")
    app = Session()
    observer = Session()
    snapshots: List[Tuple[Tuple[Any, ...], ...]] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            snapshots.append(tuple(observer.rows(
                "SELECT pid, usename::text, application_name FROM pg_stat_activity "
                "WHERE datname = current_database() AND application_name LIKE 'pgml_fdw%' ORDER BY pid")))
            time.sleep(0.005)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        for query in ("SELECT count(*) FROM pgml.score_table(%s, 'audit_many', 'id')",
                      "SELECT count(*) FROM pgml.predictions WHERE model = %s AND relation = 'audit_many'"):
            assert app.one(query, (model,)) == 150000
    finally:
        stop.set()
        watcher.join(10)
        app.close()
        observer.close()
        db.run("DROP TABLE IF EXISTS audit_many")
        db.run("DELETE FROM pgml.model_names WHERE name = %s", (model,))
    peak = max(snapshots, key=len)
    assert len(peak) <= 2, f"{len(peak)} connections back at once for one batch scoring: {peak}"


# --------------------------------------------------------------------------------------------------
# (d) Any database and role name
# --------------------------------------------------------------------------------------------------

def test_the_postgresml_readme_example_in_a_mixed_case_database_as_a_mixed_case_role() -> None:
    dbname = f'Mixed Case "db" {DATABASE} audit'
    user = f'Mixed Case "db" {DATABASE} audit'  # the role named as the database
    drop_database(dbname)
    create_database(dbname)
    admin = Db(dbname)
    try:
        admin.rows("CREATE EXTENSION pgml_fdw CASCADE")
        admin.rows(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(user)).as_string(admin.conn))
        admin.rows(sql.SQL("CREATE ROLE {} " + login_clause()).format(sql.Identifier(user)).as_string(admin.conn))
        for grant in ("GRANT INSERT, SELECT (id) ON pgml.training_runs TO {}",
                      "GRANT SELECT ON pgml.predictions TO {}"):
            admin.rows(sql.SQL(grant).format(sql.Identifier(user)).as_string(admin.conn))
        as_user = Db(dbname, user)
        try:
            assert as_user.rows("SELECT * FROM pgml.load_dataset('diabetes')") == [("pgml.diabetes", 442)]
            assert as_user.rows("SELECT * FROM pgml.train('Diabetes Progression', 'regression', 'pgml.diabetes', "
                                "'target')") == [("diabetes_progression_1",)]  # plain literals: pgml_fdw's train
            row = as_user.rows("SELECT * FROM pgml.train('Diabetes Progression', algorithm => 'xgboost', "
                               "hyperparams => '{\"n_estimators\": 10}')")
            assert row[0][:3] == ("Diabetes Progression", "regression", "xgboost")
            assert as_user.rows("SELECT * FROM pgml.deploy('Diabetes Progression', 'best_score', 'xgboost')") \
                == [("Diabetes Progression", "best_score", "xgboost")]
            predictions = as_user.rows("SELECT target, pgml.predict('Diabetes Progression', "
                                       "ARRAY[age, sex, bmi, bp, s1, s2, s3, s4, s5, s6]) FROM pgml.diabetes")
            assert len(predictions) == 442 and all(p is not None for _, p in predictions)
            assert admin.one("SELECT owner FROM pgml.projects WHERE name = 'Diabetes Progression'") == user
            assert admin.one("SELECT loaded_by FROM pgml.dataset_tables WHERE name = 'diabetes'") == user
            # The same database on the standby, as the same role: its own copy, by project name.
            lsn = admin.one("SELECT pg_current_wal_lsn()")
            on_standby = psycopg2.connect(host="127.0.0.1", port=STANDBY_PORT, dbname=dbname, user=user)
            on_standby.autocommit = True
            try:
                with on_standby.cursor() as cur:
                    deadline = time.monotonic() + 10
                    while True:
                        cur.execute("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (lsn,))
                        if cur.fetchone()[0] or time.monotonic() > deadline:
                            break
                        time.sleep(0.02)
                    cur.execute("SELECT target, pgml.predict('Diabetes Progression', "
                                "ARRAY[age, sex, bmi, bp, s1, s2, s3, s4, s5, s6]) FROM pgml.diabetes")
                    assert cur.fetchall() == predictions
                    with pytest.raises(psycopg2.Error) as caught:
                        cur.execute("SELECT * FROM pgml.deploy('Diabetes Progression', 'most_recent', 'linear')")
                    assert caught.value.pgcode == "25006"
            finally:
                on_standby.close()
        finally:
            as_user.close()
        assert not wait_none_left(admin, dbname)
    finally:
        admin.close()
        drop_database(dbname)
        _drop = Db("postgres")
        try:
            _drop.rows(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(user)).as_string(_drop.conn))
        finally:
            _drop.close()
