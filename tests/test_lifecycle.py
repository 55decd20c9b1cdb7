"""Models survive what a DBA does to a database: DROP EXTENSION (refused), ALTER EXTENSION UPDATE
from 0.1.0, pg_dump and pg_restore, renaming the database or copying it from a template; any
database and role name works; and the wrapper's connections back are accounted for.

Each test works in databases of its own, dropped afterwards.
"""
from __future__ import annotations

import json
import os
import subprocess
import time
from typing import Any, Iterator, List, Optional, Sequence

import psycopg2
import pytest
from psycopg2 import sql

import pgml_fdw
from pgml_fdw import model_format

from conftest import ADMIN, DATABASE, MAINTENANCE, Session, dsn, linear_rows, login_clause

FEATURES = '[2]'


class Db:
    """A connection to a database of any name, as any role (autocommit)."""

    def __init__(self, dbname: str, user: Optional[str] = None) -> None:
        self.conn = psycopg2.connect(dsn(dbname, user))
        self.conn.autocommit = True

    def rows(self, query: str, params: Sequence[Any] = ()) -> List[tuple]:
        with self.conn.cursor() as cur:
            cur.execute(query, params or None)
            return cur.fetchall() if cur.description else []

    def one(self, query: str, params: Sequence[Any] = ()) -> Any:
        (row,) = self.rows(query, params)
        return row[0] if len(row) == 1 else row

    def error(self, query: str, params: Sequence[Any] = ()) -> psycopg2.Error:
        with pytest.raises(psycopg2.Error) as caught:
            self.rows(query, params)
        return caught.value

    def close(self) -> None:
        self.conn.close()


def _admin(statement: sql.Composable) -> None:
    admin = Db(MAINTENANCE)
    try:
        admin.rows(statement)  # type: ignore[arg-type]
    finally:
        admin.close()


def create_database(dbname: str, template: str = "template1") -> None:
    _admin(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(dbname)))
    _admin(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(dbname), sql.Identifier(template)))


def drop_database(dbname: str) -> None:
    _admin(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(dbname)))


@pytest.fixture
def scratch() -> Iterator[List[str]]:
    """Names of the databases a test makes: dropped afterwards."""
    made: List[str] = []
    yield made
    for dbname in made:
        drop_database(dbname)


def with_line(db: Db, table: str = "line", slope: float = 3.0) -> None:
    db.rows(f"CREATE TABLE {table} (x float8, y float8)")
    with db.conn.cursor() as cur:
        cur.executemany(f"INSERT INTO {table} VALUES (%s, %s)", [(x, slope * x + 1) for x, _ in linear_rows()])


def new_database(scratch: List[str], dbname: str, version: str = "") -> Db:
    scratch.append(dbname)
    create_database(dbname)
    db = Db(dbname)
    db.rows("CREATE EXTENSION pgml_fdw " + (f"VERSION '{version}' " if version else "") + "CASCADE")
    return db


def test_drop_extension_refused_while_models_exist(scratch: List[str]) -> None:
    db = new_database(scratch, f"{DATABASE}_drop")
    with_line(db)
    db.one("SELECT pgml.train('line', 'y')")
    for statement in ("DROP EXTENSION pgml_fdw", "DROP EXTENSION pgml_fdw CASCADE",
                      "DROP EXTENSION IF EXISTS multicorn CASCADE", "DROP SCHEMA pgml CASCADE",
                      "DROP SCHEMA public CASCADE", "DROP OWNED BY postgres CASCADE"):
        error = db.error(statement)
        assert error.pgcode == "2BP01", (statement, error.pgerror)
        assert "would delete the 1 model versions" in error.pgerror
        assert "ALTER EXTENSION pgml_fdw UPDATE" in error.diag.message_hint
        assert "TRUNCATE pgml.model_names CASCADE" in error.diag.message_hint
    assert db.one("SELECT pgml.score('line', 2.0)") == pytest.approx(7, abs=0.01)
    # Dropping something else is not refused.
    db.rows("CREATE EXTENSION IF NOT EXISTS plpgsql")
    db.rows("CREATE SCHEMA spare")
    db.rows("DROP SCHEMA spare")
    # Deleting the models first is the way to drop it, and it can be made again.
    db.rows("TRUNCATE pgml.model_names CASCADE")
    db.rows("DROP EXTENSION pgml_fdw")
    db.rows("CREATE EXTENSION pgml_fdw")
    assert db.one("SELECT count(*) FROM pgml.models") == 0
    db.close()


def test_recreated_extension_never_serves_old_models(scratch: List[str]) -> None:
    db = new_database(scratch, f"{DATABASE}_recreate")
    with_line(db, "up", 3.0)
    with_line(db, "down", -1.0)
    db.one("SELECT pgml.train('up', 'y', name => 'm')")
    reader = Db(db.conn.info.dbname)
    assert reader.one(f"SELECT prediction FROM pgml.predictions WHERE model = 'm' AND features = '{FEATURES}'") \
        == pytest.approx(7, abs=0.01)
    assert reader.one("SELECT pgml.score('m_1', 2.0)") == pytest.approx(7, abs=0.01)
    db.rows("TRUNCATE pgml.model_names CASCADE")
    db.rows("DROP EXTENSION pgml_fdw")
    db.rows("CREATE EXTENSION pgml_fdw")
    for query in (f"SELECT prediction FROM pgml.predictions WHERE model = 'm' AND features = '{FEATURES}'",
                  "SELECT pgml.score('m_1', 2.0)"):
        assert reader.error(query).pgcode == "42704"
    db.one("SELECT pgml.train('down', 'y', name => 'm')")
    assert reader.one(f"SELECT prediction FROM pgml.predictions WHERE model = 'm' AND features = '{FEATURES}'") \
        == pytest.approx(-1, abs=0.01)
    assert reader.one("SELECT pgml.score('m_1', 2.0)") == pytest.approx(-1, abs=0.01)
    reader.close()
    db.close()


def test_update_from_0_1_0_keeps_models(scratch: List[str]) -> None:
    db = new_database(scratch, f"{DATABASE}_update", version="0.1.0")
    with_line(db)
    db.rows("CREATE TABLE flowers AS SELECT x, (x > 5) AS big FROM line")
    assert db.one("INSERT INTO pgml.training_runs (relation, y_column) VALUES ('line', 'y') RETURNING id") == "line_1"
    assert db.one("SELECT pgml.train('flowers', 'big', 'random_forest')") == "flowers_1"
    assert db.one("SELECT pgml.deploy('line', 'most_recent')") == "line_1"
    stored = dict(db.rows("SELECT model_id, estimator FROM pgml.model_estimators"))
    expected = {model_id: model_format.load(bytes(blob), model_id).predict_row(FEATURES)
                for model_id, blob in stored.items()}
    # The Python package is already newer: predictions ask for the update.
    error = db.error(f"SELECT prediction FROM pgml.predictions WHERE model = 'line' AND features = '{FEATURES}'")
    assert "ALTER EXTENSION pgml_fdw UPDATE" in error.diag.message_hint

    db.rows("ALTER EXTENSION pgml_fdw UPDATE")
    assert db.one("SELECT extversion FROM pg_extension WHERE extname = 'pgml_fdw'") == pgml_fdw.__version__
    for ref, model_id in (("line", "line_1"), ("line_1", "line_1"),
                          ("flowers", "flowers_1"), ("flowers_1", "flowers_1")):
        prediction, label, probabilities = db.one(
            "SELECT prediction, label, probabilities FROM pgml.predictions WHERE model = %s AND features = %s",
            (ref, FEATURES))
        want = expected[model_id]
        assert (prediction, label) == (want[0], want[1])
        assert probabilities == (None if want[2] is None else json.loads(json.dumps(want[2])))
    assert db.one("SELECT pgml.score('line', 2.0)") == expected["line_1"][0]
    # 0.4.0's whole-table scoring, of a model stored by 0.1.0.
    assert db.one("SELECT count(*) FROM pgml.score_table('line', 'line') WHERE prediction IS NOT NULL") == \
        db.one("SELECT count(*) FROM line")
    assert db.rows("SELECT id, owner, deployed FROM pgml.models ORDER BY id") == [
        ("flowers_1", ADMIN, True), ("line_1", ADMIN, True)]
    # Trained by this package before the update: the update reads their versions from the models.
    assert db.rows("SELECT id, versions ->> 'pgml_fdw' FROM pgml.models ORDER BY id") == [
        ("flowers_1", pgml_fdw.__version__), ("line_1", pgml_fdw.__version__)]
    # Training goes on from the stored versions, under 0.2.0's rules; from 0.5.1 on, a rolled-back
    # run's number is not given again.
    db.rows("BEGIN; SELECT pgml.train('line', 'y'); ROLLBACK")
    assert db.one("SELECT pgml.train('line', 'y')") == "line_3"
    # 0.5.0's additions work in the updated database: an explanation of a model stored by 0.1.0,
    # clustering, and PostgresML's signature.
    assert db.one(f"SELECT sum(contribution) FROM pgml.explain('line_1', '{FEATURES}'::jsonb)") == \
        pytest.approx(expected["line_1"][0], rel=1e-12)
    assert db.one("SELECT pgml.train('line', NULL, 'kmeans', name => 'line_groups', "
                  "hyperparams => '{\"n_clusters\": 2}')") == "line_groups_1"
    assert db.one("SELECT deployed FROM pgml.train('Line Project', 'regression', relation_name => 'line', "
                  "y_column_name => 'y')") is True
    assert db.error("DROP EXTENSION pgml_fdw").pgcode == "2BP01"
    db.close()


def test_dump_and_restore(scratch: List[str]) -> None:
    db = new_database(scratch, f"{DATABASE}_dump")
    # pg_dump refuses a server newer than itself (the local root's is 13; a PGML_TEST_DSN server may be 18).
    tools = int(subprocess.run(["pg_dump", "--version"], capture_output=True, text=True, check=True)
                .stdout.split()[-1].split(".")[0])
    if tools < db.one("SELECT current_setting('server_version_num')::int") // 10000:
        db.close()
        pytest.skip(f"pg_dump {tools} here cannot dump this newer server")
    with_line(db)
    db.one("SELECT pgml.train('line', 'y')")
    db.one("SELECT pgml.train('line', 'y', 'ridge', deploy => false)")
    db.rows("BEGIN; SELECT pgml.train('line', 'y'); ROLLBACK")  # line_3, rolled back: its id stays taken
    before = db.rows("SELECT id, deployed, metrics FROM pgml.models ORDER BY id")
    target = f"{DATABASE}_restored"
    scratch.append(target)
    create_database(target, template="template0")
    dump = f"/tmp/{target}.dump"
    subprocess.run(["pg_dump", "-Fc", "-f", dump, "-d", dsn(db.conn.info.dbname)], check=True)
    subprocess.run(["pg_restore", "-d", dsn(target), dump], check=True, capture_output=True)
    os.unlink(dump)
    restored = Db(target)
    assert restored.rows("SELECT id, deployed, metrics FROM pgml.models ORDER BY id") == before
    assert restored.one("SELECT pgml.score('line', 2.0)") == db.one("SELECT pgml.score('line', 2.0)")
    assert restored.one("SELECT owner FROM pgml.model_names WHERE name = 'line'") == ADMIN
    assert restored.one("SELECT pgml.train('line', 'y')") == "line_4"
    restored.close()
    db.close()


def test_any_database_and_role_name(scratch: List[str]) -> None:
    dbname = f'Mixed Case "db" {DATABASE}'
    db = new_database(scratch, dbname)
    user = f'Mixed "Role" {DATABASE}'
    db.rows(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(user)).as_string(db.conn))
    db.rows(sql.SQL("CREATE ROLE {} " + login_clause()).format(sql.Identifier(user)).as_string(db.conn))
    try:
        with_line(db)
        for grant in ("GRANT INSERT, SELECT (id) ON pgml.training_runs TO {}", "GRANT SELECT ON pgml.predictions TO {}",
                      "GRANT SELECT ON line TO {}"):
            db.rows(sql.SQL(grant).format(sql.Identifier(user)).as_string(db.conn))
        as_user = Db(dbname, user)
        assert as_user.one("SELECT pgml.train('line', 'y', name => 'mixed')") == "mixed_1"
        assert as_user.one("SELECT pgml.score('mixed', 2.0)") == pytest.approx(7, abs=0.01)
        assert as_user.one("SELECT prediction FROM pgml.predictions "
                           f"WHERE model = 'mixed' AND features = '{FEATURES}'") == pytest.approx(7, abs=0.01)
        assert as_user.one("SELECT count(*) FROM pgml.predictions WHERE model = 'mixed' AND relation = 'line'") == 200
        assert as_user.one("SELECT pgml.deploy('mixed', 1)") == "mixed_1"
        assert db.one("SELECT owner FROM pgml.model_names WHERE name = 'mixed'") == user
        as_user.close()
    finally:
        db.close()
        drop_database(dbname)
        scratch.remove(dbname)
        _admin(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(user)))


def test_renamed_database_and_template_copy(scratch: List[str]) -> None:
    first, renamed, copy = f"{DATABASE}_first", f"{DATABASE}_renamed", f"{DATABASE}_copy"
    db = new_database(scratch, first)
    with_line(db)
    db.one("SELECT pgml.train('line', 'y')")
    db.close()
    drop_database(renamed)
    _admin(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(sql.Identifier(first), sql.Identifier(renamed)))
    scratch.append(renamed)
    db = Db(renamed)
    assert db.one("SELECT pgml.score('line', 2.0)") == pytest.approx(7, abs=0.01)
    assert db.one("SELECT pgml.train('line', 'y')") == "line_2"
    db.close()
    scratch.append(copy)
    create_database(copy, template=renamed)
    copied = Db(copy)
    copied.rows("UPDATE line SET y = -x")  # the copy's own data, which its training must read
    assert copied.one("SELECT pgml.train('line', 'y')") == "line_3"
    assert copied.one("SELECT pgml.score('line_3', 2.0)") == pytest.approx(-2, abs=0.01)
    assert copied.one("SELECT pgml.score('line_1', 2.0)") == pytest.approx(7, abs=0.01)
    copied.close()


def test_connections_back_are_few_and_not_superuser(db: Session, name: str) -> None:
    db.run("CREATE TABLE IF NOT EXISTS lc_line (x float8, y float8)")
    db.run("TRUNCATE lc_line")
    db.run("INSERT INTO lc_line SELECT x, 3 * x + 1 FROM generate_series(1, 50) x")
    db.one("SELECT pgml.train('lc_line', 'y', name => %s)", (name,))
    assert db.one("SELECT rolsuper FROM pg_roles WHERE rolname = 'pgml_fdw'") is False
    assert db.one("SELECT srvoptions FROM pg_foreign_server WHERE srvname = 'pgml'") \
        == ["wrapper=pgml_fdw.fdw.PgmlWrapper", "serve_user=pgml_fdw", f"read_user={ADMIN}"]
    app = Session()
    for _ in range(30):
        assert app.one("SELECT pgml.score(%s, 2.0)", (name,)) == pytest.approx(7, abs=0.01)
        assert app.error("SELECT pgml.score('lc_nothing', 2.0)").pgcode == "42704"
        assert app.error("SELECT prediction FROM pgml.predictions WHERE model = 'lc_nothing' AND features = '[1]'") \
            .pgcode == "42704"
    # No connection back outlives its statement, failed or not. This database's only: another
    # database's sessions (a user's server, a concurrent run) are not this test's. A closed
    # connection's backend leaves pg_stat_activity a moment after the close returns: a leak stays.
    deadline = time.monotonic() + 5
    while True:
        left = db.one("SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'pgml_fdw%%' "
                      "AND datname = current_database()")
        if left == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert left == 0
    # Models are loaded as serve_user: a role that does not exist cannot load one.
    db.run("ALTER SERVER pgml OPTIONS (SET serve_user 'lc_nobody')")
    try:
        fresh = Session()
        error = fresh.error("SELECT pgml.score(%s, 2.0)", (name,))
        assert error.pgcode == "08006" and 'role "lc_nobody" does not exist' in error.pgerror
        assert "serve_user" in error.diag.message_hint
        fresh.close()
    finally:
        db.run("ALTER SERVER pgml OPTIONS (SET serve_user 'pgml_fdw')")
    app.close()
