"""Tests for the algorithm catalogue and estimator construction."""
from __future__ import annotations

import importlib
import json
import math
import warnings

import numpy as np
import pytest
from sklearn.datasets import make_classification, make_regression
from sklearn.exceptions import ConvergenceWarning
from sklearn.preprocessing import StandardScaler

from pgml_fdw.algorithms import (
    CATALOGUE,
    TASKS,
    all_params,
    check_hyperparam_names,
    json_safe,
    lookup,
    make_estimator,
)
from pgml_fdw.errors import PgmlError

BOTH = {"regression", "classification"}
EXPECTED_TASKS = {
    "linear": BOTH,
    "ridge": BOTH,
    "lasso": {"regression"},
    "elastic_net": {"regression"},
    "bayesian_ridge": {"regression"},
    "huber": {"regression"},
    "svm": BOTH,
    "linear_svm": BOTH,
    "knn": BOTH,
    "decision_tree": BOTH,
    "random_forest": BOTH,
    "extra_trees": BOTH,
    "gradient_boosting_trees": BOTH,
    "hist_gradient_boosting": BOTH,
    "ada_boost": BOTH,
    "bagging": BOTH,
    "mlp": BOTH,
    "stochastic_gradient_descent": BOTH,
    "perceptron": {"classification"},
    "passive_aggressive": BOTH,
    "least_angle": {"regression"},
    "lasso_least_angle": {"regression"},
    "orthogonal_matching_pursuit": {"regression"},
    "automatic_relevance_determination": {"regression"},
    "ransac": {"regression"},
    "theil_sen": {"regression"},
    "quantile": {"regression"},
    "kernel_ridge": {"regression"},
    "gaussian_process": BOTH,
    "nu_svm": BOTH,
    "xgboost": BOTH,
    "xgboost_random_forest": BOTH,
    "lightgbm": BOTH,
    "catboost": BOTH,
    "kmeans": {"clustering"},
    "mini_batch_kmeans": {"clustering"},
    "bisecting_kmeans": {"clustering"},
    "birch": {"clustering"},
    "mean_shift": {"clustering"},
    "affinity_propagation": {"clustering"},
    "gaussian_mixture": {"clustering"},
    "pca": {"decomposition"},
}
NO_PROBA = {"ridge", "linear_svm", "stochastic_gradient_descent", "perceptron", "passive_aggressive"}
BOOSTING = {"xgboost", "xgboost_random_forest", "lightgbm", "catboost"}

X_REG, Y_REG = make_regression(n_samples=40, n_features=4, noise=1.0, random_state=0)
X_CLF, Y_CLF = make_classification(
    n_samples=60, n_features=4, n_informative=3, n_redundant=0, n_classes=3, random_state=0
)
DATA = {"regression": (X_REG, Y_REG), "classification": (X_CLF, Y_CLF), "clustering": (X_CLF, None),
        "decomposition": (X_CLF, None)}


def _ids(algorithm):
    return f"{algorithm.name}-{algorithm.task}"


def test_catalogue_has_exactly_the_expected_names_and_tasks():
    got = {}
    for a in CATALOGUE:
        got.setdefault(a.name, set()).add(a.task)
    assert got == EXPECTED_TASKS
    assert len({(a.name, a.task) for a in CATALOGUE}) == len(CATALOGUE)
    assert all(a.task in TASKS and a.description for a in CATALOGUE)


@pytest.mark.parametrize("algorithm", CATALOGUE, ids=_ids)
def test_every_entry_builds_fits_and_predicts(algorithm):
    X, y = DATA[algorithm.task]
    if algorithm.needs_scaling:
        X = StandardScaler().fit_transform(X)
    # A few boosting rounds: the point is the API, not the fit (CatBoost's default is 1000).
    rounds = {"catboost": {"iterations": 20}}.get(algorithm.name, {"n_estimators": 20})
    estimator = make_estimator(algorithm, rounds if algorithm.name in BOOSTING else None)
    module, _, cls = algorithm.estimator.rpartition(".")
    assert type(estimator) is getattr(importlib.import_module(module), cls)
    with warnings.catch_warnings():
        # Our max_iter defaults exist so that standardized data converges; an MLP
        # on 40-60 rows keeps improving its training loss, so it is exempt.
        if algorithm.name != "mlp":
            warnings.simplefilter("error", ConvergenceWarning)
        # The passive-aggressive classes' deprecation (scikit-learn 1.8) and SVC's probability (1.9).
        warnings.simplefilter("ignore", FutureWarning)
        estimator.fit(X, y)
    if algorithm.task == "decomposition":
        assert estimator.transform(X).shape == (len(X), 4)
    else:
        assert estimator.predict(X).shape == (len(X),)
    if algorithm.task == "classification":
        assert hasattr(estimator, "predict_proba") == (algorithm.name not in NO_PROBA)
        if algorithm.name not in NO_PROBA:
            proba = estimator.predict_proba(X)
            assert proba.shape == (len(y), 3)
            np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-6)  # XGBoost: float32


@pytest.mark.parametrize("algorithm", CATALOGUE, ids=_ids)
def test_defaults_are_applied_and_seeded(algorithm):
    params = make_estimator(algorithm).get_params(deep=False)
    for key, value in algorithm.defaults.items():
        assert params[key] == value
    if "random_state" in params:
        assert params["random_state"] == 0


def test_specific_defaults_and_scaling_flags():
    assert make_estimator(lookup("svm", "classification")).probability is True
    assert make_estimator(lookup("linear", "classification")).max_iter == 1000
    assert lookup("linear", "classification").needs_scaling
    assert lookup("linear", "regression").needs_scaling  # see test_training's feature-scale test
    for name in ("svm", "knn", "mlp", "lasso"):
        assert lookup(name, "regression").needs_scaling
    for name in ("random_forest", "decision_tree", "hist_gradient_boosting"):
        assert not lookup(name, "classification").needs_scaling


def test_lookup_is_case_insensitive():
    assert lookup(" Random_Forest ", "regression").estimator == "sklearn.ensemble.RandomForestRegressor"


def test_unknown_algorithm_lists_all_names_and_suggests():
    with pytest.raises(PgmlError) as info:
        lookup("forest", "regression")
    assert info.value.message == "unknown algorithm 'forest'"
    assert "did you mean 'random_forest'?" in info.value.hint
    for name in EXPECTED_TASKS:
        assert name in info.value.hint


def test_algorithm_without_the_task_names_supported_tasks():
    with pytest.raises(PgmlError) as info:
        lookup("lasso", "classification")
    assert info.value.message == "algorithm 'lasso' does not support classification"
    assert "supports only regression" in info.value.hint
    assert "lasso" not in info.value.hint.split("use one of:")[1]
    assert "random_forest" in info.value.hint


def test_unknown_task():
    with pytest.raises(PgmlError) as info:
        lookup("linear", "ranking")
    assert "ranking" in info.value.message
    assert "regression, classification, clustering, decomposition" in info.value.hint


def test_hyperparams_override_defaults():
    estimator = make_estimator(lookup("random_forest", "regression"), {"n_estimators": 7, "random_state": 3})
    assert (estimator.n_estimators, estimator.random_state) == (7, 3)


def test_unknown_hyperparameter_lists_sorted_valid_names():
    algorithm = lookup("ridge", "regression")
    with pytest.raises(PgmlError) as info:
        make_estimator(algorithm, {"alpah": 1.0})
    assert info.value.message == "unknown hyperparameter 'alpah' for algorithm 'ridge' (regression)"
    assert info.value.hint == (
        "did you mean 'alpha'? valid hyperparameters: "
        "alpha, copy_X, fit_intercept, max_iter, positive, random_state, solver, tol"
    )


def test_several_unknown_hyperparameters_are_all_named():
    with pytest.raises(PgmlError) as info:
        check_hyperparam_names(lookup("knn", "classification"), ["k", "n_neighbors", "distance"])
    assert info.value.message.startswith("unknown hyperparameters 'k', 'distance'")


def test_deprecated_parameters_are_not_offered():
    with pytest.raises(PgmlError):
        make_estimator(lookup("linear", "classification"), {"multi_class": "ovr"})
    assert "multi_class" not in all_params(lookup("linear", "classification"))
    assert "algorithm" not in all_params(lookup("ada_boost", "classification"))


@pytest.mark.parametrize(
    "name, task, params, message, hint",
    [
        (
            "ridge", "regression", {"alpha": -1},
            "invalid value for hyperparameter 'alpha' of algorithm 'ridge': "
            "got -1, expected a number in the range [0.0, inf)",
            "change 'alpha', or leave it out to use the default (1.0)",
        ),
        (
            "random_forest", "classification", {"n_estimators": "many"},
            "invalid value for hyperparameter 'n_estimators' of algorithm 'random_forest': "
            'got "many", expected an integer in the range [1, inf)',
            "change 'n_estimators', or leave it out to use the default (100)",
        ),
        (
            "svm", "classification", {"kernel": "gauss"},
            "invalid value for hyperparameter 'kernel' of algorithm 'svm': "
            'got "gauss", expected one of "linear", "poly", "precomputed", "rbf", "sigmoid"',
            "change 'kernel', or leave it out to use the default (\"rbf\")",
        ),
        (
            "decision_tree", "regression", {"random_state": "x"},
            "invalid value for hyperparameter 'random_state' of algorithm 'decision_tree': "
            'got "x", expected an integer in the range [0, 4294967295] or null',
            "change 'random_state', or leave it out to use the default (0)",
        ),
        (
            "mlp", "regression", {"shuffle": 1},
            "invalid value for hyperparameter 'shuffle' of algorithm 'mlp': got 1, expected true or false",
            "change 'shuffle', or leave it out to use the default (true)",
        ),
    ],
)
def test_invalid_values_name_the_parameter_and_expectation(name, task, params, message, hint):
    with pytest.raises(PgmlError) as info:
        make_estimator(lookup(name, task), params)
    # scikit-learn 1.9 also lets Ridge's alpha be one value per target.
    assert info.value.message in (message, message + " or a JSON array")
    assert info.value.hint == hint


def test_hyperparams_must_be_an_object():
    with pytest.raises(PgmlError) as info:
        make_estimator(lookup("knn", "regression"), [3])
    assert info.value.message == "hyperparameters must be a JSON object, got [3]"


def test_json_lists_become_tuples_where_sklearn_uses_tuples():
    estimator = make_estimator(lookup("mlp", "classification"), {"hidden_layer_sizes": [8, 4]})
    assert estimator.hidden_layer_sizes == (8, 4)
    # Lists stay lists where scikit-learn's default is not a tuple.
    weights = make_estimator(lookup("random_forest", "classification"), {"class_weight": [{0: 1}]})
    assert weights.class_weight == [{0: 1}]


@pytest.mark.parametrize("algorithm", CATALOGUE, ids=_ids)
def test_all_params_is_json_safe_and_complete(algorithm):
    params = all_params(algorithm)
    assert json.loads(json.dumps(params)) == params
    estimator_params = make_estimator(algorithm).get_params(deep=False)
    assert set(params) <= set(estimator_params)
    assert params == dict(sorted(params.items()))


def test_all_params_reflects_overrides():
    params = all_params(lookup("mlp", "regression"), {"hidden_layer_sizes": [3, 2], "alpha": 0.5})
    assert params["hidden_layer_sizes"] == [3, 2]
    assert params["alpha"] == 0.5
    assert params["max_iter"] == 1000
    assert all_params(lookup("mlp", "regression"))["hidden_layer_sizes"] == [100]


def test_json_safe_converts_numpy_and_non_finite():
    value = {
        "a": np.int64(3),
        "b": np.float32(0.5),
        "c": (1, np.nan),
        "d": np.array([[1.0, np.inf]]),
        "e": np.bool_(True),
        1: None,
    }
    assert json_safe(value) == {"a": 3, "b": 0.5, "c": [1, None], "d": [[1.0, None]], "e": True, "1": None}
    assert type(json_safe(np.int64(3))) is int
    assert json_safe(float("-inf")) is None
    assert not math.isnan(json_safe(np.float64(2.0)))


@pytest.mark.parametrize("name, task, params", [("linear", "classification", {"penalty": "l1", "solver": "saga"}),
                                                ("svm", "classification", {"probability": False})])
def test_parameters_deprecated_in_newer_scikit_learn_are_accepted_on_every_supported_one(
        name: str, task: str, params: dict) -> None:
    estimator = make_estimator(lookup(name, task), params)
    assert {k: estimator.get_params()[k] for k in params} == params
