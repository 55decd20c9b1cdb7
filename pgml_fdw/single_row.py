"""Exact fast paths for predicting one row with a fitted scikit-learn estimator.

A prediction is served inside a web request, one row at a time.  There,
``estimator.predict(x.reshape(1, -1))`` is dominated by input validation
(tens of microseconds for a linear model) and, for forests, by joblib
dispatch and per-tree validation (milliseconds).  :func:`fast_predictor`
returns an object that computes the same result as scikit-learn 1.6
without that per-call overhead:

* linear models: one dot product (bit-identical to scikit-learn on one row);
* a single decision tree: the tree's own compiled ``apply`` on a float32 row;
* forests: all trees walked at once, one vectorized step per tree level.

``predict(x)`` takes a 1-D float feature vector that is already preprocessed
and returns the value for a regressor, or the *index* into
``estimator.classes_`` of the predicted class for a classifier.
``predict_proba(x)`` returns a 1-D array aligned with ``estimator.classes_``,
or None when the estimator has no ``predict_proba``.

Rows the fast path does not handle (NaN or infinite values, a feature vector
of the wrong length for trees) are handed to the estimator itself, so they get
scikit-learn's own result or its own ``ValueError``.

Predictors are cheap to rebuild, and meant to be built with
:func:`fast_predictor` each time a model is loaded: construction takes
microseconds for linear models and about 0.3 s for a forest of 1.3 million
nodes.  Pickling one stores only its estimator and rebuilds it on load.  A
predictor holds a reference to its estimator and must not be used after the
estimator is refitted or modified.
"""
from __future__ import annotations

import math
from typing import Any, Callable, List, Optional, Tuple, Union

import numpy as np
from scipy.special import expit
from sklearn import ensemble, linear_model, svm, tree
from sklearn.exceptions import NotFittedError
from sklearn.utils.validation import check_is_fitted

# Forests check whether every tree has reached a leaf once every this many
# levels: checking at every level would make each level a third slower.
_LEVELS_PER_CHECK = 4


class FastPredictor:
    """Single-row predictor for one fitted estimator (see the module docstring)."""

    __slots__ = ("estimator",)

    def __init__(self, estimator: Any) -> None:
        self.estimator = estimator

    def __reduce__(self) -> tuple:
        # Pickle only the estimator and rebuild on load: the precomputed arrays
        # are derived data, and results must follow the unpickled estimator
        # (whose arrays may come back with another memory layout).
        return (fast_predictor, (self.estimator,))

    def predict(self, x: np.ndarray) -> Union[float, int]:
        """Predict one row: the value (regressor) or the class index (classifier)."""
        raise NotImplementedError

    def predict_proba(self, x: np.ndarray) -> Optional[np.ndarray]:
        """Class probabilities of one row, aligned with ``estimator.classes_``."""
        return None

    def _fallback_predict(self, x: np.ndarray) -> Union[float, int]:
        """Let scikit-learn predict (or reject) a row the fast path does not handle."""
        y = self.estimator.predict(x.reshape(1, -1))[0]
        if hasattr(self.estimator, "classes_"):
            # classes_ is sorted (it comes from np.unique), so this is the index.
            return int(np.searchsorted(self.estimator.classes_, y))
        return float(y)

    def _fallback_proba(self, x: np.ndarray) -> np.ndarray:
        return self.estimator.predict_proba(x.reshape(1, -1))[0]


class _LinearRegressor(FastPredictor):
    """``x @ coef_ + intercept_`` for single-output linear regressors."""

    __slots__ = ("_coef", "_intercept")

    def __init__(self, estimator: Any) -> None:
        super().__init__(estimator)
        self._coef = estimator.coef_
        # intercept_ is 0.0, a numpy scalar or a 1-element array depending on the model.
        self._intercept = float(np.ravel(estimator.intercept_)[0])

    def predict(self, x: np.ndarray) -> float:
        y = float(x @ self._coef) + self._intercept
        # A NaN or infinite feature always makes the result non-finite, so
        # only then is the input checked; scikit-learn rejects such rows.
        if math.isfinite(y) or np.isfinite(x).all():
            return y
        return self._fallback_predict(x)


def _softmax(scores: np.ndarray) -> np.ndarray:
    # Same operations, in the same order, as sklearn.utils.extmath.softmax.
    exp = np.exp(scores - scores.max())
    return exp / exp.sum()


def _ovr_binary(score: float) -> np.ndarray:
    p = expit(score)
    return np.array([1.0 - p, p])


def _softmax_binary(score: float) -> np.ndarray:
    return _softmax(np.array([-score, score]))


def _ovr(scores: np.ndarray) -> np.ndarray:
    p = expit(scores)
    return p / p.sum()


class _LinearClassifier(FastPredictor):
    """Decision function ``x @ coef_.T + intercept_``, then sign or argmax.

    Binary models have one score and predict class 1 when it is positive, as
    ``LinearClassifierMixin.predict`` does.
    """

    __slots__ = ("_binary", "_coef", "_intercept", "_proba")

    def __init__(
        self,
        estimator: Any,
        proba: Optional[Callable[[Any], np.ndarray]] = None,
    ) -> None:
        super().__init__(estimator)
        # Binary models have coef_ of shape (1, n) or, for RidgeClassifier, (n,).
        coef = np.atleast_2d(estimator.coef_)
        self._binary = coef.shape[0] == 1
        if self._binary:
            self._coef = coef[0]
            self._intercept: Union[float, np.ndarray] = float(np.ravel(estimator.intercept_)[0])
        else:
            # The transposed view is what scikit-learn multiplies by; keeping
            # it makes the scores bit-identical.
            self._coef = coef.T
            self._intercept = np.asarray(estimator.intercept_, dtype=np.float64)
        self._proba = proba

    def _scores(self, x: np.ndarray) -> Optional[Union[float, np.ndarray]]:
        """The decision function, or None for a row with NaN or infinity."""
        score: Union[float, np.ndarray]
        if self._binary:
            score = first = float(x @ self._coef) + self._intercept
        else:
            scores = x @ self._coef + self._intercept
            score, first = scores, scores[0]
        # A NaN or infinite feature makes every score non-finite, so checking
        # one score is enough to know when the input needs checking.
        if math.isfinite(first) or np.isfinite(x).all():
            return score
        return None

    def predict(self, x: np.ndarray) -> Union[float, int]:
        score = self._scores(x)
        if score is None:
            return self._fallback_predict(x)
        if isinstance(score, float):  # binary
            return 1 if score > 0 else 0
        return int(score.argmax())

    def predict_proba(self, x: np.ndarray) -> Optional[np.ndarray]:
        if self._proba is None:
            return None
        score = self._scores(x)
        if score is None:
            return self._fallback_proba(x)
        return self._proba(score)


def _logistic_proba(estimator: Any) -> Callable[[Any], np.ndarray]:
    """The probability function LogisticRegression.predict_proba uses for this fit."""
    # Mirrors the choice in LogisticRegression.predict_proba (scikit-learn 1.6).
    multi_class = getattr(estimator, "multi_class", "deprecated")
    ovr = multi_class in ("ovr", "warn") or (
        multi_class in ("auto", "deprecated")
        and (estimator.classes_.size <= 2 or estimator.solver == "liblinear")
    )
    binary = estimator.coef_.shape[0] == 1
    if ovr:
        return _ovr_binary if binary else _ovr
    return _softmax_binary if binary else _softmax


class _TreePredictor(FastPredictor):
    """One decision tree, walked by the tree's own compiled ``apply``.

    Going through ``tree_.apply`` keeps scikit-learn's exact comparison
    (float32 feature against float64 threshold) at no extra cost.
    """

    __slots__ = ("_tree", "_shape", "_value", "_leaf_class")

    def __init__(self, estimator: Any) -> None:
        super().__init__(estimator)
        self._tree = estimator.tree_
        self._shape = (estimator.n_features_in_,)
        value = estimator.tree_.value[:, 0, :]
        if hasattr(estimator, "classes_"):
            # In scikit-learn >= 1.4 a classifier's node values are class
            # fractions, returned as they are by predict_proba.
            self._value = value.copy()
            self._leaf_class = value.argmax(axis=1)
        else:
            self._value = value[:, 0].copy()
            self._leaf_class = None

    def _leaf(self, x: np.ndarray) -> Optional[int]:
        """The leaf reached by ``x``, or None when scikit-learn must handle the row."""
        if x.shape != self._shape:
            return None
        x32 = x.astype(np.float32)
        # The sum of the float32 values as Python floats cannot overflow, so it
        # is non-finite exactly when some value is (including float32 overflow).
        if not math.isfinite(sum(x32.tolist())):
            return None
        return int(self._tree.apply(x32.reshape(1, -1))[0])

    def predict(self, x: np.ndarray) -> Union[float, int]:
        leaf = self._leaf(x)
        if leaf is None:
            return self._fallback_predict(x)
        if self._leaf_class is None:
            return float(self._value[leaf])
        return int(self._leaf_class[leaf])

    def predict_proba(self, x: np.ndarray) -> Optional[np.ndarray]:
        if self._leaf_class is None:
            return None
        leaf = self._leaf(x)
        if leaf is None:
            return self._fallback_proba(x)
        return self._value[leaf].copy()


def _flatten_forest(
    trees: List[Any],
) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Concatenate the trees of a forest into flat arrays for a vectorized walk.

    Nodes are renumbered breadth-first so that the two children of a node are
    adjacent: the child reached from node ``n`` is ``first[n] + (x > threshold)``.
    Tree ``t``'s root is node ``t``.  Leaves point to themselves with an
    infinite threshold, so trees that reach a leaf early stay there.

    Returns ``(first, feature, threshold, order)``: ``threshold`` is float32
    (see below) and ``order[new_id]`` is the node's index in the concatenation
    of the trees' own node arrays.
    """
    counts = np.array([t.node_count for t in trees], dtype=np.intp)
    offsets = np.concatenate(([0], np.cumsum(counts)[:-1]))
    shift = np.repeat(offsets, counts)
    left = np.concatenate([t.children_left for t in trees]).astype(np.intp)
    right = np.concatenate([t.children_right for t in trees]).astype(np.intp)
    split = left >= 0  # scikit-learn marks leaves with child -1
    left = np.where(split, left + shift, -1)
    right = np.where(split, right + shift, -1)

    new_id = np.empty(len(left), dtype=np.intp)
    first = np.empty(len(left), dtype=np.intp)
    new_id[offsets] = np.arange(len(trees))
    frontier = offsets
    next_free = len(trees)
    while frontier.size:
        is_parent = split[frontier]
        parents = frontier[is_parent]
        children = next_free + 2 * np.arange(parents.size)
        new_id[left[parents]] = children
        new_id[right[parents]] = children + 1
        first[new_id[parents]] = children
        leaves = new_id[frontier[~is_parent]]
        first[leaves] = leaves
        next_free += 2 * parents.size
        frontier = np.column_stack((left[parents], right[parents])).ravel()

    order = np.empty_like(new_id)
    order[new_id] = np.arange(len(new_id))
    is_split = split[order]
    feature = np.where(is_split, np.concatenate([t.feature for t in trees])[order], 0)
    threshold = np.where(
        is_split, np.concatenate([t.threshold for t in trees])[order], np.inf
    )
    return first, feature.astype(np.intp), _float32_round_down(threshold), order


def _float32_round_down(threshold: np.ndarray) -> np.ndarray:
    """The largest float32 not above each float64 threshold.

    scikit-learn compares a float32 feature with a float64 threshold.  For a
    float32 ``x``, ``x > t`` holds exactly when ``x > round_down_32(t)``, so
    the walk can compare float32 with float32, which numpy does much faster
    than a mixed comparison.
    """
    with np.errstate(over="ignore"):  # thresholds beyond float32 become +-inf
        rounded = threshold.astype(np.float32)
    above = rounded > threshold
    rounded[above] = np.nextafter(rounded[above], np.float32(-np.inf))
    return rounded


class _ForestPredictor(FastPredictor):
    """All trees of a forest walked at once, one numpy step per tree level.

    Each step costs a handful of numpy calls on an array of one node index per
    tree, so a row costs about 2 microseconds per level of the deepest path
    it takes, whatever the number of trees.  Leaf values are summed in tree
    order and divided by the number of trees, as scikit-learn does, so
    results are bit-identical to ``predict``/``predict_proba`` with
    ``n_jobs=1`` (threads may sum in another order).
    """

    __slots__ = ("_shape", "_first", "_feature", "_threshold", "_value",
                 "_roots", "_n_trees", "_classifier")

    def __init__(self, estimator: Any) -> None:
        super().__init__(estimator)
        trees = [e.tree_ for e in estimator.estimators_]
        self._first, self._feature, self._threshold, order = _flatten_forest(trees)
        value = np.concatenate([t.value[:, 0, :] for t in trees])[order]
        self._classifier = hasattr(estimator, "classes_")
        self._value = value if self._classifier else value[:, 0].copy()
        self._shape = (estimator.n_features_in_,)
        self._roots = np.arange(len(trees))
        self._n_trees = len(trees)

    def _leaves(self, x: np.ndarray) -> Optional[np.ndarray]:
        """The leaf reached in each tree, or None when scikit-learn must handle the row."""
        if x.shape != self._shape:
            return None
        x32 = x.astype(np.float32)
        # See _TreePredictor._leaf: non-finite exactly when some value is.
        if not math.isfinite(sum(x32.tolist())):
            return None
        first, feature, threshold = self._first, self._feature, self._threshold
        nodes = self._roots
        while True:
            for _ in range(_LEVELS_PER_CHECK):
                previous = nodes
                nodes = first[nodes] + (x32[feature[nodes]] > threshold[nodes])
            # A node that is not a leaf always moves, so no move means done.
            if not np.count_nonzero(nodes != previous):
                return nodes

    def _proba(self, leaves: np.ndarray) -> np.ndarray:
        # accumulate adds row by row in tree order, like the forest's loop.
        return np.add.accumulate(self._value[leaves], axis=0)[-1] / self._n_trees

    def predict(self, x: np.ndarray) -> Union[float, int]:
        leaves = self._leaves(x)
        if leaves is None:
            return self._fallback_predict(x)
        if self._classifier:
            return int(self._proba(leaves).argmax())
        return float(np.add.accumulate(self._value[leaves])[-1]) / self._n_trees

    def predict_proba(self, x: np.ndarray) -> Optional[np.ndarray]:
        if not self._classifier:
            return None
        leaves = self._leaves(x)
        if leaves is None:
            return self._fallback_proba(x)
        return self._proba(leaves)


# Exact types, not isinstance: a subclass may override predict.
_LINEAR_REGRESSORS = frozenset({
    linear_model.LinearRegression, linear_model.Ridge, linear_model.RidgeCV,
    linear_model.Lasso, linear_model.LassoCV, linear_model.ElasticNet,
    linear_model.ElasticNetCV, linear_model.BayesianRidge,
    linear_model.HuberRegressor, svm.LinearSVR,
})
_LOGISTIC = frozenset({linear_model.LogisticRegression, linear_model.LogisticRegressionCV})
_RIDGE_CLASSIFIERS = frozenset({linear_model.RidgeClassifier, linear_model.RidgeClassifierCV})
_TREES = frozenset({
    tree.DecisionTreeRegressor, tree.DecisionTreeClassifier,
    tree.ExtraTreeRegressor, tree.ExtraTreeClassifier,
})
_FORESTS = frozenset({
    ensemble.RandomForestRegressor, ensemble.RandomForestClassifier,
    ensemble.ExtraTreesRegressor, ensemble.ExtraTreesClassifier,
})
_SUPPORTED = (_LINEAR_REGRESSORS | _LOGISTIC | _RIDGE_CLASSIFIERS | {svm.LinearSVC}
              | _TREES | _FORESTS)


def fast_predictor(estimator: Any) -> Optional[FastPredictor]:
    """Build an exact single-row predictor for ``estimator``.

    Returns None when there is no fast path: an unsupported or unfitted
    estimator, or a multi-output one.  The caller then uses
    ``estimator.predict(x.reshape(1, -1))``.
    """
    kind = type(estimator)
    if kind not in _SUPPORTED:
        return None
    try:
        check_is_fitted(estimator)
    except NotFittedError:
        return None
    if kind in _LINEAR_REGRESSORS:
        return _LinearRegressor(estimator) if np.ndim(estimator.coef_) == 1 else None
    if kind in _LOGISTIC:
        return _LinearClassifier(estimator, _logistic_proba(estimator))
    if kind in _RIDGE_CLASSIFIERS:
        if estimator._label_binarizer.y_type_.startswith("multilabel"):
            return None
        return _LinearClassifier(estimator)
    if kind is svm.LinearSVC:
        return _LinearClassifier(estimator)
    if estimator.n_outputs_ != 1:
        return None
    if kind in _TREES:
        return _TreePredictor(estimator)
    return _ForestPredictor(estimator)
