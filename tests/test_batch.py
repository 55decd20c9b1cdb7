"""The batch form: ``WHERE model = ... AND relation = ... [AND key_column = ...]`` scores every row
of a table or view in one pass, with the same answers as one row at a time."""
from __future__ import annotations

import pytest

from conftest import Session, make_table, role

BATCH = "SELECT key, prediction, label, probabilities, version FROM pgml.predictions " \
        "WHERE model = %s AND relation = %s AND key_column = %s"


@pytest.fixture
def houses(db: Session) -> str:
    """Sizes, rooms, a district and a price; ids with gaps, one beyond the float64 range of integers."""
    rows = [(i * 7 + 2**60 * (i == 59), 30.0 + i, 1 + i % 4, ["north", "south", None][i % 3],
             1000.0 + 40 * i + 150 * (i % 4) + (90 if i % 3 == 1 else 0)) for i in range(60)]
    return make_table(db, "houses", "id bigint, size float8, rooms int, district text, price float8", rows)


def _one_by_one(db: Session, model: str, relation: str) -> dict:
    """Predictions of each row through the single-row form, by id."""
    rows = db.rows(f"SELECT h.id, p.prediction FROM {relation} h CROSS JOIN LATERAL pgml.prediction("
                   "%s, jsonb_build_object('size', h.size, 'rooms', h.rooms, 'district', h.district)) p",
                   (model,))
    return {str(i): p for i, p in rows}


def test_batch_matches_single_rows_with_an_integer_key(db: Session, houses: str, name: str) -> None:
    db.run("CREATE OR REPLACE VIEW house_features AS SELECT size, rooms, district, price FROM houses")
    model_id = db.one("SELECT pgml.train('house_features', 'price', name => %s)", (name,))
    rows = db.rows(BATCH, (name, "houses", "id"))
    assert len(rows) == 60
    expected = _one_by_one(db, name, "houses")
    assert {key for key, *_ in rows} == set(expected)  # every id, the largest to its last digit
    assert str(2**60 + 59 * 7) in expected
    for key, prediction, label, probabilities, version in rows:
        assert prediction == pytest.approx(expected[key], rel=1e-12)
        assert (label, probabilities) == (None, None)
        assert version == int(model_id.rsplit("_", 1)[1])


def test_text_and_null_keys(db: Session, houses: str, name: str) -> None:
    db.run("CREATE OR REPLACE VIEW house_features AS SELECT size, rooms, district, price FROM houses")
    db.one("SELECT pgml.train('house_features', 'price', name => %s)", (name,))
    db.run("CREATE OR REPLACE VIEW labelled_houses AS SELECT *, CASE WHEN id % 2 = 0 THEN 'h' || id END AS ref, "
           "NULLIF(id, 0) AS maybe_id FROM houses")
    by_ref = db.rows(BATCH, (name, "labelled_houses", "ref"))
    assert sorted(k for k, *_ in by_ref if k is not None) == sorted(f"h{i * 7}" for i in range(0, 59, 2))
    assert sum(k is None for k, *_ in by_ref) == 30
    by_maybe = db.rows(BATCH, (name, "labelled_houses", "maybe_id"))
    assert sum(k is None for k, *_ in by_maybe) == 1 and len(by_maybe) == 60


def test_classification_in_batch(db: Session, name: str) -> None:
    make_table(db, "fruit_batch", "id int, weight float8, color text, kind text",
               [(i, 100 + i % 20, "red", "apple") for i in range(60)]
               + [(100 + i, 150 + i % 20, "yellow", "banana") for i in range(60)])
    db.run("CREATE OR REPLACE VIEW fruit_features AS SELECT weight, color, kind FROM fruit_batch")
    db.one("SELECT pgml.train('fruit_features', 'kind', name => %s)", (name,))
    rows = db.rows(BATCH, (name, "fruit_batch", "id"))
    assert len(rows) == 120
    for key, prediction, label, probabilities, _ in rows:
        assert label == ("apple" if int(key) < 100 else "banana")
        assert prediction is None  # the classes are text
        assert set(probabilities) == {"apple", "banana"}
        assert probabilities[label] > 0.5


def test_whole_row_references_carry_every_column(db: Session, houses: str, name: str) -> None:
    """SELECT p / to_jsonb(p) name no column, so the wrapper must fill them all."""
    db.run("CREATE OR REPLACE VIEW house_features AS SELECT size, rooms, district, price FROM houses")
    model_id = db.one("SELECT pgml.train('house_features', 'price', name => %s)", (name,))
    rows = db.rows("SELECT to_jsonb(p) FROM pgml.predictions p WHERE model = %s AND relation = 'houses' "
                   "AND key_column = 'id'", (name,))
    assert len(rows) == 60
    assert all(r[0]["key"] is not None and r[0]["version"] == int(model_id.rsplit("_", 1)[1]) for r in rows)
    single = db.one("SELECT to_jsonb(p) FROM pgml.predictions p WHERE model = %s "
                    "AND features = '{\"size\": 40, \"rooms\": 2, \"district\": \"north\"}'", (name,))
    assert single["version"] == int(model_id.rsplit("_", 1)[1]) and single["prediction"] is not None


def test_batch_errors(db: Session, houses: str, name: str) -> None:
    db.run("CREATE OR REPLACE VIEW house_features AS SELECT size, rooms, district, price FROM houses")
    db.one("SELECT pgml.train('house_features', 'price', name => %s)", (name,))
    make_table(db, "wrong_columns", "id int, size float8", [(1, 2.0)])
    pid = db.pid()
    cases = [
        ((name, "no_such_table", "id"), 'relation "no_such_table" does not exist', "table or view"),
        ((name, "houses", "no_such_column"), 'column "no_such_column" does not exist in', "size"),
        ((name, "wrong_columns", "id"), "wrong_columns lacks the features rooms, district of model", "same columns"),
    ]
    for params, message, hint in cases:
        error = db.error(BATCH, params)
        assert message in error.diag.message_primary, params
        assert hint in (error.diag.message_hint or ""), params
    assert db.pid() == pid


def test_batch_reads_with_the_sessions_privileges(db: Session, houses: str, name: str) -> None:
    db.run("CREATE OR REPLACE VIEW house_features AS SELECT size, rooms, district, price FROM houses")
    db.one("SELECT pgml.train('house_features', 'price', name => %s)", (name,))
    reader = role(db, "pgml_batch_reader", ["GRANT SELECT ON pgml.predictions TO {role}"])
    session = Session(user=reader)
    error = session.error(BATCH, (name, "houses", "id"))
    assert "permission denied" in error.diag.message_primary
    assert f"GRANT SELECT ON houses TO {reader}" in error.diag.message_hint
    db.run(f"GRANT SELECT ON houses TO {reader}")
    assert len(session.rows(BATCH, (name, "houses", "id"))) == 60
    session.close()


def test_prepared_statements_plan_one_row_without_jit(db: Session, name: str) -> None:
    """Multicorn shows a generic plan no parameter values, so it is costed like a scan without
    features (which cannot run); PostgreSQL must keep making one-row custom plans, never JIT."""
    make_table(db, "generic_line", "x float8, y float8", [(float(x), 2.0 * x) for x in range(50)])
    db.one("SELECT pgml.train('generic_line', 'y', name => %s)", (name,))
    db.run("PREPARE one_prediction(text, jsonb) AS "
           "SELECT prediction FROM pgml.predictions WHERE model = $1 AND features = $2")
    try:
        for _ in range(8):  # past the five custom plans after which PostgreSQL weighs a generic one
            assert db.one("EXECUTE one_prediction(%s, '[3]')", (name,)) == pytest.approx(6.0, abs=0.01)
        plan = db.one("EXPLAIN (FORMAT JSON) EXECUTE one_prediction(%s, '[3]')", (name,))
        assert plan[0]["Plan"]["Plan Rows"] == 1
        assert "JIT" not in plan[0]
    finally:
        db.run("DEALLOCATE one_prediction")


def test_lateral_join_with_the_model_from_the_outer_row(db: Session, name: str) -> None:
    make_table(db, "outer_line", "x float8, y float8", [(float(x), 2.0 * x) for x in range(50)])
    db.one("SELECT pgml.train('outer_line', 'y', name => %s)", (name,))
    make_table(db, "requests", "id int, model text, x float8", [(i, name, float(i)) for i in range(10)])
    rows = db.rows("SELECT r.id, p.prediction FROM requests r "
                   "CROSS JOIN LATERAL pgml.prediction(r.model, jsonb_build_array(r.x)) p "
                   "ORDER BY r.id")
    assert [i for i, _ in rows] == list(range(10))
    assert all(p == pytest.approx(2.0 * i, abs=0.01) for i, p in rows)


def test_boolean_classes_in_batch(db: Session, name: str) -> None:
    make_table(db, "bits", "id int, x float8, flag boolean", [(i, float(i), i >= 30) for i in range(60)])
    db.run("CREATE OR REPLACE VIEW bit_features AS SELECT x, flag FROM bits")
    db.one("SELECT pgml.train('bit_features', 'flag', name => %s)", (name,))
    rows = db.rows(BATCH, (name, "bits", "id"))
    low = next(r for r in rows if r[0] == "0")
    assert low[1] == 0.0 and low[2] == "false"  # a boolean class is also a number
    assert isinstance(low[3], dict) and set(low[3]) == {"false", "true"} and low[3]["false"] > 0.5
