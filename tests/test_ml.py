"""Issue 3 from SQL: the catalogue, search, preprocessing, deployments, introspection, quality."""
from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn import datasets
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.metrics import f1_score, r2_score
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

from conftest import Session, linear_rows, make_table


@pytest.fixture(scope="module")
def toy(database: None) -> None:
    db = Session()
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (200, 3))
    make_table(db, "ml_reg", "a float8, b float8, c float8, y float8",
               [(*map(float, r), float(2 * r[0] - r[1])) for r in x])
    make_table(db, "ml_clf", "a float8, b float8, c float8, y text",
               [(*map(float, r), "hi" if r[0] > r[1] else "lo") for r in x])
    db.close()


def test_every_algorithm_trains_and_predicts_from_sql(db: Session, toy: None, name: str) -> None:
    # Clustering and decomposition, trained without y: tests/test_unsupervised.py.
    catalogue = db.rows("SELECT name, task FROM pgml.algorithms WHERE task IN ('regression', 'classification') "
                        "ORDER BY 1, 2")
    assert len({n for n, _ in catalogue}) == 34
    for algorithm, task in catalogue:
        table = "ml_reg" if task == "regression" else "ml_clf"
        model_id = db.one("SELECT pgml.train(%s, 'y', %s, name => %s, task => %s)",
                          (table, algorithm, f"{name}_{algorithm}_{task[0]}", task))
        row = db.one("SELECT prediction, label FROM pgml.predictions WHERE model = %s AND features = '[0.9, 0.1, 0.5]'",
                     (model_id,))
        if task == "regression":
            assert isinstance(row[0], float), algorithm
        else:
            assert row[1] in ("hi", "lo"), algorithm
    db.run("DELETE FROM pgml.model_versions WHERE name LIKE %s", (f"{name}_%",))


def test_search_keeps_every_candidate(db: Session, toy: None, name: str) -> None:
    model_id = db.one("SELECT pgml.train('ml_reg', 'y', 'ridge', name => %s, search => 'grid', "
                      "search_params => '{\"alpha\": [0.001, 1, 100]}')", (name,))
    search = db.one("SELECT search FROM pgml.model_versions WHERE id = %s", (model_id,))
    assert [c["params"]["alpha"] for c in search["candidates"]] == [0.001, 1, 100]
    assert search["best_params"] == {"alpha": 0.001}
    assert db.one("SELECT hyperparams->>'alpha' FROM pgml.models WHERE id = %s", (model_id,)) == "0.001"


def test_preprocess_option_is_stored_and_applied(db: Session, toy: None, name: str) -> None:
    model_id = db.one("SELECT pgml.train('ml_reg', 'y', name => %s, "
                      "preprocess => '{\"a\": {\"impute\": \"median\", \"scale\": \"min_max\"}}')", (name,))
    preprocess = db.one("SELECT preprocess FROM pgml.features WHERE model = %s AND feature = 'a'", (model_id,))
    assert preprocess["impute"] == "median" and preprocess["scale"] == "min_max"
    assert db.one("SELECT pgml.score(%s, '[0.5, 0.25, 0]'::jsonb)", (model_id,)) == pytest.approx(0.75, abs=1e-6)
    error = db.error("SELECT pgml.train('ml_reg', 'y', name => %s, preprocess => '{\"zz\": {}}')", (name,))
    assert "zz" in error.diag.message_primary


def test_deployments_and_rollback(db: Session, name: str) -> None:
    make_table(db, "ml_good", "x float8, y float8", linear_rows(100, noise=0.01))
    db.one("SELECT pgml.train('ml_good', 'y', name => %s)", (name,))
    # The same data and a worse fit: not deployed.
    db.one("SELECT pgml.train('ml_good', 'y', 'ridge', name => %s, hyperparams => '{\"alpha\": 1e6}')", (name,))
    assert db.one("SELECT version FROM pgml.deployed_models WHERE name = %s", (name,)) == 1
    assert db.one("SELECT pgml.deploy(%s, 'most_recent')", (name,)) == f"{name}_2"
    assert db.one("SELECT pgml.score(%s, 1.0)", (name,)) != pytest.approx(4, abs=0.05)
    assert db.one("SELECT pgml.deploy(%s, 'rollback')", (name,)) == f"{name}_1"
    assert db.one("SELECT pgml.score(%s, 1.0)", (name,)) == pytest.approx(4, abs=0.05)
    assert db.one("SELECT pgml.deploy(%s, 'best_score')", (name,)) == f"{name}_1"
    history = db.rows("SELECT version, strategy, deployed_by FROM pgml.deployments WHERE name = %s ORDER BY id",
                      (name,))
    assert history == [(1, "auto", "postgres"), (2, "most_recent", "postgres"), (1, "rollback", "postgres"),
                       (1, "best_score", "postgres")]
    assert "unknown deployment strategy" in db.error("SELECT pgml.deploy(%s, 'nope')", (name,)).diag.message_primary


def test_feature_importance_is_listed(db: Session, toy: None, name: str) -> None:
    model_id = db.one("SELECT pgml.train('ml_reg', 'y', 'random_forest', name => %s)", (name,))
    rows = db.rows("SELECT feature, importance, importance_method FROM pgml.features WHERE model = %s "
                   "ORDER BY position", (model_id,))
    assert [r[0] for r in rows] == ["a", "b", "c"] and rows[0][2] == "impurity"
    assert rows[0][1] > rows[2][1]  # y depends on a, not on c


def _load(db: Session, table: str, bunch) -> None:  # noqa: ANN001
    X, y = bunch.data, bunch.target
    columns = ", ".join(f"f{i} float8" for i in range(X.shape[1]))
    y_type = "float8" if y.dtype.kind == "f" else "text"
    make_table(db, table, f"{columns}, y {y_type}",
               [(*map(float, row), float(t) if y_type == "float8" else f"c{t}") for row, t in zip(X, y)])


@pytest.mark.parametrize("dataset", ["diabetes", "iris", "wine", "breast_cancer"])
def test_quality_matches_a_hand_written_pipeline(db: Session, name: str, dataset: str) -> None:
    bunch = getattr(datasets, f"load_{dataset}")()
    _load(db, f"ml_{dataset}", bunch)
    model_id = db.one("SELECT pgml.train(%s, 'y', name => %s)", (f"ml_{dataset}", name))
    measured = db.one("SELECT metrics FROM pgml.models WHERE id = %s", (model_id,))
    X, y = bunch.data, bunch.target
    if dataset == "diabetes":
        X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=0.25, random_state=0)
        reference = r2_score(y_te, LinearRegression().fit(X_tr, y_tr).predict(X_te))
        ours = measured["r2"]
    else:
        labels = np.array([f"c{t}" for t in y])
        _, index = np.unique(labels, return_inverse=True)
        X_tr, X_te, y_tr, y_te = train_test_split(X, index, test_size=0.25, random_state=0, stratify=index)
        scaler = StandardScaler().fit(X_tr)
        clf = LogisticRegression(max_iter=1000).fit(scaler.transform(X_tr), y_tr)
        average = "binary" if len(set(index)) == 2 else "macro"
        reference = f1_score(y_te, clf.predict(scaler.transform(X_te)), average=average)
        ours = measured["f1"]
    assert ours >= reference * 0.98, json.dumps(measured)


def test_quality_with_categorical_interval_and_null_columns(db: Session, name: str) -> None:
    rng = np.random.default_rng(3)
    n = 400
    hours = rng.uniform(0, 100, n)
    city = rng.choice(["Paris", "Berlin", "Lisbon", None], n)
    age = np.where(rng.uniform(size=n) < 0.1, np.nan, rng.uniform(20, 60, n))
    y = 2 * hours + np.select([city == "Paris", city == "Berlin"], [30, 10], 0) + 0.5 * np.nan_to_num(age, nan=40) \
        + rng.normal(0, 3, n)
    make_table(db, "ml_mixed", "wait interval, city text, age float8, y float8",
               [(f"{h} hours", c, None if np.isnan(a) else float(a), float(t))
                for h, c, a, t in zip(hours, city, age, y)])
    model_id = db.one("SELECT pgml.train('ml_mixed', 'y', name => %s)", (name,))
    ours = db.one("SELECT (metrics->>'r2')::float8 FROM pgml.models WHERE id = %s", (model_id,))
    # The notebook version: seconds for the interval, one-hot with NULL as a category, mean imputation.
    cities = ["Berlin", "Lisbon", "Paris", None]
    X = np.column_stack([hours * 3600] + [(city == c) if c else np.array([v is None for v in city]) for c in cities]
                        + [age]).astype(float)
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=0.25, random_state=0)
    mean = np.nanmean(X_tr[:, -1])
    X_tr[np.isnan(X_tr[:, -1]), -1] = mean
    X_te[np.isnan(X_te[:, -1]), -1] = mean
    reference = r2_score(y_te, LinearRegression().fit(X_tr, y_tr).predict(X_te))
    assert ours >= reference * 0.98
    assert ours > 0.9
