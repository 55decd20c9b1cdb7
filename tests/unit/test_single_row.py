"""Single-row fast paths must give what scikit-learn's predict gives: trees exactly, linear models to
the last few bits (BLAS sums in an order of its own)."""
from __future__ import annotations

import warnings
from typing import Any, List, Optional

import numpy as np
import pytest
from sklearn.base import clone, is_classifier
from sklearn.ensemble import (
    AdaBoostClassifier,
    BaggingRegressor,
    ExtraTreesClassifier,
    ExtraTreesRegressor,
    GradientBoostingRegressor,
    HistGradientBoostingClassifier,
    RandomForestClassifier,
    RandomForestRegressor,
)
from sklearn.linear_model import (
    ARDRegression,
    BayesianRidge,
    ElasticNet,
    ElasticNetCV,
    HuberRegressor,
    Lars,
    Lasso,
    LassoCV,
    LassoLars,
    LinearRegression,
    LogisticRegression,
    LogisticRegressionCV,
    OrthogonalMatchingPursuit,
    PassiveAggressiveClassifier,
    PassiveAggressiveRegressor,
    Perceptron,
    QuantileRegressor,
    Ridge,
    RidgeClassifier,
    RidgeClassifierCV,
    RidgeCV,
    SGDRegressor,
    TheilSenRegressor,
)
from sklearn.neighbors import KNeighborsRegressor
from sklearn.neural_network import MLPClassifier
from sklearn.svm import SVC, SVR, LinearSVC, LinearSVR
from sklearn.tree import (
    DecisionTreeClassifier,
    DecisionTreeRegressor,
    ExtraTreeClassifier,
    ExtraTreeRegressor,
)

from pgml_fdw import single_row
from pgml_fdw.single_row import (
    NeedsEstimator,
    Predictor,
    _float32_round_down,
    array_bytes,
    array_from,
    fast_predictor,
    from_data,
)

TOL = {"rtol": 1e-12, "atol": 1e-12}
LABELS = np.array(["ant", "bee", "cat"])  # strings check the class index mapping


def make_data(n_features: int, n_classes: Optional[int] = None, n_rows: int = 300,
              seed: int = 0) -> tuple:
    """Features with a nonlinear target; class labels are strings."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n_rows, n_features))
    signal = X @ rng.normal(size=n_features) + np.sin(3 * X[:, 0])
    if n_classes is None:
        return X, signal + 0.1 * rng.normal(size=n_rows)
    cuts = np.quantile(signal, np.linspace(0, 1, n_classes + 1)[1:-1])
    return X, LABELS[np.searchsorted(cuts, signal)]


def probe_rows(X: np.ndarray, n_random: int = 150, seed: int = 1) -> np.ndarray:
    """Training rows plus fresh rows, some far outside the training range."""
    rng = np.random.default_rng(seed)
    fresh = rng.normal(size=(n_random, X.shape[1])) * rng.choice([0.5, 1.0, 10.0], size=(n_random, 1))
    return np.vstack([X[:100], fresh])


def threshold_rows(estimator: Any, X: np.ndarray, per_tree: int = 40, seed: int = 2) -> np.ndarray:
    """Rows that reach a split node with the split feature set on its threshold.

    Each node yields the threshold itself (a float64, which float32 rounds up or
    down) and the float32 values around it.
    """
    rng = np.random.default_rng(seed)
    trees = getattr(estimator, "estimators_", [estimator])
    rows: List[np.ndarray] = []
    for t in trees:
        paths = t.decision_path(X).tocsc()
        split_nodes = np.flatnonzero(t.tree_.children_left >= 0)
        for node in rng.choice(split_nodes, size=min(per_tree, split_nodes.size), replace=False):
            row = X[rng.choice(paths[:, node].indices)].copy()
            threshold = t.tree_.threshold[node]
            near = np.float32(threshold)
            for value in (threshold, float(near), float(np.nextafter(near, np.float32(np.inf))),
                          float(np.nextafter(near, np.float32(-np.inf)))):
                row[t.tree_.feature[node]] = value
                rows.append(row.copy())
    return np.array(rows)


def assert_matches(estimator: Any, rows: np.ndarray,
                   fast: Optional[Predictor] = None) -> Predictor:
    """fast (by default fast_predictor(estimator)) agrees with estimator on every row."""
    fast = fast or fast_predictor(estimator)
    assert fast is not None
    classifier = hasattr(estimator, "classes_")
    has_proba = hasattr(estimator, "predict_proba")
    expected = estimator.predict(rows)
    expected_proba = estimator.predict_proba(rows) if has_proba else None
    for i, x in enumerate(rows):
        if classifier:
            index = fast.predict(x)
            assert isinstance(index, int)
            assert estimator.classes_[index] == expected[i], i
            proba = fast.predict_proba(x)
            if has_proba:
                np.testing.assert_allclose(proba, expected_proba[i], **TOL)
            else:
                assert proba is None
        else:
            value = fast.predict(x)
            assert isinstance(value, float)
            np.testing.assert_allclose(value, expected[i], **TOL)
            assert fast.predict_proba(x) is None
    return fast


# One row at a time must equal scikit-learn on one row too (batch predict may
# sum in another order); spot-check that separately from the batch loop.
def assert_matches_one_by_one(estimator: Any, rows: np.ndarray) -> None:
    fast = fast_predictor(estimator)
    for x in rows[:20]:
        one = estimator.predict(x.reshape(1, -1))[0]
        got = fast.predict(x)
        if hasattr(estimator, "classes_"):
            assert estimator.classes_[got] == one
        else:
            np.testing.assert_allclose(got, one, **TOL)


LINEAR_REGRESSORS = [
    LinearRegression(), LinearRegression(fit_intercept=False), Ridge(alpha=0.5),
    Lasso(alpha=0.01), ElasticNet(alpha=0.01), BayesianRidge(), HuberRegressor(max_iter=1000),
    LinearSVR(max_iter=10000), RidgeCV(), LassoCV(cv=3), ElasticNetCV(cv=3),
    SGDRegressor(random_state=0), PassiveAggressiveRegressor(random_state=0), Lars(), LassoLars(alpha=0.01),
    OrthogonalMatchingPursuit(), ARDRegression(), QuantileRegressor(alpha=0.0, solver="highs"),
    TheilSenRegressor(random_state=0),
]


@pytest.mark.parametrize("n_features", [1, 2, 10])
@pytest.mark.parametrize("model", LINEAR_REGRESSORS, ids=lambda m: repr(m))
def test_linear_regressors_match(model: Any, n_features: int) -> None:
    X, y = make_data(n_features)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence, and the passive-aggressive classes' deprecation (1.8)
        estimator = clone(model).fit(X, y)
    rows = probe_rows(X)
    assert_matches(estimator, rows)
    assert_matches_one_by_one(estimator, rows)


LOGISTIC = [
    ({}, 2), ({}, 3),
    ({"solver": "liblinear"}, 2), ({"solver": "liblinear"}, 3),  # one-vs-rest
    ({"multi_class": "ovr"}, 3), ({"multi_class": "multinomial"}, 2),  # softmax on [-d, d]
    ({"fit_intercept": False}, 3), ({"cv": 3}, 3),  # cv: LogisticRegressionCV
]


@pytest.mark.parametrize("n_features", [1, 2, 10])
@pytest.mark.parametrize("params,n_classes", LOGISTIC, ids=lambda p: repr(p))
def test_logistic_regression_matches(params: dict, n_classes: int, n_features: int) -> None:
    X, y = make_data(n_features, n_classes)
    model = LogisticRegressionCV if "cv" in params else LogisticRegression
    if "multi_class" in params and "multi_class" not in model().get_params():
        pytest.skip("this scikit-learn has no multi_class (removed in 1.8)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # multi_class is deprecated in 1.5
        try:
            estimator = model(max_iter=1000, **params).fit(X, y)
        except ValueError as exc:
            if params.get("solver") == "liblinear" and n_classes > 2:
                pytest.skip(f"this scikit-learn refuses liblinear with 3 classes: {exc}")
            raise
    rows = probe_rows(X)
    assert_matches(estimator, rows)
    assert_matches_one_by_one(estimator, rows)


@pytest.mark.parametrize("n_classes", [2, 3])
@pytest.mark.parametrize("model", [RidgeClassifier(), RidgeClassifier(fit_intercept=False),
                                   RidgeClassifierCV(), LinearSVC(max_iter=10000),
                                   LinearSVC(multi_class="crammer_singer", max_iter=10000),
                                   Perceptron(random_state=0), PassiveAggressiveClassifier(random_state=0)],
                         ids=lambda m: repr(m))
def test_decision_function_classifiers_match(model: Any, n_classes: int) -> None:
    X, y = make_data(4, n_classes)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the passive-aggressive classes' deprecation (1.8)
        estimator = clone(model).fit(X, y)
    fast = assert_matches(estimator, probe_rows(X))
    assert fast.predict_proba(X[0]) is None


def test_binary_linear_classifier_predicts_class_zero_on_zero_score() -> None:
    estimator = RidgeClassifier().fit(*make_data(2, 2))
    # Coefficients chosen so that the scores below are exact.
    estimator.coef_ = np.array([[1.0, 0.0]])
    estimator.intercept_ = np.array([0.0])
    fast = fast_predictor(estimator)
    for x, expected in (([0.0, 5.0], 0), ([1e-300, 5.0], 1), ([-1e-300, 5.0], 0)):
        x = np.array(x)
        assert fast.predict(x) == expected
        assert estimator.predict(x.reshape(1, -1))[0] == estimator.classes_[expected]


TREE_REGRESSORS = [
    DecisionTreeRegressor(random_state=0), ExtraTreeRegressor(random_state=0),
    DecisionTreeRegressor(max_depth=3, random_state=0),
    RandomForestRegressor(n_estimators=15, random_state=0),
    ExtraTreesRegressor(n_estimators=15, random_state=0),
    RandomForestRegressor(n_estimators=7, max_depth=4, bootstrap=False, random_state=0),
]
TREE_CLASSIFIERS = [
    DecisionTreeClassifier(random_state=0), ExtraTreeClassifier(random_state=0),
    RandomForestClassifier(n_estimators=15, random_state=0),
    ExtraTreesClassifier(n_estimators=15, random_state=0),
    RandomForestClassifier(n_estimators=10, min_samples_leaf=5, random_state=0),
]


@pytest.mark.parametrize("n_features", [1, 3, 10])
@pytest.mark.parametrize("model", TREE_REGRESSORS, ids=lambda m: repr(m))
def test_tree_regressors_match(model: Any, n_features: int) -> None:
    X, y = make_data(n_features)
    estimator = clone(model).fit(X, y)
    rows = np.vstack([probe_rows(X), threshold_rows(estimator, X)])
    assert_matches(estimator, rows)
    assert_matches_one_by_one(estimator, rows)


@pytest.mark.parametrize("n_classes", [2, 3])
@pytest.mark.parametrize("n_features", [1, 3, 10])
@pytest.mark.parametrize("model", TREE_CLASSIFIERS, ids=lambda m: repr(m))
def test_tree_classifiers_match(model: Any, n_features: int, n_classes: int) -> None:
    X, y = make_data(n_features, n_classes)
    estimator = clone(model).fit(X, y)
    rows = np.vstack([probe_rows(X), threshold_rows(estimator, X)])
    assert_matches(estimator, rows)
    assert_matches_one_by_one(estimator, rows)


def test_threshold_rows_exercise_float32_rounding() -> None:
    # The threshold rows only test the float32 cast if some thresholds are
    # not float32 values and the row's float32 value lies above them, where
    # comparing in float64 would take the other branch.
    X, y = make_data(3)
    estimator = RandomForestRegressor(n_estimators=5, random_state=0).fit(X, y)
    rows = threshold_rows(estimator, X)
    thresholds = np.concatenate([t.tree_.threshold[t.tree_.children_left >= 0]
                                 for t in estimator.estimators_])
    rounded_up = np.float32(thresholds).astype(np.float64) > thresholds
    assert rounded_up.any() and not rounded_up.all()
    assert np.isin(thresholds[rounded_up], rows).any()


def test_float32_round_down_preserves_comparisons() -> None:
    rng = np.random.default_rng(3)
    thresholds = np.concatenate([rng.normal(size=2000) * 10.0 ** rng.integers(-30, 30, 2000),
                                 [0.0, -0.0, 1e39, -1e39, np.inf, 3.5]])
    rounded = _float32_round_down(thresholds)
    assert rounded.dtype == np.float32
    with np.errstate(over="ignore"):  # 1e39 has no float32 value
        near = np.float32(thresholds)
    for x in (near, np.nextafter(near, np.float32(np.inf)), np.nextafter(near, np.float32(-np.inf))):
        np.testing.assert_array_equal(x > rounded, x.astype(np.float64) > thresholds)


def test_single_leaf_trees() -> None:
    X = np.random.default_rng(0).normal(size=(20, 2))
    for model in (DecisionTreeRegressor(), RandomForestRegressor(n_estimators=3)):
        estimator = clone(model).fit(X, np.full(20, 2.5))
        assert fast_predictor(estimator).predict(X[0]) == 2.5
    estimator = RandomForestClassifier(n_estimators=3).fit(X, np.array(["only"] * 20))
    fast = fast_predictor(estimator)
    assert fast.predict(X[0]) == 0
    np.testing.assert_array_equal(fast.predict_proba(X[0]), [1.0])


def test_big_forest_matches() -> None:
    # Deep trees (max_depth None) on more rows than the other tests.
    X, y = make_data(10, n_rows=3000)
    estimator = RandomForestRegressor(n_estimators=30, random_state=0).fit(X, y)
    assert max(t.tree_.max_depth for t in estimator.estimators_) > 15
    assert_matches(estimator, probe_rows(X, n_random=300))


@pytest.mark.parametrize("model", TREE_REGRESSORS + TREE_CLASSIFIERS, ids=lambda m: repr(m))
def test_deep_forests_walked_by_numpy_match(model: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(single_row, "_NUMPY_LEVELS", 0)
    X, y = make_data(4, 3 if is_classifier(model) else None)
    estimator = clone(model).fit(X, y)
    fast = fast_predictor(estimator)
    assert fast._walk is not None
    assert_matches(estimator, np.vstack([probe_rows(X), threshold_rows(estimator, X)]), fast)
    with pytest.raises(NeedsEstimator):
        fast.predict(np.array([0.5, np.inf, 0.0, 1.0]))


@pytest.mark.parametrize("model", [DecisionTreeRegressor(random_state=0),
                                   RandomForestClassifier(n_estimators=10, random_state=0),
                                   LogisticRegression(), Ridge()],
                         ids=lambda m: repr(m))
def test_missing_values_are_handed_to_the_estimator(model: Any) -> None:
    # scikit-learn's trees send NaN down a side learned in training (or refuse it), linear models
    # refuse it: the fast path leaves the row to the estimator (pgml_fdw.model does so).
    X, y = make_data(3, 3 if is_classifier(model) else None)
    fast = fast_predictor(clone(model).fit(X, y))
    x = X[0].copy()
    x[1] = np.nan
    with pytest.raises(NeedsEstimator):
        fast.predict(x)
    if is_classifier(model):
        with pytest.raises(NeedsEstimator):
            fast.predict_proba(x)


INFINITY_MODELS = [LinearRegression(), LogisticRegression(), LinearSVC(),
                   DecisionTreeClassifier(), RandomForestRegressor(n_estimators=3)]


def fit_for(model: Any, n_features: int = 3) -> Any:
    """Fit model on a binary target if it is a classifier, else a regression target."""
    return clone(model).fit(*make_data(n_features, 2 if is_classifier(model) else None))


@pytest.mark.parametrize("model", INFINITY_MODELS, ids=lambda m: repr(m))
@pytest.mark.parametrize("bad", [np.inf, -np.inf])
def test_infinite_values_are_handed_to_the_estimator(model: Any, bad: float) -> None:
    estimator = fit_for(model)
    x = np.array([0.5, bad, -0.5])
    with pytest.raises(NeedsEstimator):
        fast_predictor(estimator).predict(x)
    with pytest.raises(ValueError, match="infinity"):  # what the caller then gets
        estimator.predict(x.reshape(1, -1))


@pytest.mark.parametrize("model", INFINITY_MODELS, ids=lambda m: repr(m))
def test_float32_overflow_is_handed_over_by_trees_only(model: Any) -> None:
    # 1e39 is a finite float64 but an infinite float32, and trees work in float32.
    estimator = fit_for(model)
    x = np.array([0.5, 1e39, -0.5])
    fast = fast_predictor(estimator)
    if hasattr(estimator, "tree_") or hasattr(estimator, "estimators_"):
        with pytest.raises(NeedsEstimator):
            fast.predict(x)
    else:
        assert_matches(estimator, x.reshape(1, -1))


def test_linear_scores_are_correctly_rounded_dot_products() -> None:
    # fsum: the exact sum of the products, rounded once, whatever the order; BLAS would give 0.0 here.
    estimator = LinearRegression().fit(*make_data(3))
    estimator.coef_ = np.array([1.0, 1e100, -1e100])
    estimator.intercept_ = 0.0
    assert fast_predictor(estimator).predict(np.array([1.0, 1.0, 1.0])) == 1.0


def test_a_row_of_the_wrong_length_is_handed_to_the_estimator() -> None:
    X, y = make_data(4)
    for model in (DecisionTreeRegressor(), RandomForestRegressor(n_estimators=3), Ridge()):
        fast = fast_predictor(clone(model).fit(X, y))
        with pytest.raises(NeedsEstimator):
            fast.predict(X[0, :3])


@pytest.mark.parametrize("model", [LogisticRegression(), RandomForestClassifier(n_estimators=5),
                                   DecisionTreeClassifier(), Ridge(), ExtraTreesRegressor(n_estimators=4)],
                         ids=lambda m: repr(m))
def test_predictors_survive_storing(model: Any) -> None:
    X, y = make_data(3, 3 if is_classifier(model) else None)
    estimator = clone(model).fit(X, y)
    fast = fast_predictor(estimator)
    meta, arrays = fast.to_data()
    stored = {name: (values.typecode, array_bytes(values)) for name, values in arrays.items()}
    copy = from_data(meta, {name: array_from(code, data) for name, (code, data) in stored.items()})
    assert type(copy) is type(fast)
    assert_matches(estimator, X[:50], copy)
    for x in X[:50]:
        assert copy.predict(x) == fast.predict(x)
        assert copy.predict_proba(x) == fast.predict_proba(x)


def test_predictors_need_neither_numpy_nor_scikit_learn() -> None:
    import subprocess
    import sys

    code = ("import sys; from array import array; from pgml_fdw.single_row import from_data; "
            "p = from_data({'kind': 'linear', 'classifier': False, 'proba': None}, "
            "{'coef': array('d', [1.0, 2.0]), 'intercept': array('d', [0.5])}); "
            "assert p.predict([1.0, 1.0]) == 3.5; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('numpy', 'scipy', 'sklearn')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_multi_output_has_no_fast_path() -> None:
    X, _ = make_data(3)
    Y = np.column_stack([X[:, 0], X[:, 1]])
    labels = (Y > 0).astype(int)
    for model, target in ((LinearRegression(), Y), (LinearRegression(), Y[:, :1]),
                          (DecisionTreeRegressor(), Y), (RandomForestRegressor(n_estimators=3), Y),
                          (RandomForestClassifier(n_estimators=3), labels),
                          (RidgeClassifier(), labels)):
        assert fast_predictor(clone(model).fit(X, target)) is None, model


@pytest.mark.parametrize("model", [
    GradientBoostingRegressor(n_estimators=5), HistGradientBoostingClassifier(max_iter=5),
    SVR(), SVC(), KNeighborsRegressor(), MLPClassifier(max_iter=20),
    AdaBoostClassifier(n_estimators=5), BaggingRegressor(n_estimators=3),
], ids=lambda m: type(m).__name__)
def test_unsupported_estimators_have_no_fast_path(model: Any) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MLP convergence
        estimator = fit_for(model)
    assert fast_predictor(estimator) is None


def test_unfitted_and_subclassed_estimators_have_no_fast_path() -> None:
    assert fast_predictor(LinearRegression()) is None
    assert fast_predictor(RandomForestRegressor()) is None

    class Shifted(LinearRegression):
        def predict(self, X: Any) -> np.ndarray:
            return super().predict(X) + 1.0

    X, y = make_data(3)
    assert fast_predictor(Shifted().fit(X, y)) is None
    assert fast_predictor(LinearRegression().fit(X, y)) is not None
