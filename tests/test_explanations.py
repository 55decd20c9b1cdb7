"""Why this prediction? ``pgml.explain(model, features)`` from SQL: a base row and one contribution per
feature, adding up to the model's own prediction; the privileges, errors and plans of pgml.predictions."""
from __future__ import annotations

import math
from typing import Any, Dict, List, Tuple

import pytest

from conftest import Session, make_table, role

HOUSES = ("id int, size float8, rooms int, built date, district text, price float8",
          [(i, 30.0 + (i * 37) % 170 if i % 11 else None, 1 + i % 5, f"19{50 + i % 40}-06-01",
            ["north", "south", None, "o'hare \"x\""][i % 4],
            1000.0 + 40 * ((i * 37) % 170) + 150 * (i % 5) + (300 if i % 4 == 0 else -200 if i % 4 == 1 else 0)
            + (i * 7919) % 13) for i in range(160)])
FEATURES = ("jsonb_build_object('size', h.size, 'rooms', h.rooms, 'built', h.built, 'district', h.district)")
ONE = '{"size": 100, "rooms": 3, "built": "1975-06-01", "district": "north"}'


@pytest.fixture
def houses(db: Session) -> str:
    """Numbers with NULLs, an integer, a date, text categories (NULL and quotes among them)."""
    make_table(db, "explain_houses", *HOUSES)
    db.run("CREATE OR REPLACE VIEW explain_house_features AS SELECT size, rooms, built, district, price "
           "FROM explain_houses")
    return "explain_houses"


@pytest.fixture
def fruit(db: Session) -> str:
    make_table(db, "explain_fruit", "id int, weight float8, length float8, color text, kind text",
               [(i, 100 + (i * 7) % 40 + (60 if i % 3 == 1 else 0), 10 + (i * 3) % 7 + (8 if i % 3 == 2 else 0),
                 ["red", "yellow", "green"][(i + (i // 5)) % 3], ["apple", "banana", "cherry"][i % 3])
                for i in range(150)])
    db.run("CREATE OR REPLACE VIEW explain_fruit_features AS SELECT weight, length, color, kind FROM explain_fruit")
    return "explain_fruit"


def explanation(db: Session, model: str, features: str) -> List[Tuple[Any, ...]]:
    return db.rows("SELECT feature, value, imputed, contribution, explains, label FROM pgml.explain(%s, %s::jsonb)",
                   (model, features))


def adds_up(rows: List[Tuple[Any, ...]], expected: float) -> None:
    """The contributions, base included, add up to ``expected`` to a few units in the last place of
    the largest term."""
    terms = [r[3] for r in rows]
    scale = max([abs(t) for t in terms] + [abs(expected)])
    assert math.fsum(terms) == pytest.approx(expected, rel=0, abs=64 * 2.2e-16 * scale)


@pytest.mark.parametrize("algorithm,hyperparams", [
    ("linear", "{}"), ("ridge", "{}"), ("decision_tree", '{"max_depth": 6}'), ("random_forest", '{"n_estimators": 20}'),
    ("extra_trees", '{"n_estimators": 20}'), ("gradient_boosting_trees", '{"n_estimators": 30}')])
def test_a_regression_explanation_adds_up_to_the_prediction(db: Session, houses: str, name: str, algorithm: str,
                                                            hyperparams: str) -> None:
    db.one("SELECT pgml.train('explain_house_features', 'price', algorithm => %s, name => %s, hyperparams => %s)",
           (algorithm, name, hyperparams))
    db.conn.notices.clear()
    rows = explanation(db, name, ONE)
    assert not db.conn.notices  # Multicorn warns of conditions it cannot read: pgml.explain has none
    assert [r[0] for r in rows] == ["(base)", "size", "rooms", "built", "district"]
    assert {(r[4], r[5]) for r in rows} == {("prediction", None)}
    assert rows[0][1] is None and rows[1][1:3] == (100, False) and rows[3][1] == "1975-06-01"
    adds_up(rows, db.one("SELECT pgml.score(%s, %s::jsonb)", (name, ONE)))
    # Every row of the table, one explanation each in a LATERAL join, adds up to its own prediction.
    per_row = db.rows(f"SELECT h.id, array_agg(e.contribution), min(pgml.score(%s, {FEATURES})) FROM explain_houses h "
                      f"CROSS JOIN LATERAL pgml.explain(%s, {FEATURES}) e WHERE h.id < 12 GROUP BY h.id", (name, name))
    assert len(per_row) == 12
    for _, contributions, prediction in per_row:
        adds_up([(None, None, None, c) for c in contributions], prediction)


def test_a_linear_contribution_is_the_coefficient_times_the_value(db: Session, name: str) -> None:
    make_table(db, "explain_line", "x float8, z float8, y float8",
               [(i / 10, (i * 7) % 11, 3 * i / 10 - 2 * ((i * 7) % 11) + 1) for i in range(100)])
    db.one("SELECT pgml.train('explain_line', 'y', name => %s)", (name,))

    def contributions(x: float, z: float) -> Dict[str, float]:
        return {f: c for f, _, _, c, _, _ in explanation(db, name, f'{{"x": {x}, "z": {z}}}')}
    low, high = contributions(1.0, 4.0), contributions(6.0, 9.0)
    # Scaled features: x's contribution moves by its coefficient (3) times the change of x, z's by -2 times.
    assert high["x"] - low["x"] == pytest.approx(15.0, rel=1e-9)
    assert high["z"] - low["z"] == pytest.approx(-10.0, rel=1e-9)
    assert high["(base)"] == low["(base)"]  # the intercept
    # Standardized: a feature at its training mean contributes nothing.
    mean_x, mean_z = db.one("SELECT max((preprocess ->> 'mean')::float8) FILTER (WHERE feature = 'x'), "
                            "max((preprocess ->> 'mean')::float8) FILTER (WHERE feature = 'z') "
                            "FROM pgml.features WHERE model = %s || '_1'", (name,))
    at_means = contributions(mean_x, mean_z)
    assert at_means["x"] == pytest.approx(0.0, abs=1e-12) and at_means["z"] == pytest.approx(0.0, abs=1e-12)


def test_a_classifier_explains_its_predicted_class(db: Session, fruit: str, name: str) -> None:
    db.one("SELECT pgml.train('explain_fruit_features', 'kind', 'random_forest', name => %s, "
           "hyperparams => '{\"n_estimators\": 15}')", (name,))
    for features in ('{"weight": 170, "length": 12, "color": "red"}', '{"weight": 105, "length": 19, "color": null}',
                     '{"weight": 120, "length": 11, "color": "purple"}'):
        rows = explanation(db, name, features)
        label = db.one("SELECT pgml.classify(%s, %s::jsonb)", (name, features))
        probability = db.one("SELECT (pgml.predict_proba(%s, %s::jsonb) ->> %s)::float8", (name, features, label))
        assert {(r[4], r[5]) for r in rows} == {("probability", label)}
        adds_up(rows, probability)
        assert [r[0] for r in rows] == ["(base)", "weight", "length", "color"]  # one-hot parts summed into color


def test_a_logistic_regression_explains_the_log_odds(db: Session, fruit: str, name: str) -> None:
    db.run("CREATE OR REPLACE VIEW explain_fruit_two AS SELECT weight, length, color, kind = 'banana' AS banana "
           "FROM explain_fruit")
    db.one("SELECT pgml.train('explain_fruit_two', 'banana', name => %s)", (name,))
    for features in ('{"weight": 170, "length": 12, "color": "red"}', '{"weight": 100, "length": 11, "color": "red"}'):
        rows = explanation(db, name, features)
        label = db.one("SELECT pgml.classify(%s, %s::jsonb)", (name, features))
        p = db.one("SELECT (pgml.predict_proba(%s, %s::jsonb) ->> %s)::float8", (name, features, label))
        assert {(r[4], r[5]) for r in rows} == {("log_odds", label)}
        assert math.fsum(r[3] for r in rows) == pytest.approx(math.log(p / (1 - p)), rel=1e-9)


def test_a_null_is_explained_at_its_imputed_value(db: Session, houses: str, name: str) -> None:
    db.one("SELECT pgml.train('explain_house_features', 'price', 'random_forest', name => %s, "
           "hyperparams => '{\"n_estimators\": 10}', preprocess => '{\"size\": {\"impute\": \"median\"}}')", (name,))
    median = db.one("SELECT (preprocess ->> 'impute_value')::float8 FROM pgml.features "
                    "WHERE model = %s || '_1' AND feature = 'size'", (name,))
    rows = explanation(db, name, '{"size": null, "rooms": 2, "built": "1960-06-01", "district": null}')
    by_feature = {r[0]: r for r in rows}
    assert by_feature["size"][1:3] == (median, True)
    assert by_feature["district"][1:3] == (None, False)  # NULL is a category of its own: not imputed
    given = explanation(db, name, json_of(size=by_feature["size"][1], rooms=2, built="1960-06-01", district=None))
    assert [r[3] for r in given] == [r[3] for r in rows]


def json_of(**values: Any) -> str:
    import json

    return json.dumps(values)


def test_a_row_explains_as_its_jsonb(db: Session, houses: str, name: str) -> None:
    db.one("SELECT pgml.train('explain_house_features', 'price', 'decision_tree', name => %s)", (name,))
    as_row = db.rows("SELECT feature, contribution FROM pgml.explain(%s, ROW(100.0, 3, '1975-06-01'::date, 'north'))",
                     (name,))
    assert as_row == [(r[0], r[3]) for r in explanation(db, name, ONE)]
    # By id as by name, and a version trained in the caller's own open transaction.
    assert db.rows("SELECT feature, contribution FROM pgml.explain(%s || '_1', %s::jsonb)", (name, ONE)) == as_row
    db.run("BEGIN")
    second = db.one("SELECT pgml.train('explain_house_features', 'price', 'linear', name => %s)", (name,))
    rows = explanation(db, second, ONE)
    adds_up(rows, db.one("SELECT pgml.score(%s, %s::jsonb)", (second, ONE)))
    db.run("ROLLBACK")


def test_clear_errors(db: Session, houses: str, name: str) -> None:
    db.one("SELECT pgml.train('explain_house_features', 'price', 'random_forest', name => %s, "
           "hyperparams => '{\"n_estimators\": 5}')", (name,))
    error = db.error("SELECT * FROM pgml.explain('no_such_model', %s::jsonb)", (ONE,))
    assert error.pgcode == "42704" and 'no model named "no_such_model"' in error.diag.message_primary
    error = db.error("SELECT * FROM pgml.explain(%s, '{\"size\": 1, \"colour\": \"red\"}'::jsonb)", (name,))
    assert error.pgcode == "22023" and "no feature 'colour'" in error.diag.message_primary
    assert "size, rooms, built, district" in error.diag.message_hint
    error = db.error("SELECT * FROM pgml.explain(%s, '\"north\"'::jsonb)", (name,))
    assert error.pgcode == "22023" and "must be a JSON object or array" in error.diag.message_primary
    error = db.error("SELECT * FROM pgml.explain(%s, '{\"size\": \"big\", \"rooms\": 1, \"built\": null, "
                     "\"district\": null}'::jsonb)", (name,))
    assert error.pgcode == "22023" and 'feature "size"' in error.diag.message_primary
    assert db.rows("SELECT * FROM pgml.explain(%s, NULL::jsonb)", (name,)) == []  # nothing to explain
    db.one("SELECT pgml.train('explain_house_features', 'price', 'knn', name => %s)", (name + "_knn",))
    try:
        error = db.error("SELECT * FROM pgml.explain(%s, %s::jsonb)", (name + "_knn", ONE))
        assert error.pgcode == "0A000" and "cannot be explained" in error.diag.message_primary
        assert "random_forest" in error.diag.message_primary and "pgml.features" in error.diag.message_hint
    finally:
        db.run("DELETE FROM pgml.model_names WHERE name = %s", (name + "_knn",))


def test_only_roles_that_may_predict_may_explain(db: Session, houses: str, name: str) -> None:
    db.one("SELECT pgml.train('explain_house_features', 'price', 'linear', name => %s)", (name,))
    outsider = role(db, "explain_outsider", schema=True)
    session = Session(outsider)
    try:
        error = session.error("SELECT * FROM pgml.explain(%s, %s::jsonb)", (name, ONE))
        assert error.pgcode == "42501" and "GRANT SELECT ON pgml.predictions" in error.diag.message_hint
        # The internal view refuses before its scan runs: a cheap function of the caller's, which
        # PostgreSQL would run before costlier conditions, never sees a row.
        session.run("CREATE FUNCTION peek(c float8) RETURNS boolean LANGUAGE plpgsql COST 0.0000001 AS "
                    "$$ BEGIN RAISE NOTICE 'peeked at %', c; RETURN true; END $$")
        session.conn.notices.clear()
        error = session.error("SELECT * FROM pgml._model_explanations e WHERE peek(e.contribution) "
                              "AND e.model = pgml._resolve(%s) AND e.features = %s::jsonb", (name, ONE))
        assert error.pgcode == "42501"
        assert not [n for n in session.conn.notices if "peeked" in n]
        error = session.error("SELECT * FROM pgml._explanations")
        assert error.pgcode == "42501"  # the foreign table itself: no privilege at all
    finally:
        session.close()
    predictor = role(db, "explain_predictor", ["GRANT SELECT ON pgml.predictions TO {role}"])
    session = Session(predictor)
    try:
        assert [r[3] for r in explanation(session, name, ONE)] == [r[3] for r in explanation(db, name, ONE)]
    finally:
        session.close()


def test_explain_of_queries_that_explain_does_not_crash(db: Session, houses: str, name: str) -> None:
    db.one("SELECT pgml.train('explain_house_features', 'price', 'random_forest', name => %s, "
           "hyperparams => '{\"n_estimators\": 5}')", (name,))
    for query in (
        "SELECT * FROM pgml.explain(%(m)s, %(f)s::jsonb)",
        "SELECT * FROM pgml.explain(%(m)s, jsonb_build_object('size', 1, 'rooms', 2, 'built', current_date, "
        "'district', 'x'))",
        f"SELECT h.id, e.* FROM explain_houses h CROSS JOIN LATERAL pgml.explain(%(m)s, {FEATURES}) e WHERE h.id < 3",
        f"SELECT h.id, (SELECT sum(e.contribution) FROM pgml.explain(%(m)s, {FEATURES}) e) FROM explain_houses h "
        "WHERE h.id < 3",
        "SELECT * FROM pgml.explain(%(m)s, ROW(100.0, 3, '1975-06-01'::date, 'north'))",
    ):
        for explain in ("EXPLAIN", "EXPLAIN (ANALYZE, COSTS OFF)", "EXPLAIN (VERBOSE)"):
            plan = db.rows(f"{explain} {query}", {"m": name, "f": ONE})
            assert plan and "Function Scan" in "\n".join(r[0] for r in plan)
    # The internal view with features computed when the query runs: refused, not a crash.
    for query in ("EXPLAIN SELECT * FROM pgml._model_explanations WHERE model = pgml._resolve(%(m)s) "
                  "AND features = jsonb_build_object('size', 1)",
                  "EXPLAIN SELECT (SELECT e.contribution FROM pgml._model_explanations e WHERE e.model = "
                  "pgml._resolve(%(m)s) AND e.features = to_jsonb(h) - 'id' LIMIT 1) FROM explain_houses h"):
        error = db.error(query, {"m": name})
        assert "PgmlCannotPlanThisQuery" in error.diag.message_primary
    # A prepared statement, its generic plan explained later.
    db.run("SET plan_cache_mode = force_generic_plan")
    db.run("PREPARE explain_one(text, jsonb) AS SELECT * FROM pgml.explain($1, $2)")
    plan = db.rows("EXPLAIN EXECUTE explain_one(%s, %s::jsonb)", (name, ONE))
    assert "Function Scan" in plan[0][0]
    assert len(db.rows("EXECUTE explain_one(%s, %s::jsonb)", (name, ONE))) == 5
    db.run("DEALLOCATE explain_one")
    db.run("RESET plan_cache_mode")
    assert db.one("SELECT 1") == 1  # the backend is alive (the suite's sentinel checks the server)


@pytest.mark.parametrize("algorithm", ["xgboost", "lightgbm", "catboost"])
def test_a_boosting_library_explains_with_its_own_contributions(db: Session, houses: str, fruit: str, name: str,
                                                                algorithm: str) -> None:
    db.one("SELECT pgml.train('explain_house_features', 'price', %s, name => %s, "
           "hyperparams => '{\"n_estimators\": 20}')", (algorithm, name))
    rows = explanation(db, name, ONE)
    assert [r[0] for r in rows] == ["(base)", "size", "rooms", "built", "district"]
    assert {(r[4], r[5]) for r in rows} == {("prediction", None)}
    # The libraries add up in float32.
    assert math.fsum(r[3] for r in rows) == pytest.approx(db.one("SELECT pgml.score(%s, %s::jsonb)", (name, ONE)),
                                                          rel=1e-5)
    db.run("CREATE OR REPLACE VIEW explain_fruit_two AS SELECT weight, length, color, kind = 'banana' AS banana "
           "FROM explain_fruit")
    binary = name + "_two"
    try:
        db.one("SELECT pgml.train('explain_fruit_two', 'banana', %s, name => %s, "
               "hyperparams => '{\"n_estimators\": 20}')", (algorithm, binary))
        for features in ('{"weight": 170, "length": 12, "color": "red"}',
                         '{"weight": 100, "length": 11, "color": "red"}'):
            rows = explanation(db, binary, features)
            label = db.one("SELECT pgml.classify(%s, %s::jsonb)", (binary, features))
            p = db.one("SELECT (pgml.predict_proba(%s, %s::jsonb) ->> %s)::float8", (binary, features, label))
            assert {(r[4], r[5]) for r in rows} == {("log_odds", label)}
            # The log-odds of the predicted class: its probability through the logistic function.
            assert 1 / (1 + math.exp(-math.fsum(r[3] for r in rows))) == pytest.approx(p, abs=1e-6)
    finally:
        db.run("DELETE FROM pgml.model_names WHERE name = %s", (binary,))
