"""Explanations of single predictions (pgml_fdw.explain): base + contributions must give back the
model's own number for the row, for every kind of model it explains, and TreeSHAP must be Shapley's
values by their definition."""
from __future__ import annotations

import itertools
import math
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np
import pytest

from pgml_fdw import boosting, explain as explaining, model_format, training
from pgml_fdw.columns import FeatureColumn
from pgml_fdw.errors import PgmlError
from pgml_fdw.explain import BASE, TreeShap, explain
from pgml_fdw.model import Model
from pgml_fdw.preprocessing import Column, FeatureEncoder, plan_preprocessing
from pgml_fdw.single_row import LinearPredictor
from pgml_fdw.training import TrainingOptions

ROWS = 300
COLUMNS = [FeatureColumn("size", "double precision", "number", "float8"),
           FeatureColumn("rooms", "integer", "number", "int4"),
           FeatureColumn("garden", "boolean", "boolean", "bool"),
           FeatureColumn("city", "text", "text", "text")]
FEATURES: List[Any] = [
    {"size": 50.0, "rooms": 2, "garden": True, "city": "paris"},
    {"size": 120.5, "rooms": 5, "garden": False, "city": "rome"},
    {"size": None, "rooms": 3, "garden": None, "city": None},   # NULLs: imputed, and a NULL category
    {"size": 80.0, "rooms": None, "garden": True, "city": "oslo"},  # a city training never saw
    [10.0, 1, False, "lyon"],
    '{"size": 199.0, "rooms": 6, "garden": true, "city": "paris"}',  # JSON text, as the wrapper gets it
]


def data(seed: int = 0) -> tuple:
    """Numbers with NULLs, a boolean and a text column (NULL among its values); a price to regress
    and a band of it (three classes) to classify."""
    rng = np.random.default_rng(seed)
    size = rng.uniform(20, 200, ROWS)
    size[::17] = np.nan
    rooms = rng.integers(1, 7, ROWS).astype(np.float64)
    garden = rng.integers(0, 2, ROWS).astype(np.float64)
    city = np.array([["paris", "rome", "lyon", None][i] for i in rng.integers(0, 4, ROWS)], dtype=object)
    bonus = np.array([{"paris": 40000, "rome": 10000}.get(c, 0) for c in city])
    price = 3000 * np.nan_to_num(size, nan=100) + 10000 * rooms + 15000 * garden + bonus + rng.normal(0, 5000, ROWS)
    band = np.array(["low", "mid", "high"], dtype=object)[np.digitize(price, np.quantile(price, [1 / 3, 2 / 3]))]
    return {"size": size, "rooms": rooms, "garden": garden, "city": city}, price, band


def train(algorithm: str, task: str = "regression", hyperparams: Optional[Dict[str, Any]] = None,
          preprocess: Optional[Dict[str, Any]] = None, classes: int = 3) -> Model:
    """A model trained as pgml.train trains it, then stored and loaded as a backend serves it."""
    options = TrainingOptions.from_row({"id": f"{algorithm}_1", "name": algorithm, "version": 1, "relation": "homes",
                                        "y_column": "y", "trained_by": "app", "algorithm": algorithm, "task": task,
                                        "hyperparams": hyperparams or {}, "preprocess": preprocess})
    columns, price, band = data()
    if classes == 2:
        band = np.where(band == "high", "high", "other").astype(object)
    y = FeatureColumn("y", "double precision", "number", "float8") if task == "regression" \
        else FeatureColumn("y", "text", "text", "text")
    result = training.train(options, y, COLUMNS, columns, price if task == "regression" else band)
    return model_format.load(model_format.dump(result.model, result.probe), options.model_id)


def encoded(model: Model, features: Any) -> np.ndarray:
    """The row as the estimator sees it."""
    return np.array([model.row_encoder.encode(model.row_values(features))])


def assert_adds_up(explanation: explaining.Explanation, expected: float) -> None:
    """base + contributions == expected, to a few units in the last place of the largest term."""
    terms = [explanation.base] + [c.contribution for c in explanation.contributions]
    scale = max(abs(t) for t in terms + [expected])
    assert explanation.total == pytest.approx(expected, rel=0, abs=64 * np.finfo(float).eps * max(scale, 1e-300))


def own_quantity(model: Model, features: Any, explanation: explaining.Explanation) -> float:
    """The number the estimator itself computes for what the explanation says it explains."""
    estimator = model.estimator
    x = encoded(model, features)
    if model.classes is None:
        return float(estimator.predict(x)[0])
    assert model.known is not None and explanation.label is not None
    position = model.known.index(model.labels.index(explanation.label))
    if explanation.explains == "probability":
        return float(estimator.predict_proba(x)[0, position])
    scores = np.asarray(estimator.decision_function(x), dtype=np.float64).reshape(1, -1)[0]
    if len(scores) == 1:  # one score: of class 1
        score = scores[0] if position == 1 else -scores[0]
        if explanation.explains == "log_odds" and model.predictor is not None \
                and model.predictor.to_data()[0].get("proba") == "softmax_binary":
            score *= 2
        return float(score)
    return float(scores[position])


REGRESSIONS = [("linear", {}), ("ridge", {}), ("lasso", {}), ("elastic_net", {}), ("bayesian_ridge", {}),
               ("huber", {}), ("linear_svm", {}), ("decision_tree", {"max_depth": 6}),
               ("random_forest", {"n_estimators": 20}), ("extra_trees", {"n_estimators": 20}),
               ("gradient_boosting_trees", {"n_estimators": 30})]


@pytest.mark.parametrize("algorithm,hyperparams", REGRESSIONS)
def test_a_regression_adds_up_to_its_prediction(algorithm: str, hyperparams: Dict[str, Any]) -> None:
    model = train(algorithm, hyperparams=hyperparams)
    for features in FEATURES:
        explanation = explain(model, features)
        prediction = model.predict_row(features)[0]
        assert explanation.explains == "prediction" and explanation.label is None
        assert_adds_up(explanation, prediction)
        assert prediction == pytest.approx(own_quantity(model, features, explanation), rel=1e-12)
        assert [c.feature for c in explanation.contributions] == ["size", "rooms", "garden", "city"]
        assert explanation.method == ("linear" if algorithm not in dict(REGRESSIONS[7:]) else "tree_shap")


CLASSIFIERS = [("linear", {}, 3), ("linear", {}, 2), ("ridge", {}, 3), ("ridge", {}, 2), ("linear_svm", {}, 3),
               ("decision_tree", {"max_depth": 5}, 3),
               ("random_forest", {"n_estimators": 20}, 3), ("random_forest", {"n_estimators": 20}, 2),
               ("extra_trees", {"n_estimators": 20}, 3), ("gradient_boosting_trees", {"n_estimators": 20}, 3),
               ("gradient_boosting_trees", {"n_estimators": 20}, 2)]


@pytest.mark.parametrize("algorithm,hyperparams,classes", CLASSIFIERS)
def test_a_classifier_explains_its_predicted_class(algorithm: str, hyperparams: Dict[str, Any], classes: int) -> None:
    model = train(algorithm, "classification", hyperparams, classes=classes)
    explained = set()
    for features in FEATURES:
        explanation = explain(model, features)
        _, label, probabilities = model.predict_row(features)
        assert explanation.label == label
        assert_adds_up(explanation, own_quantity(model, features, explanation))
        explained.add(explanation.explains)
        if explanation.explains == "probability":
            assert probabilities is not None
            assert_adds_up(explanation, probabilities[label])
    expected = {"decision_tree": "probability", "random_forest": "probability", "extra_trees": "probability",
                "ridge": "decision_function", "linear_svm": "decision_function"}.get(algorithm, "log_odds")
    if algorithm in ("linear", "gradient_boosting_trees") and classes == 3:
        expected = "raw_score"  # softmax over three classes: each class's score before it
    assert explained == {expected}


def test_a_binary_classifier_explains_class_zero_by_the_negated_score() -> None:
    model = train("linear", "classification", classes=2)
    labels = set()
    for features in FEATURES:
        explanation = explain(model, features)
        labels.add(explanation.label)
        x = encoded(model, features)
        log_odds_of_1 = float(model.estimator.decision_function(x)[0])
        p = model.predict_row(features)[2]
        assert p is not None and explanation.label is not None
        # The log-odds of the predicted class, checked against its probability.
        assert explanation.total == pytest.approx(math.log(p[explanation.label] / (1 - p[explanation.label])),
                                                  rel=1e-9)
        assert abs(explanation.total) == pytest.approx(abs(log_odds_of_1), rel=1e-12)
    assert labels == {"high", "other"}  # both classes were explained


@pytest.mark.parametrize("proba,explains,factor", [("ovr", "log_odds", 1.0), ("softmax", "raw_score", 1.0),
                                                   (None, "decision_function", 1.0)])
def test_a_linear_classifier_explains_the_predicted_class_score(proba: Optional[str], explains: str,
                                                                factor: float) -> None:
    # One-vs-rest logistic regression (liblinear in scikit-learn < 1.8), multinomial, and classifiers
    # without probabilities: the predicted class's own score.
    predictor = LinearPredictor([1.0, -2.0, 0.5, 3.0, 0.25, -1.0], [0.5, -0.25, 1.0], True, proba)
    x = [0.3, -1.2]
    scores = [1.0 * 0.3 + 2.4 + 0.5, 0.5 * 0.3 - 3.6 - 0.25, 0.25 * 0.3 + 1.2 + 1.0]
    for position in range(3):
        parts, base, what, method = explaining._linear(predictor)(x, position)
        assert (what, method) == (explains, "linear")
        assert base + math.fsum(parts) == pytest.approx(factor * scores[position], rel=1e-15)


def test_a_two_class_multinomial_explains_twice_its_score() -> None:
    # Probabilities softmax(-s, s): the log-odds of class 1 are 2 s.
    predictor = LinearPredictor([1.5, -0.5], [0.25], True, "softmax_binary")
    x = [2.0, 1.0]
    for position, sign in ((1, 1.0), (0, -1.0)):
        parts, base, what, _ = explaining._linear(predictor)(x, position)
        p1 = predictor.predict_proba(x)[1]
        assert what == "log_odds"
        assert base + math.fsum(parts) == pytest.approx(sign * math.log(p1 / (1 - p1)), rel=1e-12)


def test_a_linear_contribution_is_the_coefficient_times_the_encoded_value() -> None:
    model = train("linear", preprocess={"size": {"scale": "min_max"}, "rooms": {"scale": "none"}})
    coef, intercept = model.estimator.coef_, model.estimator.intercept_
    names = model.encoder.output_names
    features = {"size": 110.0, "rooms": 4, "garden": True, "city": "rome"}
    explanation = explain(model, features)
    by_name = {c.feature: c for c in explanation.contributions}
    describe = model.encoder.describe()
    size = (110.0 - describe["size"]["min"]) / (describe["size"]["max"] - describe["size"]["min"])
    assert by_name["size"].contribution == pytest.approx(coef[names.index("size")] * size, rel=1e-12)
    assert by_name["rooms"].contribution == pytest.approx(coef[names.index("rooms")] * 4, rel=1e-12)
    # One-hot: the category's coefficient, the other categories' parts being zero.
    assert by_name["city"].contribution == pytest.approx(coef[names.index("city=rome")], rel=1e-12)
    assert explanation.base == intercept
    assert by_name["city"].value == "rome" and by_name["rooms"].value == 4 and by_name["garden"].value is True
    # A category training never saw is all zeros: it contributes nothing.
    assert {c.feature: c for c in explain(model, dict(features, city="oslo")).contributions}["city"].contribution == 0


@pytest.mark.parametrize("algorithm", ["linear", "random_forest"])
def test_a_null_is_explained_at_its_imputed_value(algorithm: str) -> None:
    model = train(algorithm, preprocess={"size": {"impute": "median"}, "city": {"impute": "most_frequent"}},
                  hyperparams={"n_estimators": 10} if algorithm == "random_forest" else None)
    describe = model.encoder.describe()
    median, frequent = describe["size"]["impute_value"], describe["city"]["impute_value"]
    with_nulls = explain(model, {"size": None, "rooms": 3, "garden": True, "city": None})
    given = explain(model, {"size": median, "rooms": 3, "garden": True, "city": frequent})
    by_name = {c.feature: c for c in with_nulls.contributions}
    assert by_name["size"].imputed and by_name["size"].value == median
    assert by_name["city"].imputed and by_name["city"].value == frequent
    assert not by_name["rooms"].imputed and by_name["rooms"].value == 3
    assert [c.contribution for c in with_nulls.contributions] == [c.contribution for c in given.contributions]
    assert with_nulls.base == given.base


def test_a_text_null_that_is_its_own_category_is_not_imputed() -> None:
    model = train("linear")  # text: NULL is a category of its own by default
    city = {c.feature: c for c in explain(model, FEATURES[2]).contributions}["city"]
    names = model.encoder.output_names
    assert city.value is None and not city.imputed
    assert city.contribution == pytest.approx(model.estimator.coef_[names.index("city IS NULL")], rel=1e-12)


@pytest.mark.parametrize("task,preprocess", [
    ("regression", {"city": {"encode": "target"}, "rooms": {"encode": "one_hot"}}),
    ("classification", {"city": {"encode": "target"}, "size": {"impute": "min", "scale": "robust"}}),
    ("regression", {"city": {"encode": {"ordinal": ["rome", "lyon", "paris", None]}, "scale": "standard"},
                    "size": {"impute": "max", "scale": "max_abs"}}),
])
@pytest.mark.parametrize("algorithm", ["linear", "random_forest"])
def test_every_encoding_adds_up_into_its_column(algorithm: str, task: str, preprocess: Dict[str, Any]) -> None:
    # Target encoding (one output per class for three classes), numbers encoded as categories,
    # ordinal codes scaled: each column's outputs are one contribution.
    model = train(algorithm, task, {"n_estimators": 10} if algorithm == "random_forest" else None, preprocess)
    for features in FEATURES:
        explanation = explain(model, features)
        assert [c.feature for c in explanation.contributions] == ["size", "rooms", "garden", "city"]
        assert_adds_up(explanation, own_quantity(model, features, explanation))
    sources = model.encoder.output_sources
    if task == "classification":
        assert sources.count("city") == 3  # a share of each class


def test_one_hot_parts_add_up_into_their_column() -> None:
    model = train("random_forest", hyperparams={"n_estimators": 10})
    x = encoded(model, FEATURES[0])[0].tolist()
    parts, _ = TreeShap([e.tree_ for e in model.estimator.estimators_], [0.1] * 10, len(x)).explain(x, 0)
    sources = model.encoder.output_sources
    city = math.fsum(p for p, s in zip(parts, sources) if s == "city")
    assert {c.feature: c for c in explain(model, FEATURES[0]).contributions}["city"].contribution == \
        pytest.approx(city, rel=1e-12, abs=1e-9)
    assert sources.count("city") == 4  # lyon, paris, rome and NULL: four parts, one contribution


def _expected_value(tree: Any, x: np.ndarray, known: set) -> float:
    """A tree's expected value with the features in ``known`` fixed to x and the others following
    the training rows (the definition path-dependent TreeSHAP uses)."""
    def walk(node: int) -> float:
        left, right = tree.children_left[node], tree.children_right[node]
        if left < 0:
            return float(tree.value[node, 0, 0])
        if tree.feature[node] in known:
            return walk(left if np.float32(x[tree.feature[node]]) <= tree.threshold[node] else right)
        cover = tree.weighted_n_node_samples
        return (cover[left] * walk(left) + cover[right] * walk(right)) / cover[node]
    return walk(0)


def _shapley(tree: Any, x: np.ndarray, n: int) -> np.ndarray:
    """Shapley values by their definition: every subset of the other features, weighted."""
    phi = np.zeros(n)
    for i in range(n):
        others = [j for j in range(n) if j != i]
        for k in range(n):
            weight = math.factorial(k) * math.factorial(n - k - 1) / math.factorial(n)
            for subset in itertools.combinations(others, k):
                phi[i] += weight * (_expected_value(tree, x, set(subset) | {i}) - _expected_value(tree, x, set(subset)))
    return phi


@pytest.mark.parametrize("max_depth", [1, 3, 8])
def test_tree_shap_is_shapleys_definition(max_depth: int) -> None:
    from sklearn.tree import DecisionTreeRegressor

    rng = np.random.default_rng(1)
    X = rng.normal(size=(400, 5))
    y = X[:, 0] * 2 + np.sin(3 * X[:, 1]) + X[:, 2] * X[:, 3] + (X[:, 0] > 1) * X[:, 4]
    tree = DecisionTreeRegressor(max_depth=max_depth, random_state=0).fit(X, y)
    shap = TreeShap([tree.tree_], [1.0], 5)
    for x in np.vstack([X[:4], rng.normal(size=(4, 5)) * 2]):
        parts, base = shap.explain(x.tolist(), 0)
        assert parts == pytest.approx(_shapley(tree.tree_, x, 5).tolist(), abs=1e-12)
        assert base == pytest.approx(_expected_value(tree.tree_, x, set()), abs=1e-12)
        assert base + math.fsum(parts) == pytest.approx(tree.predict(x[None])[0], abs=1e-12)


def test_tree_shap_of_a_forest_is_the_mean_of_its_trees() -> None:
    from sklearn.ensemble import RandomForestRegressor

    rng = np.random.default_rng(2)
    X = rng.normal(size=(200, 4))
    y = X[:, 0] - X[:, 1] * X[:, 2] + rng.normal(0, 0.1, 200)
    forest = RandomForestRegressor(n_estimators=4, max_depth=4, random_state=0).fit(X, y)
    x = rng.normal(size=4)
    parts, base = TreeShap([t.tree_ for t in forest.estimators_], [0.25] * 4, 4).explain(x.tolist(), 0)
    by_definition = np.mean([_shapley(t.tree_, x, 4) for t in forest.estimators_], axis=0)
    assert parts == pytest.approx(by_definition.tolist(), abs=1e-12)
    assert base + math.fsum(parts) == pytest.approx(forest.predict(x[None])[0], abs=1e-12)


def test_trees_fitted_with_missing_values_send_nan_where_they_learned_to() -> None:
    model = train("random_forest", hyperparams={"n_estimators": 10}, preprocess={"size": {"impute": "none"}})
    explanation = explain(model, {"size": None, "rooms": 2, "garden": False, "city": "lyon"})
    assert_adds_up(explanation, model.predict_row({"size": None, "rooms": 2, "garden": False, "city": "lyon"})[0])
    size = {c.feature: c for c in explanation.contributions}["size"]
    assert size.value is None and not size.imputed


def test_a_deep_forest_is_explained_quickly() -> None:
    from sklearn.ensemble import RandomForestRegressor

    rng = np.random.default_rng(3)
    X = rng.normal(size=(2000, 8))
    y = X @ rng.normal(size=8) + np.sin(3 * X[:, 0]) + rng.normal(0, 0.1, 2000)
    forest = RandomForestRegressor(n_estimators=100, random_state=0).fit(X, y)  # unlimited depth
    shap = TreeShap([t.tree_ for t in forest.estimators_], [0.01] * 100, 8)
    started = time.perf_counter()
    for x in X[:5]:
        parts, base = shap.explain(x.tolist(), 0)
        assert base + math.fsum(parts) == pytest.approx(forest.predict(x[None])[0], rel=1e-12)
    assert (time.perf_counter() - started) / 5 < 2.0  # about 0.1 s on this project's machine (2 busy cores)


def test_a_forest_too_large_to_keep_prepared_is_explained_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    from sklearn.ensemble import RandomForestClassifier

    rng = np.random.default_rng(4)
    X = rng.normal(size=(300, 5))
    y = (X[:, 0] + X[:, 1] * X[:, 2] > 0).astype(int) + (X[:, 3] > 1)
    forest = RandomForestClassifier(n_estimators=12, random_state=0).fit(X, y)
    trees, weights = [t.tree_ for t in forest.estimators_], [1 / 12] * 12
    kept = TreeShap(trees, weights, 5)
    monkeypatch.setattr(TreeShap, "_KEPT_EDGES", 0)
    monkeypatch.setattr(TreeShap, "_GROUP_EDGES", 200)  # a group per tree or two
    anew = TreeShap(trees, weights, 5)
    assert kept._kept is not None and anew._kept is None and len(anew._groups) > 5
    for x in X[:5]:
        for output in range(3):
            parts, base = anew.explain(x.tolist(), output)
            kept_parts, kept_base = kept.explain(x.tolist(), output)
            assert parts + [base] == pytest.approx(kept_parts + [kept_base], rel=1e-12, abs=1e-15)
            assert base + math.fsum(parts) == pytest.approx(forest.predict_proba(x[None])[0, output], abs=1e-12)


def test_only_the_last_few_explainers_are_kept() -> None:
    models = [train("linear") for _ in range(explaining._KEEP_PREPARED + 2)]
    for model in models:
        explain(model, FEATURES[0])
    assert list(explaining._PREPARED) == models[-explaining._KEEP_PREPARED:]


@pytest.mark.parametrize("algorithm,task", [("knn", "regression"), ("svm", "classification"),
                                            ("hist_gradient_boosting", "regression"), ("mlp", "regression"),
                                            ("ada_boost", "regression")])
def test_other_algorithms_are_refused_with_what_to_use_instead(algorithm: str, task: str) -> None:
    model = train(algorithm, task, {"max_iter": 50} if algorithm in ("mlp", "hist_gradient_boosting") else None)
    with pytest.raises(PgmlError) as caught:
        explain(model, FEATURES[0])
    assert caught.value.sqlstate == "0A000"
    assert "cannot be explained" in caught.value.message and "random_forest" in caught.value.message
    assert caught.value.hint is not None and "pgml.features" in caught.value.hint


def test_features_are_checked_as_for_a_prediction() -> None:
    model = train("linear")
    for features, message in [({"size": 1, "rooms": 2, "garden": True, "city": "x", "colour": "red"}, "no feature"),
                              ({"size": 1}, "lacks"), ("{not json", "not valid JSON"),
                              ({"size": "big", "rooms": 2, "garden": True, "city": "x"}, "cannot take")]:
        with pytest.raises(PgmlError, match=message):
            explain(model, features)


@pytest.mark.parametrize("folder", ["current", "format1", "legacy"])
@pytest.mark.parametrize("name", ["linear", "forest", "logistic", "trees", "gbt"])
def test_models_stored_by_earlier_versions_are_explained(folder: str, name: str) -> None:
    from pathlib import Path

    from stored import make  # tests/unit is on sys.path: pytest puts a test file's folder there

    model = model_format.load((Path(__file__).parent / "stored" / folder / f"{name}.model").read_bytes(), f"{name}_1")
    for features in make.FEATURES:
        explanation = explain(model, features)
        assert_adds_up(explanation, own_quantity(model, features, explanation))
        assert [c.feature for c in explanation.contributions] == ["size", "rooms", "city"]


def test_array_elements_are_explained_one_by_one() -> None:
    # A column the encoder spreads over outputs of its own (the elements of an array, as the
    # encoder would store them): one contribution each, named as the encoder names them.
    columns = [Column("pixels", "number", "smallint[]"), Column("city", "text", "text")]
    encoder = FeatureEncoder(columns, plan_preprocessing(columns, None, needs_scaling=False))
    encoder.fit({"pixels": np.arange(10, dtype=np.float64), "city": np.array(["a", "b"] * 5, dtype=object)})
    spread = encoder.to_data()
    spread["numbers"] = [[0, 0, 0.0, 1.0, 0.0], [0, 1, 0.0, 1.0, 0.0]]
    spread["texts"] = [[1, 2, [["a", 0], ["b", 1]], True]]
    spread["output_names"] = ["pixels[1]", "pixels[2]", "city=a", "city=b"]
    spread["output_sources"] = ["pixels", "pixels", "city", "city"]
    model = Model("arrays_1", "regression", [FeatureColumn("pixels", "smallint[]", "number", "int2"),
                                             FeatureColumn("city", "text", "text", "text")], spread, lambda: None)
    assert explaining._groups(model) == [("pixels[1]", 0, 0, [0]), ("pixels[2]", 0, 1, [1]), ("city", 1, None, [2, 3])]


# -- xgboost and lightgbm: their own contributions ------------------------------------------------------

def _library_model(estimator: Any, task: str, classes: int = 0,
                   fit: Callable[[Any, np.ndarray, np.ndarray], Any] = lambda e, X, y: e.fit(X, y)) -> tuple:
    """A Model around a library estimator fitted directly on the encoded matrix (class indices 0..k-1
    for classification, as pgml_fdw trains every model), and that matrix."""
    columns, price, band = data()
    encoder_columns = [Column(c.name, "text" if c.is_text else "number", c.sql_type) for c in COLUMNS]
    encoder = FeatureEncoder(encoder_columns, plan_preprocessing(encoder_columns, None, needs_scaling=False))
    encoder.fit(columns)
    X = encoder.transform(columns)
    labels: Optional[List[Any]] = None
    if task == "classification":
        if classes == 2:
            band = np.where(band == "high", "high", "other").astype(object)
        labels = sorted(set(band))
        y = np.array([labels.index(b) for b in band])
    else:
        y = price
    fit(estimator, X, y)
    return Model.fitted("lib_1", task, COLUMNS, encoder, estimator, labels), X


def _margins(model: Model, features: Any, raw: Sequence[float], label: Optional[str]) -> float:
    """The library's raw score for the predicted class (binary: negated for class 0)."""
    if label is None:
        return float(raw[0])
    assert model.known is not None
    position = model.known.index(model.labels.index(label))
    if len(raw) == 1:
        return float(raw[0] if position == 1 else -raw[0])
    return float(raw[position])


def _check_library(model: Model, raw_score: Any, expected_explains: str) -> None:
    for features in FEATURES:
        explanation = explain(model, features)
        prediction, label, _ = model.predict_row(features)
        assert explanation.label == label and explanation.explains == expected_explains
        raw = np.asarray(raw_score(encoded(model, features)), dtype=np.float64).reshape(1, -1)[0]
        expected = _margins(model, features, raw, label)
        # The libraries compute in float32: to its precision.
        assert explanation.total == pytest.approx(expected, rel=1e-5, abs=1e-5 * max(1.0, abs(expected)))
        if label is None and expected_explains == "prediction":
            assert explanation.total == pytest.approx(prediction, rel=1e-5)
        assert len(explanation.contributions) == 4


@pytest.mark.parametrize("task,classes", [("regression", 0), ("classification", 2), ("classification", 3)])
def test_xgboost_contributions_add_up_to_its_margin(task: str, classes: int) -> None:
    xgboost = pytest.importorskip("xgboost")
    kind = xgboost.XGBRegressor if task == "regression" else xgboost.XGBClassifier
    model, X = _library_model(kind(n_estimators=30, max_depth=4, random_state=0), task, classes)
    _check_library(model, lambda x: model.estimator.predict(x, output_margin=True),
                   "prediction" if task == "regression" else "log_odds" if classes == 2 else "raw_score")
    assert explain(model, FEATURES[0]).method == "xgboost"


def test_xgboost_explains_the_iterations_its_predictions_use() -> None:
    xgboost = pytest.importorskip("xgboost")
    # Early stopping on a validation set picks a best iteration short of the last.
    model, _ = _library_model(xgboost.XGBRegressor(n_estimators=200, early_stopping_rounds=3, learning_rate=0.5,
                                                   random_state=0), "regression",
                              fit=lambda estimator, X, y: estimator.fit(X[:200], y[:200], verbose=False,
                                                                        eval_set=[(X[200:], y[200:])]))
    assert model.estimator.best_iteration < 199
    for features in FEATURES:
        assert explain(model, features).total == pytest.approx(
            float(model.estimator.predict(encoded(model, features))[0]), rel=1e-5)


@pytest.mark.parametrize("task,classes", [("regression", 0), ("classification", 2), ("classification", 3)])
def test_lightgbm_contributions_add_up_to_its_raw_score(task: str, classes: int) -> None:
    lightgbm = pytest.importorskip("lightgbm")
    kind = lightgbm.LGBMRegressor if task == "regression" else lightgbm.LGBMClassifier
    model, X = _library_model(kind(n_estimators=30, num_leaves=8, random_state=0, verbose=-1), task, classes)
    _check_library(model, lambda x: model.estimator.predict(x, raw_score=True),
                   "prediction" if task == "regression" else "log_odds" if classes == 2 else "raw_score")
    assert explain(model, FEATURES[0]).method == "lightgbm"


@pytest.mark.parametrize("task,classes", [("regression", 0), ("classification", 2), ("classification", 3)])
def test_catboost_contributions_add_up_to_its_raw_formula(task: str, classes: int) -> None:
    catboost = pytest.importorskip("catboost")
    boosting.adapt("catboost")  # its multiclass predict answers a column, as pgml_fdw's loading fixes
    kind = catboost.CatBoostRegressor if task == "regression" else catboost.CatBoostClassifier
    model, X = _library_model(kind(iterations=30, depth=4, random_seed=0, logging_level="Silent",
                                   allow_writing_files=False), task, classes)
    _check_library(model, lambda x: model.estimator.predict(x, prediction_type="RawFormulaVal"),
                   "prediction" if task == "regression" else "log_odds" if classes == 2 else "raw_score")
    assert explain(model, FEATURES[0]).method == "catboost"


def test_a_log_link_regression_explains_its_raw_score() -> None:
    lightgbm = pytest.importorskip("lightgbm")
    model, _ = _library_model(lightgbm.LGBMRegressor(objective="poisson", n_estimators=20, verbose=-1), "regression")
    explanation = explain(model, FEATURES[0])
    assert explanation.explains == "raw_score"
    assert math.exp(explanation.total) == pytest.approx(model.predict_row(FEATURES[0])[0], rel=1e-5)


def test_rows_start_with_the_base() -> None:
    model = train("linear")
    rows = explain(model, FEATURES[0]).rows()
    assert rows[0].feature == BASE and rows[0].value is None and not rows[0].imputed
    assert [r.feature for r in rows[1:]] == ["size", "rooms", "garden", "city"]
