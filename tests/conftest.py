"""Fixtures for the integration tests: a real PostgreSQL with Multicorn and this package.

The tests run against the local server (``make test`` starts it) in a database of their own,
``pgml_test`` (or ``$PGML_TEST_DATABASE``), made anew for every run with ``CREATE EXTENSION pgml_fdw
CASCADE``.
"""
from __future__ import annotations

import itertools
import os
from typing import Any, Iterator, List, Optional, Sequence, Tuple

import psycopg2
import psycopg2.extensions
import pytest

PORT = int(os.environ.get("PGML_PORT", "5433"))
DATABASE = os.environ.get("PGML_TEST_DATABASE", "pgml_test")
_counter = itertools.count(1)


def dsn(database: str = DATABASE, user: str = "postgres") -> str:
    return f"host=127.0.0.1 port={PORT} dbname={database} user={user}"


class Session:
    """A connection with short helpers; autocommit unless a test opens a transaction."""

    def __init__(self, user: str = "postgres", autocommit: bool = True) -> None:
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
    is opened on the maintenance database ``postgres``, which the ``database`` fixture does not
    drop."""
    sentinel = psycopg2.connect(dsn("postgres"))
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


@pytest.fixture(scope="session")
def database() -> Iterator[None]:
    admin = psycopg2.connect(dsn("postgres"))
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")
        cur.execute(f"CREATE DATABASE {DATABASE}")
    session = Session()
    session.run("CREATE EXTENSION pgml_fdw CASCADE")
    session.close()
    yield
    admin.close()


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


def role(db: Session, role_name: str, grants: Optional[Sequence[str]] = ()) -> str:
    """A login role made afresh, with the given GRANT statements run for it. Roles are the whole
    cluster's, so the name carries this run's database: runs in other databases keep their own."""
    role_name = f"{role_name}_{DATABASE}"
    if db.one("SELECT count(*) FROM pg_roles WHERE rolname = %s", (role_name,)):
        db.run(f"DROP OWNED BY {role_name}")
        db.run(f"DROP ROLE {role_name}")
    db.run(f"CREATE ROLE {role_name} LOGIN")
    for grant in grants or ():
        db.run(grant.format(role=role_name))
    return role_name
