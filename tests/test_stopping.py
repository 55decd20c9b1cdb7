"""Every statement stops on request, and training memory is bounded before it is spent.

A training and a batch prediction run in a worker process the backend supervises: statement_timeout,
pg_cancel_backend and pg_terminate_backend stop them within two seconds with PostgreSQL's own
error, leave no model, no worker process and no loopback query behind, and the backend keeps
working after a cancel. pgml.training_memory caps a run; going over it is a clear error, never the
kernel's out-of-memory killer.
"""
from __future__ import annotations

import os
import threading
import time
from typing import Callable, List, Optional, Tuple

import psycopg2
import pytest

from conftest import LOCAL_ROOT, NOT_LOCAL, Session, linear_rows, make_table

# Fits that would run for hours, or allocate far more than any budget.
ENDLESS = [
    ("lasso", '{"max_iter": 2000000000, "tol": 0}', "line"),
    ("random_forest", '{"n_estimators": 10000000}', "line"),
    ("linear", '{"max_iter": 100000000, "tol": 0}', "many_classes"),
]
LIMIT = 2.0  # seconds from the request to the error


@pytest.fixture(scope="module")
def data(database: None) -> None:
    db = Session()
    make_table(db, "line", "x float8, y float8", linear_rows(500))
    db.run("ANALYZE line")  # the planner's estimate of slow_line is then its 500 rows
    # A 10,000-class target: logistic regression over it runs for minutes.
    db.run("DROP TABLE IF EXISTS many_classes")
    db.run("CREATE TABLE many_classes AS SELECT g::float8 AS x, (g % 10000)::text AS y "
           "FROM generate_series(1, 20000) g")
    # A view that takes a second per row to read.
    db.run("CREATE OR REPLACE VIEW slow_line AS SELECT x, y FROM line, LATERAL pg_sleep(1) s")
    db.close()


# Watching a backend's worker process needs the server's /proc: only the local root has it.
needs_proc = pytest.mark.skipif(not LOCAL_ROOT, reason=f"{NOT_LOCAL} (the backends' /proc)")


def _stat(pid: int) -> Optional[Tuple[str, int]]:
    """A process's command name and parent, from /proc/<pid>/stat (None once it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            head, _, rest = f.read().rpartition(")")
    except OSError:
        return None
    return head.partition("(")[2], int(rest.split()[1])


def children(pid: int) -> List[int]:
    """The backend ``pid``'s worker processes: its children that are forks of it (they keep its
    command name). Others, such as the lscpu that scikit-learn's first import runs to count cores,
    come and go at their own pace. The tests run where the server's /proc is mounted; elsewhere
    (PGML_TEST_DSN) none can be seen, and the tests that need to are skipped."""
    if not LOCAL_ROOT:
        return []
    backend = _stat(pid)
    if backend is None:
        return []
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _stat(int(entry))
            if stat is not None and stat[1] == pid and stat[0] == backend[0]:
                found.append(int(entry))
    return found


def loopback_queries(db: Session) -> List[str]:
    """Queries still running on the wrapper's own connections (application_name pgml_fdw)."""
    return [r[0] for r in db.rows("SELECT query FROM pg_stat_activity WHERE application_name = 'pgml_fdw' "
                                  "AND state = 'active' AND pid <> pg_backend_pid()")]


def stopped_within(session: Session, query: str, stop: Callable[[int], None]) -> psycopg2.Error:
    """Runs ``query`` on ``session``, calls ``stop(pid)`` once its worker is busy, and returns the
    error the query ended with, checking it came within LIMIT seconds of the request."""
    pid = session.pid()
    outcome: dict = {}

    def run() -> None:
        try:
            session.run(query)
        except psycopg2.Error as exc:
            outcome["error"] = exc
        outcome["at"] = time.monotonic()

    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.monotonic() + 30
    while not children(pid) and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    # A statement that ended (or failed) before forking says why, rather than a bare "never started".
    assert children(pid), ("the statement never started a worker process: "
                           + (f"it failed with {outcome['error']!r} ({getattr(outcome['error'], 'pgcode', None)})"
                              if "error" in outcome else
                              "it finished without one" if not thread.is_alive() else "it is still running"))
    time.sleep(0.5)  # well into the work
    asked = time.monotonic()
    stop(pid)
    thread.join(LIMIT + 5)
    assert not thread.is_alive(), "the statement did not stop"
    assert "error" in outcome, "the statement finished instead of stopping"
    assert outcome["at"] - asked <= LIMIT, f"stopped after {outcome['at'] - asked:.1f} s"
    assert children(pid) == [], "a worker process was left behind"
    return outcome["error"]


@pytest.mark.parametrize("algorithm, hyperparams, relation", ENDLESS)
def test_statement_timeout_stops_a_training(db: Session, data: None, name: str, algorithm: str,
                                            hyperparams: str, relation: str) -> None:
    session = Session()
    session.run("SET statement_timeout = '1s'")
    pid = session.pid()
    started = time.monotonic()
    error = session.error(f"SELECT pgml.train('{relation}', 'y', '{algorithm}', name => %s, hyperparams => %s)",
                          (name, hyperparams))
    assert time.monotonic() - started <= 1 + LIMIT
    assert error.pgcode == "57014" and "statement timeout" in error.diag.message_primary
    assert children(pid) == []
    session.run("SET statement_timeout = 0")
    assert session.pid() == pid and session.one("SELECT 1") == 1
    session.close()
    assert db.one("SELECT count(*) FROM pgml.model_versions WHERE name = %s", (name,)) == 0
    assert loopback_queries(db) == []


@needs_proc
@pytest.mark.parametrize("algorithm, hyperparams, relation", ENDLESS[:2])
def test_cancel_stops_a_training_and_the_backend_keeps_working(db: Session, data: None, name: str, algorithm: str,
                                                              hyperparams: str, relation: str) -> None:
    session = Session()
    pid = session.pid()
    error = stopped_within(session, f"SELECT pgml.train('{relation}', 'y', '{algorithm}', name => '{name}', "
                                    f"hyperparams => '{hyperparams}')",
                           lambda p: db.one("SELECT pg_cancel_backend(%s)", (p,)))
    assert error.pgcode == "57014" and "user request" in error.diag.message_primary
    assert session.pid() == pid
    # The stopped run had taken version 1 (a gap, as a serial column's failed INSERT leaves).
    assert session.one("SELECT pgml.train('line', 'y', name => %s)", (name,)) == f"{name}_2"
    assert session.one("SELECT pgml.score(%s, 2.0)", (name,)) == pytest.approx(7, abs=0.05)
    session.close()
    assert loopback_queries(db) == []


@needs_proc
def test_terminate_stops_a_training(db: Session, data: None, name: str) -> None:
    session = Session()
    error = stopped_within(session, f"SELECT pgml.train('line', 'y', 'random_forest', name => '{name}', "
                                    "hyperparams => '{\"n_estimators\": 10000000}')",
                           lambda p: db.one("SELECT pg_terminate_backend(%s)", (p,)))
    assert isinstance(error, psycopg2.OperationalError)
    assert "terminating connection due to administrator command" in str(error)
    assert db.one("SELECT count(*) FROM pgml.model_versions WHERE name = %s", (name,)) == 0
    assert loopback_queries(db) == []


@needs_proc
def test_cancel_stops_a_training_reading_a_slow_view(db: Session, data: None, name: str) -> None:
    session = Session()
    error = stopped_within(session, f"SELECT pgml.train('slow_line', 'y', name => '{name}')",
                           lambda p: db.one("SELECT pg_cancel_backend(%s)", (p,)))
    assert error.pgcode == "57014"
    time.sleep(0.2)  # the loopback backend ends its query on the termination it was sent
    assert loopback_queries(db) == []
    session.close()


def test_statement_timeout_stops_a_batch_prediction_reading_a_slow_view(db: Session, data: None, name: str) -> None:
    db.one("SELECT pgml.train('line', 'y', name => %s)", (name,))
    session = Session()
    session.run("SET statement_timeout = '1s'")
    started = time.monotonic()
    error = session.error("SELECT count(*) FROM pgml.predictions WHERE model = %s AND relation = 'slow_line'", (name,))
    assert time.monotonic() - started <= 1 + LIMIT
    assert error.pgcode == "57014"
    session.run("SET statement_timeout = 0")
    assert session.one("SELECT count(*) FROM pgml.predictions WHERE model = %s AND relation = 'line'", (name,)) == 500
    session.close()
    time.sleep(0.2)
    assert loopback_queries(db) == []


def test_a_network_too_big_for_the_memory_cap_is_a_clear_error(db: Session, data: None, name: str) -> None:
    session = Session()
    pid = session.pid()
    session.run("SET pgml.training_memory = '500MB'")
    error = session.error("SELECT pgml.train('line', 'y', 'mlp', name => %s, "
                          "hyperparams => '{\"hidden_layer_sizes\": [30000, 30000]}')", (name,))
    assert error.pgcode == "53200"
    assert "500 MB" in error.diag.message_primary and "pgml.training_memory" in error.diag.message_hint
    assert session.pid() == pid and children(pid) == []
    session.close()
    assert db.one("SELECT count(*) FROM pgml.model_versions WHERE name = %s", (name,)) == 0


def test_a_table_too_big_for_the_cap_is_refused_before_it_is_read(db: Session, data: None, name: str) -> None:
    # The catalog's estimate (pg_class.reltuples) is what the check reads: a billion rows, as if.
    make_table(db, "huge", "x float8, y float8", linear_rows(50))
    db.run("UPDATE pg_class SET reltuples = 1e9 WHERE oid = 'huge'::regclass")
    session = Session()
    session.run("SET pgml.training_memory = '1GB'")
    started = time.monotonic()
    error = session.error("SELECT pgml.train('huge', 'y', name => %s)", (name,))
    assert error.pgcode == "53200" and time.monotonic() - started < 5
    assert "about 1,000,000,000 rows" in error.diag.message_primary
    assert "pgml.training_memory" in error.diag.message_hint
    session.close()


@pytest.mark.parametrize("setting, message", [("lots", "not a size"), ("-1GB", "must be positive"),
                                              ("16kB", "less than the 64 MB"), ("100TB", "more than half")])
def test_a_bad_memory_setting_is_a_clear_error(db: Session, data: None, name: str, setting: str, message: str) -> None:
    session = Session()
    session.run("SELECT set_config('pgml.training_memory', %s, false)", (setting,))
    error = session.error("SELECT pgml.train('line', 'y', name => %s)", (name,))
    assert error.pgcode == "22023" and message in error.diag.message_primary
    assert "pgml.training_memory" in error.diag.message_primary + (error.diag.message_hint or "")
    session.close()
