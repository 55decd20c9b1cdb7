"""Hyperparameter search by k-fold cross-validation (grid or random)."""
from __future__ import annotations

import json
import math
import re
import warnings
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional

import numpy as np
from sklearn.model_selection import GridSearchCV, KFold, RandomizedSearchCV, StratifiedKFold

from pgml_fdw import boosting
from pgml_fdw.algorithms import Algorithm, check_hyperparam_names, make_estimator
from pgml_fdw.jsonsafe import json_safe
from pgml_fdw.metrics import silhouette_scorer
from pgml_fdw.errors import PgmlError

METHODS = ("grid", "random")
# search_args, as PostgresML names them: n_iter (random search: how many candidates) and cv (folds).
SEARCH_ARGS = ("n_iter", "cv")
DEFAULT_N_ITER = 10


@dataclass
class SearchResult:
    """Outcome of a search: the winning parameters, their mean CV score, and every candidate tried.

    Each candidate is ``{"params": {...}, "mean_score": float, "std_score": float}``
    in the order tried; scores are None for candidates that failed to train.
    """

    best_params: Dict[str, Any]
    best_score: float
    candidates: List[Dict[str, Any]]


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def validate_search(
    algorithm: Algorithm,
    method: str,
    space: Mapping[str, Any],
    folds: int,
    n_iter: int = DEFAULT_N_ITER,
) -> None:
    """Check search options before any data is read; raise PgmlError on the first problem.

    ``space`` must map hyperparameter names of ``algorithm`` to non-empty JSON
    arrays of values, each of which must be valid for the estimator.
    """
    if method not in METHODS:
        raise PgmlError(
            f"unknown search method {json.dumps(json_safe(method))}",
            hint="use 'grid' (try every combination) or 'random' (try n_iter random combinations)",
        )
    example = '{"<hyperparameter>": [value1, value2, ...]}'
    if not isinstance(space, Mapping) or not space:
        raise PgmlError(
            "the search space must be a non-empty JSON object of hyperparameters and the values to try",
            hint=f"write it as {example}; valid hyperparameters are listed by the algorithm catalogue",
        )
    check_hyperparam_names(algorithm, space)
    boosting.check_search_space(algorithm, space)
    for name, values in space.items():
        if not isinstance(values, (list, tuple)) or not values:
            shown = json.dumps(json_safe(values))
            first = "value1" if isinstance(values, (list, tuple)) else shown
            raise PgmlError(
                f"search values for '{name}' must be a non-empty JSON array, got {shown}",
                hint=f'list the values to try, for example {{"{name}": [{first}, value2]}}',
            )
        for value in values:
            make_estimator(algorithm, {name: value})
    if not _is_int(folds) or folds < 2:
        raise PgmlError(
            f"search folds must be a whole number of at least 2, got {json.dumps(json_safe(folds))}",
            hint="use 3 or 5 folds",
        )
    if not _is_int(n_iter) or n_iter < 1:
        raise PgmlError(
            f"the number of random search iterations must be a whole number of at least 1, "
            f"got {json.dumps(json_safe(n_iter))}",
            hint="use 10, or more to try more combinations",
        )


def check_search_args(method: Optional[str], args: Any) -> Dict[str, Any]:
    """``search_args`` checked before any data is read: a JSON object of ``n_iter`` (random search
    only: how many candidates, at least 1) and ``cv`` (the folds, at least 2). None and ``{}`` are
    no arguments; any argument needs a search."""
    if args is None:
        return {}
    if not isinstance(args, Mapping):
        raise PgmlError(
            f"search_args must be a JSON object, not {json.dumps(json_safe(args))}",
            hint='for example \'{"n_iter": 20, "cv": 5}\' with search => \'random\'',
        )
    unknown = [key for key in args if key not in SEARCH_ARGS]
    if unknown:
        raise PgmlError(
            f"unknown search_args {', '.join(json.dumps(k) for k in unknown)}",
            hint=f"valid search_args are {', '.join(json.dumps(k) for k in SEARCH_ARGS)}: the number of random "
                 "search candidates and the number of cross-validation folds",
        )
    if args and method is None:
        raise PgmlError(
            "search_args configure a hyperparameter search, and this run has none",
            hint="add search => 'random' (or 'grid') and search_params, or leave search_args out",
        )
    if "n_iter" in args:
        if method != "random":
            raise PgmlError(
                "search_args n_iter applies only to search => 'random': a grid search tries every combination",
                hint="use search => 'random', or leave n_iter out",
            )
        if not _is_int(args["n_iter"]) or args["n_iter"] < 1:
            raise PgmlError(
                f"search_args n_iter must be a whole number of at least 1, got {json.dumps(json_safe(args['n_iter']))}",
                hint=f"it is how many random combinations to try: {DEFAULT_N_ITER} by default",
            )
    if "cv" in args and (not _is_int(args["cv"]) or args["cv"] < 2):
        raise PgmlError(
            f"search_args cv must be a whole number of at least 2, got {json.dumps(json_safe(args['cv']))}",
            hint="it is the number of cross-validation folds each candidate is scored on: use 3 or 5",
        )
    return dict(args)


def _check_folds(y: np.ndarray, task: str, folds: int) -> None:
    """Every fold needs rows, and for classification every class in every fold."""
    if folds > len(y):
        raise PgmlError(
            f"cannot split {len(y)} training rows into {folds} search folds",
            hint=f"use at most {len(y)} folds, or train on more rows",
        )
    if task != "classification":
        return
    counts = np.bincount(y.astype(int))
    counts = counts[counts > 0]
    if len(counts) < 2:
        raise PgmlError(
            "the training data has only one class, so there is nothing to classify",
            hint="check the label column; classification needs at least two distinct labels",
        )
    if folds > counts.min():
        raise PgmlError(
            f"the rarest class has only {counts.min()} training rows, fewer than the {folds} search folds",
            hint=f"use at most {counts.min()} folds, or add rows of the rarer classes",
        )


def search(
    algorithm: Algorithm,
    base_params: Mapping[str, Any],
    X: np.ndarray,
    y: np.ndarray,
    task: str,
    method: str,
    space: Mapping[str, Any],
    folds: int = 3,
    n_iter: int = DEFAULT_N_ITER,
) -> SearchResult:
    """Cross-validate candidates from ``space`` on top of ``base_params`` and return the best.

    Uses shuffled (stratified, for classification) k-fold CV with random_state=0,
    scoring r2 for regression, f1 (binary) / f1_macro for classification and the
    silhouette of each held-out fold's clusters for clustering (``y`` is then ignored).
    Nothing is refitted: the caller trains the final model with
    ``{**base_params, **result.best_params}``.  ``X`` must already be
    preprocessed as the final model will see it; ``y`` holds class indices for
    classification.
    """
    validate_search(algorithm, method, space, folds, n_iter)
    y = np.asarray(y)
    _check_folds(y, task, folds)
    # The folds have no validation rows to stop early on: the candidates train in full.
    estimator = boosting.without_early_stopping(make_estimator(algorithm, base_params))
    # make_estimator applies JSON coercions (e.g. arrays to tuples); reuse them for each value.
    grid = {
        name: [make_estimator(algorithm, {name: v}).get_params(deep=False)[name] for v in values]
        for name, values in space.items()
    }
    scoring: Any
    if task == "classification":
        cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=0)
        scoring = "f1" if set(np.unique(y).tolist()) == {0, 1} else "f1_macro"
    else:
        cv = KFold(n_splits=folds, shuffle=True, random_state=0)
        scoring = silhouette_scorer if task == "clustering" else "r2"
    common = dict(scoring=scoring, cv=cv, n_jobs=1, refit=False, error_score=np.nan)
    if method == "grid":
        searcher = GridSearchCV(estimator, grid, **common)
    else:
        # Sampling from lists is without replacement; asking for more than exist only warns.
        size = math.prod(len(v) for v in grid.values())
        searcher = RandomizedSearchCV(estimator, grid, n_iter=min(n_iter, size), random_state=0, **common)

    with warnings.catch_warnings():
        # Convergence and partial-failure warnings would only clutter the server log;
        # failed candidates show up as None scores.
        warnings.simplefilter("ignore")
        try:
            searcher.fit(X, y)
        except ValueError as exc:
            if "fits failed" not in str(exc):
                raise
            # The message ends with the last fit's exception, e.g. "ValueError: Solver lbfgs supports ...".
            last_line = [line for line in str(exc).splitlines() if line.strip()][-1]
            reason = re.sub(r"^\w+: ", "", last_line.strip())
            raise PgmlError(
                f"every candidate of the hyperparameter search failed to train: {reason}",
                hint="check that the searched values work together and with the other hyperparameters",
            ) from exc

    results = searcher.cv_results_
    means = np.asarray(results["mean_test_score"], dtype=float)
    if np.all(np.isnan(means)):
        raise PgmlError(
            "the hyperparameter search could not score any candidate",
            hint="use fewer folds or train on more rows, so that every fold has enough rows to score",
        )
    best = int(np.nanargmax(means))
    candidates = [
        {"params": json_safe(params), "mean_score": json_safe(mean), "std_score": json_safe(std)}
        for params, mean, std in zip(results["params"], means, results["std_test_score"])
    ]
    return SearchResult(
        best_params=json_safe(results["params"][best]),
        best_score=float(means[best]),
        candidates=candidates,
    )
