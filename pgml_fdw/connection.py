"""Connections from the wrapper back to its own database.

Multicorn runs inside a PostgreSQL backend but offers no SPI, so the wrapper reads training data and
models through connections to the same server (:func:`loopback_dsn`).

* :class:`ServerConnection` reads models and metadata; it never runs code a user wrote. A backend
  opens one only when it must (a model it has not cached, a name resolved anew) and closes it at
  the end of the statement, so N application connections use N server connections. It goes
  through :mod:`libpq` directly: a connection's first prediction should not import psycopg2.
* :func:`read_as` runs one query over a relation a user named with that user's privileges, on a
  connection of its own, so that the user's views cannot borrow the privileged session.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

from . import backend, errors, libpq
from .errors import PgmlError

if TYPE_CHECKING:
    import psycopg2.extensions
    from psycopg2 import sql

WORKER_APPLICATION = "pgml_fdw worker"
# A read waits this long at most for a lock: the caller's own transaction may hold it (LOCK, or
# uncommitted DDL), and it waits for this read.
READ_LOCK_TIMEOUT = "5s"


def connect(dsn: str) -> "psycopg2.extensions.connection":
    """A psycopg2 connection to the dsn, with an error that says how to fix the dsn when it fails.
    In a worker process, its backend is reported to the supervising backend, which stops it if the
    work is abandoned."""
    import psycopg2

    from . import isolation

    try:
        if isolation.in_worker():
            # Named apart: the backend terminates a worker's loopback backends by pid and by this name.
            conn = psycopg2.connect(dsn, application_name=WORKER_APPLICATION)
            isolation.report_backend_pid(conn.get_backend_pid())
        else:
            conn = psycopg2.connect(dsn)
        return conn
    except psycopg2.OperationalError as exc:
        raise _cannot_connect(exc) from exc


def _cannot_connect(exc: Exception) -> PgmlError:
    return PgmlError(
        f"pgml_fdw cannot connect back to this database: {str(exc).strip()}",
        hint="It logs in over this server's Unix socket as the foreign server pgml's serve_user (models) or "
        "read_user (training data): let that role in without a password in pg_hba.conf (peer with a map, or "
        "trust), or give a passfile: ALTER SERVER pgml OPTIONS (ADD dsn 'passfile=...'). See the README, Install.",
        sqlstate=errors.CONNECTION_FAILURE,
    )


class ServerConnection:
    """A connection back to this database, opened on first use and reopened if it broke. It holds
    no session state worth keeping, so :meth:`close` after a piece of work costs only a reconnect
    when there is more."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self._conn: Optional[libpq.Connection] = None
        self._pid = 0  # the process that opened _conn

    @property
    def conn(self) -> libpq.Connection:
        # A worker process forked from the backend opens a connection of its own: the backend's,
        # which it inherited, is the backend's alone to use and to close.
        if self._conn is None or self._conn.closed or self._pid != os.getpid():
            try:
                conn = libpq.Connection(self.dsn)
            except libpq.Error as exc:
                raise _cannot_connect(exc) from exc
            # The caller's own uncommitted DDL can lock what this connection reads: fail, not hang.
            conn.fetch("SELECT set_config('lock_timeout', %s, false)", (READ_LOCK_TIMEOUT,))
            self._conn, self._pid = conn, os.getpid()
        return self._conn

    def fetch(self, query: str, params: Sequence[Any] = (), binary: bool = False) -> List[Tuple[Any, ...]]:
        """Rows of a query (``%s`` for each of ``params``; ``binary``: of bytea columns only, read
        as they are); the connection is reopened once if the server closed it. A query's error is
        raised as :class:`libpq.Error`."""
        for attempt in (1, 2):
            try:
                return self.conn.fetch(query, params, binary)
            except libpq.Error as exc:
                if exc.sqlstate == errors.LOCK_NOT_AVAILABLE:
                    raise PgmlError("pgml_fdw's tables are locked by a transaction that has not committed",
                                    hint="Commit the transaction that created or altered the extension first.",
                                    sqlstate=errors.LOCK_NOT_AVAILABLE) from exc
                if exc.sqlstate is not None or attempt == 2:
                    raise
                self.close()  # the connection broke (a restart, an idle timeout): once more on a new one
        raise AssertionError("unreachable")

    def terminate(self, pids: List[int]) -> None:
        """Ends the given backends of a worker process's connections, abandoned (killing the worker
        does not stop a query its backend is running); they are this connection's role's own. By
        name too: a pid that ended may have been reused by someone else's session."""
        if pids:
            try:
                self.fetch("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid = ANY(%s::int[]) "
                           "AND application_name = %s", (list(pids), WORKER_APPLICATION))
            finally:
                self.close()

    def close(self) -> None:
        """Ends the connection, if open: a backend keeps none between statements."""
        if self._conn is not None:
            conn, self._conn = self._conn, None
            if self._pid == os.getpid():
                conn.close()


def loopback_dsn(options: Mapping[str, str], user_option: str) -> str:
    """The libpq connection string back to the database this backend serves: the server's own
    first socket directory and port and this database's name, as they are now (so a renamed
    database, a copy made from a template or a hot standby needs no setting), then the server
    option ``dsn``'s settings, then the role the option ``user_option`` names. Values are quoted as
    libpq wants them: any database or role name works."""
    socket_dir = (backend.setting("unix_socket_directories") or "").split(",")[0].strip()
    params: Dict[str, Any] = {
        "host": socket_dir or "localhost",
        "port": backend.setting("port"),
        "dbname": backend.database_name(),
        "application_name": "pgml_fdw",
    }
    try:
        params.update(libpq.parse_conninfo(options.get("dsn") or ""))
    except libpq.Error as exc:
        raise PgmlError(f"the foreign server pgml's dsn option is not a libpq connection string: {exc}",
                        hint="Fix it with ALTER SERVER pgml OPTIONS (SET dsn 'passfile=...'), or drop it.",
                        sqlstate=errors.CONNECTION_FAILURE) from exc
    if options.get(user_option):
        params["user"] = options[user_option]
    return libpq.make_conninfo(params)


@contextmanager
def read_as(dsn: str, role: str, select_sql: sql.Composable,
            result_columns: sql.Composable) -> Iterator[Tuple["psycopg2.extensions.cursor", sql.Composable]]:
    """A cursor, and a query that returns ``select_sql``'s rows read with ``role``'s privileges.

    The SELECT runs inside a temporary SECURITY DEFINER function owned by ``role``: privileges and
    row-level security apply as for that role, and PostgreSQL refuses ``SET ROLE`` and ``SET SESSION
    AUTHORIZATION`` inside it, so code in a view cannot take over the privileged connection. When
    ``role`` is both the user the connection logged in as and the one it runs as, there is nothing
    to take over and the function would change nothing, so the SELECT is returned as it is (and its
    rows stream rather than being gathered by the function first). The connection is the caller's
    alone and is closed afterwards.
    """
    from psycopg2 import sql

    conn = connect(dsn)
    try:
        with conn.cursor() as cur:
            # test_sampling first and last take the rows in the order the relation returns them: a
            # synchronized scan of a large table would start where another scan already is.
            cur.execute("SET statement_timeout = 0; SET jit = off; SET synchronize_seqscans = off; "
                        "SET lock_timeout = %s", (READ_LOCK_TIMEOUT,))
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
