"""Whole tables scored in one statement: ``pgml.score_table`` (rows of a query) and ``pgml.score_into``
(rows written into a table). Linear regressions are computed by PostgreSQL as an expression; every
other model goes through pgml.predictions' relation form. Both must answer what one row at a time
answers."""
from __future__ import annotations

import pytest

from conftest import Session, make_table, role

HOUSES = ("id bigint, size float8, rooms int, built date, district text, price float8",
          [(i * 7, 30.0 + i if i % 9 else None, 1 + i % 4, f"19{50 + i % 40}-01-01",
            ["north", "south", None, "o'hare \"x\""][i % 4],
            1000.0 + 40 * i + 150 * (i % 4) + (90 if i % 3 == 1 else 0)) for i in range(80)])
FEATURES = "jsonb_build_object('size', h.size, 'rooms', h.rooms, 'built', h.built, 'district', h.district)"


@pytest.fixture
def houses(db: Session) -> str:
    """Numbers with NULLs, an integer, a date, and text categories (NULL and quotes among them)."""
    make_table(db, "score_houses", *HOUSES)
    db.run("CREATE OR REPLACE VIEW score_house_features AS SELECT size, rooms, built, district, price "
           "FROM score_houses")
    return "score_houses"


def _one_by_one(db: Session, model: str) -> dict:
    rows = db.rows(f"SELECT h.id::text, p.prediction, p.label FROM score_houses h "
                   f"CROSS JOIN LATERAL pgml.prediction(%s, {FEATURES}) p", (model,))
    return {key: (prediction, label) for key, prediction, label in rows}


def _has_expression(db: Session, model: str) -> bool:
    return db.one("SELECT e.expression IS NOT NULL FROM pgml._model_expressions e "
                  "WHERE e.model = pgml._resolve(%s)", (model,))


@pytest.mark.parametrize("algorithm,preprocess", [
    ("linear", "{}"),
    ("ridge", '{"size": {"impute": "median", "scale": "min_max"}, "district": {"encode": "ordinal"}}'),
    ("random_forest", "{}"),
    ("least_angle", "{}"),  # 0.5.0's linear models have the fast path, and so the SQL form
])
def test_score_table_answers_as_one_row_at_a_time(db: Session, houses: str, name: str, algorithm: str,
                                                  preprocess: str) -> None:
    db.one("SELECT pgml.train('score_house_features', 'price', algorithm => %s, name => %s, preprocess => %s)",
           (algorithm, name, preprocess))
    assert _has_expression(db, name) == (algorithm != "random_forest")
    expected = _one_by_one(db, name)
    db.conn.notices.clear()
    rows = db.rows("SELECT key, prediction, label FROM pgml.score_table(%s, 'score_houses', 'id')", (name,))
    assert not db.conn.notices  # no warning from Multicorn about a condition it cannot read
    assert {key for key, _, _ in rows} == set(expected) and len(rows) == 80
    for key, prediction, label in rows:
        assert prediction == pytest.approx(expected[key][0], rel=1e-12, abs=1e-9)
        assert label is None
    # Without a key column: the same predictions, in no particular order.
    unkeyed = db.rows("SELECT key, prediction FROM pgml.score_table(%s, 'score_houses')", (name,))
    assert sorted(p for _, p in unkeyed) == pytest.approx(sorted(p for p, _ in expected.values()), rel=1e-12)
    assert {k for k, _ in unkeyed} == {None}


def test_score_into_writes_a_table_in_the_callers_transaction(db: Session, houses: str, name: str) -> None:
    db.one("SELECT pgml.train('score_house_features', 'price', algorithm => 'linear', name => %s)", (name,))
    db.run("CREATE TABLE house_scores (house_id bigint PRIMARY KEY, score float8, scored_at timestamptz DEFAULT now())")
    expected = _one_by_one(db, name)
    db.run("BEGIN")
    written = db.one("SELECT pgml.score_into(%s, 'score_houses', 'id', 'house_scores', target_key => 'house_id', "
                     "target_column => 'score')", (name,))
    assert written == 80
    db.run("ROLLBACK")
    assert db.one("SELECT count(*) FROM house_scores") == 0  # nothing of a rolled-back job stays
    assert db.one("SELECT pgml.score_into(%s, 'score_houses', 'id', 'house_scores', 'house_id', 'score')",
                  (name,)) == 80
    for key, score in db.rows("SELECT house_id::text, score FROM house_scores"):
        assert score == pytest.approx(expected[key][0], rel=1e-12, abs=1e-9)


def test_score_into_with_a_model_without_an_expression(db: Session, name: str) -> None:
    make_table(db, "score_fruit", "id int, weight float8, color text, kind text",
               [(i, 100 + i % 20, "red", "apple") for i in range(40)]
               + [(100 + i, 150 + i % 20, "yellow", "banana") for i in range(40)])
    db.run("CREATE OR REPLACE VIEW score_fruit_features AS SELECT weight, color, kind FROM score_fruit")
    db.one("SELECT pgml.train('score_fruit_features', 'kind', name => %s)", (name,))
    assert not _has_expression(db, name)  # classification: the relation form
    db.run("CREATE TABLE fruit_kinds (id int, prediction text)")
    assert db.one("SELECT pgml.score_into(%s, 'score_fruit', 'id', 'fruit_kinds')", (name,)) == 80
    kinds = dict(db.rows("SELECT id, prediction FROM fruit_kinds"))
    assert all(kind == ("apple" if i < 100 else "banana") for i, kind in kinds.items()) and len(kinds) == 80
    labels = db.rows("SELECT key::int, label FROM pgml.score_table(%s, 'score_fruit', 'id')", (name,))
    assert dict(labels) == kinds


def test_clear_errors(db: Session, houses: str, name: str) -> None:
    db.one("SELECT pgml.train('score_house_features', 'price', algorithm => 'linear', name => %s)", (name,))
    db.run("CREATE TABLE house_scores_2 (id bigint, value float8)")
    error = db.error("SELECT pgml.score_into(%s, 'score_houses', 'id', 'house_scores_2')", (name,))
    assert error.pgcode == "42703" and 'no column "prediction"' in error.diag.message_primary
    assert "target_column" in error.diag.message_hint
    error = db.error("SELECT * FROM pgml.score_table('no_such_model', 'score_houses', 'id')")
    assert error.pgcode == "42704"
    error = db.error("SELECT * FROM pgml.score_table(%s, 'no_such_table', 'id')", (name,))
    assert error.pgcode == "42P01"
    db.run("CREATE OR REPLACE VIEW score_houses_narrow AS SELECT id, size FROM score_houses")
    error = db.error("SELECT * FROM pgml.score_table(%s, 'score_houses_narrow', 'id')", (name,))
    assert error.pgcode == "42703"


def test_expressions_are_read_only_by_roles_that_may_predict(db: Session, houses: str, name: str) -> None:
    db.one("SELECT pgml.train('score_house_features', 'price', algorithm => 'linear', name => %s)", (name,))
    outsider = role(db, "score_outsider", ["GRANT SELECT ON score_houses TO {role}"])
    session = Session(outsider)
    try:
        assert session.one("SELECT count(*) FROM pgml._model_expressions e WHERE e.model = pgml._resolve(%s)",
                           (name,)) == 0
        error = session.error("SELECT * FROM pgml.score_table(%s, 'score_houses', 'id')", (name,))
        assert error.pgcode == "42501"
    finally:
        session.close()
    predictor = role(db, "score_predictor", ["GRANT SELECT ON score_houses TO {role}",
                                             "GRANT SELECT ON pgml.predictions TO {role}"])
    session = Session(predictor)
    try:
        assert session.one("SELECT count(*) FROM pgml.score_table(%s, 'score_houses', 'id')", (name,)) == 80
    finally:
        session.close()
