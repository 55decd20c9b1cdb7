"""Scenario b: batch scoring, in rows per second.

Per model, repeated and interleaved: the batch form of pgml.predictions over every row of a table
(fetched by the client, as a user would), scikit-learn predicting the same encoded matrix in this
process, the batch form with jit off (the planner's estimate for it is high enough to JIT-compile
a scan whose work is all in Python), the batch form without key_column, a plain SELECT returning
as many rows (the floor of moving that many rows through SQL to this client), and the LATERAL
form over fewer rows with jit off. For the linear model also the whole-table functions, which hand
PostgreSQL the model as a SQL expression: pgml.score_table fetched by the client against a plain
SELECT of the id and the model's formula (per_row.linear_formula), and pgml.score_into (into an
emptied table) against CREATE TABLE ... AS SELECT of the same. The answers of every form are checked
against scikit-learn's, row by row.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Tuple

import numpy as np

from fixtures import PREDICTION_FEATURES, PREDICTION_TABLE, Fixtures
from harness import Measurement, Sizes, Target, connect, median, rotated, timed
from per_row import linear_formula

BATCH_SQL = ("SELECT key, prediction FROM pgml.predictions "
             "WHERE model = %s AND relation = %s AND key_column = 'id'")
NO_KEY_SQL = "SELECT prediction FROM pgml.predictions WHERE model = %s AND relation = %s"
FLOOR_SQL = f"SELECT id::text, y FROM {PREDICTION_TABLE}"
LATERAL_SQL = (
    f"SELECT s.id, p.prediction FROM {PREDICTION_TABLE} s CROSS JOIN LATERAL pgml.prediction("
    "%s, jsonb_build_object("
    + ", ".join(f"'{f}', s.{f}" for f in PREDICTION_FEATURES)
    + ")) p WHERE s.id <= %s")
SCORE_TABLE_SQL = f"SELECT key, prediction FROM pgml.score_table(%s, '{PREDICTION_TABLE}', 'id')"
SCORE_INTO_TABLE = "bench.scored"
SCORE_INTO_SQL = f"SELECT pgml.score_into(%s, '{PREDICTION_TABLE}', 'id', '{SCORE_INTO_TABLE}')"
CTAS_TABLE = "bench.scored_ctas"


def run(fixtures: Fixtures, sizes: Sizes) -> List[Measurement]:
    """Batch scoring of the linear model, then of the forest."""
    results: List[Measurement] = []
    for label, algorithm in (("linear", "linear"), ("forest", "random_forest")):
        results += _measure_model(fixtures, sizes, label, fixtures.model(algorithm))
    return results


def _measure_model(fixtures: Fixtures, sizes: Sizes, label: str, name: str) -> List[Measurement]:
    """Every form's rows per second for one model, on a connection of its own."""
    model = fixtures.load_model(name)
    columns = fixtures.scoring_matrix()
    X = model.encoder.transform({f: columns[f] for f in PREDICTION_FEATURES})
    expected = dict(zip(columns["id"].astype(np.int64).tolist(), model.estimator.predict(X)))
    n = len(expected)
    conn = connect()
    cur = conn.cursor()

    def fetch(statement: str, *params: object) -> Callable[[], None]:
        def call() -> None:
            cur.execute(statement, params or None)
            cur.fetchall()
        return call

    def without_jit(call: Callable[[], None]) -> Callable[[], None]:
        def wrapped() -> None:
            cur.execute("SET jit = off")
            call()
            cur.execute("RESET jit")
        return wrapped

    def write(prepare: str, statement: str, *params: object) -> Callable[[], float]:
        """A write timed alone: prepare (emptying its target) runs first, untimed."""
        def call() -> float:
            cur.execute(prepare)
            return timed(lambda: cur.execute(statement, params or None))
        return call

    formula = linear_formula(model) if label == "linear" else None
    writes: Dict[str, Callable[[], float]] = {}
    forms: Dict[str, Callable[[], None]] = {
        "batch": fetch(BATCH_SQL, name, PREDICTION_TABLE),
        "sklearn": lambda: model.estimator.predict(X),
        "batch_no_jit": without_jit(fetch(BATCH_SQL, name, PREDICTION_TABLE)),
        "no_key": fetch(NO_KEY_SQL, name, PREDICTION_TABLE),
        "floor": fetch(FLOOR_SQL),
        "lateral": without_jit(fetch(LATERAL_SQL, name, sizes.lateral_rows)),
    }
    if formula is not None:
        cur.execute(f"DROP TABLE IF EXISTS {SCORE_INTO_TABLE}; "
                    f"CREATE TABLE {SCORE_INTO_TABLE} (id int, prediction float8)")
        forms["score_table"] = fetch(SCORE_TABLE_SQL, name)
        forms["formula"] = fetch(f"SELECT s.id::text, {formula} FROM {PREDICTION_TABLE} s")
        writes["score_into"] = write(f"TRUNCATE {SCORE_INTO_TABLE}", SCORE_INTO_SQL, name)
        writes["ctas"] = write(f"DROP TABLE IF EXISTS {CTAS_TABLE}", f"CREATE TABLE {CTAS_TABLE} AS "
                               f"SELECT s.id, {formula} AS prediction FROM {PREDICTION_TABLE} s")
    try:
        # Warm: the connection's first prediction starts Python and loads the model.
        cur.execute(LATERAL_SQL, (name, 10))
        cur.fetchall()
        cur.execute(BATCH_SQL, (name, PREDICTION_TABLE))
        answers = cur.fetchall()
        worst = max(abs(p - expected[int(k)]) for k, p in answers)
        if len(answers) != n or worst > 1e-9:
            raise AssertionError(f"the batch form gave {len(answers)} rows (of {n}), "
                                 f"differing from scikit-learn by up to {worst}")
        if formula is not None:
            _check_whole_table(cur, name, expected)
        seconds: Dict[str, List[float]] = {key: [] for key in [*forms, *writes]}
        timers: List[Tuple[str, Callable[[], float]]] = [
            *((key, (lambda call=call: timed(call))) for key, call in forms.items()), *writes.items()]
        for r in range(sizes.repeats):
            for key, timer in rotated(timers, r):
                seconds[key].append(timer())
        if formula is not None:
            cur.execute(f"DROP TABLE IF EXISTS {SCORE_INTO_TABLE}, {CTAS_TABLE}")
    finally:
        conn.close()

    rows = {key: sizes.lateral_rows if key == "lateral" else n for key in seconds}
    rate = {key: rows[key] / median(values) for key, values in seconds.items()}
    details = {"model": name, "rows": n, "lateral_rows": sizes.lateral_rows, "repeats": sizes.repeats,
               "seconds": seconds, "rows_per_second": rate}
    batch = f"{label}: relation= batch, {n} rows"
    return [
        Measurement("b", batch, "rows/s", rate["batch"], "scikit-learn predict on the encoded matrix",
                    rate["sklearn"], Target(">=", 0.5), details),
        Measurement("b", batch, "rows/s", rate["batch"], "plain SELECT of as many rows (SQL floor)",
                    rate["floor"], None, details),
        Measurement("b", f"{label}: relation= batch with jit off", "rows/s", rate["batch_no_jit"],
                    "relation= batch (jit as configured)", rate["batch"], None, details),
        Measurement("b", f"{label}: relation= batch without key_column", "rows/s", rate["no_key"],
                    "plain SELECT of as many rows (SQL floor)", rate["floor"], None, details),
        Measurement("b", f"{label}: LATERAL join, {sizes.lateral_rows} rows, jit off", "rows/s", rate["lateral"],
                    "relation= batch", rate["batch"], None, details),
    ] + ([] if formula is None else [
        Measurement("b", f"{label}: pgml.score_table, {n} rows", "rows/s", rate["score_table"],
                    "plain SELECT of the key and the model's formula", rate["formula"], Target(">=", 0.5), details),
        Measurement("b", f"{label}: pgml.score_into a table, {n} rows", "rows/s", rate["score_into"],
                    "CREATE TABLE AS SELECT of the key and the model's formula", rate["ctas"], Target(">=", 0.5),
                    details),
    ])


def _check_whole_table(cur: Any, name: str, expected: Dict[int, float]) -> None:
    """pgml.score_table's and pgml.score_into's answers, row by row, against scikit-learn's."""
    cur.execute(SCORE_TABLE_SQL, (name,))
    fetched = {int(k): p for k, p in cur.fetchall()}
    cur.execute(f"TRUNCATE {SCORE_INTO_TABLE}")
    cur.execute(SCORE_INTO_SQL, (name,))
    cur.execute(f"SELECT id, prediction FROM {SCORE_INTO_TABLE}")
    written = dict(cur.fetchall())
    for form, answers in (("pgml.score_table", fetched), ("pgml.score_into", written)):
        worst = max((abs(answers[k] - v) for k, v in expected.items() if k in answers), default=0.0)
        if len(answers) != len(expected) or worst > 1e-9:
            raise AssertionError(f"{form} gave {len(answers)} rows (of {len(expected)}), "
                                 f"differing from scikit-learn by up to {worst}")
