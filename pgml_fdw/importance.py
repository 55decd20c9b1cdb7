"""Feature importance of a fitted estimator, and folding it back onto source columns."""
from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np
from sklearn.inspection import permutation_importance

from pgml_fdw.jsonsafe import json_safe

# Permutation importance refits nothing but re-predicts n_repeats times per column;
# a sample keeps that affordable on large test sets.
_MAX_PERMUTATION_ROWS = 2000


def feature_importance(
    estimator: Any, X_test: np.ndarray, y_test: np.ndarray, task: str
) -> Tuple[str, np.ndarray]:
    """Return (method, one importance per column of ``X_test``) for a fitted estimator.

    method is 'coefficients' (mean absolute coef_ over classes; comparable only
    on standardized inputs), 'impurity' (feature_importances_ of tree models),
    or 'permutation' (drop in r2/accuracy when a column is shuffled, measured
    on at most 2000 test rows).
    """
    coef = getattr(estimator, "coef_", None)
    if coef is not None:
        coef = np.abs(np.asarray(coef, dtype=float))
        return "coefficients", coef.mean(axis=0) if coef.ndim == 2 else coef
    importances = getattr(estimator, "feature_importances_", None)
    if importances is not None:
        return "impurity", np.asarray(importances, dtype=float)
    X_test = np.asarray(X_test)
    y_test = np.asarray(y_test)
    if len(X_test) > _MAX_PERMUTATION_ROWS:
        rows = np.random.RandomState(0).choice(len(X_test), _MAX_PERMUTATION_ROWS, replace=False)
        X_test, y_test = X_test[rows], y_test[rows]
    result = permutation_importance(
        estimator,
        X_test,
        y_test,
        scoring="r2" if task == "regression" else "accuracy",
        n_repeats=5,
        random_state=0,
        n_jobs=1,
    )
    return "permutation", np.asarray(result.importances_mean, dtype=float)


def by_column(values: np.ndarray, sources: Sequence[str]) -> Dict[str, Optional[float]]:
    """Sum the importances of output features that come from the same source column.

    ``sources[i]`` names the source column of output feature ``i`` (so one-hot
    parts fold back into their column).  Columns keep first-seen order; NaN
    or inf totals become None.
    """
    values = np.asarray(values, dtype=float).ravel()
    if len(values) != len(sources):
        raise ValueError(f"{len(values)} importance values but {len(sources)} sources")
    totals: Dict[str, float] = {}
    for source, value in zip(sources, values):
        totals[source] = totals.get(source, 0.0) + float(value)
    return {source: json_safe(total) for source, total in totals.items()}
