"""PostgresML's preprocessing and training options from SQL (issue 12): target encoding, explicit
ordinal orders, numbers encoded as categories, impute min/max/zero/error, scale max_abs/robust,
test_sampling first and search_args. A model's predictions must equal scikit-learn's on the same
matrix encoded by hand, and one row, a whole table (the SQL form) and the stored model must agree."""
from __future__ import annotations

import json
import math
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np
import pytest
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.metrics import r2_score

from conftest import Session, make_table

ROWS = 400
CITIES = ["paris", "rome", "oslo", None]


def _homes() -> List[Tuple[Any, ...]]:
    """(id, size, rooms, city, band, clouds, price, label): NULLs in size, city and clouds."""
    rng = np.random.default_rng(12)
    rows = []
    for i in range(ROWS):
        size = None if i % 11 == 3 else float(np.round(rng.uniform(20, 200), 2))
        rooms = int(rng.integers(1, 7))
        city = CITIES[int(rng.integers(0, 4))]
        band = ["s", "m", "l"][int(rng.integers(0, 3))]
        clouds = None if i % 13 == 5 else int(rng.integers(0, 4))
        price = (3.0 * (size or 100.0) + 10.0 * rooms + {"paris": 50.0, "rome": 20.0, "oslo": -30.0}.get(city, 0.0)
                 + 7.0 * "sml".index(band) + 4.0 * (clouds if clouds is not None else 1) + rng.normal(0, 5))
        rows.append((i, size, rooms, city, band, clouds, float(price), "hi" if price > 360 else "lo"))
    return rows


@pytest.fixture(scope="module")
def homes(database: None) -> List[Tuple[Any, ...]]:
    db = Session()
    rows = _homes()
    make_table(db, "prep_homes", "id int, size float8, rooms int, city text, band text, clouds int, price float8, "
                                 "label text", rows)
    # Ordered by id: test_sampling 'last' then holds out exactly the highest ids.
    db.run("CREATE OR REPLACE VIEW prep_home_prices AS SELECT size, rooms, city, band, clouds, price "
           "FROM prep_homes ORDER BY id")
    db.run("CREATE OR REPLACE VIEW prep_home_labels AS SELECT size, rooms, city, label FROM prep_homes ORDER BY id")
    # What is scored: the training rows, plus a city and a number of clouds never seen.
    make_table(db, "prep_new_homes", "id int, size float8, rooms int, city text, band text, clouds int",
               [r[:6] for r in rows] + [(1000, 80.0, 3, "lima", "m", 9), (1001, None, 2, None, "l", None)])
    db.close()
    return rows


PREPROCESS = {
    "size": {"impute": "max", "scale": "robust"},
    "rooms": {"scale": "max_abs"},
    "city": {"encode": "target", "smoothing": 2},
    "band": {"encode": {"ordinal": ["s", "m", "l"]}},
    "clouds": {"encode": "one_hot", "impute": "mode"},
}


def _split(rows: Sequence[Tuple[Any, ...]], test_size: float = 0.25) -> int:
    """How many of the first rows train under test_sampling 'last'."""
    return len(rows) - math.ceil(len(rows) * test_size)


def _encode_by_hand(train: Sequence[Tuple[Any, ...]], rows: Sequence[Tuple[Any, ...]]) -> np.ndarray:
    """PREPROCESS, written out with numpy from the training rows, applied to ``rows``."""
    y = np.array([r[6] for r in train])
    sizes = np.array([r[1] for r in train if r[1] is not None])
    size_fill = sizes.max()
    imputed = np.array([size_fill if r[1] is None else r[1] for r in train])
    q1, q3 = np.percentile(imputed, [25.0, 75.0])
    median = np.median(imputed)
    rooms_max = max(abs(r[2]) for r in train)
    prior = y.mean()
    city_means = {}
    for city in set(r[3] for r in train):
        members = y[[r[3] == city for r in train]]
        city_means[city] = (members.sum() + 2 * prior) / (len(members) + 2)
    clouds = [r[5] for r in train if r[5] is not None]
    counts = {c: clouds.count(c) for c in set(clouds)}
    mode = min(counts, key=lambda c: (-counts[c], c))
    categories = sorted(set(clouds) | {mode})
    out = []
    for r in rows:
        size = size_fill if r[1] is None else r[1]
        cloud = mode if r[5] is None else r[5]
        out.append([(size - median) / (q3 - q1), r[2] / rooms_max, city_means.get(r[3], prior),
                    "sml".index(r[4]), *[1.0 if cloud == c else 0.0 for c in categories]])
    return np.array(out)


def _features(row: Tuple[Any, ...]) -> str:
    return json.dumps({"size": row[1], "rooms": row[2], "city": row[3], "band": row[4], "clouds": row[5]})


def test_predictions_equal_scikit_learn_on_the_matrix_encoded_by_hand(db: Session, homes: List[Tuple[Any, ...]],
                                                                      name: str) -> None:
    db.one("SELECT pgml.train('prep_home_prices', 'price', name => %s, preprocess => %s, test_sampling => 'last')",
           (name, json.dumps(PREPROCESS)))
    train = homes[:_split(homes)]
    reference = LinearRegression().fit(_encode_by_hand(train, train), [r[6] for r in train])
    scored = homes[::37] + [(1000, 80.0, 3, "lima", "m", 9), (1001, None, 2, None, "l", None)]
    expected = reference.predict(_encode_by_hand(train, scored))
    for row, want in zip(scored, expected):
        assert db.one("SELECT pgml.score(%s, %s::jsonb)", (name, _features(row))) == pytest.approx(want, rel=1e-9)
    features = {f: p for f, p in db.rows("SELECT feature, preprocess FROM pgml.features WHERE model = %s || '_1'",
                                         (name,))}
    assert features["city"]["encode"] == "target" and features["city"]["smoothing"] == 2
    assert features["band"]["order"] == ["s", "m", "l"]
    assert features["size"]["scale"] == "robust" and "iqr" in features["size"]
    assert features["clouds"]["outputs"] == 4 and features["clouds"]["impute"] == "most_frequent"


def test_the_sql_form_single_rows_and_the_relation_form_agree(db: Session, homes: List[Tuple[Any, ...]],
                                                              name: str) -> None:
    db.one("SELECT pgml.train('prep_home_prices', 'price', name => %s, preprocess => %s)",
           (name, json.dumps(PREPROCESS)))
    expression = db.one("SELECT expression FROM pgml._model_expressions WHERE model = pgml._resolve(%s)", (name,))
    assert expression is not None and "CASE" in expression
    # The SQL form, evaluated by PostgreSQL over the relation ...
    in_sql = dict(db.rows("SELECT key, prediction FROM pgml.score_table(%s, 'prep_new_homes', 'id')", (name,)))
    # ... and one row at a time through the wrapper, and the relation read by the wrapper.
    one_by_one = dict(db.rows("SELECT h.id::text, pgml.score(%s, to_jsonb(h) - 'id') FROM prep_new_homes h", (name,)))
    relation = dict(db.rows("SELECT key, prediction FROM pgml.predictions WHERE model = %s "
                            "AND relation = 'public.prep_new_homes' AND key_column = 'id'", (name,)))
    assert len(in_sql) == len(one_by_one) == len(relation) == ROWS + 2
    for key, prediction in one_by_one.items():
        assert in_sql[key] == pytest.approx(prediction, rel=1e-12, abs=1e-9)
        assert relation[key] == pytest.approx(prediction, rel=1e-12, abs=1e-9)


def test_target_encoded_binary_classification_equals_scikit_learn(db: Session, homes: List[Tuple[Any, ...]],
                                                                  name: str) -> None:
    preprocess = {"size": {"impute": "min", "scale": "preserve"}, "rooms": {"scale": "preserve"},
                  "city": {"encode": "target", "smoothing": 0}}
    db.one("SELECT pgml.train('prep_home_labels', 'label', name => %s, preprocess => %s, test_sampling => 'last')",
           (name, json.dumps(preprocess)))
    train = homes[:_split(homes)]
    y = np.array([r[7] == "lo" for r in train], dtype=float)  # classes sorted: hi (0), lo (1)
    share = {city: y[[r[3] == city for r in train]].mean() for city in set(r[3] for r in train)}
    size_fill = min(r[1] for r in train if r[1] is not None)

    def encoded(rows: Sequence[Tuple[Any, ...]]) -> np.ndarray:
        return np.array([[size_fill if r[1] is None else r[1], r[2], share.get(r[3], y.mean())] for r in rows])

    reference = LogisticRegression(max_iter=1000, random_state=0).fit(encoded(train), y)
    for row in homes[::41] + [(0, None, 3, "lima")]:
        features = json.dumps({"size": row[1], "rooms": row[2], "city": row[3]})
        proba = db.one("SELECT pgml.predict_proba(%s, %s::jsonb)", (name, features))
        assert proba["lo"] == pytest.approx(reference.predict_proba(encoded([row]))[0, 1], abs=1e-6)


def test_test_sampling_first_holds_out_the_first_rows_of_the_view(db: Session, name: str) -> None:
    # The view orders by id descending: its first rows are the highest ids, whose noise is larger.
    rng = np.random.default_rng(4)
    x = rng.uniform(0, 10, 200)
    y = 2 * x + 1 + rng.normal(0, 0.1, 200) * np.where(np.arange(200) >= 150, 30, 1)
    make_table(db, "prep_timeline", "id int, x float8, y float8", [(i, float(a), float(b)) for i, (a, b) in
                                                                    enumerate(zip(x, y))])
    db.run("CREATE OR REPLACE VIEW prep_latest_first AS SELECT x, y FROM prep_timeline ORDER BY id DESC")
    model_id = db.one("SELECT pgml.train('prep_latest_first', 'y', name => %s, test_sampling => 'first', "
                      "test_size => 0.25)", (name,))
    metrics, train_rows, test_rows = db.one("SELECT metrics, train_rows, test_rows FROM pgml.models WHERE id = %s",
                                            (model_id,))
    assert (train_rows, test_rows) == (150, 50)
    test, train = np.arange(199, 149, -1), np.arange(149, -1, -1)  # ids, in the view's order
    fitted = LinearRegression().fit(x[train, None], y[train])
    assert metrics["r2"] == pytest.approx(r2_score(y[test], fitted.predict(x[test, None])), rel=1e-9)
    # The last rows (the lowest ids, with little noise) are another test set, with another score.
    last = db.one("SELECT pgml.train('prep_latest_first', 'y', name => %s, test_sampling => 'last')", (name,))
    assert db.one("SELECT (metrics->>'r2')::float8 FROM pgml.models WHERE id = %s", (last,)) - metrics["r2"] > 0.1


def test_search_args_n_iter_limits_the_candidates(db: Session, homes: List[Tuple[Any, ...]], name: str) -> None:
    inserted = db.one(
        "INSERT INTO pgml.training_runs (relation, y_column, algorithm, name, search, search_params, search_args, "
        "deploy) VALUES ('prep_home_prices', 'price', 'ridge', %s, 'random', "
        "'{\"alpha\": [0.001, 0.01, 0.1, 1, 10, 100]}', '{\"n_iter\": 3, \"cv\": 4}', false) "
        "RETURNING id, search_args, search_folds", (name,))
    model_id, returned, _ = inserted
    assert returned == {"n_iter": 3, "cv": 4}
    search = db.one("SELECT search FROM pgml.model_versions WHERE id = %s", (model_id,))
    assert len(search["candidates"]) == 3 and (search["folds"], search["n_iter"]) == (4, 3)
    assert db.one("SELECT search, search_folds, search_args FROM pgml.training_runs WHERE id = %s", (model_id,)) \
        == ("random", 4, {"n_iter": 3, "cv": 4})
    # pgml.train takes search_args as its last parameter, by name; cv alone suits a grid search.
    grid = db.one("SELECT pgml.train('prep_home_prices', 'price', 'ridge', %s, search => 'grid', "
                  "search_params => '{\"alpha\": [0.1, 1, 10]}', search_args => '{\"cv\": 2}')", (name,))
    search = db.one("SELECT search FROM pgml.model_versions WHERE id = %s", (grid,))
    assert len(search["candidates"]) == 3 and search["folds"] == 2 and "n_iter" not in search


def test_every_call_of_the_earlier_pgml_train_still_works(db: Session, homes: List[Tuple[Any, ...]],
                                                          name: str) -> None:
    # All thirteen parameters of 0.4.0's pgml.train by position, then a few by name.
    assert db.one("SELECT pgml.train('prep_home_prices', 'price', 'ridge', %s, 'regression', '{\"alpha\": 1}', "
                  "NULL, NULL, NULL, '{\"size\": {\"impute\": \"zero\"}}', 0.2, 'first', false)", (name,)) \
        == f"{name}_1"
    assert db.one("SELECT pgml.train('prep_home_prices', 'price', name => %s, deploy => false)", (name,)) \
        == f"{name}_2"
    assert db.one("SELECT test_rows FROM pgml.models WHERE id = %s", (f"{name}_1",)) == 80


def _error(db: Session, query: str, params: Sequence[Any] = ()) -> Tuple[str, str, Optional[str]]:
    error = db.error(query, params)
    return error.pgcode, error.diag.message_primary, error.diag.message_hint


def test_bad_options_say_what_is_valid(db: Session, homes: List[Tuple[Any, ...]], name: str) -> None:
    train = "SELECT pgml.train('prep_home_prices', 'price', name => %s, preprocess => %s)"
    code, message, hint = _error(db, train, (name, '{"size": {"impute": "average"}}'))
    assert code == "22023" and '"impute": "average"' in message
    for valid in ('"mean"', '"min"', '"max"', '"zero"', '"error"', '"mode"'):
        assert valid in hint
    code, message, hint = _error(db, train, (name, '{"size": {"scale": "unit"}}'))
    assert '"max_abs"' in hint and '"robust"' in hint and '"preserve"' in hint
    code, message, hint = _error(db, train, (name, '{"band": {"encode": {"ordinal": ["s", "m"]}}}'))
    assert message == 'column "band" holds 1 value(s) that its ordinal order does not list: "l"'
    code, message, hint = _error(db, "SELECT pgml.train('prep_home_prices', 'price', name => %s, search => 'random', "
                                     "search_params => '{\"alpha\": [1]}', search_args => '{\"iterations\": 3}')",
                                 (name,))
    assert code == "22023" and 'unknown search_args "iterations"' in message and '"n_iter", "cv"' in hint
    code, message, hint = _error(db, "SELECT pgml.train('prep_home_prices', 'price', name => %s, "
                                     "test_sampling => 'middle')", (name,))
    assert 'unknown test_sampling "middle"' in message and "first or last" in hint
    assert db.one("SELECT count(*) FROM pgml.model_versions WHERE name = %s", (name,)) == 0


def test_impute_error_fails_training_and_prediction_with_a_null(db: Session, homes: List[Tuple[Any, ...]],
                                                                name: str) -> None:
    code, message, hint = _error(db, "SELECT pgml.train('prep_home_prices', 'price', name => %s, "
                                     "preprocess => '{\"clouds\": {\"impute\": \"error\"}}')", (name,))
    nulls = sum(1 for r in homes if r[5] is None)
    assert code == "22004"
    assert message == (f'column "clouds" is NULL in {nulls} of the {ROWS} rows of public.prep_home_prices, '
                       'and its preprocess says "impute": "error"')
    assert '"impute": "mean"' in hint
    db.run("CREATE OR REPLACE VIEW prep_sized_homes AS SELECT size, rooms, price FROM prep_homes "
           "WHERE size IS NOT NULL ORDER BY id")
    db.one("SELECT pgml.train('prep_sized_homes', 'price', name => %s, preprocess => '{\"size\": {\"impute\": "
           "\"error\", \"scale\": \"standard\"}}')", (name,))
    assert db.one("SELECT pgml.score(%s, '{\"size\": 50, \"rooms\": 2}'::jsonb)", (name,)) > 0
    code, message, hint = _error(db, "SELECT pgml.score(%s, '{\"size\": null, \"rooms\": 2}'::jsonb)", (name,))
    assert code == "22004" and message.startswith('feature "size" is NULL, and the model was trained with')
    # The SQL form of score_table raises the same error for a row with a NULL size.
    code, message, _ = _error(db, "SELECT * FROM pgml.score_table(%s, 'prep_new_homes', 'id')", (name,))
    assert code == "22004" and message.startswith('feature "size" is NULL')
    assert db.one("SELECT count(*) FROM pgml.score_table(%s, 'prep_sized_homes')", (name,)) \
        == sum(1 for r in homes if r[1] is not None)
