"""Connections from the wrapper back to its own database.

Multicorn runs inside a PostgreSQL backend but offers no SPI, so the wrapper reads training data and
models through psycopg2 connections to the same server (the foreign server's ``dsn`` option).

* :class:`ServerConnection` is the backend's long-lived connection: it reads models and metadata
  and listens for deployment changes. It is privileged (the extension owner) and never runs code
  a user wrote.
* :func:`read_as` runs one query over a relation a user named with that user's privileges, on a
  connection of its own, so that the user's views cannot borrow the privileged session.
"""
from __future__ import annotations

import select
from contextlib import contextmanager
from typing import Any, Iterator, List, Optional, Sequence, Tuple

import psycopg2
import psycopg2.errors
import psycopg2.extensions
from psycopg2 import sql

from . import errors, isolation
from .errors import PgmlError

CHANNEL = "pgml_models"
WORKER_APPLICATION = "pgml_fdw worker"
# A read waits this long at most for a lock: the caller's own transaction may hold it (LOCK, or
# uncommitted DDL), and it waits for this read.
READ_LOCK_TIMEOUT = "5s"


def connect(dsn: str) -> "psycopg2.extensions.connection":
    """A connection to the dsn, with an error that says how to fix the dsn when it fails. In a
    worker process, its backend is reported to the supervising backend, which stops it if the work
    is abandoned."""
    try:
        if isolation.in_worker():
            # Named apart: the backend terminates a worker's loopback backends by pid and by this name.
            conn = psycopg2.connect(dsn, application_name=WORKER_APPLICATION)
            isolation.report_backend_pid(conn.get_backend_pid())
        else:
            conn = psycopg2.connect(dsn)
        return conn
    except psycopg2.OperationalError as exc:
        raise PgmlError(
            f"pgml_fdw cannot connect back to this database: {str(exc).strip()}",
            hint="The foreign server pgml's dsn option says how; fix it with "
            "ALTER SERVER pgml OPTIONS (SET dsn 'host=... port=... dbname=... user=...').",
            sqlstate=errors.CONNECTION_FAILURE,
        ) from exc


class ServerConnection:
    """The backend's privileged connection, opened on first use and reopened if it breaks."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self._conn: Optional[psycopg2.extensions.connection] = None
        self._readable = select.poll()  # watches the connection's socket for notifications

    @property
    def conn(self) -> "psycopg2.extensions.connection":
        if self._conn is None or self._conn.closed:
            conn = connect(self.dsn)
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(sql.SQL("LISTEN {}").format(sql.Identifier(CHANNEL)))
                # The caller's own uncommitted DDL can lock what this connection reads: fail, not hang.
                cur.execute("SET lock_timeout = '5s'")
            self._readable = select.poll()
            self._readable.register(conn.fileno(), select.POLLIN)
            self._conn = conn
        return self._conn

    def fetch(self, query: str, params: Sequence[Any] = ()) -> List[Tuple[Any, ...]]:
        """Rows of a query; the connection is reopened once if the server closed it."""
        for attempt in (1, 2):
            try:
                with self.conn.cursor() as cur:
                    cur.execute(query, params)
                    return cur.fetchall()
            except psycopg2.errors.LockNotAvailable as exc:
                raise PgmlError("pgml_fdw's tables are locked by a transaction that has not committed",
                                hint="Commit the transaction that created or altered the extension first.",
                                sqlstate=errors.LOCK_NOT_AVAILABLE) from exc
            except psycopg2.OperationalError:
                self._conn = None
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def terminate(self, pids: List[int]) -> None:
        """Ends the given backends of this database's loopback connections (a worker process's,
        abandoned: killing the worker does not stop a query its backend is running)."""
        if pids:  # by name too: a pid that ended may have been reused by someone else's session
            self.fetch("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid = ANY(%s) "
                       "AND application_name = %s", (list(pids), WORKER_APPLICATION))

    def changed(self) -> bool:
        """Whether a deployment changed since the last call: one non-blocking look at the socket."""
        if self._conn is None or self._conn.closed:
            return True  # a new connection missed whatever happened before it
        conn = self._conn
        if self._readable.poll(0) or conn.notifies:
            try:
                conn.poll()
            except psycopg2.OperationalError:
                self._conn = None
                return True
            if conn.notifies:
                conn.notifies.clear()
                return True
        return False


@contextmanager
def read_as(dsn: str, role: str, select_sql: sql.Composable, result_columns: sql.Composable) -> Iterator[Tuple["psycopg2.extensions.cursor", sql.Composable]]:
    """A cursor, and a query that returns ``select_sql``'s rows read with ``role``'s privileges.

    The SELECT runs inside a temporary SECURITY DEFINER function owned by ``role``: privileges and
    row-level security apply as for that role, and PostgreSQL refuses ``SET ROLE`` and ``SET SESSION
    AUTHORIZATION`` inside it, so code in a view cannot take over the privileged connection. When
    ``role`` is both the user the connection logged in as and the one it runs as, there is nothing
    to take over and the function would change nothing, so the SELECT is returned as it is (and its
    rows stream rather than being gathered by the function first). The connection is the caller's
    alone and is closed afterwards.
    """
    conn = connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute("SET statement_timeout = 0; SET jit = off; SET lock_timeout = %s", (READ_LOCK_TIMEOUT,))
            cur.execute("SELECT current_user = %s AND session_user = %s", (role, role))
            if cur.fetchone()[0]:
                yield cur, select_sql
            else:
                cur.execute(
                    sql.SQL(
                        "CREATE FUNCTION pg_temp.pgml_read() RETURNS TABLE ({}) LANGUAGE sql STABLE "
                        "SECURITY DEFINER AS {}"
                    ).format(result_columns, sql.Literal(select_sql.as_string(conn)))
                )
                cur.execute(sql.SQL("ALTER FUNCTION pg_temp.pgml_read() OWNER TO {}").format(sql.Identifier(role)))
                yield cur, sql.SQL("SELECT * FROM pg_temp.pgml_read()")
        conn.rollback()
    finally:
        conn.close()
