"""Tests for hyperparameter search."""
from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.datasets import make_classification, make_regression
from sklearn.linear_model import Ridge
from sklearn.model_selection import KFold, cross_val_score

from pgml_fdw.algorithms import lookup
from pgml_fdw.errors import PgmlError
from pgml_fdw.search import SearchResult, search, validate_search

X_REG, Y_REG = make_regression(n_samples=60, n_features=5, noise=20.0, random_state=0)
X_BIN, Y_BIN = make_classification(n_samples=60, n_features=4, random_state=0)
X_MULTI, Y_MULTI = make_classification(
    n_samples=90, n_features=4, n_informative=3, n_redundant=0, n_classes=3, random_state=0
)
RIDGE = lookup("ridge", "regression")


def test_grid_search_tries_every_combination_in_order():
    result = search(RIDGE, {}, X_REG, Y_REG, "regression", "grid", {"alpha": [0.1, 10.0, 1000.0]})
    assert isinstance(result, SearchResult)
    assert [c["params"] for c in result.candidates] == [{"alpha": 0.1}, {"alpha": 10.0}, {"alpha": 1000.0}]
    # The score is plain shuffled 3-fold r2, so it can be checked independently.
    expected = cross_val_score(
        Ridge(alpha=1000.0, random_state=0), X_REG, Y_REG, scoring="r2",
        cv=KFold(3, shuffle=True, random_state=0),
    ).mean()
    assert result.candidates[2]["mean_score"] == pytest.approx(expected)
    best = max(result.candidates, key=lambda c: c["mean_score"])
    assert result.best_params == best["params"]
    assert result.best_score == best["mean_score"]
    assert result.best_params != {"alpha": 1000.0}
    assert json.loads(json.dumps(result.candidates)) == result.candidates


def test_base_params_apply_to_every_candidate():
    shifted = Y_REG + 1000.0
    no_intercept = search(RIDGE, {"fit_intercept": False}, X_REG, shifted, "regression", "grid", {"alpha": [0.1]})
    with_intercept = search(RIDGE, {}, X_REG, shifted, "regression", "grid", {"alpha": [0.1]})
    assert no_intercept.best_score < with_intercept.best_score


def test_random_search_is_reproducible_and_capped_by_n_iter():
    space = {"alpha": [0.01, 0.1, 1.0, 10.0, 100.0], "fit_intercept": [True, False]}
    first = search(RIDGE, {}, X_REG, Y_REG, "regression", "random", space, n_iter=4)
    second = search(RIDGE, {}, X_REG, Y_REG, "regression", "random", space, n_iter=4)
    assert len(first.candidates) == 4
    assert first.candidates == second.candidates
    assert len({json.dumps(c["params"], sort_keys=True) for c in first.candidates}) == 4


def test_random_search_with_small_space_tries_each_once():
    result = search(RIDGE, {}, X_REG, Y_REG, "regression", "random", {"alpha": [1.0, 2.0]}, n_iter=10)
    assert sorted(c["params"]["alpha"] for c in result.candidates) == [1.0, 2.0]


def test_binary_classification_scores_with_f1():
    algorithm = lookup("decision_tree", "classification")
    result = search(algorithm, {}, X_BIN, Y_BIN, "classification", "grid", {"max_depth": [1, 3]}, folds=4)
    assert len(result.candidates) == 2
    assert 0.0 < result.best_score <= 1.0


def test_multiclass_search_and_json_arrays_for_tuples():
    algorithm = lookup("mlp", "classification")
    result = search(
        algorithm, {"max_iter": 30}, X_MULTI, Y_MULTI, "classification", "grid",
        {"hidden_layer_sizes": [[4], [4, 4]]},
    )
    assert [c["params"]["hidden_layer_sizes"] for c in result.candidates] == [[4], [4, 4]]
    assert result.best_params["hidden_layer_sizes"] in ([4], [4, 4])


def test_failed_candidates_get_none_scores():
    algorithm = lookup("linear", "classification")
    result = search(algorithm, {}, X_BIN, Y_BIN, "classification", "grid", {"penalty": ["l1", "l2"]})
    assert result.candidates[0]["mean_score"] is None
    assert result.best_params == {"penalty": "l2"}


def test_all_candidates_failing_reports_the_reason():
    algorithm = lookup("linear", "classification")
    with pytest.raises(PgmlError) as info:
        search(algorithm, {}, X_BIN, Y_BIN, "classification", "grid", {"penalty": ["l1"]})
    assert info.value.message.startswith("every candidate of the hyperparameter search failed to train: Solver lbfgs")
    assert info.value.hint


@pytest.mark.parametrize(
    "method, space, folds, message, hint_part",
    [
        ("bayes", {"alpha": [1]}, 3, 'unknown search method "bayes"', "'grid'"),
        ("grid", {}, 3, "the search space must be a non-empty JSON object", '{"<hyperparameter>"'),
        ("grid", [1, 2], 3, "the search space must be a non-empty JSON object", '{"<hyperparameter>"'),
        ("grid", {"alpah": [1]}, 3, "unknown hyperparameter 'alpah' for algorithm 'ridge' (regression)",
         "valid hyperparameters: alpha, copy_X"),
        ("grid", {"alpha": 1}, 3, "search values for 'alpha' must be a non-empty JSON array, got 1",
         '{"alpha": [1, value2]}'),
        ("grid", {"alpha": []}, 3, "search values for 'alpha' must be a non-empty JSON array, got []",
         '{"alpha": [value1, value2]}'),
        ("grid", {"alpha": [1, -1]}, 3, "invalid value for hyperparameter 'alpha' of algorithm 'ridge'", "'alpha'"),
        ("grid", {"alpha": [1]}, 1, "search folds must be a whole number of at least 2, got 1", "3 or 5"),
        ("grid", {"alpha": [1]}, True, "search folds must be a whole number of at least 2, got true", "3 or 5"),
        ("grid", {"alpha": [1]}, 2.5, "search folds must be a whole number of at least 2, got 2.5", "3 or 5"),
    ],
)
def test_validate_search_rejects_bad_options(method, space, folds, message, hint_part):
    with pytest.raises(PgmlError) as info:
        validate_search(RIDGE, method, space, folds)
    assert info.value.message.startswith(message)
    assert hint_part in info.value.hint


def test_validate_search_rejects_bad_n_iter():
    with pytest.raises(PgmlError) as info:
        validate_search(RIDGE, "random", {"alpha": [1]}, 3, n_iter=0)
    assert "at least 1, got 0" in info.value.message


def test_validate_search_accepts_good_options():
    assert validate_search(RIDGE, "random", {"alpha": [0.5, 1], "solver": ["auto"]}, 5, n_iter=3) is None


def test_search_validates_before_fitting():
    with pytest.raises(PgmlError) as info:
        search(RIDGE, {}, X_REG, Y_REG, "regression", "sweep", {"alpha": [1]})
    assert "sweep" in info.value.message


def test_more_folds_than_rows():
    with pytest.raises(PgmlError) as info:
        search(RIDGE, {}, X_REG[:4], Y_REG[:4], "regression", "grid", {"alpha": [1]}, folds=5)
    assert info.value.message == "cannot split 4 training rows into 5 search folds"
    assert info.value.hint.startswith("use at most 4 folds")


def test_more_folds_than_smallest_class():
    y = np.array([0] * 10 + [1] * 2)
    X = np.arange(24, dtype=float).reshape(12, 2)
    with pytest.raises(PgmlError) as info:
        search(lookup("knn", "classification"), {}, X, y, "classification", "grid", {"n_neighbors": [1]}, folds=3)
    assert info.value.message == "the rarest class has only 2 training rows, fewer than the 3 search folds"
    assert info.value.hint.startswith("use at most 2 folds")


def test_single_class_is_rejected():
    X = np.arange(12, dtype=float).reshape(6, 2)
    with pytest.raises(PgmlError) as info:
        search(lookup("knn", "classification"), {}, X, np.zeros(6, dtype=int), "classification", "grid",
               {"n_neighbors": [1]})
    assert "only one class" in info.value.message
