"""Tests for test-set metrics."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from pgml_fdw.metrics import KEY_METRIC, evaluate


def test_key_metrics():
    assert KEY_METRIC == {"regression": "r2", "classification": "f1", "clustering": "silhouette",
                          "decomposition": "cumulative_explained_variance"}


def test_regression_metrics():
    result = evaluate("regression", np.array([1.0, 2.0, 3.0, 4.0]), np.array([1.0, 2.0, 3.0, 6.0]))
    assert set(result) == {"r2", "mean_absolute_error", "mean_squared_error", "root_mean_squared_error"}
    assert result["mean_absolute_error"] == pytest.approx(0.5)
    assert result["mean_squared_error"] == pytest.approx(1.0)
    assert result["root_mean_squared_error"] == pytest.approx(1.0)
    assert result["r2"] == pytest.approx(1 - 4.0 / 5.0)
    assert all(type(v) is float for v in result.values())


def test_undefined_r2_becomes_none():
    result = evaluate("regression", np.array([2.0]), np.array([3.0]))
    assert result["r2"] is None
    assert result["mean_absolute_error"] == 1.0


def test_binary_classification_uses_class_1_as_positive():
    y_true = np.array([0, 0, 1, 1, 1])
    y_pred = np.array([0, 1, 1, 1, 0])
    proba = np.array([[0.9, 0.1], [0.4, 0.6], [0.2, 0.8], [0.3, 0.7], [0.6, 0.4]])
    result = evaluate("classification", y_true, y_pred, proba, n_classes=2)
    assert result["accuracy"] == pytest.approx(0.6)
    assert result["precision"] == pytest.approx(2 / 3)
    assert result["recall"] == pytest.approx(2 / 3)
    assert result["f1"] == pytest.approx(2 / 3)
    # Positives score 0.8, 0.7, 0.4 against negatives 0.1, 0.6: 5 of 6 pairs ordered right.
    assert result["roc_auc"] == pytest.approx(5 / 6)
    expected_log_loss = -np.mean(np.log([0.9, 0.4, 0.8, 0.7, 0.4]))
    assert result["log_loss"] == pytest.approx(expected_log_loss)
    assert result["confusion_matrix"] == [[1, 1], [1, 2]]
    assert json.loads(json.dumps(result)) == result


def test_multiclass_uses_macro_average_and_ovr_auc():
    y_true = np.array([0, 1, 2, 2, 1, 0])
    y_pred = np.array([0, 2, 2, 2, 1, 0])
    proba = np.array([
        [0.8, 0.1, 0.1],
        [0.1, 0.3, 0.6],
        [0.1, 0.2, 0.7],
        [0.2, 0.2, 0.6],
        [0.2, 0.7, 0.1],
        [0.6, 0.3, 0.1],
    ])
    result = evaluate("classification", y_true, y_pred, proba, n_classes=3)
    # Per class precision 1, 1, 2/3 and recall 1, 1/2, 1.
    assert result["precision"] == pytest.approx((1 + 1 + 2 / 3) / 3)
    assert result["recall"] == pytest.approx((1 + 0.5 + 1) / 3)
    assert result["f1"] == pytest.approx((1 + 2 / 3 + 0.8) / 3)
    assert result["roc_auc"] == pytest.approx(roc_auc_score(y_true, proba, multi_class="ovr"))
    assert result["confusion_matrix"] == [[2, 0, 0], [0, 1, 1], [0, 0, 2]]


def test_confusion_matrix_covers_classes_absent_from_the_test_set():
    result = evaluate("classification", np.array([0, 1, 1]), np.array([0, 1, 0]), n_classes=4)
    assert result["confusion_matrix"] == [[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
    assert result["roc_auc"] is None
    assert result["log_loss"] is None


def test_auc_averages_over_classes_present_in_y_true():
    y_true = np.array([0, 0, 1, 1])
    proba = np.array([[0.7, 0.2, 0.1], [0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.5, 0.4, 0.1]])
    result = evaluate("classification", y_true, np.array([0, 0, 1, 0]), proba, n_classes=3)
    assert result["roc_auc"] == pytest.approx(1.0)
    assert result["log_loss"] is not None


def test_single_class_in_y_true_has_no_auc():
    proba = np.array([[0.9, 0.1], [0.2, 0.8]])
    result = evaluate("classification", np.array([1, 1]), np.array([0, 1]), proba, n_classes=2)
    assert result["roc_auc"] is None
    assert result["recall"] == pytest.approx(0.5)
    assert result["log_loss"] == pytest.approx(-np.mean(np.log([0.1, 0.8])))


def test_zero_division_gives_zero_not_warning_or_nan():
    result = evaluate("classification", np.array([0, 0]), np.array([0, 0]), n_classes=2)
    assert result["precision"] == 0.0
    assert result["recall"] == 0.0
    assert result["f1"] == 0.0
    assert result["accuracy"] == 1.0


def test_n_classes_is_inferred_when_missing():
    proba = np.array([[0.5, 0.2, 0.3], [0.1, 0.8, 0.1]])
    result = evaluate("classification", np.array([0, 1]), np.array([0, 1]), proba)
    assert len(result["confusion_matrix"]) == 3
    assert not math.isnan(result["f1"])


def test_proba_shape_mismatch_is_rejected():
    with pytest.raises(ValueError):
        evaluate("classification", np.array([0, 1]), np.array([0, 1]), np.ones((2, 3)) / 3, n_classes=2)
