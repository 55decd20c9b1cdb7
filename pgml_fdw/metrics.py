"""Test-set metrics for a trained model, as JSON-safe values."""
from __future__ import annotations

import warnings
from typing import Any, Dict, Optional

import numpy as np
from sklearn import metrics as skm

from pgml_fdw.jsonsafe import json_safe

# The metric that ranks models of a task (e.g. for picking the deployed one): higher is better for
# each. PostgresML's names; the SQL's pgml._key_metric says the same.
KEY_METRIC = {"regression": "r2", "classification": "f1", "clustering": "silhouette",
              "decomposition": "cumulative_explained_variance"}
# The silhouette compares every pair of rows: it is measured on at most this many (drawn with seed 0).
SILHOUETTE_ROWS = 5000


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


def cluster_count(estimator: Any) -> int:
    """How many clusters a fitted clusterer assigns rows to."""
    for attribute in ("cluster_centers_", "means_"):  # the k-means family, mean shift, affinity propagation; mixtures
        centers = getattr(estimator, attribute, None)
        if centers is not None:
            return len(centers)
    labels = getattr(estimator, "subcluster_labels_", None)  # birch: its subclusters, grouped
    if labels is None:
        labels = estimator.labels_
    return int(np.count_nonzero(np.unique(labels) >= 0))


def _scorable(labels: np.ndarray) -> bool:
    """Whether clusters can be scored: two of them at least, and not every row its own."""
    return 2 <= len(np.unique(labels)) <= len(labels) - 1


def silhouette(X: np.ndarray, labels: np.ndarray) -> Optional[float]:
    """The mean silhouette coefficient (-1 to 1, higher is better: rows close to their own cluster
    and far from the next), on at most :data:`SILHOUETTE_ROWS` rows drawn with seed 0: it costs
    the square of the rows. None when it is undefined (fewer than 2 clusters, or every row its own)."""
    labels = np.asarray(labels)
    sample = None if len(labels) <= SILHOUETTE_ROWS else SILHOUETTE_ROWS
    if not _scorable(labels):
        return None
    try:
        return float(skm.silhouette_score(X, labels, sample_size=sample, random_state=0))
    except ValueError:  # the sample holds a single cluster
        return None


def silhouette_scorer(estimator: Any, X: np.ndarray, y: Any = None) -> float:
    """A scikit-learn scorer of a fitted clusterer: the silhouette of the clusters it assigns to
    ``X`` (NaN when undefined), for hyperparameter search."""
    value = silhouette(X, estimator.predict(X))
    return np.nan if value is None else value


def clustering(X_test: np.ndarray, labels: np.ndarray, truth: Optional[np.ndarray] = None,
               n_clusters: Optional[int] = None) -> Dict[str, Any]:
    """Metrics of the clusters assigned to the held-out rows ``X_test`` (as the estimator sees them).

    silhouette (see :func:`silhouette`), calinski_harabasz (higher is better), davies_bouldin
    (lower is better), n_clusters (how many the model has) and, when the rows' true groups are
    known (``truth``: a y_column), adjusted_rand (1 when the clusters are those groups, about 0
    when they have nothing to do with them) and normalized_mutual_info (0 to 1).
    """
    labels = np.asarray(labels)
    result: Dict[str, Any] = {"silhouette": silhouette(X_test, labels), "calinski_harabasz": None,
                              "davies_bouldin": None}
    if _scorable(labels):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # davies_bouldin divides by zero on identical centroids
            result["calinski_harabasz"] = skm.calinski_harabasz_score(X_test, labels)
            result["davies_bouldin"] = skm.davies_bouldin_score(X_test, labels)
    result["n_clusters"] = n_clusters
    if truth is not None:
        result["adjusted_rand"] = skm.adjusted_rand_score(truth, labels)
        result["normalized_mutual_info"] = skm.normalized_mutual_info_score(truth, labels)
    return {k: json_safe(v) for k, v in result.items()}


def decomposition(estimator: Any) -> Dict[str, Any]:
    """A fitted PCA's cumulative_explained_variance (the share of the training rows' variance its
    components keep, 0 to 1), explained_variance_ratio (per component) and n_components."""
    ratios = np.asarray(estimator.explained_variance_ratio_, dtype=np.float64)
    return {
        "cumulative_explained_variance": json_safe(float(ratios.sum())),
        "explained_variance_ratio": json_safe(ratios.tolist()),
        "n_components": int(estimator.n_components_),
    }
