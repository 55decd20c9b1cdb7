"""The brief's workflow end to end: define data with a view, train with one command, predict with SQL."""
from __future__ import annotations

import json

import pytest

import pgml_fdw
from conftest import Session, linear_rows, make_table


@pytest.fixture(scope="module")
def shop(database: None) -> str:
    """The brief's users and orders, and its view my_data."""
    db = Session()
    db.run("DROP TABLE IF EXISTS orders, users CASCADE")
    db.run("CREATE TABLE users (id serial PRIMARY KEY, created_at timestamptz, age int, location text)")
    db.run("""CREATE TABLE orders (id serial PRIMARY KEY, user_id int REFERENCES users, purchase_price numeric)""")
    db.run("""
        INSERT INTO users (created_at, age, location)
        SELECT now() - (i % 700) * interval '1 day', 18 + i % 50, (ARRAY['Paris', 'Berlin', 'Lisbon'])[1 + i % 3]
        FROM generate_series(1, 600) i""")
    # Purchases grow with tenure and age, and Paris buys more.
    db.run("""
        INSERT INTO orders (user_id, purchase_price)
        SELECT u.id, 5 + (extract(epoch from now() - u.created_at) / 86400) * 0.1 + u.age * 0.5
                     + CASE u.location WHEN 'Paris' THEN 20 ELSE 0 END
        FROM users u, generate_series(1, 3)""")
    db.run("""
        CREATE OR REPLACE VIEW my_data AS
        SELECT now() - created_at AS user_tenure, age, location, total_purchases
        FROM users
        CROSS JOIN LATERAL (SELECT sum(purchase_price) AS total_purchases FROM orders
                            WHERE user_id = users.id) totals""")
    db.close()
    return "my_data"


def test_train_and_score_the_brief(db: Session, shop: str) -> None:
    model_id = db.one("SELECT pgml.train('my_data', 'total_purchases')")
    name, version = model_id.rsplit("_", 1)
    assert name == "my_data" and int(version) >= 1
    row = db.one("SELECT task, algorithm, train_rows + test_rows, (metrics->>'r2')::float8 "
                 "FROM pgml.models WHERE id = %s", (model_id,))
    assert row[:3] == ("regression", "linear", 600)
    assert row[3] > 0.99  # the purchases are linear in the features
    paris = db.one("SELECT pgml.score(%s, "
                   "'{\"user_tenure\": \"2 years\", \"age\": 30, \"location\": \"Paris\"}'::jsonb)", (model_id,))
    berlin = db.one("SELECT pgml.score(%s, "
                    "jsonb_build_object('user_tenure', interval '2 years', 'age', 30, 'location', 'Berlin'))",
                    (model_id,))
    assert paris - berlin == pytest.approx(60, abs=1)  # 3 orders of 20 more
    by_name = db.one("SELECT prediction FROM pgml.predictions WHERE model = 'my_data' "
                     "AND features = '[\"2 years\", 30, \"Paris\"]'")
    assert by_name == pytest.approx(paris)
    # The model records what trained it: the server's Python and packages, and this pgml_fdw.
    versions = db.one("SELECT versions FROM pgml.models WHERE id = %s", (model_id,))
    assert set(versions) == {"python", "numpy", "scipy", "scikit-learn", "pgml_fdw"}
    assert versions["pgml_fdw"] == pgml_fdw.__version__


def test_score_one_interval_feature(db: Session, shop: str, name: str) -> None:
    db.run("CREATE OR REPLACE VIEW tenure_purchases AS SELECT user_tenure, total_purchases FROM my_data")
    model_id = db.one("SELECT pgml.train('tenure_purchases', 'total_purchases', name => %s)", (name,))
    assert model_id == f"{name}_1"
    two_years = db.one("SELECT pgml.score(%s, '2 years'::interval)", (model_id,))
    one_year = db.one("SELECT pgml.score(%s, '1 year'::interval)", (model_id,))
    assert two_years > one_year  # longer tenure, more purchases


def test_insert_returning_and_listing(db: Session, name: str) -> None:
    make_table(db, "line", "x float8, y float8", linear_rows())
    run = db.rows(
        "INSERT INTO pgml.training_runs (relation, y_column, name) VALUES ('line', 'y', %s) "
        "RETURNING id, name, version, task, algorithm, metrics, train_rows, test_rows, duration, trained_by",
        (name,))[0]
    assert run[:5] == (f"{name}_1", name, 1, "regression", "linear")
    assert run[5]["r2"] > 0.99
    assert (run[6], run[7]) == (150, 50)  # 25% held out
    assert run[8].total_seconds() > 0 and run[9] == "postgres"
    listed = db.rows("SELECT id, task, train_rows FROM pgml.training_runs WHERE name = %s", (name,))
    assert listed == [(f"{name}_1", "regression", 150)]
    again = db.one("SELECT pgml.train('line', 'y', name => %s)", (name,))
    assert again == f"{name}_2"
    assert db.one("SELECT pgml.score(%s, 2.0)", (again,)) == pytest.approx(7, abs=0.05)


def test_every_feature_type_with_nulls(db: Session, name: str) -> None:
    make_table(
        db, "kinds",
        "i int, n numeric, f real, b boolean, iv interval, d date, ts timestamp, tz timestamptz, "
        "t text, v varchar(10), y float8",
        [
            (k if k % 7 else None, k * 1.5, k / 3.0 if k % 5 else None, k % 2 == 0, f"{k} hours",
             f"2024-01-{1 + k % 28:02d}", f"2024-02-01 {k % 24:02d}:00", f"2024-03-01 00:00+0{k % 3}",
             ["a", "b", None][k % 3], ["x", "y"][k % 2], float(k) + (k % 2) * 10)
            for k in range(1, 121)
        ])
    model_id = db.one("SELECT pgml.train('kinds', 'y', name => %s)", (name,))
    types = db.rows("SELECT feature, type FROM pgml.features WHERE model = %s ORDER BY position", (model_id,))
    assert [t for _, t in types] == ["integer", "numeric", "real", "boolean", "interval", "date",
                                     "timestamp without time zone", "timestamp with time zone", "text",
                                     "character varying(10)"]
    features = {"i": None, "n": 30, "f": None, "b": True, "iv": "20 hours", "d": "2024-01-21",
                "ts": "2024-02-01 20:00", "tz": "2024-03-01T00:00:00+02:00", "t": None, "v": "x"}
    value = db.one("SELECT pgml.score(%s, %s::jsonb)", (model_id, json.dumps(features)))
    assert value == pytest.approx(20, abs=3)


def test_classification_returns_labels_and_probabilities(db: Session, name: str) -> None:
    make_table(db, "fruit", "weight float8, color text, kind text",
               [(100 + i % 20, "red", "apple") for i in range(60)]
               + [(150 + i % 20, "yellow", "banana") for i in range(60)])
    model_id = db.one("SELECT pgml.train('fruit', 'kind', name => %s)", (name,))
    assert db.one("SELECT task FROM pgml.models WHERE id = %s", (model_id,)) == "classification"
    label, probabilities = db.one(
        "SELECT label, probabilities FROM pgml.predictions WHERE model = %s "
        "AND features = '{\"weight\": 160, \"color\": \"yellow\"}'", (model_id,))
    assert label == "banana"
    assert set(probabilities) == {"apple", "banana"} and probabilities["banana"] > 0.5
    assert db.one("SELECT pgml.classify(%s, ROW(105, 'red'))", (model_id,)) == "apple"
    assert db.one("SELECT pgml.predict_proba(%s, ROW(105, 'red'))", (model_id,))["apple"] > 0.5


def test_lateral_join_gives_one_prediction_per_row(db: Session, name: str) -> None:
    make_table(db, "line", "x float8, y float8", linear_rows())
    db.one("SELECT pgml.train('line', 'y', name => %s)", (name,))
    make_table(db, "inputs", "id int, x float8", [(i, float(i)) for i in range(20)])
    rows = db.rows(
        "SELECT i.id, p.prediction FROM inputs i "
        "CROSS JOIN LATERAL pgml.prediction(%s, jsonb_build_array(i.x)) p "
        "ORDER BY i.id", (name,))
    assert [r[0] for r in rows] == list(range(20))
    assert all(p == pytest.approx(3 * i + 1, abs=0.05) for i, p in rows)


def test_one_row_prediction_is_planned_as_one_row(db: Session, name: str) -> None:
    make_table(db, "line", "x float8, y float8", linear_rows())
    db.one("SELECT pgml.train('line', 'y', name => %s)", (name,))
    plan = db.one("EXPLAIN (FORMAT JSON) SELECT prediction FROM pgml.predictions "
                  "WHERE model = %s AND features = '[1]'", (name,))
    assert plan[0]["Plan"]["Plan Rows"] == 1
    assert "JIT" not in plan[0]


def test_without_conditions_is_an_error(db: Session) -> None:
    pid = db.pid()
    error = db.error("SELECT * FROM pgml.predictions")
    assert "needs WHERE model" in error.pgerror and "HINT" in error.pgerror
    assert db.pid() == pid  # the backend lives on


def test_every_column_of_a_single_prediction(db: Session, name: str) -> None:
    make_table(db, "bits_one", "x float8, flag boolean", [(float(i), i >= 30) for i in range(60)])
    db.one("SELECT pgml.train('bits_one', 'flag', name => %s)", (name,))
    db.one("SELECT pgml.train('bits_one', 'flag', name => %s, deploy => false)", (name,))
    row = db.one("SELECT model, features, prediction, label, probabilities, version, relation, key_column, key "
                 "FROM pgml.predictions WHERE model = %s AND features = '[50]'", (name,))
    assert row[:4] == (name, [50], 1.0, "true")
    assert set(row[4]) == {"false", "true"} and row[4]["true"] > 0.5
    assert row[5] == 1  # the deployed version answered, not the newest
    assert row[6:] == (None, None, None)
    assert db.one("SELECT version FROM pgml.predictions WHERE model = %s AND features = '[50]'", (f"{name}_2",)) == 2
