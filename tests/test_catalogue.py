"""Issue 12's catalogue from SQL: every new algorithm trains and predicts correctly, and xgboost,
LightGBM and CatBoost match their own libraries on the same split, stop early, give probabilities and
importance, search, refuse bad hyperparameters by name and load in a fresh backend."""
from __future__ import annotations

import json
from typing import Any, Dict, Tuple

import numpy as np
import pytest
from sklearn import datasets
from sklearn.metrics import f1_score, r2_score

from conftest import Session, make_table
from pgml_fdw import model_format, training

BOOSTING = ("xgboost", "lightgbm", "catboost")
# A few rounds, as the tests' data is small and two cores are shared.
ROUNDS = {"xgboost": "n_estimators", "xgboost_random_forest": "n_estimators", "lightgbm": "n_estimators",
          "catboost": "iterations"}


def _features(point: Tuple[float, ...]) -> str:
    return json.dumps(list(point))


def _predict(db: Session, model: str, point: Tuple[float, ...]) -> Tuple[Any, ...]:
    return db.one("SELECT prediction, label, probabilities FROM pgml.predictions WHERE model = %s AND features = %s",
                  (model, _features(point)))


_RNG = np.random.default_rng(12)
_X = _RNG.uniform(-1, 1, (300, 3))
_Y = 2 * _X[:, 0] - _X[:, 1]


@pytest.fixture(scope="module")
def tables(database: None) -> None:
    """Small exact datasets: y = 2a - b (+ outliers in alg_outliers; less its mean in alg_centered),
    and two classes split by a = b with a margin; c is noise everywhere."""
    db = Session()
    rng, x, y = _RNG, _X, _Y
    make_table(db, "alg_linear", "a float8, b float8, c float8, y float8",
               [(*map(float, r), float(t)) for r, t in zip(x, y)])
    make_table(db, "alg_centered", "a float8, b float8, c float8, y float8",
               [(*map(float, r), float(t)) for r, t in zip(x, y - y.mean())])
    outliers = y + np.where(rng.uniform(size=len(y)) < 0.1, 30.0, 0.0)  # a tenth of the rows far above
    make_table(db, "alg_outliers", "a float8, b float8, c float8, y float8",
               [(*map(float, r), float(t)) for r, t in zip(x, outliers)])
    clear = np.abs(x[:, 0] - x[:, 1]) > 0.15
    make_table(db, "alg_classes", "a float8, b float8, c float8, y text",
               [(*map(float, r), "hi" if r[0] > r[1] else "lo") for r in x[clear]])
    db.close()


# name, table, hyperparams, tolerance at the point (0.5, -0.5, 0.2), where y = 1.5 (alg_centered:
# 1.5 less the mean).
REGRESSORS = [
    ("stochastic_gradient_descent", "alg_linear", {}, 0.05),
    ("passive_aggressive", "alg_linear", {}, 0.15),
    ("least_angle", "alg_linear", {}, 1e-6),
    ("lasso_least_angle", "alg_linear", {"alpha": 0.001}, 0.02),  # the default alpha, 1, is strong for this y
    ("orthogonal_matching_pursuit", "alg_linear", {"n_nonzero_coefs": 2}, 1e-6),  # default: a tenth of 3 features
    ("automatic_relevance_determination", "alg_linear", {}, 0.01),
    ("kernel_ridge", "alg_centered", {}, 0.02),  # no intercept: y centered on zero
    ("gaussian_process", "alg_linear", {}, 0.05),
    ("nu_svm", "alg_linear", {}, 0.2),
    # Robust to the tenth of the rows 30 above the line, where least squares is pulled up by about 3.
    ("ransac", "alg_outliers", {}, 1e-6),
    ("theil_sen", "alg_outliers", {}, 0.1),
    ("quantile", "alg_outliers", {}, 0.05),
]


@pytest.mark.parametrize("algorithm, table, hyperparams, tolerance", REGRESSORS, ids=[r[0] for r in REGRESSORS])
def test_regressors_predict_the_line(db: Session, tables: None, name: str, algorithm: str, table: str,
                                     hyperparams: Dict[str, Any], tolerance: float) -> None:
    model = db.one("SELECT pgml.train(%s, 'y', %s, name => %s, hyperparams => %s)",
                   (table, algorithm, name, json.dumps(hyperparams)))
    prediction, label, probabilities = _predict(db, model, (0.5, -0.5, 0.2))
    assert prediction == pytest.approx(1.5 - (_Y.mean() if table == "alg_centered" else 0), abs=tolerance)
    assert label is None and probabilities is None
    assert db.one("SELECT algorithm FROM pgml.models WHERE id = %s", (model,)) == algorithm


def test_least_squares_is_pulled_by_the_outliers_the_robust_ones_ignore(db: Session, tables: None, name: str) -> None:
    model = db.one("SELECT pgml.train('alg_outliers', 'y', 'linear', name => %s)", (name,))
    assert _predict(db, model, (0.5, -0.5, 0.2))[0] > 1.5 + 1  # what ransac, theil_sen and quantile avoid


CLASSIFIERS = ["stochastic_gradient_descent", "perceptron", "passive_aggressive", "gaussian_process", "nu_svm"]


@pytest.mark.parametrize("algorithm", CLASSIFIERS)
def test_classifiers_tell_the_sides_apart(db: Session, tables: None, name: str, algorithm: str) -> None:
    model = db.one("SELECT pgml.train('alg_classes', 'y', %s, name => %s)", (algorithm, name))
    _, high, high_proba = _predict(db, model, (0.8, -0.8, 0.0))
    _, low, low_proba = _predict(db, model, (-0.8, 0.8, 0.0))
    assert (high, low) == ("hi", "lo")
    assert db.one("SELECT (metrics->>'accuracy')::float8 FROM pgml.models WHERE id = %s", (model,)) >= 0.95
    if algorithm in ("gaussian_process", "nu_svm"):  # the others are linear models without probabilities
        assert high_proba["hi"] > 0.5 and low_proba["lo"] > 0.5
        assert sum(high_proba.values()) == pytest.approx(1, abs=1e-9)
    else:
        assert high_proba is None


# -- xgboost, LightGBM, CatBoost ------------------------------------------------------------------

REGRESSION_ROWS, CLASSIFICATION_ROWS = 800, 900


@pytest.fixture(scope="module")
def boosting_data(database: None) -> Dict[str, Tuple[np.ndarray, np.ndarray]]:
    """Friedman's nonlinear regression (5 informative features of 6) and three classes."""
    db = Session()
    X, y = datasets.make_friedman1(REGRESSION_ROWS, n_features=6, noise=0.5, random_state=0)
    make_table(db, "alg_friedman", ", ".join(f"f{i} float8" for i in range(6)) + ", y float8",
               [(*map(float, r), float(t)) for r, t in zip(X, y)])
    # Unshuffled, the 4 informative features come first (f0..f3) and two noise ones last; the rows
    # are then shuffled, the columns not.
    Xc, yc = datasets.make_classification(CLASSIFICATION_ROWS, n_features=6, n_informative=4, n_redundant=0,
                                          n_classes=3, shuffle=False, random_state=0)
    order = np.random.default_rng(0).permutation(CLASSIFICATION_ROWS)
    Xc, yc = Xc[order], yc[order]
    make_table(db, "alg_three", ", ".join(f"f{i} float8" for i in range(6)) + ", y text",
               [(*map(float, r), f"k{t}") for r, t in zip(Xc, yc)])
    db.close()
    return {"regression": (X, y), "classification": (Xc, yc)}


def _library_estimator(library: str, task: str, rounds: int) -> Any:
    """The library's own estimator, as a user of it would write it: the catalogue's documented
    defaults (seed, one thread, quiet) and the same rounds."""
    if library.startswith("xgboost"):
        import xgboost

        if library == "xgboost_random_forest":
            cls = xgboost.XGBRFRegressor if task == "regression" else xgboost.XGBRFClassifier
        else:
            cls = xgboost.XGBRegressor if task == "regression" else xgboost.XGBClassifier
        return cls(n_estimators=rounds, random_state=0, n_jobs=1, verbosity=0)
    if library == "lightgbm":
        import lightgbm

        cls = lightgbm.LGBMRegressor if task == "regression" else lightgbm.LGBMClassifier
        return cls(n_estimators=rounds, random_state=0, n_jobs=1, verbose=-1)
    import catboost

    cls = catboost.CatBoostRegressor if task == "regression" else catboost.CatBoostClassifier
    return cls(iterations=rounds, random_state=0, thread_count=1, logging_level="Silent", allow_writing_files=False)


@pytest.mark.parametrize("task", ["regression", "classification"])
@pytest.mark.parametrize("library", [*BOOSTING, "xgboost_random_forest"])
def test_quality_matches_the_library_on_the_same_split(db: Session, boosting_data: Dict[str, Any], name: str,
                                                       library: str, task: str) -> None:
    table = "alg_friedman" if task == "regression" else "alg_three"
    model = db.one("SELECT pgml.train(%s, 'y', %s, name => %s, hyperparams => %s)",
                   (table, library, name, json.dumps({ROUNDS[library]: 60})))
    measured = db.one("SELECT metrics FROM pgml.models WHERE id = %s", (model,))
    X, y = boosting_data[task]
    # The rows as the training read them (the table's order) and its split: seed 0, stratified by class.
    train, test = training.split(len(y), 0.25, "random", y if task == "classification" else None)
    estimator = _library_estimator(library, task, 60).fit(X[train], y[train])
    predicted = np.ravel(estimator.predict(X[test]))
    if task == "regression":
        reference, ours = r2_score(y[test], predicted), measured["r2"]
        assert reference > 0.6
    else:
        reference, ours = f1_score(y[test], predicted.astype(int), average="macro"), measured["f1"]
        assert reference > 0.7
    assert ours >= reference * 0.98, (ours, reference)
    assert ours == pytest.approx(reference, abs=1e-9)  # the same estimator on the same rows: the same model


def _stored(db: Session, model: str) -> Any:
    """The model's estimator as pgml_fdw stored it."""
    blob = db.one("SELECT estimator FROM pgml.model_estimators WHERE model_id = %s", (model,))
    return model_format.load(bytes(blob), model).estimator


EARLY = {"xgboost": "early_stopping_rounds", "lightgbm": "early_stopping_round", "catboost": "early_stopping_rounds"}


@pytest.mark.parametrize("library", BOOSTING)
def test_early_stopping_stops_early_and_predicts_with_the_best_iteration(
        db: Session, boosting_data: Dict[str, Any], name: str, library: str) -> None:
    # A high learning rate over noisy data: the validation loss turns up after a few dozen rounds.
    hyperparams = {ROUNDS[library]: 1000, "learning_rate": 0.5, EARLY[library]: 5}
    model = db.one("SELECT pgml.train('alg_friedman', 'y', %s, name => %s, hyperparams => %s)",
                   (library, name, json.dumps(hyperparams)))
    estimator = _stored(db, model)
    assert db.one("SELECT hyperparams->>%s FROM pgml.models WHERE id = %s", (EARLY[library], model)) == "5"
    X, _ = boosting_data["regression"]
    rows = X[:20]
    if library == "xgboost":
        best, built = estimator.best_iteration + 1, estimator.get_booster().num_boosted_rounds()
        assert best < built < 1000  # XGBoost keeps the rounds after the best, and predicts without them
        best_answers = estimator.predict(rows, iteration_range=(0, best))
        assert not np.allclose(best_answers, estimator.predict(rows, iteration_range=(0, built)))
    elif library == "lightgbm":
        best, built = estimator.best_iteration_, estimator.booster_.num_trees()
        assert best == built < 1000  # LightGBM keeps the trees up to the best iteration only
        best_answers = estimator.predict(rows, num_iteration=best)
    else:
        best, built = estimator.best_iteration_ + 1, estimator.tree_count_
        assert best == built < 1000  # CatBoost too (use_best_model)
        best_answers = estimator.predict(rows, ntree_end=best)
    served = [_predict(db, model, tuple(map(float, row)))[0] for row in rows[:5]]
    assert served == pytest.approx(list(map(float, best_answers[:5])), rel=1e-6)


@pytest.mark.parametrize("library", BOOSTING)
def test_classification_probabilities_importance_and_a_fresh_backend(
        db: Session, boosting_data: Dict[str, Any], name: str, library: str) -> None:
    model = db.one("SELECT pgml.train('alg_three', 'y', %s, name => %s, hyperparams => %s)",
                   (library, name, json.dumps({ROUNDS[library]: 30})))
    X, y = boosting_data["classification"]
    points = [tuple(map(float, X[i])) for i in range(6)]
    answers = [_predict(db, model, p) for p in points]
    for _, label, probabilities in answers:
        assert set(probabilities) == {"k0", "k1", "k2"}
        assert sum(probabilities.values()) == pytest.approx(1, abs=1e-6)
        assert label == max(probabilities, key=probabilities.get)
    assert sum(label == f"k{t}" for (_, label, _), t in zip(answers, y[:6])) >= 5  # mostly right, on rows it saw
    proba = db.one("SELECT pgml.predict_proba(%s, %s::jsonb)", (model, _features(points[0])))
    assert proba == pytest.approx(answers[0][2], rel=1e-6)
    importance = dict(db.rows("SELECT feature, importance FROM pgml.features WHERE model = %s", (model,)))
    method = db.one("SELECT DISTINCT importance_method FROM pgml.features WHERE model = %s", (model,))
    assert method == "impurity" and len(importance) == 6 and all(v is not None and v >= 0 for v in importance.values())
    # The two noise features count least.
    assert min(importance["f0"], importance["f1"], importance["f2"], importance["f3"]) > \
        max(importance["f4"], importance["f5"])
    versions = db.one("SELECT versions FROM pgml.models WHERE id = %s", (model,))
    import importlib

    assert versions[library] == importlib.import_module(library).__version__
    # A new connection loads the model from its stored bytes (unpickling the library's estimator).
    fresh = Session()
    try:
        again = [fresh.one("SELECT label, probabilities FROM pgml.predictions WHERE model = %s AND features = %s",
                           (model, _features(p))) for p in points]
    finally:
        fresh.close()
    assert [a[0] for a in again] == [a[1] for a in answers]
    for (_, probabilities), (_, _, before) in zip(again, answers):
        assert probabilities == pytest.approx(before, rel=1e-9)


@pytest.mark.parametrize("library, param, values", [("xgboost", "max_depth", [2, 4]),
                                                    ("lightgbm", "num_leaves", [4, 16]),
                                                    ("catboost", "depth", [2, 4])])
def test_search_picks_among_candidates(db: Session, boosting_data: Dict[str, Any], name: str, library: str,
                                       param: str, values: list) -> None:
    # With early stopping too: the candidates are cross-validated in full, the picked one stops early.
    hyperparams = {ROUNDS[library]: 40, EARLY[library]: 5}
    model = db.one("SELECT pgml.train('alg_friedman', 'y', %s, name => %s, hyperparams => %s, search => 'grid', "
                   "search_params => %s)", (library, name, json.dumps(hyperparams), json.dumps({param: values})))
    search = db.one("SELECT search FROM pgml.model_versions WHERE id = %s", (model,))
    assert [c["params"][param] for c in search["candidates"]] == values
    assert all(c["mean_score"] is not None and c["mean_score"] > 0.3 for c in search["candidates"])
    best = max(search["candidates"], key=lambda c: c["mean_score"])["params"][param]
    assert search["best_params"] == {param: best}
    assert db.one("SELECT hyperparams->>%s FROM pgml.models WHERE id = %s", (param, model)) == str(best)
    random = db.one("SELECT pgml.train('alg_friedman', 'y', %s, name => %s, hyperparams => %s, search => 'random', "
                    "search_params => %s)", (library, name, json.dumps({ROUNDS[library]: 20}),
                                             json.dumps({param: values})))
    assert len(db.one("SELECT search FROM pgml.model_versions WHERE id = %s", (random,))["candidates"]) == 2
    error = db.error("SELECT pgml.train('alg_friedman', 'y', %s, name => %s, search => 'grid', search_params => %s)",
                     (library, name, json.dumps({EARLY[library]: [5, 10]})))
    assert f"cannot vary '{EARLY[library]}'" in error.diag.message_primary


@pytest.mark.parametrize("library, hyperparams, message", [
    ("xgboost", {"max_dept": 3}, "unknown hyperparameter 'max_dept' for algorithm 'xgboost' (regression)"),
    ("xgboost", {"max_depth": -1}, "invalid value for hyperparameter 'max_depth' of algorithm 'xgboost': got -1"),
    ("xgboost", {"n_estimators": "many"}, "invalid value for hyperparameter 'n_estimators' of algorithm 'xgboost': "
     'got "many", expected a whole number of at least 1'),
    ("lightgbm", {"num_leaves": 1}, "invalid value for hyperparameter 'num_leaves' of algorithm 'lightgbm': got 1"),
    ("lightgbm", {"subsample": 2}, "invalid value for hyperparameter 'subsample' of algorithm 'lightgbm': got 2"),
    ("lightgbm", {"learning_rate": "fast"}, "invalid value for hyperparameter 'learning_rate' of algorithm "
     "'lightgbm': got \"fast\", expected a number"),
    ("catboost", {"depth": 20}, "invalid value for hyperparameter 'depth' of algorithm 'catboost': got 20"),
    ("catboost", {"random_seed": 1, "random_state": 2}, "hyperparameters 'random_seed' and 'random_state' of "
     "algorithm 'catboost' are one parameter under two names"),
    ("catboost", {"dept": 3}, "unknown hyperparameter 'dept' for algorithm 'catboost' (regression)"),
])
def test_bad_hyperparameters_are_refused_by_name(db: Session, tables: None, name: str, library: str,
                                                 hyperparams: Dict[str, Any], message: str) -> None:
    error = db.error("SELECT pgml.train('alg_linear', 'y', %s, name => %s, hyperparams => %s)",
                     (library, name, json.dumps(hyperparams)))
    assert error.diag.message_primary.startswith(message), error.diag.message_primary
    assert error.pgcode == "22023"
    if "unknown" in message:
        assert "did you mean" in error.diag.message_hint and "valid hyperparameters:" in error.diag.message_hint
    assert db.one("SELECT count(*) FROM pgml.model_versions WHERE name = %s", (name,)) == 0


@pytest.mark.parametrize("algorithm, hyperparams", [("xgboost", {"n_estimators": 20}),
                                                    ("lightgbm", {"n_estimators": 20, "n_jobs": 2})])
def test_a_backend_that_served_a_model_still_forks_workers_that_finish(
        db: Session, boosting_data: Dict[str, Any], name: str, algorithm: str, hyperparams: Dict[str, Any]) -> None:
    # OpenMP is not fork-safe: a backend whose predictions ran it on several threads would fork
    # batch-scoring and training workers that wait forever. The timeout turns a hang into a failure.
    model = db.one("SELECT pgml.train('alg_friedman', 'y', %s, name => %s, hyperparams => %s)",
                   (algorithm, name, json.dumps(hyperparams)))
    rows = f"{name}_rows"
    db.run(f"CREATE TABLE {rows} AS SELECT row_number() OVER () AS id, * FROM alg_friedman")
    serving = Session()
    try:
        serving.run("SET statement_timeout = '60s'")
        single = serving.rows(f"SELECT id, pgml.score(%s, to_jsonb(r) - 'id' - 'y') FROM {rows} r WHERE id <= 3 "
                              "ORDER BY id", (model,))
        # Enough rows for the libraries to predict them on several threads, in the forked worker.
        batch = serving.rows("SELECT key::bigint, prediction FROM pgml.score_table(%s, %s, 'id') ORDER BY 1",
                             (model, rows))
        assert len(batch) == REGRESSION_ROWS and [k for k, _ in single] == [1, 2, 3]
        assert [p for _, p in batch[:3]] == pytest.approx([p for _, p in single], rel=1e-6)
        again = serving.one("SELECT pgml.train('alg_friedman', 'y', %s, name => %s, hyperparams => %s)",
                            (algorithm, name, json.dumps(hyperparams)))
        assert again == f"{name}_2"
    finally:
        serving.close()
        db.run(f"DROP TABLE {rows}")
