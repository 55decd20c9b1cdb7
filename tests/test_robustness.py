"""Robustness against the real server: many errors on one backend, COPY into every table, EXPLAIN of
every documented shape (and of the shapes that used to crash), no JIT at any size, flat memory.

Every test checks that the backend it used is still the same process afterwards: a crash in
Multicorn takes the backend (and every other session) with it. conftest's ``no_backend_crashed``
catches a crash anywhere in the run.

Tables and models here are prefixed ``rb_`` and made once per module; the database is new each run.
"""
from __future__ import annotations

import io
import json
import os
import time
from typing import Any, Dict, Iterator, List, Optional, Tuple, Union

import psycopg2
import pytest

from conftest import LOCAL_ROOT, NOT_LOCAL, Session, role

# --------------------------------------------------------------------------------------------------
# Fixtures: small tables and their models, made once for the module.
# --------------------------------------------------------------------------------------------------

SETUP = """
DROP TABLE IF EXISTS rb_line, rb_line_keyed, rb_points, rb_docs, rb_mixed, rb_wait, rb_fruit, rb_names CASCADE;
-- y = 2a + 3b + 1 exactly: a linear model predicts it to rounding.
CREATE TABLE rb_line AS SELECT g::float8 AS a, g % 7 AS b, (2 * g + 3 * (g % 7) + 1)::float8 AS y
    FROM generate_series(1, 200) g;
CREATE TABLE rb_line_keyed AS SELECT g AS id, g::float8 AS a, g % 7 AS b FROM generate_series(1, 50) g;
-- Only the features of rb_line, so that to_jsonb(t) is a feature object.
CREATE TABLE rb_points AS SELECT g::float8 AS a, g % 7 AS b FROM generate_series(1, 50) g;
CREATE TABLE rb_docs AS SELECT g AS id, jsonb_build_object('a', g::float8, 'b', g % 7) AS features
    FROM generate_series(1, 50) g;
CREATE TABLE rb_mixed AS SELECT g::float8 AS f, g % 5 AS i, (ARRAY['x', 'y', 'z'])[1 + g % 3] AS s,
    make_interval(days => g) AS iv, timestamp '2020-01-01' + make_interval(hours => g) AS ts,
    (3 * g + 5 * (g % 5) + 10 * (g % 3))::float8 AS y
    FROM generate_series(1, 300) g;
CREATE VIEW rb_mixed_features AS SELECT f, i, s, iv, ts FROM rb_mixed;
-- y = 10 + 2 * days: pgml.score('rb_wait', '2 years'::interval) is 10 + 2 * 730.5.
CREATE TABLE rb_wait AS SELECT make_interval(days => g) AS d, (10 + 2 * g)::float8 AS y
    FROM generate_series(1, 100) g;
CREATE TABLE rb_fruit AS
    SELECT (100 + g % 20)::float8 AS weight, 'red' AS color, 'apple' AS kind FROM generate_series(1, 60) g
    UNION ALL
    SELECT (150 + g % 20)::float8, 'yellow', 'banana' FROM generate_series(1, 60) g;
CREATE TABLE rb_names AS SELECT 'RB_LINE'::text AS name, 1 AS v;
"""

F_LINE = "jsonb_build_object('a', t.a, 'b', t.b)"
F_MIXED = "jsonb_build_object('f', t.f, 'i', t.i, 's', t.s, 'iv', t.iv, 'ts', t.ts)"
F_FRUIT = "jsonb_build_object('weight', t.weight, 'color', t.color)"
GOOD_PREDICTION = ("SELECT prediction FROM pgml.predictions "
                   "WHERE model = 'rb_line' AND features = '{\"a\": 10, \"b\": 2}'")
GOOD_VALUE = 2 * 10 + 3 * 2 + 1


@pytest.fixture(scope="module")
def models(database: None) -> None:
    """rb_line (regression on a and b), rb_mixed (float, int, text, interval and timestamp
    features), rb_wait (one interval feature) and rb_fruit (text classes)."""
    session = Session()
    session.run(SETUP)
    for relation, y_column in [("rb_line", "y"), ("rb_mixed", "y"), ("rb_wait", "y"), ("rb_fruit", "kind")]:
        session.one("SELECT pgml.train(%s, %s)", (relation, y_column))
    session.close()


def _gone(session: Session) -> bool:
    """Whether a session's backend is gone (crashed, or ended by another backend's crash)."""
    if session.conn.closed:
        return True
    try:
        session.one("SELECT 1")
        return False
    except psycopg2.Error:
        return True


Outcome = Union[str, psycopg2.Error]


def _outcome(session: Session, query: str) -> Outcome:
    """The text a statement returns (an EXPLAIN's plan, or its rows), or the error it raises. Fails
    the test at once if the backend died."""
    try:
        rows = session.rows(query)
    except psycopg2.Error as exc:
        if _gone(session):
            pytest.fail(f"the backend crashed on: {query}\n{exc}")
        return exc
    return "\n".join(" | ".join(str(v) for v in row) for row in rows)


def _is_refusal(error: psycopg2.Error) -> bool:
    """The wrapper's refusal to EXPLAIN a correlated subquery (Multicorn reports it as XX000)."""
    return "PgmlCannotPlanThisQuery" in (error.diag.message_primary or "")


def _describe(error: psycopg2.Error) -> str:
    return f"{error.pgcode}: {error.diag.message_primary} (hint: {error.diag.message_hint})"


# --------------------------------------------------------------------------------------------------
# 1. A hundred thousand wrapper errors, then a prediction, on one backend.
# --------------------------------------------------------------------------------------------------

PREDICTION_ERRORS = 95_000
TRAINING_ERRORS = 200      # a training error costs ~70-90 ms (a worker process reads the options)
CLIENT_ERRORS = 2_000
CLIENT_TRAINING_ERRORS = 20  # of the client's, for the same reason

# kind: (the statement, a fragment of its message, its SQLSTATE)
PREDICTION_KINDS: Dict[str, Tuple[str, str, str]] = {
    "unknown_model": ("SELECT prediction FROM pgml.predictions WHERE model = 'rb_no_such_model' "
                      "AND features = '[1, 2]'", "no model", "42704"),
    "missing_feature": ("SELECT prediction FROM pgml.predictions WHERE model = 'rb_line' AND features = '{\"a\": 1}'",
                        "lacks 'b'", "22023"),
    "feature_count": ("SELECT prediction FROM pgml.predictions WHERE model = 'rb_line' AND features = '[1, 2, 3]'",
                      "takes 2 features, not 3", "22023"),
    # Invalid JSON never reaches the wrapper: PostgreSQL's jsonb input rejects it.
    "invalid_json": ("SELECT prediction FROM pgml.predictions WHERE model = 'rb_line' AND features = bad_json::jsonb",
                     "invalid input syntax for type json", "22P02"),
    # Valid JSON, but a string holding what looks like an array: the wrapper rejects it.
    "json_string": ("SELECT prediction FROM pgml.predictions WHERE model = 'rb_line' AND features = '\"[1, 2]\"'",
                    "must be a JSON object or array", "22023"),
    "features_and_relation": ("SELECT prediction FROM pgml.predictions WHERE model = 'rb_line' AND features = '[1, 2]' "
                              "AND relation = 'rb_line_keyed'", "not both", "22023"),
}
TRAINING_KINDS: Dict[str, Tuple[str, str, str]] = {
    "unknown_algorithm": ("SELECT pgml.train('rb_line', 'y', 'no_such_algorithm', name => 'rb_never')",
                          "unknown algorithm", "22023"),
    "bad_hyperparameter": ("SELECT pgml.train('rb_line', 'y', hyperparams => '{\"bogus\": 1}', name => 'rb_never')",
                           "unknown hyperparameter", "22023"),
}
BAD_JSON = '{"a": 1,'


def _error_loop(kinds: Dict[str, Tuple[str, str, str]], iterations: int) -> str:
    """A DO block that runs the kinds' statements in turn, each in a subtransaction of its own
    (BEGIN ... EXCEPTION), and leaves {"kind sqlstate": count} and {kind: first message} in the
    settings pgml_robust.counts and pgml_robust.messages."""
    names = list(kinds)
    branches = "\n".join(f"WHEN '{kind}' THEN PERFORM {statement[len('SELECT '):]};"
                         for kind, (statement, _, _) in kinds.items())
    return f"""
DO $$
DECLARE
    kinds text[] := ARRAY[{', '.join(f"'{k}'" for k in names)}];
    -- Each iteration's kind and SQLSTATE ('none' if it did not fail), counted once at the end.
    ran text[] := '{{}}';
    states text[] := '{{}}';
    messages jsonb := '{{}}';
    bad_json text := '{BAD_JSON}';
    kind text;
    state text;
    message text;
BEGIN
    FOR i IN 0 .. {iterations - 1} LOOP
        kind := kinds[1 + i % {len(names)}];
        state := 'none';
        message := NULL;
        BEGIN
            CASE kind
            {branches}
            END CASE;
        EXCEPTION WHEN OTHERS THEN
            GET STACKED DIAGNOSTICS state = RETURNED_SQLSTATE, message = MESSAGE_TEXT;
        END;
        ran := ran || kind;
        states := states || state;
        IF NOT messages ? kind THEN
            messages := messages || jsonb_build_object(kind, message);
        END IF;
    END LOOP;
    PERFORM set_config('pgml_robust.counts',
                       (SELECT jsonb_object_agg(slot, n)::text
                        FROM (SELECT k || ' ' || s AS slot, count(*) AS n FROM unnest(ran, states) AS u(k, s)
                              GROUP BY 1) c),
                       false);
    PERFORM set_config('pgml_robust.messages', messages::text, false);
END
$$"""


def _per_kind(counts: Dict[str, int]) -> Dict[str, Dict[str, int]]:
    """{"kind sqlstate": n} as {kind: {sqlstate: n}}."""
    result: Dict[str, Dict[str, int]] = {}
    for slot, n in counts.items():
        kind, state = slot.split(" ")
        result.setdefault(kind, {})[state] = n
    return result


def _expected_counts(kinds: Dict[str, Any], iterations: int) -> Dict[str, int]:
    """How many times the loop runs each kind (it takes them in turn)."""
    return {kind: len(range(position, iterations, len(kinds))) for position, kind in enumerate(kinds)}


def _check_loop(session: Session, kinds: Dict[str, Tuple[str, str, str]], iterations: int) -> Dict[str, Dict[str, int]]:
    """Runs the DO loop over the kinds and checks every iteration failed as its kind should;
    returns {kind: {sqlstate: count}}."""
    session.run(_error_loop(kinds, iterations))
    counts = _per_kind(json.loads(session.one("SELECT current_setting('pgml_robust.counts')")))
    messages = json.loads(session.one("SELECT current_setting('pgml_robust.messages')"))
    for kind, (_, fragment, expected_state) in kinds.items():
        assert counts[kind] == {expected_state: _expected_counts(kinds, iterations)[kind]}, \
            f"{kind}: {counts[kind]}, first message: {messages[kind]}"
        assert fragment in messages[kind], f"{kind}: {messages[kind]}"
    return counts


def test_a_hundred_thousand_wrapper_errors_leave_the_backend_working(db: Session, models: None) -> None:
    pid = db.pid()
    assert db.one(GOOD_PREDICTION) == pytest.approx(GOOD_VALUE, abs=1e-6)

    started = time.monotonic()
    in_loop = _check_loop(db, PREDICTION_KINDS, PREDICTION_ERRORS)
    loop_seconds = time.monotonic() - started
    started = time.monotonic()
    in_loop.update(_check_loop(db, TRAINING_KINDS, TRAINING_ERRORS))
    training_seconds = time.monotonic() - started
    assert db.pid() == pid

    # From the client, over this same connection: the statements one by one, each its own
    # implicit transaction (autocommit).
    started = time.monotonic()
    client: Dict[str, Dict[str, int]] = {}
    order = ([k for k in TRAINING_KINDS] * (CLIENT_TRAINING_ERRORS // len(TRAINING_KINDS))
             + [list(PREDICTION_KINDS)[i % len(PREDICTION_KINDS)]
                for i in range(CLIENT_ERRORS - CLIENT_TRAINING_ERRORS)])
    for kind in order:
        statement, fragment, _ = {**PREDICTION_KINDS, **TRAINING_KINDS}[kind]
        error = db.error(statement.replace("bad_json", "%s"), (BAD_JSON,) if "bad_json" in statement else ())
        assert fragment in error.diag.message_primary, (kind, _describe(error))
        per_state = client.setdefault(kind, {})
        per_state[error.pgcode] = per_state.get(error.pgcode, 0) + 1
    client_seconds = time.monotonic() - started
    assert sum(sum(s.values()) for s in client.values()) == CLIENT_ERRORS
    for kind, per_state in client.items():
        # The same SQLSTATE from the client as inside the DO block.
        assert list(per_state) == list(in_loop[kind]), (kind, per_state, in_loop[kind])
    assert sum(sum(s.values()) for s in in_loop.values()) == PREDICTION_ERRORS + TRAINING_ERRORS
    seen = {state for per_state in [*in_loop.values(), *client.values()] for state in per_state}
    assert "XX000" not in seen and "none" not in seen, seen

    assert db.pid() == pid
    assert db.one(GOOD_PREDICTION) == pytest.approx(GOOD_VALUE, abs=1e-6)
    assert db.one("SELECT pgml.score('rb_line', ROW(10, 2))") == pytest.approx(GOOD_VALUE, abs=1e-6)
    assert db.one("SELECT count(*) FROM pgml.model_versions WHERE name = 'rb_never'") == 0
    print(f"\n{PREDICTION_ERRORS:,} prediction errors in a DO block: {loop_seconds:.1f} s; "
          f"{TRAINING_ERRORS} training errors: {training_seconds:.1f} s; "
          f"{CLIENT_ERRORS:,} client errors: {client_seconds:.1f} s")


def test_an_unknown_model_is_42704_in_every_form(db: Session, models: None) -> None:
    """An unknown model is undefined_object (42704, errors.UNDEFINED_OBJECT) whichever form names
    it: the functions resolve the name in SQL, pgml.predictions in the wrapper."""
    forms = [
        "SELECT pgml.score('rb_no_such_model', '[1, 2]'::jsonb)",
        "SELECT * FROM pgml.prediction('rb_no_such_model', '[1, 2]'::jsonb)",
        "SELECT prediction FROM pgml.predictions WHERE model = 'rb_no_such_model' AND features = '[1, 2]'",
        "SELECT key FROM pgml.predictions WHERE model = 'rb_no_such_model' AND relation = 'rb_line_keyed'",
    ]
    states = {form: _describe(db.error(form)) for form in forms}
    assert all(state.startswith("42704:") for state in states.values()), json.dumps(states, indent=1)


# --------------------------------------------------------------------------------------------------
# 2. COPY into every foreign table.
# --------------------------------------------------------------------------------------------------

FOREIGN_TABLES = ["pgml._training_runs", "pgml._predictions", "pgml.algorithms", "pgml._trained_estimators"]


def _copy(session: Session, statement: str, data: str) -> None:
    with session.conn.cursor() as cur:
        cur.copy_expert(statement, io.StringIO(data))


def _copy_error(session: Session, statement: str, data: str) -> psycopg2.Error:
    with pytest.raises(psycopg2.Error) as caught:
        _copy(session, statement, data)
    assert not _gone(session), f"the backend crashed on {statement}"
    return caught.value


def _csv_rows(session: Session, table: str) -> str:
    """Two CSV rows for a table: a text value in its first column (all of them are text) and NULLs."""
    schema, name = table.split(".")
    columns = session.one("SELECT count(*) FROM information_schema.columns WHERE table_schema = %s AND table_name = %s",
                          (schema, name))
    assert columns > 1
    return ("rb_copied" + "," * (columns - 1) + "\n") * 2


@pytest.mark.parametrize("table", FOREIGN_TABLES)
def test_copy_into_a_foreign_table_is_refused(db: Session, models: None, table: str) -> None:
    pid = db.pid()
    versions = db.one("SELECT count(*) FROM pgml.model_versions")
    error = _copy_error(db, f"COPY {table} FROM STDIN WITH (FORMAT csv)", _csv_rows(db, table))
    assert error.pgcode == "42809", _describe(error)
    assert f"{table} cannot be written to directly" in error.diag.message_primary
    assert "pgml.training_runs" in error.diag.message_hint
    # With a column list too, and with no rows at all: refused before any row reaches Multicorn.
    schema, relation = table.split(".")
    first = db.one("SELECT column_name FROM information_schema.columns WHERE table_schema = %s AND table_name = %s "
                   "AND ordinal_position = 1", (schema, relation))
    for statement, data in [(f"COPY {table} ({first}) FROM STDIN", "rb_copied\n"), (f"COPY {table} FROM STDIN", "")]:
        error = _copy_error(db, statement, data)
        assert error.pgcode == "42809", (statement, _describe(error))
    assert db.pid() == pid
    assert db.one("SELECT count(*) FROM pgml.model_versions") == versions
    assert db.one(GOOD_PREDICTION) == pytest.approx(GOOD_VALUE, abs=1e-6)


def test_copy_into_training_runs_trains_and_into_predictions_is_postgres_own_error(db: Session, models: None,
                                                                                 name: str) -> None:
    pid = db.pid()
    _copy(db, "COPY pgml.training_runs (relation, y_column, name) FROM STDIN WITH (FORMAT csv)",
          f"rb_line,y,{name}\nrb_line,y,{name}\n")
    assert db.rows("SELECT id, version, algorithm FROM pgml.model_versions WHERE name = %s ORDER BY version",
                   (name,)) == [(f"{name}_1", 1, "linear"), (f"{name}_2", 2, "linear")]
    assert db.one("SELECT pgml.score(%s, ROW(10, 2))", (f"{name}_2",)) == pytest.approx(GOOD_VALUE, abs=1e-6)

    error = _copy_error(db, "COPY pgml.predictions FROM STDIN WITH (FORMAT csv)", "rb_line,,,,,,,\n")
    assert error.pgcode == "42809", _describe(error)
    assert error.diag.message_primary == 'cannot copy to view "predictions"'
    assert db.pid() == pid


def test_copy_as_a_role_with_the_documented_grants(db: Session, models: None, name: str) -> None:
    """A role allowed to train and predict may COPY into pgml.training_runs (it trains), and into
    nothing else: the internal tables are not its to write."""
    trainer = role(db, "pgml_robust_copier", ["GRANT INSERT, SELECT (id) ON pgml.training_runs TO {role}",
                                              "GRANT SELECT ON pgml.predictions TO {role}",
                                              "GRANT SELECT ON rb_line TO {role}"])
    session = Session(user=trainer)
    pid = session.pid()
    for table in FOREIGN_TABLES:
        error = _copy_error(session, f"COPY {table} FROM STDIN WITH (FORMAT csv)", _csv_rows(db, table))
        assert error.pgcode == "42501", (table, _describe(error))
        assert "permission denied" in error.diag.message_primary
    error = _copy_error(session, "COPY pgml.predictions FROM STDIN WITH (FORMAT csv)", "rb_line,,,,,,,\n")
    assert error.pgcode in ("42501", "42809"), _describe(error)
    _copy(session, "COPY pgml.training_runs (relation, y_column, name) FROM STDIN WITH (FORMAT csv)",
          f"rb_line,y,{name}\n")
    assert session.one(f"SELECT prediction FROM pgml.predictions WHERE model = '{name}' "
                       "AND features = '{\"a\": 10, \"b\": 2}'") == pytest.approx(GOOD_VALUE, abs=1e-6)
    assert session.pid() == pid
    session.close()
    assert db.one("SELECT trained_by FROM pgml.model_versions WHERE name = %s", (name,)) == trainer


# --------------------------------------------------------------------------------------------------
# 3. EXPLAIN of every documented shape, and of the shapes that used to crash.
# --------------------------------------------------------------------------------------------------

# name: (query, a plan node it must show)
DOCUMENTED_SHAPES: Dict[str, Tuple[str, str]] = {
    "literal": (GOOD_PREDICTION, "Foreign Scan"),
    "relation": ("SELECT key, prediction FROM pgml.predictions WHERE model = 'rb_line' "
                 "AND relation = 'rb_line_keyed' AND key_column = 'id'", "Foreign Scan"),
    "score": (f"SELECT pgml.score('rb_line', {F_LINE}) FROM rb_line t", "Seq Scan"),
    "score_row": ("SELECT pgml.score('rb_line', ROW(t.a, t.b)) FROM rb_line t", "Seq Scan"),
    "lateral_mixed_types": ("SELECT p.prediction FROM rb_mixed t "
                            f"CROSS JOIN LATERAL pgml.prediction('rb_mixed', {F_MIXED}) p", "Function Scan"),
    "lateral_to_jsonb": ("SELECT p.prediction FROM rb_mixed_features t "
                         "CROSS JOIN LATERAL pgml.prediction('rb_mixed', to_jsonb(t)) p", "Function Scan"),
    "lateral_jsonb_column": ("SELECT p.prediction FROM rb_docs t "
                             "CROSS JOIN LATERAL pgml.prediction('rb_line', t.features) p", "Function Scan"),
    "score_interval": ("SELECT pgml.score('rb_wait', '2 years'::interval)", "Result"),
    "classify": (f"SELECT pgml.classify('rb_fruit', {F_FRUIT}), pgml.predict_proba('rb_fruit', {F_FRUIT}) "
                 "FROM rb_fruit t", "Seq Scan"),
}
EXPLAINS = ["EXPLAIN", "EXPLAIN ANALYZE", "EXPLAIN (VERBOSE)"]


def _plan(session: Session, query: str) -> str:
    return "\n".join(row[0] for row in session.rows(query))


@pytest.mark.parametrize("shape", list(DOCUMENTED_SHAPES))
def test_explain_prints_a_plan_for_every_documented_shape(db: Session, models: None, shape: str) -> None:
    query, node = DOCUMENTED_SHAPES[shape]
    pid = db.pid()
    for explain in EXPLAINS:
        plan = _plan(db, f"{explain} {query}")
        assert node in plan, f"{explain}:\n{plan}"
        if explain == "EXPLAIN ANALYZE":
            assert "actual time" in plan, plan
    assert db.rows(query), "the query returns no rows"
    assert db.pid() == pid


# Features only known when the query runs: EXPLAIN would hand them to Multicorn unset, and
# multicorn2 on PostgreSQL 15 crashes on the first one even at the top level.
RUN_TIME_FEATURES = [
    "SELECT prediction FROM pgml.predictions WHERE model = 'rb_line' "
    "AND features = jsonb_build_object('a', 10, 'b', 2)",
    "SELECT prediction FROM pgml.predictions WHERE model = 'rb_line' AND features = to_jsonb(ARRAY[10, 2])",
]


@pytest.mark.parametrize("query", RUN_TIME_FEATURES)
def test_explain_of_features_computed_at_run_time_is_refused_and_the_query_runs(db: Session, models: None,
                                                                                 query: str) -> None:
    pid = db.pid()
    for explain in EXPLAINS:
        error = _outcome(db, f"{explain} {query}")
        assert isinstance(error, psycopg2.Error) and _is_refusal(error), f"{explain}: {error}"
        assert "written as a constant" in error.diag.message_detail
    # The same with constant features is explained; the query itself answers.
    assert "Foreign Scan" in _plan(db, f"EXPLAIN {GOOD_PREDICTION}")
    assert db.one(query) == pytest.approx(GOOD_VALUE)
    assert db.pid() == pid


def test_the_documented_shapes_answer_right(db: Session, models: None) -> None:
    """What the shapes above EXPLAIN also computes the right values (so the plans are of queries
    that work)."""
    rows = db.rows(f"SELECT t.y, p.prediction, q.prediction, pgml.score('rb_mixed', ROW(t.f, t.i, t.s, t.iv, t.ts)) "
                   f"FROM rb_mixed t CROSS JOIN LATERAL pgml.prediction('rb_mixed', {F_MIXED}) p "
                   "JOIN rb_mixed_features v ON (v.f = t.f) "
                   "CROSS JOIN LATERAL pgml.prediction('rb_mixed', to_jsonb(v)) q")
    assert len(rows) == 300
    assert all(p == pytest.approx(q, rel=1e-9) and p == pytest.approx(s, rel=1e-9) for _, p, q, s in rows)
    assert db.one("SELECT pgml.score('rb_wait', '2 years'::interval)") == pytest.approx(10 + 2 * 730.5, rel=1e-6)
    docs = db.rows("SELECT t.id, p.prediction FROM rb_docs t "
                   "CROSS JOIN LATERAL pgml.prediction('rb_line', t.features) p")
    assert all(p == pytest.approx(2 * i + 3 * (i % 7) + 1, abs=1e-6) for i, p in docs)
    fruit = db.rows(f"SELECT t.kind, pgml.classify('rb_fruit', {F_FRUIT}), pgml.predict_proba('rb_fruit', {F_FRUIT}) "
                    "FROM rb_fruit t")
    assert all(kind == label and probabilities[label] > 0.5 for kind, label, probabilities in fruit)


@pytest.mark.parametrize("mode", ["force_custom_plan", "force_generic_plan"])
def test_explain_execute_of_a_prepared_prediction(db: Session, models: None, mode: str) -> None:
    pid = db.pid()
    db.run(f"SET plan_cache_mode = {mode}")
    db.run("PREPARE rb_predict(text, jsonb) AS SELECT prediction FROM pgml.predictions "
           "WHERE model = $1 AND features = $2")
    arguments = "('rb_line', '{\"a\": 10, \"b\": 2}')"
    if mode == "force_generic_plan":
        # A generic plan's features are a parameter, which an EXPLAIN EXECUTE of it, now or after it
        # ran, hands to Multicorn unset (multicorn2 on PostgreSQL 15 crashed on it): refused when made.
        for statement in ["EXECUTE"] + [f"{explain} EXECUTE" for explain in EXPLAINS] + ["EXECUTE"]:
            error = _outcome(db, f"{statement} rb_predict{arguments}")
            assert isinstance(error, psycopg2.Error) and _is_refusal(error), f"{statement}: {error}"
        assert "plan_cache_mode" in error.diag.message_detail or "written as a constant" in error.diag.message_detail
        db.run("SET plan_cache_mode = auto")
    # Custom plans, in which the parameters are values; auto also builds a generic plan for its
    # costs after the fifth run, and keeps choosing the custom ones.
    for _ in range(7):
        assert db.one(f"EXECUTE rb_predict{arguments}") == pytest.approx(GOOD_VALUE, abs=1e-6)
    for explain in EXPLAINS:
        plan = _plan(db, f"{explain} EXECUTE rb_predict{arguments}")
        assert "Foreign Scan" in plan and "$2" not in plan, plan  # a custom plan shows the values
    assert db.pid() == pid


# Joins and LATERAL subqueries over pgml.predictions whose features come from another table's rows:
# no parameterized path reaches the scan, so they cannot run (a clear error says what to use), and
# a plain EXPLAIN of them used to crash the backend.
FORMERLY_CRASHING = {
    "lateral_subquery_text_and_float": "SELECT count(q.prediction) FROM rb_mixed t CROSS JOIN LATERAL ("
                                       "SELECT prediction FROM pgml.predictions WHERE model = 'rb_mixed' "
                                       "AND features = jsonb_build_object('f', t.f, 's', t.s)) q",
    "lateral_subquery_float_and_int": "SELECT count(q.prediction) FROM rb_points t CROSS JOIN LATERAL ("
                                      "SELECT prediction FROM pgml.predictions WHERE model = 'rb_line' "
                                      f"AND features = {F_LINE}) q",
    "lateral_subquery_to_jsonb": "SELECT count(q.prediction) FROM rb_points t CROSS JOIN LATERAL (SELECT prediction "
                                 "FROM pgml.predictions WHERE model = 'rb_line' AND features = to_jsonb(t)) q",
    "lateral_subquery_jsonb_column": "SELECT count(q.prediction) FROM rb_docs t CROSS JOIN LATERAL (SELECT prediction "
                                     "FROM pgml.predictions WHERE model = 'rb_line' AND features = t.features) q",
    "join_to_jsonb": "SELECT count(p.prediction) FROM rb_points t JOIN pgml.predictions p "
                     "ON p.model = 'rb_line' AND p.features = to_jsonb(t)",
    "join_jsonb_column": "SELECT count(p.prediction) FROM rb_docs t JOIN pgml.predictions p "
                         "ON p.model = 'rb_line' AND p.features = t.features",
    "exists_jsonb_column": "SELECT count(*) FROM rb_docs t WHERE EXISTS (SELECT 1 FROM pgml.predictions p "
                           "WHERE p.model = 'rb_line' AND p.features = t.features)",
}


@pytest.mark.parametrize("shape", list(FORMERLY_CRASHING))
def test_explain_of_a_join_with_per_row_features_prints_a_plan_or_a_clear_error(db: Session, models: None,
                                                                                shape: str) -> None:
    query = FORMERLY_CRASHING[shape]
    pid = db.pid()
    for explain in EXPLAINS:
        outcome = _outcome(db, f"{explain} {query}")
        if isinstance(outcome, psycopg2.Error):
            assert outcome.pgcode != "XX000" or _is_refusal(outcome), f"{explain}: {_describe(outcome)}"
        else:
            assert "Foreign Scan" in outcome, outcome
    error = _outcome(db, query)
    assert isinstance(error, psycopg2.Error), f"it ran: {error}"
    assert error.pgcode == "22023", _describe(error)
    assert "pgml.prediction(model, features)" in error.diag.message_hint
    assert db.pid() == pid


# The statements that crashed the development server (its log's "terminated by signal 11"),
# before pgml.predictions stopped offering parameterized paths and started refusing subqueries.
LOGGED_CRASHES = {
    # 0.2.0 under development: the view's context was an inline subquery, whose index scan Multicorn
    # ran, unopened, while evaluating the scan's conditions under a plain EXPLAIN.
    "single_prediction_with_the_context_subquery": (
        "SELECT prediction FROM pgml.predictions WHERE model = 'rb_line' AND features = '[10, 2]'"),
    "lateral_jsonb_build_object_with_a_jsonb_value": (
        "SELECT count(q.prediction) FROM (SELECT * FROM rb_docs LIMIT 10) r CROSS JOIN LATERAL (SELECT prediction "
        "FROM pgml.predictions WHERE model = 'rb_line' "
        "AND features = jsonb_build_object('a', r.id, 'j', r.features)) q"),
    "lateral_jsonb_build_object_float_and_text": (
        "SELECT count(q.prediction) FROM (SELECT * FROM rb_mixed LIMIT 10) r CROSS JOIN LATERAL (SELECT prediction "
        "FROM pgml.predictions WHERE model = 'rb_mixed' AND features = jsonb_build_object('f', r.f, 's', r.s)) q"),
    "lateral_jsonb_column": (
        "SELECT count(q.prediction) FROM (SELECT * FROM rb_docs LIMIT 10) r CROSS JOIN LATERAL (SELECT prediction "
        "FROM pgml.predictions WHERE model = 'rb_line' AND features = r.features) q"),
    "lateral_whole_row": (
        "SELECT count(q.prediction) FROM (SELECT * FROM rb_points LIMIT 10) r CROSS JOIN LATERAL (SELECT prediction "
        "FROM pgml.predictions WHERE model = 'rb_line' AND features = to_jsonb(r)) q"),
    "correlated_scalar_subquery": (
        "SELECT (SELECT prediction FROM pgml.predictions WHERE model = 'rb_mixed' "
        "AND features = jsonb_build_object('f', t.f, 's', t.s)) FROM rb_mixed t"),
    "lateral_subquery_with_limit": (
        "SELECT q.* FROM rb_mixed t CROSS JOIN LATERAL (SELECT prediction FROM pgml.predictions "
        "WHERE model = 'rb_mixed' AND features = jsonb_build_object('f', t.f, 's', t.s) LIMIT 1) q"),
}


@pytest.mark.parametrize("shape", list(LOGGED_CRASHES))
def test_a_plain_explain_that_once_crashed_the_server_does_not(db: Session, models: None, shape: str) -> None:
    pid = db.pid()
    outcome = _outcome(db, f"EXPLAIN {LOGGED_CRASHES[shape]}")
    if isinstance(outcome, psycopg2.Error):
        assert outcome.pgcode != "XX000" or _is_refusal(outcome), _describe(outcome)
    else:
        assert "Foreign Scan" in outcome, outcome
    assert db.pid() == pid


CORRELATED = ("SELECT t.a, t.b, (SELECT prediction FROM pgml.predictions WHERE model = 'rb_line' "
              "AND features = to_jsonb(t)) FROM rb_points t ORDER BY t.a")


def test_a_correlated_subquery_is_refused_and_pgml_prediction_answers_instead(db: Session, models: None) -> None:
    pid = db.pid()
    for explain in ["", "EXPLAIN", "EXPLAIN (VERBOSE)", "EXPLAIN (COSTS OFF)", "EXPLAIN ANALYZE"]:
        error = _outcome(db, f"{explain} {CORRELATED}")
        assert isinstance(error, psycopg2.Error), f"{explain or 'the query'} answered:\n{error}"
        assert _is_refusal(error), _describe(error)
        assert "pgml.prediction(model, features)" in error.diag.message_detail
    # Through SPI, from PL/pgSQL: the same refusal.
    error = _outcome(db, f"DO $$ DECLARE line text; BEGIN FOR line IN EXECUTE $q$EXPLAIN {CORRELATED}$q$ LOOP "
                         "END LOOP; END $$")
    assert isinstance(error, psycopg2.Error) and _is_refusal(error), error
    rows = db.rows("SELECT t.a, t.b, p.prediction FROM rb_points t "
                   "CROSS JOIN LATERAL pgml.prediction('rb_line', to_jsonb(t)) p ORDER BY t.a")
    assert len(rows) == 50
    assert all(p == pytest.approx(2 * a + 3 * b + 1, abs=1e-6) for a, b, p in rows)
    # A subquery with constant keys runs, and only EXPLAIN refuses it.
    constant = "SELECT (SELECT prediction FROM pgml.predictions WHERE model = 'rb_line' AND features = '[10, 2]')"
    assert db.one(constant) == pytest.approx(GOOD_VALUE, abs=1e-6)
    assert _is_refusal(_outcome(db, f"EXPLAIN {constant}"))
    assert db.pid() == pid


# --------------------------------------------------------------------------------------------------
# 4. No JIT at any size, one row per outer row; flat memory while scoring.
# --------------------------------------------------------------------------------------------------

BIG_ROWS = 1_000_000
F_FIVE = "jsonb_build_object('x1', t.x1, 'x2', t.x2, 'x3', t.x3, 'x4', t.x4, 'x5', t.x5)"


@pytest.fixture(scope="module")
def big(models: None) -> Iterator[str]:
    """rb_big: a million rows of five features and y = 1 + 2 x1 + 3 x2 - x3 + 0.5 x4 + 4 x5, analyzed;
    the model rb_five, trained on 2,000 of them."""
    session = Session()
    started = time.monotonic()
    session.run("DROP TABLE IF EXISTS rb_big, rb_five CASCADE")
    session.run("SELECT setseed(0.5)")
    session.run(f"""
        CREATE TABLE rb_big AS
        SELECT id, x1, x2, x3, x4, x5, 1 + 2 * x1 + 3 * x2 - x3 + 0.5 * x4 + 4 * x5 AS y
        FROM (SELECT g::bigint AS id, random() AS x1, random() AS x2, random() AS x3, random() AS x4, random() AS x5
              FROM generate_series(1, {BIG_ROWS}) g) s""")
    session.run("ANALYZE rb_big")
    session.run("CREATE TABLE rb_five AS SELECT x1, x2, x3, x4, x5, y FROM rb_big WHERE id <= 2000")
    session.one("SELECT pgml.train('rb_five', 'y')")
    print(f"\nrb_big ({BIG_ROWS:,} rows) made and rb_five trained in {time.monotonic() - started:.1f} s")
    session.close()
    yield "rb_big"
    cleanup = Session()  # not the one above: a crash later in the module would have ended it
    cleanup.run("DROP TABLE IF EXISTS rb_big CASCADE")
    cleanup.close()


def _explain_json(session: Session, query: str) -> Dict[str, Any]:
    return session.one(f"EXPLAIN (FORMAT JSON) {query}")[0]


def _nodes(plan: Dict[str, Any]) -> Iterator[Dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from _nodes(child)


def _node(explained: Dict[str, Any], **match: str) -> Dict[str, Any]:
    found = [n for n in _nodes(explained["Plan"]) if all(n.get(k) == v for k, v in match.items())]
    assert len(found) == 1, f"{match}: {json.dumps(explained, indent=1)}"
    return found[0]


def _about(estimate: float, expected: float) -> bool:
    return expected / 2 <= estimate <= expected * 2


def _jit_session(session: Session) -> None:
    """The server's defaults: JIT on above a cost of 100,000 (set so if the server's differ)."""
    if session.one("SHOW jit") != "on":
        session.run("SET jit = on")
    if session.one("SHOW jit_above_cost") != "100000":
        session.run("SET jit_above_cost = 100000")
    assert session.one("SHOW jit") == "on"
    assert session.one("SELECT pg_jit_available()"), "this server cannot JIT: the checks below would prove nothing"
    # A control: a query of this size that PostgreSQL does JIT-compile, so "no JIT" below can fail.
    control = _explain_json(session, "SELECT sum(t.x1 * g) FROM rb_big t CROSS JOIN generate_series(1, 10) g")
    assert "JIT" in control, json.dumps(control, indent=1)


@pytest.mark.parametrize("outer_rows", [1, 1_000, 100_000, 1_000_000])
def test_no_jit_and_one_row_per_outer_row(db: Session, big: str, outer_rows: int) -> None:
    _jit_session(db)
    outer = f"(SELECT * FROM rb_big LIMIT {outer_rows}) t"
    lateral = f"{outer} CROSS JOIN LATERAL pgml.prediction('rb_five', {F_FIVE}) p"
    problems: List[str] = []

    def check(label: str, query: str, node: Dict[str, str], rows: float, top_rows: Optional[float] = None) -> None:
        explained = _explain_json(db, query)
        if "JIT" in explained:
            problems.append(f"{label}: JIT {explained['JIT']}, total cost {explained['Plan']['Total Cost']}")
        scoring = _node(explained, **node)
        if not _about(scoring["Plan Rows"], rows):
            problems.append(f"{label}: {node} estimates {scoring['Plan Rows']} rows, not about {rows}")
        if top_rows is not None and not _about(explained["Plan"]["Plan Rows"], top_rows):
            problems.append(f"{label}: the plan estimates {explained['Plan']['Plan Rows']} rows, not about {top_rows}")

    # pgml.score in the select list: the node that evaluates it is the subquery scan over t.
    check("score", f"SELECT pgml.score('rb_five', {F_FIVE}) FROM {outer}", {"Node Type": "Subquery Scan"}, outer_rows)
    # LATERAL: one prediction per call, so one per outer row in all.
    check("lateral", f"SELECT t.id, p.prediction FROM {lateral}", {"Node Type": "Function Scan"}, 1, outer_rows)
    check("lateral join", f"SELECT t.id, p.prediction FROM {lateral}", {"Node Type": "Nested Loop"}, outer_rows)
    check("lateral count", f"SELECT count(p.prediction) FROM {lateral}", {"Node Type": "Nested Loop"}, outer_rows)
    # The relation form scores all of rb_big whatever the LIMIT; the rows it returns are the LIMIT's.
    relation = "SELECT key, prediction FROM pgml.predictions WHERE model = 'rb_five' AND relation = 'rb_big' " \
               "AND key_column = 'id'"
    check("relation", f"{relation} LIMIT {outer_rows}", {"Node Type": "Foreign Scan"}, BIG_ROWS, outer_rows)
    if outer_rows == BIG_ROWS:
        check("relation, no LIMIT", relation, {"Node Type": "Foreign Scan"}, BIG_ROWS)
        check("relation count", "SELECT count(prediction) FROM pgml.predictions WHERE model = 'rb_five' "
              "AND relation = 'rb_big'", {"Node Type": "Foreign Scan"}, BIG_ROWS)
    if outer_rows == 1:  # no outer table: once is enough
        # (Features computed when the query runs cannot be explained; they are estimated at one row too.)
        check("literal", "SELECT prediction FROM pgml.predictions WHERE model = 'rb_five' "
              "AND features = '[0.1, 0.2, 0.3, 0.4, 0.5]'", {"Node Type": "Foreign Scan"}, 1)
    assert not problems, "\n".join(problems)


def _memory(pid: int) -> Dict[str, int]:
    """VmRSS and its parts (anonymous, file-backed, shared) of a backend, in kB."""
    path = f"/proc/{pid}/status"
    assert os.path.exists(path), f"{path} is not readable: run the tests inside the server's root (local/server.sh run)"
    with open(path) as status:
        fields = dict(line.split(":", 1) for line in status)
    return {key: int(fields[key].split()[0]) for key in ("VmRSS", "RssAnon", "RssFile", "RssShmem")}


@pytest.mark.skipif(not LOCAL_ROOT, reason=f"{NOT_LOCAL} (the backend's /proc)")
def test_memory_stays_flat_while_scoring_a_hundred_thousand_rows(db: Session, big: str) -> None:
    pid = db.pid()
    # Read the rows once first, so that the shared buffers they sit in count before, not after.
    db.one("SELECT count(*) FROM rb_big WHERE id <= 100000")

    def score(rows: int) -> Tuple[int, float, float]:
        # WHERE, not ORDER BY ... LIMIT: sorting a million rows costs enough to JIT-compile the
        # query, and loading LLVM alone adds ~35 MB of VmRSS.
        return db.one(f"SELECT count(p.prediction), max(abs(p.prediction - t.y)), sum(p.prediction) "
                      f"FROM rb_big t CROSS JOIN LATERAL pgml.prediction('rb_five', {F_FIVE}) p WHERE t.id <= {rows}")

    count, worst, _ = score(10_000)
    assert count == 10_000 and worst < 1e-6
    after_10k = _memory(pid)
    started = time.monotonic()
    count, worst, _ = score(100_000)
    seconds = time.monotonic() - started
    after_100k = _memory(pid)
    assert count == 100_000 and worst < 1e-6
    assert db.pid() == pid
    growth = {key: (after_100k[key] - after_10k[key]) / 1024 for key in after_10k}
    print(f"\nLATERAL scoring of 100,000 rows: {seconds:.1f} s ({seconds * 10:.0f} us a row); memory after 10,000 "
          f"rows {after_10k}, after 100,000 more {after_100k} (kB): growth (MB) "
          + ", ".join(f"{key} {mb:.1f}" for key, mb in growth.items()))
    assert growth["VmRSS"] < 30, f"VmRSS grew by {growth['VmRSS']:.1f} MB: {after_10k} -> {after_100k}"


# --------------------------------------------------------------------------------------------------
# Last, because on Multicorn 1.4 some of them crash the backend (and so end every session).
# --------------------------------------------------------------------------------------------------

# Correlated subqueries over pgml.predictions whose features are a constant but whose model comes
# from the outer row, through an expression: Multicorn evaluates the outer expression unset under a
# plain EXPLAIN, and reads a cast's type from the wrong field; plan_guard refuses them all.
OUTER_VALUES = {
    "lower": "SELECT (SELECT prediction FROM pgml.predictions WHERE model = lower(n.name) "
             "AND features = '[10, 2]') FROM rb_names n",
    "concatenation": "SELECT (SELECT prediction FROM pgml.predictions WHERE model = lower(n.name) || '' "
                     "AND features = '[10, 2]') FROM rb_names n",
    "lateral_limit": "SELECT q.prediction FROM rb_names n CROSS JOIN LATERAL (SELECT prediction FROM pgml.predictions "
                     "WHERE model = lower(n.name) AND features = '[10, 2]' LIMIT 1) q",
    # An integer cast to text: a model that does not exist, which should say so.
    "integer_cast": "SELECT (SELECT prediction FROM pgml.predictions WHERE model = n.v::text "
                    "AND features = '[10, 2]') FROM rb_names n",
}


def _connect_again(deadline: float = 30) -> Session:
    """A new session, once the server accepts one again (after a crash it restarts every backend)."""
    waited = time.monotonic() + deadline
    while True:
        try:
            return Session()
        except psycopg2.OperationalError:
            if time.monotonic() > waited:
                raise
            time.sleep(0.2)


@pytest.mark.parametrize("shape", list(OUTER_VALUES))
def test_outer_values_in_other_conditions_of_a_subquery(models: None, shape: str) -> None:
    """Each form either answers (or prints a plan) or gives a clear error; none crashes the backend.
    Every form is tried even after a crash (on a new session), and all outcomes are reported."""
    query = OUTER_VALUES[shape]
    outcomes: Dict[str, str] = {}
    problems: List[str] = []
    session = _connect_again()
    for mode in ["", "EXPLAIN ", "EXPLAIN (VERBOSE) ", "EXPLAIN ANALYZE "]:
        label = mode.strip() or "run"
        pid = session.pid()
        try:
            rows = session.rows(mode + query)
            outcomes[label] = "\n".join(str(r[0]) for r in rows)
            if not mode and shape != "integer_cast":
                if [r[0] for r in rows] != pytest.approx([GOOD_VALUE], abs=1e-6):
                    problems.append(f"{label}: {rows}, not [{GOOD_VALUE}]")
            if shape == "integer_cast" and not mode:
                problems.append(f"{label}: answered {rows} for a model named '1' that does not exist")
        except psycopg2.Error as exc:
            if _gone(session):
                outcomes[label] = f"the backend crashed: {str(exc).strip()}"
                problems.append(f"{label}: the backend (pid {pid}) crashed")
                session = _connect_again()
                continue
            outcomes[label] = _describe(exc)
            if exc.pgcode == "XX000" and not _is_refusal(exc):
                problems.append(f"{label}: an internal error: {_describe(exc)}")
        if session.pid() != pid:
            problems.append(f"{label}: the backend changed")
    session.close()
    report = "\n".join(f"  {label}: {text}" for label, text in outcomes.items())
    assert not problems, "\n".join(problems) + "\noutcomes:\n" + report
