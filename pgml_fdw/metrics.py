"""Test-set metrics for a trained model, as JSON-safe values."""
from __future__ import annotations

import warnings
from typing import Any, Dict, Optional

import numpy as np
from sklearn import metrics as skm

from pgml_fdw.jsonsafe import json_safe

# The metric that ranks models of a task (e.g. for picking the deployed one).
KEY_METRIC = {"regression": "r2", "classification": "f1"}


def evaluate(
    task: str,
    y_true: np.ndarray,
    y_pred: np.ndarray,
    proba: Optional[np.ndarray] = None,
    n_classes: Optional[int] = None,
) -> Dict[str, Any]:
    """Score predictions against the truth.

    Regression gives r2, mean_absolute_error, mean_squared_error and
    root_mean_squared_error.  Classification expects integer class indices
    0..n_classes-1 (``proba`` columns aligned to them, or None) and gives
    accuracy, precision, recall, f1 (binary for two classes with index 1 as the
    positive class, macro otherwise), roc_auc, log_loss and confusion_matrix.
    Metrics that cannot be computed, and NaN/inf values, are None.
    """
    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred)
    # Undefined metrics (e.g. r2 on one row) are reported as None; their warnings are noise.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if task == "regression":
            result = _regression(y_true, y_pred)
        elif task == "classification":
            result = _classification(y_true, y_pred, proba, n_classes)
        else:
            raise ValueError(f"unknown task {task!r}")
    return {k: json_safe(v) for k, v in result.items()}


def _regression(y_true: np.ndarray, y_pred: np.ndarray) -> Dict[str, Any]:
    return {
        "r2": skm.r2_score(y_true, y_pred),
        "mean_absolute_error": skm.mean_absolute_error(y_true, y_pred),
        "mean_squared_error": skm.mean_squared_error(y_true, y_pred),
        "root_mean_squared_error": skm.root_mean_squared_error(y_true, y_pred),
    }


def _classification(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    proba: Optional[np.ndarray],
    n_classes: Optional[int],
) -> Dict[str, Any]:
    y_true = y_true.astype(int)
    y_pred = y_pred.astype(int)
    if proba is not None:
        proba = np.asarray(proba, dtype=float)
    if n_classes is None:
        seen = [int(y_true.max()) + 1, int(y_pred.max()) + 1]
        n_classes = max(seen + ([proba.shape[1]] if proba is not None else []))
    if proba is not None and proba.shape != (len(y_true), n_classes):
        raise ValueError(f"proba has shape {proba.shape}, expected {(len(y_true), n_classes)}")
    labels = list(range(n_classes))
    average = "binary" if n_classes == 2 else "macro"
    return {
        "accuracy": skm.accuracy_score(y_true, y_pred),
        "precision": skm.precision_score(y_true, y_pred, average=average, zero_division=0),
        "recall": skm.recall_score(y_true, y_pred, average=average, zero_division=0),
        "f1": skm.f1_score(y_true, y_pred, average=average, zero_division=0),
        "roc_auc": None if proba is None else _roc_auc(y_true, proba),
        "log_loss": None if proba is None else skm.log_loss(y_true, proba, labels=labels),
        "confusion_matrix": skm.confusion_matrix(y_true, y_pred, labels=labels),
    }


def _roc_auc(y_true: np.ndarray, proba: np.ndarray) -> Optional[float]:
    """Binary AUC, or one-vs-rest macro AUC over the classes present in ``y_true``.

    Classes absent from the test set have no AUC; averaging over the present
    ones equals scikit-learn's 'ovr' macro AUC when every class is present.
    """
    present = np.unique(y_true)
    if len(present) < 2:
        return None
    if proba.shape[1] == 2:
        return skm.roc_auc_score(y_true, proba[:, 1])
    return float(np.mean([skm.roc_auc_score(y_true == c, proba[:, c]) for c in present]))
