"""Fixtures for the integration tests: a real PostgreSQL with Multicorn and this package.

Where the tests run is decided here, and only here:

* by default, against the local server (``make test`` starts it: 127.0.0.1, port ``$PGML_PORT``,
  superuser ``postgres``) in a database of their own, ``pgml_test`` (or ``$PGML_TEST_DATABASE``),
  made anew at the start of every run and left behind for inspection;
* with ``PGML_TEST_DSN`` (a libpq connection string or URI of a superuser on a server where
  pgml_fdw's files and Multicorn are installed), against that server: the run makes a database
  ``pgml_test_<random>`` there, and at the end drops every database and role whose name carries
  that token. A database, not a schema in the given one: an extension is installed once per
  database, and the tests create, alter and drop extensions, schemas and databases of their own.
  A superuser, because CREATE EXTENSION multicorn, CREATE ROLE, pg_terminate_backend of other
  roles' backends and a catalog update need one. The roles it creates log in with a password of
  the run's over the dsn's host, so pg_hba.conf must accept password (or trust) logins there.
  Tests that need the local server's root (its /proc, its standby, its pgbouncer) are skipped.

Either way the test database has PostgreSQL 15's privilege defaults: PUBLIC may not create objects
in schema public, so a role the tests make creates its objects in a schema of its own
(``role(..., schema=True)``).
"""
from __future__ import annotations

import itertools
import os
import secrets
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import psycopg2
import psycopg2.extensions
import pytest
from psycopg2 import sql

TEST_DSN = os.environ.get("PGML_TEST_DSN") or None
# Whether the tests run inside the local server's root (its /proc, standby and pgbouncer at hand).
LOCAL_ROOT = TEST_DSN is None
NOT_LOCAL = "PGML_TEST_DSN is set: this test needs the local server's root"


def _base() -> Dict[str, str]:
    """The connection parameters every test connection starts from (dbname and user overridden)."""
    if LOCAL_ROOT:
        return {"host": "127.0.0.1", "port": os.environ.get("PGML_PORT", "5433"), "user": "postgres",
                "dbname": "postgres"}
    try:
        params = psycopg2.extensions.parse_dsn(TEST_DSN)
    except psycopg2.ProgrammingError as exc:
        raise pytest.UsageError(f"PGML_TEST_DSN is not a libpq connection string or URI: {exc}") from exc
    params.setdefault("dbname", "postgres")
    return params


BASE = _base()
# The maintenance database: where databases are created and dropped from (never dropped itself).
MAINTENANCE = BASE["dbname"]
PORT = int(BASE.get("port") or 5432)
# Every database and role a run creates carries this name: with PGML_TEST_DSN it is unique to the
# run, so that cleaning up by it touches nothing of the user's.
DATABASE = (os.environ.get("PGML_TEST_DATABASE", "pgml_test") if LOCAL_ROOT
            else f"pgml_test_{secrets.token_hex(4)}")
# The password of the roles the tests create (the local server trusts loopback and ignores it).
ROLE_PASSWORD = secrets.token_hex(16)
_counter = itertools.count(1)


def _admin_user() -> str:
    """The superuser the tests run as: the dsn's user, or whoever libpq logged in as."""
    if LOCAL_ROOT:
        return "postgres"
    try:
        conn = psycopg2.connect(**BASE)
    except psycopg2.Error as exc:
        raise pytest.UsageError(f"cannot connect with PGML_TEST_DSN: {str(exc).strip()}") from exc
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT current_user, rolsuper FROM pg_roles WHERE rolname = current_user")
            user, superuser = cur.fetchone()
    finally:
        conn.close()
    if not superuser:
        raise pytest.UsageError(f"PGML_TEST_DSN logs in as {user}, who is not a superuser: the tests create an "
                                "extension (and Multicorn), roles and databases")
    return user


ADMIN = _admin_user()


def dsn(database: str = DATABASE, user: Optional[str] = None) -> str:
    """A connection string to ``database`` as ``user`` (default: the superuser the tests run as)."""
    params = dict(BASE, dbname=database, user=user or ADMIN)
    if user not in (None, ADMIN):
        params["password"] = ROLE_PASSWORD  # a role of the suite's; the dsn's password is the admin's
    return psycopg2.extensions.make_dsn(**params)


def login_clause() -> str:
    """What CREATE ROLE needs for a role of the suite to log in (over the dsn's host)."""
    return f"LOGIN PASSWORD '{ROLE_PASSWORD}'"


class Session:
    """A connection with short helpers; autocommit unless a test opens a transaction."""

    def __init__(self, user: Optional[str] = None, autocommit: bool = True) -> None:
        self.conn = psycopg2.connect(dsn(user=user))
        self.conn.autocommit = autocommit

    def rows(self, query: str, params: Sequence[Any] = ()) -> List[Tuple[Any, ...]]:
        with self.conn.cursor() as cur:
            cur.execute(query, params or None)
            return cur.fetchall() if cur.description else []

    def one(self, query: str, params: Sequence[Any] = ()) -> Any:
        rows = self.rows(query, params)
        assert len(rows) == 1, f"expected one row, got {rows!r}"
        return rows[0][0] if len(rows[0]) == 1 else rows[0]

    def run(self, query: str, params: Sequence[Any] = ()) -> None:
        with self.conn.cursor() as cur:
            cur.execute(query, params or None)

    def error(self, query: str, params: Sequence[Any] = ()) -> psycopg2.Error:
        """The error a statement raises (the test fails if it raises none)."""
        with pytest.raises(psycopg2.Error) as caught:
            self.run(query, params)
        if not self.conn.autocommit:
            self.conn.rollback()
        return caught.value

    def error_in_transaction(self, query: str, params: Sequence[Any] = ()) -> psycopg2.Error:
        """The error a statement raises, leaving the failed transaction to the caller (to roll
        back to a savepoint)."""
        with pytest.raises(psycopg2.Error) as caught:
            self.run(query, params)
        return caught.value

    def pid(self) -> int:
        return self.one("SELECT pg_backend_pid()")

    def close(self) -> None:
        self.conn.close()


@pytest.fixture(scope="session", autouse=True)
def no_backend_crashed() -> Iterator[None]:
    """Fails the run if any backend crashed during it, even one whose own test passed.

    A backend that crashes (a segfault in Multicorn, say) makes the postmaster end every session
    and restart, so an idle connection opened before the first test is gone after the last. It
    is opened on the maintenance database, which the ``database`` fixture does not drop."""
    sentinel = psycopg2.connect(dsn(MAINTENANCE))
    sentinel.autocommit = True
    yield
    try:
        with sentinel.cursor() as cur:
            cur.execute("SELECT 1")
    except psycopg2.Error as exc:
        raise AssertionError("the server restarted during the test suite: a backend crashed "
                             f"(see the server log): {exc}") from exc
    finally:
        sentinel.close()


def _drop_what_the_run_made(admin: "psycopg2.extensions.connection") -> List[str]:
    """Drops every database and role whose name carries DATABASE; returns what it could not drop.
    Roles after databases: a role's objects there go with them (its grants in the maintenance
    database are dropped with DROP OWNED BY)."""
    left: List[str] = []
    with admin.cursor() as cur:
        cur.execute("SELECT datname FROM pg_database WHERE strpos(datname, %s) > 0", (DATABASE,))
        for (name,) in cur.fetchall():
            try:
                cur.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
            except psycopg2.Error as exc:
                left.append(f"database {name}: {str(exc).strip()}")
        cur.execute("SELECT rolname FROM pg_roles WHERE strpos(rolname, %s) > 0", (DATABASE,))
        for (name,) in cur.fetchall():
            try:
                cur.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(name)))
                cur.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))
            except psycopg2.Error as exc:
                left.append(f"role {name}: {str(exc).strip()}")
    return left


@pytest.fixture(scope="session")
def database() -> Iterator[None]:
    """The test database, with the extension and PostgreSQL 15's privileges on schema public."""
    admin = psycopg2.connect(dsn(MAINTENANCE))
    admin.autocommit = True
    try:
        with admin.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")
            cur.execute(f"CREATE DATABASE {DATABASE}")
        session = Session()
        session.run("CREATE EXTENSION pgml_fdw CASCADE")
        # What PostgreSQL 15 and later do by default, on every server: a role may create objects
        # only where it was allowed to, so the tests' roles never pass for lack of that default.
        session.run("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
        session.close()
        yield
    finally:  # a setup that failed (no extension files on that server, say) is cleaned up too
        left = [] if LOCAL_ROOT else _drop_what_the_run_made(admin)
        admin.close()
    assert not left, "the run could not remove what it made on the PGML_TEST_DSN server:\n" + "\n".join(left)


@pytest.fixture
def db(database: None) -> Iterator[Session]:
    session = Session()
    yield session
    session.close()


@pytest.fixture
def name(db: Session) -> Iterator[str]:
    """A model name of the test's own; its versions are removed afterwards."""
    model = f"m{os.getpid()}n{next(_counter)}"
    yield model
    db.run("DELETE FROM pgml.model_names WHERE name = %s", (model,))


def make_table(db: Session, table: str, columns: str, rows: Sequence[Sequence[Any]]) -> str:
    """Creates (or replaces) a table and fills it; returns its name."""
    db.run(f"DROP TABLE IF EXISTS {table} CASCADE")
    db.run(f"CREATE TABLE {table} ({columns})")
    if rows:
        with db.conn.cursor() as cur:
            placeholders = ", ".join(["%s"] * len(rows[0]))
            cur.executemany(f"INSERT INTO {table} VALUES ({placeholders})", rows)
    return table


def linear_rows(n: int = 200, noise: float = 0.01, seed: int = 0) -> List[Tuple[float, float]]:
    """(x, y) with y = 3x + 1 + small noise."""
    import numpy as np

    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 10, n)
    y = 3 * x + 1 + rng.normal(0, noise, n)
    return [(float(a), float(b)) for a, b in zip(x, y)]


def role(db: Session, role_name: str, grants: Optional[Sequence[str]] = (), schema: bool = False) -> str:
    """A login role made afresh, with the given GRANT statements run for it (``{role}`` in them is
    its name). Roles are the whole cluster's, so the name starts with this run's database name:
    runs in other databases keep their own, and the run's cleanup finds them.

    With ``schema``, the role owns a schema of its name, first on its search_path ("$user"): where
    it creates its tables, views and functions, since (as from PostgreSQL 15) it may not create
    them in public."""
    role_name = f"{DATABASE}_{role_name}"
    if db.one("SELECT count(*) FROM pg_roles WHERE rolname = %s", (role_name,)):
        db.run(f"DROP OWNED BY {role_name}")
        db.run(f"DROP ROLE {role_name}")
    db.run(f"CREATE ROLE {role_name} {login_clause()}")
    if schema:
        db.run(f"CREATE SCHEMA {role_name} AUTHORIZATION {role_name}")
    for grant in grants or ():
        db.run(grant.format(role=role_name))
    return role_name
