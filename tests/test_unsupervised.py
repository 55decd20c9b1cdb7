"""Clustering and decomposition from SQL: training without y_column, the cluster a row falls in, a
row's components, the metrics stored, and the errors of asking for what a model does not answer.

Predictions are compared with scikit-learn's own on the same encoded rows: the stored model is read
back here (pgml_fdw.model_format) and its estimator asked directly."""
from __future__ import annotations

import math
from typing import Any, Dict, Iterator, List, Sequence, Tuple

import numpy as np
import psycopg2
import psycopg2.extensions
import pytest
from sklearn import metrics as skm

from conftest import DATABASE, LOCAL_ROOT, MAINTENANCE, Session, dsn, make_table
from pgml_fdw import model_format
from pgml_fdw.model import Model

# Three well-separated groups in three features of different scales (the third in thousands), and
# the group each row was drawn from.
CENTERS = [(0.0, 0.0, 1000.0), (10.0, 5.0, 3000.0), (-10.0, 8.0, 5000.0)]
SPREAD = (0.5, 0.5, 50.0)


def _blobs(n: int, seed: int = 0) -> List[Tuple[int, float, float, float, int]]:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        group = int(rng.integers(3))
        a, b, c = (float(rng.normal(m, s)) for m, s in zip(CENTERS[group], SPREAD))
        rows.append((i, a, b, c, group))
    return rows


@pytest.fixture
def blobs(db: Session) -> List[Tuple[int, float, float, float, int]]:
    """cl_blobs (id, a, b, c, grp) and the view cl_points of its features."""
    rows = _blobs(240)
    make_table(db, "cl_blobs", "id int, a float8, b float8, c float8, grp int", rows)
    db.run("CREATE OR REPLACE VIEW cl_points AS SELECT a, b, c FROM cl_blobs")
    return rows


def _stored(db: Session, model: str) -> Model:
    """The deployed version of ``model`` (or the version ``model`` names), read as a backend reads it."""
    blob = db.one("SELECT e.estimator FROM pgml.model_estimators e "
                  "WHERE e.model_id = coalesce((SELECT d.id FROM pgml.deployed_models d WHERE d.name = %s), %s)",
                  (model, model))
    return model_format.load(bytes(blob), model)


def _encoded(model: Model, rows: Sequence[Sequence[float]]) -> Any:
    """The rows as the model's estimator sees them (its fitted preprocessing)."""
    columns = [c.name for c in model.columns]
    return model.encoder.transform({name: np.array([float(r[i]) for r in rows]) for i, name in enumerate(columns)})


def _features(row: Sequence[float]) -> str:
    return '{"a": %r, "b": %r, "c": %r}' % tuple(float(v) for v in row)


def _scored(db: Session, model: str) -> Dict[int, Tuple[float, str]]:
    rows = db.rows("SELECT key::int, prediction, label FROM pgml.score_table(%s, 'cl_blobs', 'id')", (model,))
    return {key: (prediction, label) for key, prediction, label in rows}


def test_kmeans_finds_the_groups_and_answers_as_scikit_learn(db: Session, blobs: list, name: str) -> None:
    model_id = db.one("SELECT pgml.train('cl_points', NULL, 'kmeans', name => %s, "
                      "hyperparams => '{\"n_clusters\": 3}', test_sampling => 'last')", (name,))
    assert model_id == f"{name}_1"
    task, y_column, metrics, deployed = db.one(
        "SELECT task, y_column, metrics, deployed FROM pgml.models WHERE id = %s", (model_id,))
    assert (task, y_column, deployed) == ("clustering", None, True)
    assert metrics["n_clusters"] == 3 and set(metrics) == {"silhouette", "calinski_harabasz", "davies_bouldin",
                                                          "n_clusters"}

    # Every row of the table, scored whole: its cluster is its group, whatever the numbering.
    scored = _scored(db, name)
    truth = [grp for _, _, _, _, grp in blobs]
    clusters = [scored[i][0] for i, *_ in blobs]
    assert skm.adjusted_rand_score(truth, clusters) == 1.0
    assert all(label == str(int(prediction)) for prediction, label in scored.values())

    # The silhouette of the held-out rows (the last quarter, test_sampling 'last'), as scikit-learn measures it.
    model = _stored(db, name)
    held_out = blobs[-math.ceil(len(blobs) * 0.25):]
    encoded = _encoded(model, [row[1:4] for row in held_out])
    labels = [scored[row[0]][0] for row in held_out]
    assert metrics["silhouette"] == pytest.approx(skm.silhouette_score(encoded, labels), abs=1e-12)
    assert metrics["calinski_harabasz"] == pytest.approx(skm.calinski_harabasz_score(encoded, labels), rel=1e-9)
    assert metrics["silhouette"] > 0.8

    # New rows: the cluster of their group, and scikit-learn's predict on the same encoded rows.
    new = [CENTERS[g] for g in (0, 1, 2)] + [(0.3, -0.2, 1010.0), (9.0, 5.5, 2950.0), (1e6, -1e6, 0.0)]
    answers = [db.one("SELECT pgml.score(%s, %s::jsonb)", (name, _features(row))) for row in new]
    assert answers == [float(v) for v in model.estimator.predict(_encoded(model, new))]
    by_group = {grp: scored[i][0] for i, _, _, _, grp in blobs}
    assert answers[:5] == [by_group[0], by_group[1], by_group[2], by_group[0], by_group[1]]
    # The other forms agree: the view, a row, and the class as text.
    assert db.one("SELECT prediction, label, probabilities FROM pgml.predictions WHERE model = %s AND features = %s",
                  (name, _features(new[1]))) == (answers[1], str(int(answers[1])), None)
    assert db.one("SELECT pgml.score(%s, ROW(10.0, 5.0, 3000.0))", (name,)) == answers[1]
    assert db.one("SELECT pgml.classify(%s, '[-10, 8, 5000]'::jsonb)", (name,)) == str(int(answers[2]))


def test_a_y_column_is_left_out_and_compared_with_the_clusters(db: Session, blobs: list, name: str) -> None:
    db.run("CREATE OR REPLACE VIEW cl_labelled AS SELECT a, b, c, grp FROM cl_blobs")
    db.one("SELECT pgml.train('cl_labelled', 'grp', 'kmeans', name => %s, hyperparams => '{\"n_clusters\": 3}')",
           (name,))
    task, y_column, metrics = db.one("SELECT task, y_column, metrics FROM pgml.models WHERE name = %s", (name,))
    assert (task, y_column) == ("clustering", "grp")
    assert metrics["adjusted_rand"] == 1.0 and metrics["normalized_mutual_info"] == 1.0
    assert [f for (f,) in db.rows("SELECT feature FROM pgml.features WHERE name = %s ORDER BY position",
                                  (name,))] == ["a", "b", "c"]
    # Through pgml.training_runs, with the task named: the same.
    assert db.one("INSERT INTO pgml.training_runs (relation, y_column, algorithm, name, task, hyperparams) "
                  "VALUES ('cl_points', NULL, 'birch', %s, 'clustering', '{\"n_clusters\": 3}') RETURNING task",
                  (name,)) == "clustering"


@pytest.mark.parametrize("algorithm,hyperparams", [
    ("mini_batch_kmeans", '{"n_clusters": 3}'),
    ("bisecting_kmeans", '{"n_clusters": 3}'),
    ("birch", '{"n_clusters": 3}'),
    ("mean_shift", "{}"),
    ("affinity_propagation", '{"preference": -5}'),  # the default finds a cluster per few rows here
    ("gaussian_mixture", '{"n_components": 3}'),
])
def test_every_clusterer_predicts_the_groups(db: Session, blobs: list, name: str, algorithm: str,
                                             hyperparams: str) -> None:
    db.run("CREATE OR REPLACE VIEW cl_few AS SELECT a, b, c FROM cl_blobs WHERE id < 120")
    db.one("SELECT pgml.train('cl_few', NULL, %s, name => %s, hyperparams => %s)", (algorithm, name, hyperparams))
    metrics = db.one("SELECT metrics FROM pgml.models WHERE name = %s", (name,))
    assert metrics["n_clusters"] == 3 and metrics["silhouette"] > 0.8
    scored = _scored(db, name)
    assert skm.adjusted_rand_score([row[4] for row in blobs], [scored[row[0]][0] for row in blobs]) == 1.0
    model = _stored(db, name)
    new = [(0.2, 0.1, 990.0), (10.4, 4.6, 3040.0), (-9.5, 8.3, 4980.0), (5.0, 2.5, 2000.0)]
    answers = db.rows("SELECT (pgml.prediction(%s, f::jsonb)).* FROM unnest(%s::text[]) WITH ORDINALITY AS u(f, n) "
                      "ORDER BY n", (name, [_features(row) for row in new]))
    expected = model.estimator.predict(_encoded(model, new))
    assert [prediction for prediction, *_ in answers] == [float(v) for v in expected]
    if algorithm == "gaussian_mixture":  # each cluster's probability, scikit-learn's
        proba = model.estimator.predict_proba(_encoded(model, new))
        for (_, _, probabilities, _), row in zip(answers, proba):
            assert probabilities == {str(k): pytest.approx(p, abs=1e-12) for k, p in enumerate(row)}
        # PostgresML's array form: the clusters' probabilities in cluster order.
        as_array = db.one("SELECT pgml.predict_proba(%s, ARRAY[%s, %s, %s]::real[])", (name, *new[1]))
        assert as_array == pytest.approx(model.estimator.predict_proba(_encoded(model, [new[1]]))[0], abs=1e-6)
    else:
        assert all(probabilities is None for _, _, probabilities, _ in answers)


def test_pca_components_are_scikit_learns(db: Session, name: str) -> None:
    rng = np.random.default_rng(3)
    latent = rng.normal(size=(200, 2))
    values = latent @ np.array([[1.0, 2.0, 0.5, -1.0], [0.3, -0.4, 2.0, 1.0]]) + rng.normal(0, 0.05, (200, 4))
    make_table(db, "cl_wide", "id int, p float8, q float8, r float8, s float8",
               [(i, *map(float, row)) for i, row in enumerate(values)])
    db.run("CREATE OR REPLACE VIEW cl_wide_features AS SELECT p, q, r, s FROM cl_wide")
    db.one("SELECT pgml.train('cl_wide_features', NULL, 'pca', name => %s, hyperparams => '{\"n_components\": 3}')",
           (name,))
    task, metrics = db.one("SELECT task, metrics FROM pgml.models WHERE name = %s", (name,))
    model = _stored(db, name)
    ratios = model.estimator.explained_variance_ratio_
    assert task == "decomposition" and metrics["n_components"] == 3
    assert metrics["explained_variance_ratio"] == pytest.approx(list(ratios), abs=1e-15)
    assert metrics["cumulative_explained_variance"] == pytest.approx(float(ratios.sum()), abs=1e-15)
    assert metrics["cumulative_explained_variance"] > 0.99  # two directions hold nearly all of it

    rows = [tuple(map(float, values[i])) for i in range(0, 200, 20)] + [(100.0, -3.0, 0.0, 7.5)]
    expected = model.estimator.transform(model.encoder.transform(
        {c: np.array([r[i] for r in rows]) for i, c in enumerate("pqrs")}))
    got = [db.one("SELECT pgml.decompose(%s, ROW(%s, %s, %s, %s))", (name, *row)) for row in rows]
    np.testing.assert_allclose(np.array(got), expected, rtol=1e-9, atol=1e-9)
    assert db.one("SELECT pgml.decompose(%s, '{\"p\": 1, \"q\": 2, \"r\": 3, \"s\": 4}'::jsonb)", (name,)) == \
        db.one("SELECT components FROM pgml.predictions WHERE model = %s AND features = '[1, 2, 3, 4]'", (name,))
    assert db.one("SELECT pgml.decompose(%s, NULL::jsonb)", (name,)) is None  # no features, no components
    # A whole table: every row's components, by key.
    whole = dict(db.rows("SELECT key::int, components FROM pgml.predictions WHERE model = %s "
                         "AND relation = 'public.cl_wide' AND key_column = 'id'", (name,)))
    all_expected = model.estimator.transform(model.encoder.transform({c: values[:, i] for i, c in enumerate("pqrs")}))
    np.testing.assert_allclose(np.array([whole[i] for i in range(200)]), all_expected, rtol=1e-12, atol=1e-12)


def test_asking_a_model_for_what_it_does_not_answer(db: Session, blobs: list, name: str) -> None:
    pca, kmeans = f"{name}_pca", name
    db.one("SELECT pgml.train('cl_points', NULL, 'pca', name => %s)", (pca,))
    db.one("SELECT pgml.train('cl_points', NULL, 'kmeans', name => %s, hyperparams => '{\"n_clusters\": 3}')",
           (kmeans,))
    try:
        for query in ("SELECT pgml.score(%s, '[1, 2, 3]'::jsonb)", "SELECT pgml.classify(%s, '[1, 2, 3]'::jsonb)",
                      "SELECT * FROM pgml.prediction(%s, '[1, 2, 3]'::jsonb)",
                      "SELECT prediction FROM pgml.predictions WHERE model = %s AND features = '[1, 2, 3]'",
                      "SELECT * FROM pgml.score_table(%s, 'cl_blobs', 'id')"):
            error = db.error(query, (pca,))
            assert error.pgcode == "22023", query
            assert f"model {pca}_1 is a decomposition model: it answers an array of components" in str(error)
            assert f"pgml.decompose('{pca}_1', features)" in error.diag.message_hint
        error = db.error("SELECT pgml.decompose(%s, '[1, 2, 3]'::jsonb)", (kmeans,))
        assert error.pgcode == "22023" and f'model "{kmeans}" is not a decomposition model' in str(error)
        error = db.error("SELECT pgml.predict_proba(%s, '[1, 2, 3]'::jsonb)", (kmeans,))
        assert "gives no probabilities" in str(error)
    finally:
        db.run("DELETE FROM pgml.model_names WHERE name = %s", (pca,))


@pytest.mark.parametrize("call,message,hint", [
    ("pgml.train('cl_points', NULL, 'random_forest', name => %s)",
     "a training run needs y_column, the column to predict", "'kmeans'"),
    ("pgml.train('cl_points', NULL, name => %s, task => 'regression')",
     "a regression run needs y_column, the column to predict", "'decomposition'"),
    ("pgml.train('cl_points', NULL, 'ridge', name => %s, task => 'clustering')",
     "algorithm 'ridge' does not support clustering", "kmeans"),
    ("pgml.train('cl_points', 'a', 'kmeans', name => %s, task => 'regression')",
     "algorithm 'kmeans' does not support regression", "'kmeans' supports only clustering"),
    ("pgml.train('cl_points', NULL, 'dbscan', name => %s)",
     "algorithm 'dbscan' cannot be trained here: scikit-learn's DBSCAN only labels the rows it was fitted on",
     "mean_shift"),
    ("pgml.train('cl_points', NULL, 'spectral', name => %s, task => 'clustering')",
     "cannot assign a new row to a cluster", "affinity_propagation"),
    ("pgml.train('cl_points', NULL, 'pca', name => %s, search => 'grid', "
     "search_params => '{\"n_components\": [1, 2]}')",
     "hyperparameter search is not available for decomposition", '"n_components": 0.95'),
    ("pgml.train('cl_points', NULL, 'kmeans', name => %s, task => 'ranking')",
     'unknown task "ranking"', "clustering or decomposition"),
])
def test_clear_errors(db: Session, blobs: list, name: str, call: str, message: str, hint: str) -> None:
    error = db.error(f"SELECT {call}", (name,))
    assert message in str(error), str(error)
    assert hint in error.diag.message_hint
    assert not db.rows("SELECT 1 FROM pgml.models WHERE name = %s", (name,))


def test_the_task_alone_chooses_kmeans_or_pca(db: Session, blobs: list, name: str) -> None:
    db.one("SELECT pgml.train('cl_points', NULL, name => %s, task => 'clustering')", (name,))
    db.one("SELECT pgml.train('cl_points', NULL, name => %s, task => 'decomposition')", (name,))
    assert db.rows("SELECT algorithm, task FROM pgml.models WHERE name = %s ORDER BY version", (name,)) == [
        ("kmeans", "clustering"), ("pca", "decomposition")]


def test_a_training_run_needs_a_relation(db: Session) -> None:
    error = db.error("INSERT INTO pgml.training_runs (y_column, algorithm) VALUES (NULL, 'kmeans')")
    assert error.pgcode == "22023" and "a training run needs a relation" in str(error)


def test_search_picks_the_number_of_clusters_by_silhouette(db: Session, blobs: list, name: str) -> None:
    db.one("SELECT pgml.train('cl_points', NULL, 'kmeans', name => %s, search => 'grid', "
           "search_params => '{\"n_clusters\": [2, 3, 6]}')", (name,))
    hyperparams, metrics = db.one("SELECT hyperparams, metrics FROM pgml.models WHERE name = %s", (name,))
    assert hyperparams["n_clusters"] == 3 and metrics["n_clusters"] == 3


def test_the_best_silhouette_is_deployed(db: Session, blobs: list, name: str) -> None:
    def train(k: int) -> None:
        db.one("SELECT pgml.train('cl_points', NULL, 'kmeans', name => %s, hyperparams => %s)",
               (name, '{"n_clusters": %d}' % k))

    def deployed() -> int:
        return db.one("SELECT version FROM pgml.deployed_models WHERE name = %s", (name,))

    train(6)
    train(3)  # a better silhouette on the same data: deployed
    assert deployed() == 2
    train(5)  # worse: kept, not deployed
    assert deployed() == 2
    db.one("SELECT pgml.deploy(%s, 'most_recent')", (name,))
    assert deployed() == 3
    assert db.one("SELECT pgml.deploy(%s, 'best_score')", (name,)) == f"{name}_2"
    assert deployed() == 2


def test_a_cold_backend_serves_them(db: Session, blobs: list, name: str) -> None:
    pca = f"{name}_pca"
    db.one("SELECT pgml.train('cl_points', NULL, 'kmeans', name => %s, hyperparams => '{\"n_clusters\": 3}')",
           (name,))
    db.one("SELECT pgml.train('cl_points', NULL, 'pca', name => %s, hyperparams => '{\"n_components\": 2}')", (pca,))
    try:
        expected = (db.one("SELECT pgml.score(%s, '[10, 5, 3000]'::jsonb)", (name,)),
                    db.one("SELECT pgml.decompose(%s, '[10, 5, 3000]'::jsonb)", (pca,)))
        cold = Session()
        try:
            assert cold.one("SELECT pgml.score(%s, '[10, 5, 3000]'::jsonb)", (name,)) == expected[0]
            assert cold.one("SELECT pgml.decompose(%s, '[10, 5, 3000]'::jsonb)", (pca,)) == expected[1]
            if LOCAL_ROOT:  # both answered by their fast paths: the backend never loaded scikit-learn
                with open(f"/proc/{cold.pid()}/maps") as maps:
                    assert "sklearn" not in maps.read()
        finally:
            cold.close()
    finally:
        db.run("DELETE FROM pgml.model_names WHERE name = %s", (pca,))


def test_a_row_the_fast_path_cannot_decide_is_scikit_learns(db: Session, name: str) -> None:
    # Two centroids and a row as far from each: scikit-learn decides (the first), not the fast path.
    make_table(db, "cl_two", "x float8, y float8", [(-1.0, 0.0)] * 5 + [(1.0, 0.0)] * 5)
    db.one("SELECT pgml.train('cl_two', NULL, 'kmeans', name => %s, test_size => 0.1, "
           "hyperparams => '{\"n_clusters\": 2}', preprocess => '{\"x\": {\"scale\": \"none\"}, "
           "\"y\": {\"scale\": \"none\"}}')", (name,))
    model = _stored(db, name)
    assert db.one("SELECT pgml.score(%s, '[0, 3]'::jsonb)", (name,)) == float(model.estimator.predict([[0.0, 3.0]])[0])


@pytest.fixture
def older(database: None) -> Iterator[psycopg2.extensions.connection]:
    """A database whose pgml_fdw objects are 0.4.0's (served by this, newer, package)."""
    dbname = f"{DATABASE}_cl_older"
    admin = psycopg2.connect(dsn(MAINTENANCE))
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS {dbname} WITH (FORCE)")
        cur.execute(f"CREATE DATABASE {dbname}")
    conn = psycopg2.connect(dsn(dbname))
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("CREATE EXTENSION pgml_fdw VERSION '0.4.0' CASCADE")
            cur.execute("CREATE TABLE points (a float8, b float8, grp int)")
            cur.executemany("INSERT INTO points VALUES (%s, %s, %s)", [row[1:3] + row[4:] for row in _blobs(60)])
        yield conn
    finally:
        conn.close()
        with admin.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS {dbname} WITH (FORCE)")
        admin.close()


def test_objects_older_than_the_package_are_named(older: psycopg2.extensions.connection) -> None:
    def run(query: str) -> Any:
        with older.cursor() as cur:
            cur.execute(query)
            return cur.fetchone()[0] if cur.description else None

    run("SELECT pgml.train('points', 'grp', 'linear', name => 'line')")
    with pytest.raises(psycopg2.Error) as caught:
        run("SELECT pgml.train('points', 'grp', 'kmeans', name => 'groups')")
    assert "this database's pgml_fdw objects are older than its Python package and cannot store clustering models" \
        in str(caught.value)
    assert caught.value.diag.message_hint == "Update them: ALTER EXTENSION pgml_fdw UPDATE (models are kept)."
    prediction = run("SELECT pgml.score('line', '[1, 2]'::jsonb)")
    run("ALTER EXTENSION pgml_fdw UPDATE")
    assert run("SELECT pgml.score('line', '[1, 2]'::jsonb)") == prediction
    assert run("SELECT pgml.train('points', NULL, 'kmeans', name => 'groups', "
               "hyperparams => '{\"n_clusters\": 3}')") == "groups_1"
    assert run("SELECT y_column IS NULL AND task = 'clustering' FROM pgml.models WHERE name = 'groups'")
