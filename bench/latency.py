"""Scenario a: one prediction's latency, p50 and p99.

On one connection, round after round, each query form answers one prediction for the same row:
pgml.predictions, pgml.score(), and prepared EXECUTEs of both, next to SELECT 1
(the floor of a SQL round trip from this client) and the same query against a Multicorn table that
answers with a constant (bench/floor_fdw.py: the floor of any Multicorn scan). Next to them, in this
process, scikit-learn's own predict on the encoded row and Model.predict_row (the wrapper's path
minus SQL), on the model loaded from pgml.model_estimators. The order of the forms rotates every
round.
"""
from __future__ import annotations

import gc
import json
import math
import time
from typing import Any, Callable, Dict, List

from fixtures import Fixtures
from harness import Measurement, Sizes, Target, connect, rotated, summary

PREDICT_SQL = "SELECT prediction FROM pgml.predictions WHERE model = %s AND features = %s"
SCORE_SQL = "SELECT pgml.score(%s, %s::jsonb)"
PREPARE_SQL = ("PREPARE bench_predict(text, jsonb) AS "
               "SELECT prediction FROM pgml.predictions WHERE model = $1 AND features = $2")
EXECUTE_SQL = "EXECUTE bench_predict(%s, %s)"
PREPARE_SCORE_SQL = "PREPARE bench_score(text, jsonb) AS SELECT pgml.score($1, $2)"
EXECUTE_SCORE_SQL = "EXECUTE bench_score(%s, %s)"
POOL = 200      # distinct feature rows, cycled
WARMUP = 30     # rounds before measuring: the first query of a connection imports scikit-learn

FORMS = {
    "select1": "SELECT 1",
    "floor": "the predictions query on a constant Multicorn table",
    "predictions": "pgml.predictions query",
    "score": "SELECT pgml.score()",
    "prepared": "prepared EXECUTE of the predictions query",
    "prepared_score": "prepared EXECUTE of SELECT pgml.score()",
    "sklearn": "scikit-learn predict, one row, in-process",
    "predict_row": "Model.predict_row, in-process",
}


# The SQL forms that serve a prediction; each one's p50 has the targets, for the linear model.
SERVED = ("predictions", "score", "prepared", "prepared_score")


def run(fixtures: Fixtures, sizes: Sizes) -> List[Measurement]:
    """Latencies of the linear model (which has the targets), then of the forest."""
    results: List[Measurement] = []
    for label, algorithm, targeted in (("linear", "linear", True), ("forest", "random_forest", False)):
        results += _measure_model(fixtures, sizes, label, fixtures.model(algorithm), targeted)
    return results


def _measure_model(fixtures: Fixtures, sizes: Sizes, label: str, name: str, targeted: bool) -> List[Measurement]:
    """Every form's latency for one model, on a connection of its own."""
    model = fixtures.load_model(name)
    rows = fixtures.feature_rows(POOL)
    payloads = [json.dumps(r) for r in rows]
    floor_sql = PREDICT_SQL.replace("pgml.predictions", fixtures.floor_table())
    encoded = [model.encoder.transform_row(model.row_values(r)).reshape(1, -1) for r in rows]
    conn = connect()
    cur = conn.cursor()
    cur.execute(PREPARE_SQL)
    cur.execute(PREPARE_SCORE_SQL)

    def sql(statement: str, with_features: bool = True) -> Callable[[int], Any]:
        def call(i: int) -> Any:
            cur.execute(statement, (name, payloads[i]) if with_features else None)
            return cur.fetchone()[0]
        return call

    calls: Dict[str, Callable[[int], Any]] = {
        "select1": sql("SELECT 1", with_features=False),
        "floor": sql(floor_sql),
        "predictions": sql(PREDICT_SQL),
        "score": sql(SCORE_SQL),
        "prepared": sql(EXECUTE_SQL),
        "prepared_score": sql(EXECUTE_SCORE_SQL),
        "sklearn": lambda i: model.estimator.predict(encoded[i])[0],
        "predict_row": lambda i: model.predict_row(rows[i])[0],
    }
    for i in range(WARMUP):
        for call in calls.values():
            call(i % len(rows))
    _check_agreement(calls, len(rows))

    samples: Dict[str, List[float]] = {key: [] for key in calls}
    order = list(calls.items())
    gc.collect()
    gc.disable()
    try:
        for r in range(sizes.latency_rounds):
            i = r % len(rows)
            for key, call in rotated(order, r):
                started = time.perf_counter()
                call(i)
                samples[key].append(time.perf_counter() - started)
    finally:
        gc.enable()
        conn.close()

    stats = {key: summary(values) for key, values in samples.items()}
    details = {"model": name, "algorithm": label, "rounds": sizes.latency_rounds,
               "latency_ms": {FORMS[key]: value for key, value in stats.items()}}
    # p50 at most 2x SELECT 1 on the same connection and 1.1x the constant Multicorn table.
    to_select1 = Target("<=", 2.0) if targeted else None
    to_floor = Target("<=", 1.1) if targeted else None
    out: List[Measurement] = []
    for key in SERVED:
        for pct in ("p50", "p99"):
            out.append(Measurement(
                "a", f"{label}: {FORMS[key]} {pct}", "ms", stats[key][pct], f"SELECT 1 {pct}",
                stats["select1"][pct], to_select1 if pct == "p50" else None, details))
    for key in SERVED:
        out.append(Measurement("a", f"{label}: {FORMS[key]} p50", "ms", stats[key]["p50"],
                               f"{FORMS['floor']} p50", stats["floor"]["p50"], to_floor, details))
    out.append(Measurement("a", f"{label}: {FORMS['floor']} p50", "ms", stats["floor"]["p50"],
                           "SELECT 1 p50", stats["select1"]["p50"], None, details))
    out.append(Measurement("a", f"{label}: {FORMS['predictions']} p50", "ms", stats["predictions"]["p50"],
                           "scikit-learn predict p50", stats["sklearn"]["p50"], None, details))
    out.append(Measurement("a", f"{label}: {FORMS['predict_row']} p50", "ms", stats["predict_row"]["p50"],
                           "scikit-learn predict p50", stats["sklearn"]["p50"], None, details))
    return out


def _check_agreement(calls: Dict[str, Callable[[int], Any]], pool: int) -> None:
    """Every path must give the same prediction, or the timings compare different work."""
    for i in (0, pool // 2, pool - 1):
        expected = float(calls["sklearn"](i))
        for key in SERVED + ("predict_row",):
            got = calls[key](i)
            if got is None or not math.isclose(got, expected, rel_tol=1e-9, abs_tol=1e-9):
                raise AssertionError(f"{FORMS[key]} gave {got} for row {i}, scikit-learn {expected}")
