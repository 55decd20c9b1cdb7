"""Exact single-row predictors in plain Python: no numpy, no scikit-learn.

A prediction is served inside a web request, one row at a time, often on a connection that has not
predicted before. There, ``estimator.predict(x.reshape(1, -1))`` is dominated by input validation
(tens of microseconds for a linear model) and, for forests, by joblib dispatch (milliseconds), and
importing scikit-learn costs the connection half a second and 100 MB. So at training time
:func:`fast_predictor` reads a fitted estimator's parameters into a :class:`Predictor` that needs
only the standard library, and :mod:`model_format` stores them beside the estimator
(:meth:`Predictor.to_data` and :func:`from_data`):

* linear models: one dot product per output (``math.fsum`` of the products, so the result is the
  correctly rounded dot product: within a few units in the last place of scikit-learn's BLAS,
  whose summation order depends on the CPU), then scikit-learn's link (sign, argmax, logistic,
  softmax);
* decision trees and forests (random forests, extra trees): every tree walked with scikit-learn's
  own comparison (the feature rounded to float32 against the float64 threshold), leaf values
  summed in tree order and divided by the number of trees, as scikit-learn does: bit-identical.
  A forest whose trees are deep in all (more than ``_NUMPY_LEVELS`` levels added up) is walked by
  numpy, all trees at once, which then costs the connection numpy's import once;
* k-means (and mini-batch k-means): the nearest centroid by scikit-learn's measure, answered only
  when no rounding could make scikit-learn choose another (the estimator answers the rest);
* PCA: the projection on its components (``transform``), one rounding per component.

``answer(x)`` takes the preprocessed feature values (a sequence of floats) and returns, in one pass,
the value for a regressor, the *index* into the estimator's ``classes_`` for a classifier or the
cluster for k-means, and the class probabilities aligned with ``classes_`` (None for a regressor,
or an estimator without ``predict_proba``); ``predict(x)`` and ``predict_proba(x)`` give either
half. PCA's predictor has ``transform(x)`` instead, the row's components. A row the predictor
does not handle (NaN, infinity, beyond float32 for a tree, the wrong length) raises
:class:`NeedsEstimator`: the caller then asks the estimator itself, which gives scikit-learn's own
result or its own ``ValueError``.
"""
from __future__ import annotations

import math
import struct
import sys
from array import array
from operator import mul
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

# What to_data returns and from_data takes: plain JSON data, and named arrays of numbers.
Data = Tuple[Dict[str, Any], Dict[str, array]]


class NeedsEstimator(Exception):
    """This row must be predicted (or refused) by the scikit-learn estimator itself."""


class Predictor:
    """Single-row predictor for one fitted estimator (see the module docstring)."""

    def answer(self, x: Sequence[float]) -> Tuple[Union[float, int], Optional[List[float]]]:
        """One row's prediction (the value, or the class index) and class probabilities, computed once."""
        raise NotImplementedError

    def predict(self, x: Sequence[float]) -> Union[float, int]:
        """Predict one row: the value (regressor) or the class index (classifier)."""
        return self.answer(x)[0]

    def predict_proba(self, x: Sequence[float]) -> Optional[List[float]]:
        """Class probabilities of one row, aligned with the estimator's ``classes_``."""
        return self.answer(x)[1]

    def transform(self, x: Sequence[float]) -> List[float]:
        """A decomposition's components of one row (its ``transform``)."""
        raise NotImplementedError

    def to_data(self) -> Data:
        """The predictor's parameters, for :func:`from_data`."""
        raise NotImplementedError


def _exp(value: float) -> float:
    try:
        return math.exp(value)
    except OverflowError:  # numpy and scipy give infinity
        return math.inf


def _expit(score: float) -> float:
    # scipy.special.expit computes 1 / (1 + exp(-x)) in double precision, with the C library's exp.
    return 1.0 / (1.0 + _exp(-score))


def _argmax(values: List[float]) -> int:
    return max(range(len(values)), key=values.__getitem__)  # the first of equal maxima, as numpy's


def _softmax(scores: List[float]) -> List[float]:
    # The operations of sklearn.utils.extmath.softmax, in its order.
    top = max(scores)
    exps = [_exp(s - top) for s in scores]
    total = sum(exps)
    return [e / total for e in exps]


def _ovr(scores: List[float]) -> List[float]:
    p = [_expit(s) for s in scores]
    total = sum(p)
    return [v / total for v in p]


def _ovr_binary(scores: List[float]) -> List[float]:
    p = _expit(scores[0])
    return [1.0 - p, p]


def _softmax_binary(scores: List[float]) -> List[float]:
    return _softmax([-scores[0], scores[0]])


# How a linear classifier's scores become probabilities (scikit-learn's predict_proba for the fit).
_PROBA: Dict[str, Callable[[List[float]], List[float]]] = {
    "ovr": _ovr, "ovr_binary": _ovr_binary, "softmax": _softmax, "softmax_binary": _softmax_binary,
}


class LinearPredictor(Predictor):
    """``x @ coef.T + intercept``: a regressor's value, or a classifier's decision function, then
    the sign (one score: class 1 when positive) or the argmax, and the probabilities."""

    def __init__(self, coef: Sequence[float], intercept: Sequence[float], classifier: bool,
                 proba: Optional[str]) -> None:
        n_outputs = len(intercept)
        self._n_features = len(coef) // n_outputs
        width = self._n_features
        self._coef = [list(coef[i * width:(i + 1) * width]) for i in range(n_outputs)]
        self._intercept = list(intercept)
        self._classifier = classifier
        self._proba = proba

    def _scores(self, x: Sequence[float]) -> List[float]:
        if len(x) != self._n_features:
            raise NeedsEstimator
        try:
            scores = [math.fsum(map(mul, x, row)) + b for row, b in zip(self._coef, self._intercept)]
        except (OverflowError, ValueError):  # an infinite feature: fsum refuses inf - inf and overflow
            raise NeedsEstimator from None
        # A NaN or infinite feature makes every score non-finite; scikit-learn refuses such a row.
        if not math.isfinite(scores[0]):
            raise NeedsEstimator
        return scores

    def answer(self, x: Sequence[float]) -> Tuple[Union[float, int], Optional[List[float]]]:
        scores = self._scores(x)
        if not self._classifier:
            return scores[0], None
        decided = (1 if scores[0] > 0 else 0) if len(scores) == 1 else _argmax(scores)
        return decided, None if self._proba is None else _PROBA[self._proba](scores)

    def to_data(self) -> Data:
        meta = {"kind": "linear", "classifier": self._classifier, "proba": self._proba}
        coef = array("d", [c for row in self._coef for c in row])
        return meta, {"coef": coef, "intercept": array("d", self._intercept)}


# A forest walked one node at a time in Python costs about 0.3 microseconds per tree and level: one
# whose trees are deeper than this in all is walked by numpy instead, all trees at once, one step
# per level (importing numpy costs the connection about 70 ms, once).
_NUMPY_LEVELS = 2000


class _VectorWalk:
    """Every tree of a forest walked at once with numpy: the leaf each tree's path ends in. Leaves
    point to themselves with an infinite threshold, so trees that reach a leaf early stay there."""

    def __init__(self, roots: array, left: array, right: array, feature: array, threshold: array) -> None:
        import numpy as np

        self._np = np
        left_ = np.frombuffer(left, dtype=np.int32).astype(np.intp)
        leaf = left_ < 0
        itself = np.arange(len(left_), dtype=np.intp)
        self._left = np.where(leaf, itself, left_)
        self._right = np.where(leaf, itself, np.frombuffer(right, dtype=np.int32).astype(np.intp))
        self._feature = np.where(leaf, 0, np.frombuffer(feature, dtype=np.int32)).astype(np.intp)
        self._threshold = np.where(leaf, np.float32(np.inf), np.frombuffer(threshold, dtype=np.float32))
        self._roots = np.frombuffer(roots, dtype=np.int32).astype(np.intp)

    def leaves(self, x32: Sequence[float]) -> List[int]:
        np = self._np
        x = np.asarray(x32, dtype=np.float32)
        left, right, feature, threshold = self._left, self._right, self._feature, self._threshold
        nodes = self._roots
        while True:
            for _ in range(4):  # checking for the end at every level would make each level slower
                previous = nodes
                nodes = np.where(x[feature[nodes]] <= threshold[nodes], left[nodes], right[nodes])
            if not np.count_nonzero(nodes != previous):
                return nodes.tolist()


class TreesPredictor(Predictor):
    """Decision trees, one or an averaged ensemble, stored as flat arrays of every tree's nodes.

    A row goes left at a node when its feature, rounded to float32, is at most the node's threshold
    (scikit-learn's ``apply``; thresholds are kept as the largest float32 not above them, which
    decides every float32 the same way); leaf values are added in tree order, starting from the
    first tree's, and divided by the number of trees, as ``predict`` and ``predict_proba`` do.
    """

    def __init__(self, roots: array, left: array, right: array, feature: array, threshold: array,
                 value: array, n_features: int, n_classes: int, levels: int = 0) -> None:
        self._roots, self._left, self._right = roots, left, right
        self._feature, self._threshold, self._value = feature, threshold, value
        self._n_features = n_features
        self._n_classes = n_classes  # 0: a regressor, one value per node
        self._levels = levels  # the trees' depths added up
        self._float32 = struct.Struct(f"{n_features}f")
        self._walk = _VectorWalk(roots, left, right, feature, threshold) if levels > _NUMPY_LEVELS else None

    def _leaves(self, x: Sequence[float]) -> List[int]:
        if len(x) != self._n_features:
            raise NeedsEstimator
        try:
            x32 = self._float32.unpack(self._float32.pack(*x))
        except (OverflowError, struct.error):  # beyond float32: scikit-learn refuses the row
            raise NeedsEstimator from None
        # The sum of float32 values cannot overflow a double: non-finite exactly when some value is.
        if not math.isfinite(sum(x32)):
            raise NeedsEstimator
        if self._walk is not None:
            return self._walk.leaves(x32)
        left, right, feature, threshold = self._left, self._right, self._feature, self._threshold
        leaves = []
        for node in self._roots:
            while True:
                child = left[node]
                if child < 0:
                    break
                node = child if x32[feature[node]] <= threshold[node] else right[node]
            leaves.append(node)
        return leaves

    def _proba(self, leaves: List[int]) -> List[float]:
        k, value = self._n_classes, self._value
        total = list(value[leaves[0] * k:(leaves[0] + 1) * k])
        for leaf in leaves[1:]:
            total = [a + b for a, b in zip(total, value[leaf * k:(leaf + 1) * k])]
        n = len(leaves)
        return [p / n for p in total]

    def answer(self, x: Sequence[float]) -> Tuple[Union[float, int], Optional[List[float]]]:
        leaves = self._leaves(x)
        if self._n_classes:
            proba = self._proba(leaves)
            return _argmax(proba), proba
        value = self._value
        total = value[leaves[0]]
        for leaf in leaves[1:]:
            total += value[leaf]
        return total / len(leaves), None

    def to_data(self) -> Data:
        meta = {"kind": "trees", "n_features": self._n_features, "n_classes": self._n_classes, "levels": self._levels}
        return meta, {"roots": self._roots, "left": self._left, "right": self._right, "feature": self._feature,
                      "threshold": self._threshold, "value": self._value}


# A bound on the relative rounding error of a sum of n products in any order, with each product
# rounded (Higham's gamma_n, doubled): what BLAS may be off by in a dot product.
def _rounding(n: int) -> float:
    return 2.0 * (n + 2) * 2.0 ** -53


class CentroidPredictor(Predictor):
    """k-means' predict: the cluster whose centroid ``c`` is nearest, by scikit-learn's own measure,
    the smallest ``||c||^2 - 2 x.c`` (the row's own ``||x||^2`` is the same for every centroid),
    the first of equal ones.

    scikit-learn computes those sums with BLAS, whose rounding depends on the CPU; here each is
    rounded once (``math.fsum``). When the two nearest centroids are closer than both roundings
    can be off, the row goes to the estimator (:class:`NeedsEstimator`): every answer given here
    is the one scikit-learn gives."""

    def __init__(self, centers: Sequence[float], norms: Sequence[float]) -> None:
        k = len(norms)
        self._n_features = len(centers) // k
        width = self._n_features
        self._centers = array("d", centers)
        # -2c is exact (a power of two), so each sum below has one rounding besides the products'.
        self._minus2 = [[-2.0 * v for v in centers[i * width:(i + 1) * width]] for i in range(k)]
        self._norms = list(norms)
        self._rounding = _rounding(width + 1)

    def answer(self, x: Sequence[float]) -> Tuple[Union[float, int], Optional[List[float]]]:
        if len(x) != self._n_features:
            raise NeedsEstimator
        try:
            scores = [math.fsum([norm, *map(mul, x, row)]) for norm, row in zip(self._norms, self._minus2)]
        except (OverflowError, ValueError):  # an infinite feature
            raise NeedsEstimator from None
        if not all(map(math.isfinite, scores)):
            raise NeedsEstimator
        best = min(range(len(scores)), key=scores.__getitem__)  # the first of equal minima
        # How far from the exact sum scikit-learn's may be, for each centroid.
        slack = [self._rounding * (abs(norm) + math.fsum(map(abs, map(mul, x, row))))
                 for norm, row in zip(self._norms, self._minus2)]
        for j, score in enumerate(scores):
            if j != best and score - scores[best] <= 2.0 * (slack[j] + slack[best]):
                raise NeedsEstimator  # too close to call the way scikit-learn's rounding will
        return best, None

    def to_data(self) -> Data:
        return {"kind": "centroids"}, {"centers": self._centers, "norms": array("d", self._norms)}


class ProjectionPredictor(Predictor):
    """PCA's transform: ``x @ components.T - mean @ components.T`` (the second term computed once,
    at training), divided by the components' standard deviations when whitened, as scikit-learn
    computes it; each sum rounded once (``math.fsum``), within a few units in the last place of
    scikit-learn's BLAS."""

    def __init__(self, components: Sequence[float], offset: Sequence[float], scale: Optional[Sequence[float]]) -> None:
        k = len(offset)
        self._n_features = len(components) // k
        width = self._n_features
        self._components = [list(components[i * width:(i + 1) * width]) for i in range(k)]
        self._offset = list(offset)
        self._scale = None if scale is None else list(scale)

    def transform(self, x: Sequence[float]) -> List[float]:
        if len(x) != self._n_features:
            raise NeedsEstimator
        try:
            out = [math.fsum([*map(mul, x, row), -offset]) for row, offset in zip(self._components, self._offset)]
        except (OverflowError, ValueError):  # an infinite feature
            raise NeedsEstimator from None
        if not all(map(math.isfinite, out)):
            raise NeedsEstimator
        if self._scale is not None:
            out = [v / s for v, s in zip(out, self._scale)]
        return out

    def to_data(self) -> Data:
        arrays = {"components": array("d", [v for row in self._components for v in row]),
                  "offset": array("d", self._offset)}
        if self._scale is not None:
            arrays["scale"] = array("d", self._scale)
        return {"kind": "projection", "whiten": self._scale is not None}, arrays


def from_data(meta: Dict[str, Any], arrays: Dict[str, array]) -> Predictor:
    """The predictor :meth:`Predictor.to_data` described."""
    if meta["kind"] == "linear":
        return LinearPredictor(arrays["coef"], arrays["intercept"], meta["classifier"], meta["proba"])
    if meta["kind"] == "trees":
        return TreesPredictor(arrays["roots"], arrays["left"], arrays["right"], arrays["feature"],
                              arrays["threshold"], arrays["value"], meta["n_features"], meta["n_classes"],
                              meta.get("levels", 0))
    if meta["kind"] == "centroids":
        return CentroidPredictor(arrays["centers"], arrays["norms"])
    if meta["kind"] == "projection":
        return ProjectionPredictor(arrays["components"], arrays["offset"], arrays["scale"] if meta["whiten"] else None)
    raise ValueError(f"unknown predictor kind {meta['kind']!r}")


# -- reading a fitted estimator (at training time: this needs numpy and scikit-learn) ----------------

def fast_predictor(estimator: Any) -> Optional[Predictor]:
    """An exact single-row predictor for ``estimator``, or None when there is none: an unsupported
    (or subclassed: it may override predict), unfitted or multi-output estimator."""
    from sklearn import cluster, decomposition, ensemble, linear_model, svm, tree
    from sklearn.exceptions import NotFittedError
    from sklearn.utils.validation import check_is_fitted

    # Every one predicts X @ coef_ + intercept_ (RANSAC predicts through another estimator, and
    # kernel ridge is no dot product with the features).
    linear_regressors = {
        linear_model.LinearRegression, linear_model.Ridge, linear_model.RidgeCV, linear_model.Lasso,
        linear_model.LassoCV, linear_model.ElasticNet, linear_model.ElasticNetCV, linear_model.BayesianRidge,
        linear_model.HuberRegressor, svm.LinearSVR, linear_model.SGDRegressor,
        linear_model.PassiveAggressiveRegressor, linear_model.Lars, linear_model.LassoLars,
        linear_model.OrthogonalMatchingPursuit, linear_model.ARDRegression, linear_model.QuantileRegressor,
        linear_model.TheilSenRegressor,
    }
    logistic = {linear_model.LogisticRegression, linear_model.LogisticRegressionCV}
    # The argmax of the decision function, without probabilities (SGDClassifier is not here: its
    # losses make probabilities of their own).
    decision_function = {linear_model.RidgeClassifier, linear_model.RidgeClassifierCV, svm.LinearSVC,
                         linear_model.Perceptron, linear_model.PassiveAggressiveClassifier}
    trees = {tree.DecisionTreeRegressor, tree.DecisionTreeClassifier, tree.ExtraTreeRegressor,
             tree.ExtraTreeClassifier}
    forests = {ensemble.RandomForestRegressor, ensemble.RandomForestClassifier, ensemble.ExtraTreesRegressor,
               ensemble.ExtraTreesClassifier}
    kmeans = {cluster.KMeans, cluster.MiniBatchKMeans}  # not BisectingKMeans: it predicts down its tree
    kind = type(estimator)
    if kind not in linear_regressors | logistic | decision_function | trees | forests | kmeans | {decomposition.PCA}:
        return None
    try:
        check_is_fitted(estimator)
    except NotFittedError:
        return None
    if kind in kmeans:
        return _centroids(estimator)
    if kind is decomposition.PCA:
        return _projection(estimator)
    if kind in linear_regressors:
        if len(getattr(estimator.coef_, "shape", ())) != 1:
            return None
        return _linear(estimator, classifier=False, proba=None)
    if kind in logistic | decision_function:
        if kind in (linear_model.RidgeClassifier, linear_model.RidgeClassifierCV) and \
                estimator._label_binarizer.y_type_.startswith("multilabel"):
            return None
        return _linear(estimator, classifier=True, proba=_logistic_proba(estimator) if kind in logistic else None)
    if estimator.n_outputs_ != 1:
        return None
    return _trees([estimator] if kind in trees else list(estimator.estimators_),
                  estimator.n_features_in_, hasattr(estimator, "classes_"))


def _linear(estimator: Any, classifier: bool, proba: Optional[str]) -> LinearPredictor:
    import numpy as np

    # Binary classifiers have coef_ of shape (1, n) or, for RidgeClassifier, (n,).
    coef = np.atleast_2d(np.asarray(estimator.coef_, dtype=np.float64))
    intercept = np.broadcast_to(np.asarray(estimator.intercept_, dtype=np.float64).ravel(), (coef.shape[0],))
    return LinearPredictor(coef.ravel().tolist(), intercept.tolist(), classifier, proba)


def _logistic_proba(estimator: Any) -> str:
    """How LogisticRegression.predict_proba turns this fit's scores into probabilities (the choice
    scikit-learn 1.6 makes; later versions removed multi_class, whose default is the same)."""
    multi_class = getattr(estimator, "multi_class", "deprecated")
    ovr = multi_class in ("ovr", "warn") or (
        multi_class in ("auto", "deprecated") and (estimator.classes_.size <= 2 or estimator.solver == "liblinear"))
    binary = estimator.coef_.shape[0] == 1
    if ovr:
        return "ovr_binary" if binary else "ovr"
    return "softmax_binary" if binary else "softmax"


def _trees(estimators: List[Any], n_features: int, classifier: bool) -> TreesPredictor:
    import numpy as np

    nodes = [e.tree_ for e in estimators]
    offsets = np.concatenate(([0], np.cumsum([t.node_count for t in nodes])[:-1])).astype(np.int64)

    def joined(field: str, typecode: str, shift: bool = False) -> array:
        parts = []
        for t, offset in zip(nodes, offsets):
            values = np.asarray(getattr(t, field))
            if shift:  # children as indexes into the joined arrays; leaves keep -1
                values = np.where(values >= 0, values + offset, -1)
            parts.append(values)
        return _array(typecode, np.concatenate(parts))

    # In scikit-learn >= 1.4 a classifier's node values are class fractions, which predict_proba
    # returns as they are; a regressor's are the leaf means.
    values = np.concatenate([t.value[:, 0, :] for t in nodes])
    n_classes = values.shape[1] if classifier else 0
    threshold = _float32_round_down(np.concatenate([t.threshold for t in nodes]))
    return TreesPredictor(_array("i", offsets), joined("children_left", "i", True), joined("children_right", "i", True),
                          joined("feature", "i"), _array("f", threshold),
                          _array("d", values if classifier else values[:, 0]), n_features, n_classes,
                          sum(int(t.max_depth) for t in nodes))


def _centroids(estimator: Any) -> CentroidPredictor:
    import numpy as np
    from sklearn.utils.extmath import row_norms

    centers = np.ascontiguousarray(estimator.cluster_centers_, dtype=np.float64)
    # The norms scikit-learn's predict computes, with the same function.
    return CentroidPredictor(centers.ravel().tolist(), row_norms(centers, squared=True).tolist())


def _projection(estimator: Any) -> ProjectionPredictor:
    import numpy as np

    components = np.asarray(estimator.components_, dtype=np.float64)
    offset = np.reshape(np.asarray(estimator.mean_, dtype=np.float64), (1, -1)) @ components.T
    scale = None
    if estimator.whiten:  # scikit-learn's transform, which keeps tiny variances from dividing by zero
        scale = np.sqrt(np.asarray(estimator.explained_variance_, dtype=np.float64))
        scale[scale < np.finfo(scale.dtype).eps] = np.finfo(scale.dtype).eps
    return ProjectionPredictor(components.ravel().tolist(), offset.ravel().tolist(),
                               None if scale is None else scale.tolist())


def _float32_round_down(threshold: Any) -> Any:
    """The largest float32 not above each float64 threshold: for a float32 ``x``, ``x <= t`` holds
    exactly when ``x <= round_down_32(t)``, so thresholds are stored in half the space."""
    import numpy as np

    with np.errstate(over="ignore"):  # thresholds beyond float32 become +-inf
        rounded = threshold.astype(np.float32)
    above = rounded > threshold
    rounded[above] = np.nextafter(rounded[above], np.float32(-np.inf))
    return rounded


def _array(typecode: str, values: Any) -> array:
    import numpy as np

    dtype = {"d": np.float64, "f": np.float32, "i": np.int32}[typecode]
    out = array(typecode)
    out.frombytes(np.ascontiguousarray(values, dtype=dtype).tobytes())
    return out


def array_bytes(values: array) -> bytes:
    """An array's bytes, little-endian whatever this machine's order (as model_format stores them)."""
    if sys.byteorder == "big":
        values = array(values.typecode, values)
        values.byteswap()
    return values.tobytes()


def array_from(typecode: str, data: bytes) -> array:
    """The array :func:`array_bytes` wrote."""
    values = array(typecode)
    values.frombytes(data)
    if sys.byteorder == "big":
        values.byteswap()
    return values
