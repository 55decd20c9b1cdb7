"""Clustering and decomposition without a server: training without y, metrics, the fast paths
against scikit-learn, and storing the models."""
from __future__ import annotations

import json
from typing import Any, Dict, Optional

import numpy as np
import pytest
from sklearn import metrics as skm
from sklearn.cluster import BisectingKMeans, KMeans, MiniBatchKMeans
from sklearn.datasets import make_blobs
from sklearn.decomposition import PCA

from pgml_fdw import algorithms, metrics, model_format, single_row, training
from pgml_fdw.columns import FeatureColumn
from pgml_fdw.errors import PgmlError
from pgml_fdw.single_row import CentroidPredictor, NeedsEstimator, ProjectionPredictor

COLUMNS = [FeatureColumn("a", "double precision", "number", "float8"),
           FeatureColumn("b", "double precision", "number", "float8"),
           FeatureColumn("c", "double precision", "number", "float8")]


def _blobs(n: int = 300, seed: int = 0) -> tuple:
    X, truth = make_blobs(n_samples=n, centers=[[0, 0, 0], [8, 8, 0], [-8, 8, 4]], cluster_std=0.6,
                          random_state=seed)
    return X, truth


def _options(algorithm: str, y_column: Optional[str] = None, **extra: Any) -> training.TrainingOptions:
    row: Dict[str, Any] = {"id": "m_1", "name": "m", "version": 1, "relation": "public.blobs",
                           "y_column": y_column, "trained_by": "app", "algorithm": algorithm, **extra}
    return training.TrainingOptions.from_row(row)


def _train(algorithm: str, X: np.ndarray, truth: Optional[np.ndarray] = None, **extra: Any) -> training.TrainingResult:
    data = {c.name: X[:, i].copy() for i, c in enumerate(COLUMNS)}
    y = None if truth is None else FeatureColumn("group", "integer", "number", "int4")
    y_raw = None if truth is None else truth.astype(str).astype(object)
    return training.train(_options(algorithm, None if truth is None else "group", **extra), y, COLUMNS, data, y_raw)


# -- choosing the task ---------------------------------------------------------------------------------

def test_an_unsupervised_algorithm_gives_the_task() -> None:
    assert _options("kmeans").resolve_task(None) == "clustering"
    assert _options("pca").resolve_task(None) == "decomposition"
    assert _options("ridge", task="clustering").resolve_task(None) == "clustering"  # lookup refuses later


def test_linear_the_default_stands_for_the_tasks_default() -> None:
    assert _options("linear", task="clustering").algorithm == "kmeans"
    assert _options(" Linear ", task="decomposition").algorithm == "pca"
    assert _options("linear", task="regression").algorithm == "linear"


def test_without_y_column_a_supervised_run_says_what_to_do() -> None:
    with pytest.raises(PgmlError) as caught:
        _options("random_forest").resolve_task(None)
    assert caught.value.message == "a training run needs y_column, the column to predict"
    assert "'kmeans'" in caught.value.hint


def test_a_clusterer_without_predict_is_refused_with_the_reason() -> None:
    for name in ("dbscan", "optics", "spectral", "agglomerative", "feature_agglomeration"):
        with pytest.raises(PgmlError) as caught:
            _options(name).resolve_task(None)
        assert "cannot assign a new row to a cluster" in caught.value.message
        assert caught.value.sqlstate == "0A000"
        assert "kmeans" in caught.value.hint and "gaussian_mixture" in caught.value.hint


def test_a_clusterer_for_another_task_is_refused() -> None:
    with pytest.raises(PgmlError, match="algorithm 'kmeans' does not support regression"):
        algorithms.lookup("kmeans", "regression")
    with pytest.raises(PgmlError, match="algorithm 'linear' does not support clustering"):
        algorithms.lookup("linear", "clustering")


# -- training ----------------------------------------------------------------------------------------

def test_kmeans_recovers_separated_clusters_and_measures_them() -> None:
    X, truth = _blobs()
    result = _train("kmeans", X, truth, hyperparams='{"n_clusters": 3}', test_sampling="last")
    m = result.metrics
    assert m["n_clusters"] == 3 and m["adjusted_rand"] == 1.0 and m["normalized_mutual_info"] == 1.0
    # The metrics of the held-out rows (the last quarter), as scikit-learn measures them.
    X_test = X[-75:]
    encoded = result.model.encoder.transform({c.name: X_test[:, i].copy() for i, c in enumerate(COLUMNS)})
    labels = result.model.estimator.predict(encoded)  # standardized: the model's own encoding
    assert m["silhouette"] == pytest.approx(skm.silhouette_score(encoded, labels), abs=1e-12)
    assert m["calinski_harabasz"] == pytest.approx(skm.calinski_harabasz_score(encoded, labels), rel=1e-12)
    assert m["davies_bouldin"] == pytest.approx(skm.davies_bouldin_score(encoded, labels), rel=1e-12)
    assert result.details["importance"] is None and result.details["classes"] is None
    assert result.model.task == "clustering" and result.model.predictor is not None


def test_a_cluster_is_a_number_and_its_text() -> None:
    X, _ = _blobs()
    model = _train("kmeans", X, hyperparams='{"n_clusters": 3}').model
    expected = int(model.estimator.predict(model.encoder.transform({"a": X[:1, 0], "b": X[:1, 1], "c": X[:1, 2]}))[0])
    assert model.predict_row({"a": X[0, 0], "b": X[0, 1], "c": X[0, 2]}) == (float(expected), str(expected), None)


def test_gaussian_mixture_gives_each_clusters_probability() -> None:
    X, _ = _blobs()
    model = _train("gaussian_mixture", X, hyperparams='{"n_components": 3}').model
    prediction, label, probabilities = model.predict_row(list(X[5]))
    assert probabilities is not None and set(probabilities) == {"0", "1", "2"}
    assert probabilities[label] == max(probabilities.values()) and prediction == float(label)
    many = model.predict_arrays({c.name: X[:10, i].copy() for i, c in enumerate(COLUMNS)})
    assert many[5] == (prediction, label, pytest.approx(probabilities))


@pytest.mark.parametrize("name", ["mini_batch_kmeans", "bisecting_kmeans", "birch", "mean_shift",
                                  "affinity_propagation"])
def test_every_clusterer_answers_as_its_estimator(name: str) -> None:
    X, truth = _blobs(150)
    params = '{"n_clusters": 3}' if name in ("mini_batch_kmeans", "bisecting_kmeans", "birch") else None
    result = _train(name, X, truth, hyperparams=params)
    assert result.metrics["n_clusters"] == 3 and result.metrics["adjusted_rand"] == 1.0
    model = result.model
    encoded = model.encoder.transform({c.name: X[:, i].copy() for i, c in enumerate(COLUMNS)})
    expected = model.estimator.predict(encoded)
    assert [model.predict_row(list(row))[0] for row in X] == [float(v) for v in expected]


def test_pca_components_and_explained_variance() -> None:
    X, _ = _blobs()
    result = _train("pca", X, hyperparams='{"n_components": 2}')
    estimator, model = result.model.estimator, result.model
    ratios = estimator.explained_variance_ratio_
    assert result.metrics == {"cumulative_explained_variance": pytest.approx(ratios.sum(), abs=1e-15),
                              "explained_variance_ratio": pytest.approx(list(ratios), abs=1e-15), "n_components": 2}
    encoded = model.encoder.transform({c.name: X[:, i].copy() for i, c in enumerate(COLUMNS)})
    expected = estimator.transform(encoded)
    got = np.array([model.decompose_row(list(row)) for row in X])
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(model.decompose_arrays({c.name: X[:, i].copy() for i, c in enumerate(COLUMNS)}),
                               expected, rtol=0, atol=0)
    with pytest.raises(PgmlError, match="is a decomposition model: it answers an array of components") as caught:
        model.predict_row(list(X[0]))
    assert "pgml.decompose" in caught.value.hint
    with pytest.raises(PgmlError, match="is a decomposition model"):
        model.predict_arrays({c.name: X[:, i].copy() for i, c in enumerate(COLUMNS)})


def test_search_for_clustering_scores_the_silhouette() -> None:
    X, _ = _blobs(150)
    result = _train("kmeans", X, search="grid", search_params='{"n_clusters": [2, 3, 5]}')
    search = result.details["search"]
    assert search["best_params"] == {"n_clusters": 3}
    assert len(search["candidates"]) == 3 and all(c["mean_score"] <= search["best_score"] for c in search["candidates"])
    assert result.metrics["n_clusters"] == 3


def test_search_for_decomposition_is_refused_with_an_alternative() -> None:
    X, _ = _blobs(60)
    with pytest.raises(PgmlError, match="hyperparameter search is not available for decomposition") as caught:
        _train("pca", X, search="grid", search_params='{"n_components": [1, 2]}')
    assert '"n_components": 0.95' in caught.value.hint


def test_affinity_propagation_refuses_more_rows_than_its_matrices_hold() -> None:
    algorithm = algorithms.lookup("affinity_propagation", "clustering")
    training.check_pairwise_size(algorithm, 1000, budget=4 * 8 * 1000 * 1000)
    with pytest.raises(PgmlError) as caught:
        training.check_pairwise_size(algorithm, 1001, budget=4 * 8 * 1000 * 1000)
    assert caught.value.sqlstate == "53200" and "at most about 1,000 training rows" in caught.value.hint
    training.check_pairwise_size(algorithms.lookup("kmeans", "clustering"), 10**6, budget=1)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_a_clusterer_that_finds_no_cluster_is_an_error() -> None:
    X, _ = _blobs(60)
    with pytest.raises(PgmlError, match="did not converge: it found no clusters it could keep"):
        _train("affinity_propagation", X, hyperparams='{"max_iter": 1, "convergence_iter": 1}')


def test_a_pca_without_components_is_an_error() -> None:
    X, _ = _blobs(30)
    with pytest.raises(PgmlError, match="algorithm 'pca' kept no components"):
        _train("pca", X, hyperparams='{"n_components": 0}')


def test_kmeans_with_more_clusters_than_rows_says_so() -> None:
    X, _ = _blobs(8)
    with pytest.raises(PgmlError, match="cannot train with these hyperparameters: n_samples=6 should be >= n_clusters"):
        _train("kmeans", X, hyperparams='{"n_clusters": 7}')


# -- metrics -------------------------------------------------------------------------------------------

def test_silhouette_is_sampled_beyond_its_row_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    X, truth = _blobs(300)
    assert metrics.silhouette(X, truth) == pytest.approx(skm.silhouette_score(X, truth), abs=1e-15)
    monkeypatch.setattr(metrics, "SILHOUETTE_ROWS", 100)
    assert metrics.silhouette(X, truth) == skm.silhouette_score(X, truth, sample_size=100, random_state=0)


def test_metrics_of_a_single_cluster_are_none() -> None:
    X, _ = _blobs(30)
    m = metrics.clustering(X, np.zeros(30, dtype=int), n_clusters=1)
    assert m == {"silhouette": None, "calinski_harabasz": None, "davies_bouldin": None, "n_clusters": 1}


# -- fast paths -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("cls", [KMeans, MiniBatchKMeans])
def test_the_nearest_centroid_is_scikit_learns(cls: type) -> None:
    rng = np.random.default_rng(1)
    X = rng.normal(size=(400, 6)) * rng.uniform(0.1, 100, size=6)
    estimator = cls(n_clusters=9, random_state=0, n_init=3).fit(X)
    predictor = single_row.fast_predictor(estimator)
    assert isinstance(predictor, CentroidPredictor)
    rows = rng.normal(size=(2000, 6)) * X.std(axis=0)
    expected = estimator.predict(rows)
    handed_over = 0
    for row, label in zip(rows.tolist(), expected):
        try:
            assert predictor.answer(row) == (label, None)
        except NeedsEstimator:
            handed_over += 1
    assert handed_over < 10  # only near ties go to the estimator


def test_a_tie_between_centroids_goes_to_the_estimator() -> None:
    estimator = KMeans(n_clusters=2, n_init=1, random_state=0).fit(np.array([[-1.0, 0.0], [1.0, 0.0]]))
    predictor = single_row.fast_predictor(estimator)
    assert predictor is not None
    with pytest.raises(NeedsEstimator):
        predictor.answer([0.0, 5.0])  # as far from both
    assert predictor.answer([0.25, 5.0]) == (int(estimator.predict([[0.25, 5.0]])[0]), None)
    for bad in ([float("nan"), 0.0], [float("inf"), 0.0], [0.0]):
        with pytest.raises(NeedsEstimator):
            predictor.answer(bad)


def test_bisecting_kmeans_has_no_fast_path() -> None:
    X, _ = _blobs(60)
    assert single_row.fast_predictor(BisectingKMeans(n_clusters=3, random_state=0).fit(X)) is None


@pytest.mark.parametrize("whiten", [False, True])
def test_the_projection_is_scikit_learns(whiten: bool) -> None:
    rng = np.random.default_rng(2)
    X = rng.normal(size=(300, 7)) @ rng.normal(size=(7, 7)) + rng.uniform(-50, 50, size=7)
    estimator = PCA(n_components=4, whiten=whiten, random_state=0).fit(X)
    predictor = single_row.fast_predictor(estimator)
    assert isinstance(predictor, ProjectionPredictor)
    rows = rng.normal(size=(200, 7)) * 10
    got = np.array([predictor.transform(row) for row in rows.tolist()])
    np.testing.assert_allclose(got, estimator.transform(rows), rtol=1e-12, atol=1e-12)
    with pytest.raises(NeedsEstimator):
        predictor.transform([float("nan")] * 7)


def test_fast_paths_survive_their_storage() -> None:
    X, _ = _blobs(120)
    for estimator in (KMeans(n_clusters=3, random_state=0).fit(X), PCA(2, whiten=True).fit(X)):
        predictor = single_row.fast_predictor(estimator)
        assert predictor is not None
        meta, arrays = predictor.to_data()
        stored = {name: single_row.array_from(a.typecode, single_row.array_bytes(a)) for name, a in arrays.items()}
        again = single_row.from_data(meta, stored)
        row = [0.3, 7.1, -2.0]
        if isinstance(estimator, PCA):
            assert again.transform(row) == predictor.transform(row)
        else:
            assert again.answer(row) == predictor.answer(row)


# -- storage ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,params", [("kmeans", '{"n_clusters": 3}'), ("pca", '{"n_components": 2}'),
                                         ("gaussian_mixture", '{"n_components": 3}')])
def test_models_are_stored_in_format_3_and_load_with_their_fast_path(name: str, params: str) -> None:
    X, _ = _blobs(120)
    result = _train(name, X, hyperparams=params)
    blob = model_format.dump(result.model, result.probe)
    header = json.loads(blob[12:12 + int.from_bytes(blob[8:12], "big")])
    assert header["format"] == 3
    loaded = model_format.load(blob, "m")
    assert loaded.task == result.model.task
    assert (loaded.predictor is None) == (name == "gaussian_mixture")
    row = list(X[3])
    if name == "pca":
        assert loaded.decompose_row(row) == result.model.decompose_row(row)
    else:
        assert loaded.predict_row(row) == result.model.predict_row(row)
    # Under other versions the loader checks the probe: the fast path (or the estimator) answers it again.
    probe = header["probe"]
    if loaded.predictor is not None:
        now = model_format._predictor_answers(loaded, probe["rows"])
    else:
        now = model_format._answers(loaded.estimator, np.asarray(probe["rows"]), loaded.task)
    model_format._check_probe(loaded, probe, "m", now)


def test_a_supervised_model_keeps_format_2() -> None:
    X, truth = _blobs(80)
    data = {c.name: X[:, i].copy() for i, c in enumerate(COLUMNS)}
    options = training.TrainingOptions.from_row({"id": "m_1", "name": "m", "version": 1, "relation": "r",
                                                 "y_column": "g", "trained_by": "app", "algorithm": "linear"})
    y = FeatureColumn("g", "double precision", "number", "float8")
    result = training.train(options, y, COLUMNS, data, truth.astype(np.float64))
    blob = model_format.dump(result.model, result.probe)
    assert json.loads(blob[12:12 + int.from_bytes(blob[8:12], "big")])["format"] == 2


def test_a_probe_row_near_a_tie_does_not_fail_the_fast_paths_check(monkeypatch: pytest.MonkeyPatch) -> None:
    X, _ = _blobs(120)
    result = _train("kmeans", X, hyperparams='{"n_clusters": 3}')
    centers = result.model.estimator.cluster_centers_
    tie = (centers[0] + centers[1]) / 2  # as far from the two (to rounding): the estimator decides
    predictor = result.model.predictor
    assert predictor is not None
    with pytest.raises(NeedsEstimator):
        predictor.answer(tie.tolist())
    blob = model_format.dump(result.model, np.vstack([result.probe, tie]))
    # Loaded under another Python or pgml_fdw, the fast path answers the probe again, but that row.
    monkeypatch.setattr(model_format.versions, "serving", lambda: {"python": "0", "pgml_fdw": "0"})
    loaded = model_format.load(blob, "m")
    assert loaded.predict_row(list(X[0])) == result.model.predict_row(list(X[0]))
    # A fast path that answered differently would be refused.
    header = json.loads(blob[12:12 + int.from_bytes(blob[8:12], "big")])
    header["probe"]["predict"][0] += 1
    with pytest.raises(PgmlError, match="it predicts differently under these versions"):
        model_format._check_probe(loaded, header["probe"], "m",
                                  model_format._predictor_answers(loaded, header["probe"]["rows"]))
