"""Why this prediction? Each feature's contribution to one prediction (``pgml.explain``).

An explanation splits one number the model computes for a row, the *explained quantity*, into a
*base* value that does not depend on the row and one *contribution* per feature, such that::

    base + sum(contributions) == the explained quantity      (to rounding: a few units in the last place)

The quantity is the model's own output, before any link that is not additive:

==================================  ====================  ============================================
model                               ``explains``          how
==================================  ====================  ============================================
linear regression (every linear     ``prediction``        exact: coefficient x encoded value, base =
estimator the fast path reads)                            intercept
logistic regression                 ``log_odds``          the same on the predicted class's log-odds
                                                          (multinomial with 3+ classes: ``raw_score``,
                                                          the class's score before the softmax)
ridge / linear svm classifiers      ``decision_function`` the same on the predicted class's score
decision trees, random forests,     ``prediction`` /      exact path-dependent TreeSHAP (Lundberg et
extra trees                         ``probability``       al. 2018), computed here with numpy; a
                                                          classifier's probability of its predicted
                                                          class
gradient_boosting_trees             ``prediction`` /      TreeSHAP of every stage's tree; base adds the
                                    ``log_odds`` /        initial estimate; classifiers explain the
                                    ``raw_score``         predicted class's log-odds (binary) or raw
                                                          score (3+ classes)
xgboost, lightgbm                   ``prediction`` /      the library's own TreeSHAP
                                    ``log_odds`` /        (``pred_contribs`` / ``pred_contrib``), last
                                    ``raw_score``         column the base; regressions with a log link
                                                          (poisson, gamma, tweedie) explain the raw
                                                          score, the log of the prediction
==================================  ====================  ============================================

The predicted class is the one ``pgml.predictions`` answers for the row (its ``label``), and the
contributions explain that class: a positive contribution pushed the model towards it.

Contributions are per *original* feature column: the parts of a one-hot text column are added up
into that column, and a column the encoder turns into several numbers of its own (the elements of
an array) gets one contribution per element, named as the encoder names them. A NULL that
preprocessing imputed is explained at its imputed value (``imputed`` is true and ``value`` says
which); for a linear model a contribution is relative to an encoded value of 0 (the training mean
of a standardized column; for a one-hot category, not being that category).

TreeSHAP (path-dependent, the algorithm of the ``shap`` package's TreeExplainer and of XGBoost)
gives feature ``i`` of a tree, for a row ``x``::

    phi_i = sum, over the leaves l whose path tests i, of
            v_l * (o_i - z_i) * integral from 0 to 1 of prod_{j != i} ((1 - t) z_j + t o_j) dt

where, over the distinct features ``j`` tested on the path to ``l``, ``z_j`` is the product of the
fractions of training rows (the node's weighted count) that follow the path's edges on ``j``, and
``o_j`` is 1 when ``x`` follows all of them, else 0. The integral of this polynomial of degree at
most d - 1 (d distinct features on the path) is exact with Gauss-Legendre quadrature on ceil(d/2)
nodes, so the whole computation is a few vectorized numpy passes over every leaf of every tree at
once: for a 100-tree forest of 2,000 training rows (130,000 leaves), about 0.2 s per row on this
project's two busy cores, and 30 MB of prepared arrays, kept for the last few models explained
(see :class:`TreeShap` for larger ones). The base is the tree's expected value
under the same weights, sum of v_l times the fraction of training rows reaching l; base plus the
contributions is the tree's value at the leaf ``x`` reaches. An ensemble averages (forests) or adds
(boosting, times the learning rate) its trees' explanations.
"""
from __future__ import annotations

import json
import math
from collections import OrderedDict
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

from . import errors, versions
from .errors import PgmlError
from .model import Model
from .single_row import LinearPredictor

# The feature name of the base value's row in pgml.explain.
BASE = "(base)"

# What an explanation explains (the ``explains`` column).
PREDICTION = "prediction"
PROBABILITY = "probability"
LOG_ODDS = "log_odds"
RAW_SCORE = "raw_score"
DECISION_FUNCTION = "decision_function"

EXPLAINABLE = ("linear models (linear, ridge, lasso, elastic_net, bayesian_ridge, huber, linear_svm, least_angle, "
               "lasso_least_angle, orthogonal_matching_pursuit, automatic_relevance_determination, quantile, "
               "theil_sen, stochastic_gradient_descent and passive_aggressive regression, perceptron), "
               "decision_tree, random_forest, extra_trees, gradient_boosting_trees, xgboost, lightgbm and catboost")


class Contribution(NamedTuple):
    """One feature's part of an explanation."""

    feature: str
    value: Any  # the JSON value the model used: the one given, or the one imputed for a NULL
    imputed: bool
    contribution: float


class Explanation:
    """One row's explanation: ``base + sum(c.contribution for c in contributions)`` is the explained
    quantity (``explains``) of the class ``label`` (None for a regression)."""

    def __init__(self, explains: str, label: Optional[str], method: str, base: float,
                 contributions: List[Contribution]) -> None:
        self.explains = explains
        self.label = label
        self.method = method  # linear, tree_shap, xgboost or lightgbm
        self.base = base
        self.contributions = contributions

    @property
    def total(self) -> float:
        """The explained quantity, added up from the explanation (correctly rounded)."""
        return math.fsum([self.base] + [c.contribution for c in self.contributions])

    def rows(self) -> List[Contribution]:
        """The base (feature ``(base)``, no value) then each feature's contribution, in training order."""
        return [Contribution(BASE, None, False, self.base)] + self.contributions


# A kind of model's explanation of one encoded row: (its class position among the estimator's
# outputs, or None for a regression) -> (per encoded feature, base, explains, method).
Explain = Callable[[List[float], Optional[int]], Tuple[List[float], float, str, str]]


class _Prepared(NamedTuple):
    explain: Explain
    groups: List[Tuple[str, int, Optional[int], List[int]]]  # (name, input column, element, encoded outputs)
    imputed: List[Any]  # per input column: the value imputed for a NULL, or None


# Explainers are prepared once per loaded model and kept for the few models explained last: a
# forest's takes tens of megabytes (TreeShap), more than the model itself.
_PREPARED: "OrderedDict[Model, _Prepared]" = OrderedDict()
_KEEP_PREPARED = 4


def explain(model: Model, features: Any) -> Explanation:
    """The explanation of ``model``'s prediction for one row of features, given as
    :meth:`Model.predict_row` takes them (a JSON object by name or array in training order, as
    text or parsed). Raises :class:`PgmlError` for features the model cannot score and for a model
    that cannot be explained."""
    if isinstance(features, str):
        try:
            parsed = json.loads(features)
        except (ValueError, RecursionError):
            parsed = None
        if isinstance(parsed, (dict, list)):
            features = parsed  # else row_values says what is wrong with the text
    values = model.row_values(features)
    # The model's own answer first: the same errors as a prediction, and the class it predicts.
    _, label, _ = model.predict_row(features)
    prepared = _prepared(model)
    position = None
    if model.classes is not None:
        assert model.known is not None and label is not None
        position = model.known.index(model.labels.index(label))
    encoded = model.row_encoder.encode(values)
    parts, base, explains, method = prepared.explain(encoded, position)
    given = model.given_values(features)
    contributions = []
    for name, column, element, outputs in prepared.groups:
        value = given[column]
        if element is not None:
            value = value[element] if isinstance(value, list) and element < len(value) else None
        imputed = value is None and prepared.imputed[column] is not None
        contributions.append(Contribution(name, prepared.imputed[column] if imputed else value, imputed,
                                          math.fsum(parts[o] for o in outputs)))
    return Explanation(explains, label, method, base, contributions)


def _prepared(model: Model) -> _Prepared:
    prepared = _PREPARED.get(model)  # by identity: a Model has no equality of its own
    if prepared is None:
        describe = model.encoder.describe()
        imputed = [describe.get(c.name, {}).get("impute_value") for c in model.columns]
        prepared = _Prepared(_explainer(model), _groups(model), imputed)
    _PREPARED[model] = prepared
    _PREPARED.move_to_end(model)
    while len(_PREPARED) > _KEEP_PREPARED:
        _PREPARED.popitem(last=False)
    return prepared


def _groups(model: Model) -> List[Tuple[str, int, Optional[int], List[int]]]:
    """Which encoded outputs make up each explained feature: a number column's output, a
    categorical column's outputs (one-hot: one per category; target encoding of 3+ classes: one per
    class), and, for a column the encoder spreads over several outputs of its own (an array's
    elements), each of them by the encoder's name for it."""
    row = model.row_encoder
    names = model.encoder.output_names
    sources = model.encoder.output_sources
    positions = {c.name: i for i, c in enumerate(model.columns)}
    groups: List[Tuple[int, int, str, Optional[int], List[int]]] = []
    claimed = set()
    per_column: Dict[int, int] = {}
    for index, *_ in row.numbers:
        per_column[index] = per_column.get(index, 0) + 1
    elements: Dict[int, int] = {}
    for index, out, *_ in sorted(row.numbers, key=lambda n: n[1]):
        if per_column[index] == 1:
            groups.append((index, out, model.columns[index].name, None, [out]))
        else:
            element = elements[index] = elements.get(index, -1) + 1
            groups.append((index, out, names[out], element, [out]))
        claimed.add(out)
    for index, first, lookup, one_hot in row.texts:
        outputs = list(range(first, first + len(set(lookup.values())))) if one_hot else [first]
        groups.append((index, first, model.columns[index].name, None, outputs))
        claimed.update(outputs)
    for index, first, _, unseen in row.tables:  # ordinal with scaling, target encoding (one output per class)
        outputs = list(range(first, first + len(unseen)))
        groups.append((index, first, model.columns[index].name, None, outputs))
        claimed.update(outputs)
    # Outputs of an encoding these tables do not describe: each on its own, by the encoder's name.
    for out in range(row.n_outputs):
        if out not in claimed:
            groups.append((positions.get(sources[out], 0), out, names[out], None, [out]))
    groups.sort(key=lambda g: (g[0], g[1]))
    return [(name, index, element, outputs) for index, _, name, element, outputs in groups]


# -- choosing the explainer ---------------------------------------------------------------------------

def _explainer(model: Model) -> Explain:
    """The explainer for the model's estimator, or the error that says it has none."""
    predictor = model.predictor
    if isinstance(predictor, LinearPredictor):
        return _linear(predictor)  # without loading the estimator: the fast path has its parameters
    estimator = model.estimator
    library = versions.library(estimator)
    if library == "xgboost" and hasattr(estimator, "get_booster"):
        return _xgboost(estimator)
    if library == "lightgbm" and hasattr(estimator, "booster_"):
        return _lightgbm(estimator)
    if library == "catboost":
        return _catboost(estimator)
    trees = _sklearn_trees(estimator)
    if trees is not None:
        return trees
    if model.task in ("clustering", "decomposition"):
        raise PgmlError(f"model {model.model_id} is a {model.task} model, which pgml.explain does not explain: it "
                        f"explains regression and classification ({EXPLAINABLE})",
                        hint="A cluster's centre or a component's loadings say what drives it: read them from the "
                        "estimator in Python, or train a classifier of the clusters and explain that.",
                        sqlstate=errors.FEATURE_NOT_SUPPORTED)
    raise PgmlError(
        f"model {model.model_id} ({type(estimator).__name__}) cannot be explained: pgml.explain explains "
        f"{EXPLAINABLE}",
        hint="Retrain it with one of those algorithms to explain single predictions; to see which features matter "
        f"to this model overall, read its importance: SELECT feature, importance FROM pgml.features "
        f"WHERE model = '{model.model_id}'.",
        sqlstate=errors.FEATURE_NOT_SUPPORTED)


def _flip(n_outputs: int, position: Optional[int]) -> Tuple[int, float]:
    """(the output row to explain, its sign): a binary classifier's single score is the log-odds
    (or decision) of class 1, so the predicted class 0 is explained by its negation."""
    if position is None:
        return 0, 1.0
    if n_outputs == 1:
        return 0, (1.0 if position == 1 else -1.0)
    return position, 1.0


def _linear(predictor: LinearPredictor) -> Explain:
    meta, arrays = predictor.to_data()
    intercept = list(arrays["intercept"])
    width = len(arrays["coef"]) // len(intercept)
    coef = [list(arrays["coef"][i * width:(i + 1) * width]) for i in range(len(intercept))]
    proba = meta["proba"]
    if not meta["classifier"]:
        explains, scale = PREDICTION, 1.0
    elif proba in ("ovr", "ovr_binary"):
        explains, scale = LOG_ODDS, 1.0
    elif proba == "softmax_binary":
        # Two-class multinomial: probabilities are softmax(-s, s), so the log-odds are 2 s (exactly).
        explains, scale = LOG_ODDS, 2.0
    elif proba == "softmax":
        explains, scale = RAW_SCORE, 1.0
    else:
        explains, scale = DECISION_FUNCTION, 1.0

    def run(x: List[float], position: Optional[int]) -> Tuple[List[float], float, str, str]:
        row, sign = _flip(len(intercept), position)
        factor = sign * scale  # a power of two: multiplying by it rounds nothing
        return [factor * (c * v) for c, v in zip(coef[row], x)], factor * intercept[row], explains, "linear"

    return run


# -- the libraries' own contributions ----------------------------------------------------------------

# Regression objectives whose prediction is not their raw score (a log or logistic link).
_XGBOOST_LINKED = ("reg:logistic", "count:poisson", "reg:gamma", "reg:tweedie", "survival:")
_LIGHTGBM_LINKED = ("poisson", "gamma", "tweedie", "cross_entropy", "xentropy", "cross_entropy_lambda", "xentlambda")
_CATBOOST_LINKED = ("Poisson", "Tweedie")


def _classifier_quantity(n_classes: int) -> str:
    return LOG_ODDS if n_classes <= 2 else RAW_SCORE


def _xgboost(estimator: Any) -> Explain:
    import numpy as np
    import xgboost

    booster = estimator.get_booster()
    classes = getattr(estimator, "classes_", None)
    objective = str(estimator.get_params().get("objective") or "")
    if classes is not None:
        explains = _classifier_quantity(len(classes))
    else:
        explains = RAW_SCORE if objective.startswith(_XGBOOST_LINKED) else PREDICTION
    # As the estimator's predict: up to the best iteration when early stopping found one.
    try:
        iterations = (0, int(estimator.best_iteration) + 1)
    except (AttributeError, TypeError, ValueError):
        iterations = (0, 0)

    def run(x: List[float], position: Optional[int]) -> Tuple[List[float], float, str, str]:
        matrix = xgboost.DMatrix(np.array([x], dtype=np.float64), missing=np.nan)
        # (rows, groups, features + 1): one group per class for 3+ classes, else one.
        out = booster.predict(matrix, pred_contribs=True, strict_shape=True, iteration_range=iterations)
        row, sign = _flip(out.shape[1], position)
        values = np.asarray(out[0, row], dtype=np.float64) * sign
        return values[:-1].tolist(), float(values[-1]), explains, "xgboost"

    return run


def _lightgbm(estimator: Any) -> Explain:
    import numpy as np

    classes = getattr(estimator, "classes_", None)
    objective = str(getattr(estimator, "objective_", None) or estimator.get_params().get("objective") or "")
    if classes is not None:
        explains = _classifier_quantity(len(classes))
    else:
        explains = RAW_SCORE if objective in _LIGHTGBM_LINKED else PREDICTION

    def run(x: List[float], position: Optional[int]) -> Tuple[List[float], float, str, str]:
        # The scikit-learn API's predict picks the iterations (the best one after early stopping).
        out = np.asarray(estimator.predict(np.array([x], dtype=np.float64), pred_contrib=True), dtype=np.float64)
        width = len(x) + 1
        groups = out.shape[1] // width  # (rows, (features + 1) x groups), one group per class for 3+
        row, sign = _flip(groups, position)
        values = out[0, row * width:(row + 1) * width] * sign
        return values[:-1].tolist(), float(values[-1]), explains, "lightgbm"

    return run


def _catboost(estimator: Any) -> Explain:
    import catboost
    import numpy as np

    loss = str(estimator.get_all_params().get("loss_function", ""))
    if isinstance(estimator, catboost.CatBoostClassifier):  # a regressor's classes_ is empty, not missing
        explains = _classifier_quantity(len(estimator.classes_))
    else:
        explains = RAW_SCORE if loss.split(":")[0] in _CATBOOST_LINKED else PREDICTION

    def run(x: List[float], position: Optional[int]) -> Tuple[List[float], float, str, str]:
        # CatBoost keeps the best iteration's trees only; its SHAP values are (rows, features + 1),
        # or (rows, classes, features + 1) for 3+ classes. On one thread, as its predictions here.
        out = np.asarray(estimator.get_feature_importance(catboost.Pool(np.array([x], dtype=np.float64)),
                                                          type="ShapValues", thread_count=1), dtype=np.float64)
        if out.ndim == 3:
            values = out[0, position]
        else:
            _, sign = _flip(1, position)
            values = out[0] * sign
        return values[:-1].tolist(), float(values[-1]), explains, "catboost"

    return run


# -- scikit-learn's trees: TreeSHAP -----------------------------------------------------------------

def _sklearn_trees(estimator: Any) -> Optional[Explain]:
    """TreeSHAP for scikit-learn's trees, forests and gradient boosting; None for anything else."""
    from sklearn import ensemble, tree

    kind = type(estimator)
    single = {tree.DecisionTreeRegressor, tree.DecisionTreeClassifier, tree.ExtraTreeRegressor,
              tree.ExtraTreeClassifier}
    forests = {ensemble.RandomForestRegressor, ensemble.RandomForestClassifier, ensemble.ExtraTreesRegressor,
               ensemble.ExtraTreesClassifier}
    boosting = {ensemble.GradientBoostingRegressor, ensemble.GradientBoostingClassifier}
    if kind not in single | forests | boosting or getattr(estimator, "n_outputs_", 1) != 1:
        return None
    n_features = int(estimator.n_features_in_)
    if kind in boosting:
        return _boosting(estimator, n_features)
    members = [estimator] if kind in single else list(estimator.estimators_)
    classifier = hasattr(estimator, "classes_")
    # A forest averages its trees: each counts 1/T (a classifier's leaves hold class fractions).
    shap = TreeShap([m.tree_ for m in members], [1.0 / len(members)] * len(members), n_features)

    def run(x: List[float], position: Optional[int]) -> Tuple[List[float], float, str, str]:
        parts, base = shap.explain(x, 0 if position is None else position)
        return parts, base, PROBABILITY if classifier else PREDICTION, "tree_shap"

    return run


def _boosting(estimator: Any, n_features: int) -> Explain:
    import numpy as np

    stages = estimator.estimators_  # (stages, 1 or classes) regression trees on the raw score
    rate = float(estimator.learning_rate)
    columns = stages.shape[1]
    per_column = [TreeShap([t.tree_ for t in stages[:, k]], [rate] * stages.shape[0], n_features)
                  for k in range(columns)]
    # The initial raw score (the loss's fit to the training target alone): the same for every row.
    init = np.asarray(estimator._raw_predict_init(np.zeros((1, n_features), dtype=np.float32)),
                      dtype=np.float64)[0]
    classifier = hasattr(estimator, "classes_")
    explains = _classifier_quantity(len(estimator.classes_)) if classifier else PREDICTION

    def run(x: List[float], position: Optional[int]) -> Tuple[List[float], float, str, str]:
        column, sign = _flip(columns, position)
        parts, base = per_column[column].explain(x, 0)
        return [sign * p for p in parts], sign * (float(init[column]) + base), explains, "tree_shap"

    return run


class TreeShap:
    """Exact path-dependent TreeSHAP of a weighted sum of scikit-learn trees (``tree_`` objects): see
    the module docstring. The trees are taken in groups of about ``_GROUP_EDGES`` paths' edges, each
    group's leaves all at once (:class:`_Paths`); the groups are prepared once and kept when all of
    them hold at most ``_KEPT_EDGES`` edges (about 10 bytes each), else prepared anew for every row,
    so that a forest of millions of leaves costs time, not the backend's memory."""

    _GROUP_EDGES = 500_000
    _KEPT_EDGES = 4_000_000

    def __init__(self, trees: Sequence[Any], weights: Sequence[float], n_features: int) -> None:
        self.n_features = n_features
        self._groups: List[List[Tuple[Any, float]]] = [[]]
        size = total = 0
        for tree, weight in zip(trees, weights):
            edges = int(tree.n_leaves) * max(int(tree.max_depth), 1)  # at most
            if self._groups[-1] and size + edges > self._GROUP_EDGES:
                self._groups.append([])
                size = 0
            self._groups[-1].append((tree, weight))
            size += edges
            total += edges
        self._kept = [_Paths(group, n_features) for group in self._groups] if total <= self._KEPT_EDGES else None

    def explain(self, x: Sequence[float], output: int) -> Tuple[List[float], float]:
        """(contribution per feature, base) of ``output`` (a classifier's class position, else 0)
        for one encoded row; base + sum = the weighted sum of the trees' values at ``x``."""
        import numpy as np

        # scikit-learn compares the feature as float32 with the float64 threshold.
        row = np.asarray(x, dtype=np.float64).astype(np.float32).astype(np.float64)
        totals = np.zeros(self.n_features + 1, dtype=np.float64)
        base = 0.0
        for paths in self._kept or (_Paths(group, self.n_features) for group in self._groups):
            base += paths.explain(row, output, totals)
        return totals[:self.n_features].tolist(), base


class _Paths:
    """The leaves of some trees, prepared for TreeSHAP: per leaf, the distinct features on its path
    (compacted to the left, ``width`` at most), the fraction of training rows following the path's
    edges on each (``zero``), its weighted value; per edge of every path, the node it leaves, which
    way it goes and the (leaf, feature) it counts for."""

    # Leaves x features on a path x quadrature nodes handled per pass: bounds the memory one row takes.
    _CHUNK = 1 << 20

    def __init__(self, trees: Sequence[Tuple[Any, float]], n_features: int) -> None:
        import numpy as np

        self.n_features = n_features
        nodes = [t for t, _ in trees]
        offsets = np.concatenate(([0], np.cumsum([t.node_count for t in nodes])[:-1])).astype(np.int64)
        left = np.concatenate([np.where(t.children_left >= 0, t.children_left + o, -1) for t, o in zip(nodes, offsets)])
        right = np.concatenate([np.where(t.children_right >= 0, t.children_right + o, -1)
                                for t, o in zip(nodes, offsets)])
        feature = np.concatenate([t.feature for t in nodes])
        cover = np.concatenate([t.weighted_n_node_samples for t in nodes]).astype(np.float64)
        values = np.concatenate([t.value[:, 0, :] for t in nodes]).astype(np.float64)  # (nodes, outputs)
        weight = np.concatenate([np.full(t.node_count, w, dtype=np.float64) for t, w in trees])

        n = len(left)
        parent = np.full(n, -1, dtype=np.int64)
        inner = np.flatnonzero(left >= 0)
        parent[left[inner]] = inner
        parent[right[inner]] = inner
        went_left = np.zeros(n, dtype=bool)
        went_left[left[inner]] = True
        leaves = np.flatnonzero(left < 0)
        n_leaves = len(leaves)

        # Every leaf's path, from the leaf up: the edges' parent nodes, which way they went, the
        # fraction of the parent's training weight they carry.
        steps = []
        node = leaves
        while True:
            below = np.maximum(node, 0)
            up = np.where(node >= 0, parent[below], -1)
            if not (up >= 0).any():
                break
            steps.append((up, went_left[below], _ratio(cover[below], cover[np.maximum(up, 0)])))
            node = up
        depth = max(len(steps), 1)
        edge_parent = np.full((n_leaves, depth), -1, dtype=np.int32)
        edge_left = np.zeros((n_leaves, depth), dtype=bool)
        edge_ratio = np.ones((n_leaves, depth), dtype=np.float64)
        for s, (up, goes_left, ratio) in enumerate(steps):
            edge_parent[:, s], edge_left[:, s], edge_ratio[:, s] = up, goes_left, ratio
        valid = edge_parent >= 0
        # Padding gets features of its own (negative, one per slot) so that it matches nothing.
        edge_feature = np.where(valid, feature[np.maximum(edge_parent, 0)],
                                -1 - np.arange(depth, dtype=np.int32)[None, :]).astype(np.int32)

        # The distinct features of each path: the first slot of each feature, compacted to the left.
        first = np.empty((n_leaves, depth), dtype=np.int32)
        for s in range(depth):
            first[:, s] = np.argmax(edge_feature[:, :s + 1] == edge_feature[:, s:s + 1], axis=1)
        is_first = (first == np.arange(depth)[None, :]) & valid
        compact = np.cumsum(is_first, axis=1, dtype=np.int32) - 1
        width = max(int(is_first.sum(axis=1).max()) if n_leaves else 0, 1)
        slot = np.take_along_axis(compact, first, axis=1)
        # One bin per (feature slot, leaf), slot-major: a row's passes run over each slot's leaves.
        flat = (slot * n_leaves + np.arange(n_leaves, dtype=np.int32)[:, None])[valid]

        zero = np.ones((width + 1) * n_leaves, dtype=np.float64)
        np.multiply.at(zero, flat, edge_ratio[valid])
        self._zero = zero.reshape(width + 1, n_leaves)[:width].copy()  # (slots, leaves)
        slot_feature = np.full((width + 1) * n_leaves, n_features, dtype=np.int32)  # unused: a bin dropped
        slot_feature[flat] = edge_feature[valid]
        self._slot_feature = slot_feature.reshape(width + 1, n_leaves)[:width].copy()

        # Per node: how a row goes at it (leaves: nowhere asked). Per edge: its node, its direction.
        self._feature = np.maximum(feature, 0).astype(np.int32)
        self._threshold = np.concatenate([t.threshold for t in nodes]).astype(np.float64)
        # Where a NaN goes (trees fitted on data with NaN, scikit-learn >= 1.3); else never asked.
        self._missing_left = np.concatenate([np.asarray(getattr(t, "missing_go_to_left", np.zeros(t.node_count)),
                                                        dtype=bool) for t in nodes])
        self._edge_flat = flat.astype(np.int32)
        self._edge_parent = edge_parent[valid].astype(np.int32)
        self._edge_left = edge_left[valid]

        self._values = values[leaves] * weight[leaves][:, None]  # (leaves, outputs), weighted
        self._reach = self._zero.prod(axis=0)  # the fraction of training rows reaching each leaf
        points, quadrature = np.polynomial.legendre.leggauss(max(1, (width + 1) // 2))
        self._t = (points + 1.0) / 2.0  # Gauss-Legendre on [0, 1]: exact to degree 2 x nodes - 1
        self._w = quadrature / 2.0

    def explain(self, row: Any, output: int, totals: Any) -> float:
        """Adds each feature's contribution to ``totals`` (one more entry, dropped, for unused
        slots) for the row (float64 of float32 values); returns the base."""
        import numpy as np

        xv = row[self._feature]
        goes_left = np.where(np.isnan(xv), self._missing_left, xv <= self._threshold)
        width, n_leaves = self._zero.shape
        astray = goes_left[self._edge_parent] != self._edge_left
        missed = np.bincount(self._edge_flat[astray], minlength=(width + 1) * n_leaves)
        one = (missed.reshape(width + 1, n_leaves)[:width] == 0).astype(np.float64)
        value = self._values[:, output]
        t, w = self._t, self._w
        step = max(1, self._CHUNK // (width * len(t)))
        for start in range(0, n_leaves, step):
            part = slice(start, start + step)
            z, slots = self._zero[:, part], self._slot_feature[:, part]
            d = one[:, part] - z  # 0 in unused slots, where z and o are both 1
            # Each distinct feature's factor (1 - t) z + t o = z + t (o - z), at every quadrature node:
            # (slots, nodes, leaves), the leaves innermost.
            factor = z[:, None, :] + t[None, :, None] * d[:, None, :]
            # The product of the other features' factors: prefix times suffix products.
            others = np.empty_like(factor)
            product = np.ones_like(factor[0])
            for u in range(width):
                others[u] = product
                product = product * factor[u]
            product = np.ones_like(factor[0])
            for u in range(width - 1, -1, -1):
                others[u] *= product
                product = product * factor[u]
            phi = value[part] * d * np.einsum("q,uql->ul", w, others)
            totals += np.bincount(slots.ravel(), weights=phi.ravel(), minlength=self.n_features + 1)
        return float(np.dot(value, self._reach))


def _ratio(child: Any, parent: Any) -> Any:
    """The fraction of a node's training weight that an edge carries (0 below a node with none)."""
    import numpy as np

    return np.divide(child, parent, out=np.zeros_like(child), where=parent > 0)
