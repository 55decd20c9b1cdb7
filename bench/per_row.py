"""Scenario g: per-row SQL forms, in rows per second.

The linear model scores the first per_row_rows rows of bench.pred_data one row at a time, each row's
features built by jsonb_build_object, in the two forms an application writes: pgml.score() in the
select list, and a LATERAL join to pgml.prediction(). jit stays as the server has it (on by
default). Next to them, repeated and interleaved on the same connection: the same two forms calling
plpgsql functions that select from the constant Multicorn table (bench.floor_score and
bench.floor_prediction: a function call and a Multicorn scan per row, without a model), and a plain
SELECT of the model's own formula as a SQL expression (the same answers with no call at all). All
are fetched by the client.

Both forms' answers are checked against scikit-learn's predict on the same rows, every row, and so
is the formula; EXPLAIN (ANALYZE, FORMAT JSON) of each form says whether it JIT-compiled, and the
backend's VmRSS is read before and after every run (both in the details).

The targets are absolute, from figures not measured in this run: 3x the 6,100 rows/s per row before
this work (18,300 rows/s) and 1.5x PostgresML 0.5's per-row pgml.predict, 9,400 rows/s measured
earlier on this machine (14,100 rows/s; PostgresML is not installed here).
"""
from __future__ import annotations

import functools
import sys
from typing import Any, Dict, List, Tuple

import numpy as np

from fixtures import PREDICTION_FEATURES, PREDICTION_TABLE, Fixtures
from harness import Measurement, Sizes, Target, backend_pid, connect, median, memory_kib, rotated, timed

FEATURES_SQL = "jsonb_build_object(" + ", ".join(f"'{f}', s.{f}" for f in PREDICTION_FEATURES) + ")"
# {score} and {prediction}: the product's function or the floor's; parameters: model, rows.
SCORE_SQL = f"SELECT s.id, {{score}}(%s, {FEATURES_SQL}) FROM {PREDICTION_TABLE} s WHERE s.id <= %s"
LATERAL_SQL = (f"SELECT s.id, p.prediction FROM {PREDICTION_TABLE} s "
               f"CROSS JOIN LATERAL {{prediction}}(%s, {FEATURES_SQL}) p WHERE s.id <= %s")
WARM_ROWS = 10  # rows of each form run once before timing: the first call loads the model

FORMS = {
    "score": "pgml.score() in the select list",
    "lateral": "LATERAL pgml.prediction()",
}
FLOOR_NAME = "the same form over the constant Multicorn table (plpgsql function)"
FORMULA_NAME = "plain SELECT of the linear formula as a SQL expression"
BEFORE_THIS_WORK = 6_100  # rows/s per row, measured before this work
POSTGRESML = 9_400        # rows/s of PostgresML 0.5's per-row pgml.predict, measured earlier on this machine
REFERENCES = {"before_this_work_rows_per_second": BEFORE_THIS_WORK,
              "postgresml_0_5_per_row_predict_rows_per_second": POSTGRESML,
              "target_3x_before_rows_per_second": 3 * BEFORE_THIS_WORK,
              "target_1_5x_postgresml_rows_per_second": 1.5 * POSTGRESML}


def run(fixtures: Fixtures, sizes: Sizes) -> List[Measurement]:
    """Both per-row forms of the linear model against their floors and the SQL formula."""
    name = fixtures.model("linear")
    model = fixtures.load_model(name)
    floor_score, floor_prediction = fixtures.floor_functions()
    n = sizes.per_row_rows
    columns = fixtures.scoring_matrix()
    kept = columns["id"] <= n
    X = model.encoder.transform({f: columns[f][kept] for f in PREDICTION_FEATURES})
    expected = dict(zip(columns["id"][kept].astype(np.int64).tolist(), model.estimator.predict(X).tolist()))
    if len(expected) != n:
        raise AssertionError(f"{PREDICTION_TABLE} has {len(expected)} rows with id <= {n}")
    statements = {
        "score": SCORE_SQL.format(score="pgml.score"),
        "lateral": LATERAL_SQL.format(prediction="pgml.prediction"),
        "floor_score": SCORE_SQL.format(score=floor_score),
        "floor_lateral": LATERAL_SQL.format(prediction=floor_prediction),
        "formula": f"SELECT s.id, {linear_formula(model)} FROM {PREDICTION_TABLE} s WHERE s.id <= %s",
    }

    def params(key: str, rows: int) -> Tuple[Any, ...]:
        return (rows,) if key == "formula" else (name, rows)

    conn = connect()
    cur = conn.cursor()
    answers: Dict[str, List[Tuple[Any, ...]]] = {}

    def fetch(key: str) -> None:
        cur.execute(statements[key], params(key, n))
        answers[key] = cur.fetchall()

    try:
        pid = backend_pid(conn)
        cur.execute("SELECT current_setting('jit'), current_setting('jit_above_cost')::float8")
        jit_setting, jit_above_cost = cur.fetchone()
        for key, statement in statements.items():
            cur.execute(statement, params(key, WARM_ROWS))
            cur.fetchall()
        seconds: Dict[str, List[float]] = {key: [] for key in statements}
        vmrss_kib: Dict[str, List[Tuple[int, int]]] = {key: [] for key in statements}
        for r in range(sizes.repeats):
            for key in rotated(list(statements), r):
                before = memory_kib(pid)["VmRSS"]
                seconds[key].append(timed(functools.partial(fetch, key)))
                vmrss_kib[key].append((before, memory_kib(pid)["VmRSS"]))
        explained = {key: _explain(cur, statement, params(key, n)) for key, statement in statements.items()}
    finally:
        conn.close()
    differences = {key: _check(key, answers[key], expected) for key in ("score", "lateral", "formula")}
    for key in ("floor_score", "floor_lateral"):
        if len(answers[key]) != n:
            raise AssertionError(f"{key} gave {len(answers[key])} rows, not {n}")
    for key in FORMS:
        if explained[key]["jit"]:
            print(f"   note: {FORMS[key]} JIT-compiled ({explained[key]['jit']})", file=sys.stderr, flush=True)

    rate = {key: n / median(values) for key, values in seconds.items()}
    details = {"model": name, "rows": n, "repeats": sizes.repeats, "seconds": seconds, "rows_per_second": rate,
               "jit": jit_setting, "jit_above_cost": jit_above_cost,
               "jit_compiled": {key: bool(found["jit"]) for key, found in explained.items()},
               "explain_analyze": explained,
               "vmrss_kib_before_after_each_run": vmrss_kib,
               # The connection's first full-size run grows the backend once, whichever form it is; the
               # later runs of a form should leave it where they found it.
               "vmrss_kib_growth": {key: {"first_run": runs[0][1] - runs[0][0], "later_runs": runs[-1][1] - runs[0][1]}
                                    for key, runs in vmrss_kib.items()},
               "rows_checked_against_scikit_learn": n, "max_abs_difference": differences,
               "statements": statements, "references": REFERENCES}
    out: List[Measurement] = []
    for key, form in FORMS.items():
        title = f"linear: {form}, per row, {n} rows"
        floor = rate[f"floor_{key}"]
        out += [
            Measurement("g", title, "rows/s", rate[key], FLOOR_NAME, floor, None, details),
            Measurement("g", title, "rows/s", rate[key], FORMULA_NAME, rate["formula"], None, details),
            Measurement("g", f"{title} (before this work: {BEFORE_THIS_WORK:,} rows/s)", "rows/s", rate[key],
                        f"target: {3 * BEFORE_THIS_WORK:,} rows/s, 3x before this work (fixed, not measured)",
                        3 * BEFORE_THIS_WORK, Target(">=", 1.0), details),
            Measurement("g", f"{title} (PostgresML 0.5 per-row pgml.predict: {POSTGRESML:,} rows/s)", "rows/s",
                        rate[key], f"target: {1.5 * POSTGRESML:,.0f} rows/s, 1.5x PostgresML 0.5 (fixed, measured "
                        "earlier on this machine, not in this run)", 1.5 * POSTGRESML, Target(">=", 1.0), details),
        ]
    out.append(Measurement("g", f"constant Multicorn table per row (plpgsql function in the select list), {n} rows",
                           "rows/s", rate["floor_score"], FORMULA_NAME, rate["formula"], None, details))
    return out


def linear_formula(model: Any) -> str:
    """The linear model as a SQL expression of the feature columns, intercept + sum of weight * x: it
    is affine in its features (scaling included), so its own predictions at zero and at each unit
    vector give the coefficients."""
    probes = np.vstack([np.zeros(len(PREDICTION_FEATURES)), np.eye(len(PREDICTION_FEATURES))])
    values = model.estimator.predict(model.encoder.transform(
        {f: probes[:, i] for i, f in enumerate(PREDICTION_FEATURES)}))
    terms = [f"float8 '{float(values[0])!r}'"]
    terms += [f"float8 '{float(values[i + 1] - values[0])!r}' * s.{f}" for i, f in enumerate(PREDICTION_FEATURES)]
    return " + ".join(terms)


def _check(key: str, answers: List[Tuple[Any, ...]], expected: Dict[int, float]) -> float:
    """Every row once, each within 1e-9 of scikit-learn's prediction; the largest difference."""
    got = {int(row_id): value for row_id, value in answers}
    if len(answers) != len(expected) or got.keys() != expected.keys():
        raise AssertionError(f"{key} gave {len(answers)} rows ({len(got)} ids), not the {len(expected)} expected")
    worst = max(abs(value - expected[row_id]) if value is not None else float("inf") for row_id, value in got.items())
    if worst > 1e-9:
        raise AssertionError(f"{key} differs from scikit-learn by up to {worst}")
    return worst


def _explain(cur: Any, statement: str, params: Tuple[Any, ...]) -> Dict[str, Any]:
    """EXPLAIN (ANALYZE, FORMAT JSON) of a run of the statement: its JIT entry (None when it did not
    JIT-compile), the plan's total cost and the execution time."""
    cur.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + statement, params)
    plan = cur.fetchone()[0][0]  # psycopg2 gives the json column parsed
    return {"jit": plan.get("JIT"), "total_cost": plan["Plan"]["Total Cost"],
            "execution_ms": plan.get("Execution Time")}
