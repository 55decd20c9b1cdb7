"""Scenario b: batch scoring, in rows per second.

Per model, repeated and interleaved: the batch form of pgml.predictions over every row of a table
(fetched by the client, as a user would), scikit-learn predicting the same encoded matrix in this
process, the batch form with jit off (the planner's estimate for it is high enough to JIT-compile
a scan whose work is all in Python), the batch form without key_column, a plain SELECT returning
as many rows (the floor of moving that many rows through SQL to this client), and the LATERAL
form over fewer rows with jit off. The batch answers are checked against scikit-learn's, row by row.
"""
from __future__ import annotations

from typing import Callable, Dict, List

import numpy as np

from fixtures import PREDICTION_FEATURES, PREDICTION_TABLE, Fixtures
from harness import Measurement, Sizes, Target, connect, median, rotated, timed

BATCH_SQL = ("SELECT key, prediction FROM pgml.predictions "
             "WHERE model = %s AND relation = %s AND key_column = 'id'")
NO_KEY_SQL = "SELECT prediction FROM pgml.predictions WHERE model = %s AND relation = %s"
FLOOR_SQL = f"SELECT id::text, y FROM {PREDICTION_TABLE}"
LATERAL_SQL = (
    f"SELECT s.id, p.prediction FROM {PREDICTION_TABLE} s CROSS JOIN LATERAL pgml.prediction("
    "%s, jsonb_build_object("
    + ", ".join(f"'{f}', s.{f}" for f in PREDICTION_FEATURES)
    + ")) p WHERE s.id <= %s")


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

    forms: Dict[str, Callable[[], None]] = {
        "batch": fetch(BATCH_SQL, name, PREDICTION_TABLE),
        "sklearn": lambda: model.estimator.predict(X),
        "batch_no_jit": without_jit(fetch(BATCH_SQL, name, PREDICTION_TABLE)),
        "no_key": fetch(NO_KEY_SQL, name, PREDICTION_TABLE),
        "floor": fetch(FLOOR_SQL),
        "lateral": without_jit(fetch(LATERAL_SQL, name, sizes.lateral_rows)),
    }
    try:
        # Warm: the connection's first prediction imports scikit-learn and loads the model.
        cur.execute(LATERAL_SQL, (name, 10))
        cur.fetchall()
        cur.execute(BATCH_SQL, (name, PREDICTION_TABLE))
        answers = cur.fetchall()
        worst = max(abs(p - expected[int(k)]) for k, p in answers)
        if len(answers) != n or worst > 1e-9:
            raise AssertionError(f"the batch form gave {len(answers)} rows (of {n}), "
                                 f"differing from scikit-learn by up to {worst}")
        seconds: Dict[str, List[float]] = {key: [] for key in forms}
        for r in range(sizes.repeats):
            for key, call in rotated(list(forms.items()), r):
                seconds[key].append(timed(call))
    finally:
        conn.close()

    rows = {key: sizes.lateral_rows if key == "lateral" else n for key in forms}
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
    ]
