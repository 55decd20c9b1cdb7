"""Tests for feature importance."""
from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.datasets import make_classification
from sklearn.ensemble import HistGradientBoostingRegressor, RandomForestRegressor
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.svm import SVC

from pgml_fdw.importance import by_column, feature_importance

RNG = np.random.RandomState(0)
# Column 0 drives the target, column 1 barely, column 2 not at all.
X = RNG.normal(size=(200, 3))
Y = 5.0 * X[:, 0] + 0.5 * X[:, 1] + RNG.normal(scale=0.1, size=200)


def test_linear_models_report_absolute_coefficients():
    model = LinearRegression().fit(X, -Y)
    method, values = feature_importance(model, X, -Y, "regression")
    assert method == "coefficients"
    np.testing.assert_allclose(values, np.abs(model.coef_))
    assert values[0] > values[1] > values[2]


def test_multiclass_coefficients_are_averaged_over_classes():
    Xc, yc = make_classification(n_samples=120, n_features=4, n_informative=3, n_redundant=0,
                                 n_classes=3, random_state=0)
    model = LogisticRegression(max_iter=1000).fit(Xc, yc)
    method, values = feature_importance(model, Xc, yc, "classification")
    assert method == "coefficients"
    assert values.shape == (4,)
    np.testing.assert_allclose(values, np.abs(model.coef_).mean(axis=0))


def test_tree_models_report_impurity_importance():
    model = RandomForestRegressor(n_estimators=10, random_state=0).fit(X, Y)
    method, values = feature_importance(model, X, Y, "regression")
    assert method == "impurity"
    np.testing.assert_allclose(values, model.feature_importances_)
    assert values.argmax() == 0


def test_other_models_use_permutation_importance():
    model = HistGradientBoostingRegressor(max_iter=20, random_state=0).fit(X, Y)
    method, values = feature_importance(model, X, Y, "regression")
    assert method == "permutation"
    assert values.shape == (3,)
    assert values[0] > values[1] > abs(values[2])


def test_nonlinear_svm_has_no_coefficients_and_falls_back_to_permutation():
    yc = (X[:, 0] > 0).astype(int)
    model = SVC(random_state=0).fit(X, yc)
    method, values = feature_importance(model, X, yc, "classification")
    assert method == "permutation"
    assert values[0] > 0.2
    assert abs(values[2]) < 0.1


class _RowCounter(ClassifierMixin, BaseEstimator):
    """Predicts the sign of column 0 and records how many rows each predict call sees."""

    def fit(self, X, y):
        self.classes_ = np.array([0, 1])
        self.rows_seen_ = []
        return self

    def predict(self, X):
        self.rows_seen_.append(len(X))
        return (X[:, 0] > 0).astype(int)


def test_permutation_samples_at_most_2000_rows_reproducibly():
    big_X = RNG.normal(size=(3000, 3))
    yc = (big_X[:, 0] > 0).astype(int)
    model = _RowCounter().fit(big_X, yc)
    method, first = feature_importance(model, big_X, yc, "classification")
    assert method == "permutation"
    assert set(model.rows_seen_) == {2000}
    # 1 baseline + 5 repeats for each of 3 columns.
    assert len(model.rows_seen_) == 16
    np.testing.assert_array_equal(first, feature_importance(model, big_X, yc, "classification")[1])
    assert first[0] > 0.3
    assert first[1] == 0.0


def test_by_column_sums_one_hot_parts_in_first_seen_order():
    values = np.array([0.1, 0.2, 0.3, np.float32(0.4)])
    result = by_column(values, ["color", "size", "color", "weight"])
    assert list(result) == ["color", "size", "weight"]
    assert result["color"] == pytest.approx(0.4)
    assert result["weight"] == pytest.approx(0.4)
    assert all(type(v) is float for v in result.values())
    assert json.loads(json.dumps(result)) == result


def test_by_column_turns_nan_into_none():
    assert by_column(np.array([np.nan, 1.0]), ["a", "b"]) == {"a": None, "b": 1.0}


def test_by_column_rejects_length_mismatch():
    with pytest.raises(ValueError):
        by_column(np.array([1.0, 2.0]), ["a"])
