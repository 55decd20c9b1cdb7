"""The algorithm catalogue: PostgresML algorithm names mapped to scikit-learn estimators, and to
the scikit-learn APIs of xgboost, LightGBM and CatBoost (optional libraries: :mod:`boosting`).

Each (name, task) pair is one :class:`Algorithm`.  :func:`make_estimator` builds
an unfitted estimator from catalogue defaults plus user hyperparameters (which
arrive as JSON), and turns scikit-learn's parameter validation errors into
:class:`~pgml_fdw.errors.PgmlError` messages phrased in JSON terms (for the
boosting libraries, which have no such validation, :mod:`boosting` checks what
it can before fitting and words their refusals while fitting).
"""
from __future__ import annotations

import difflib
import importlib
import json
import re
import warnings
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple

from pgml_fdw import boosting, errors, versions
from pgml_fdw.errors import PgmlError
from pgml_fdw.jsonsafe import json_safe

# First: an unsupported scikit-learn is named as such, not as a failing import of its private module.
versions.check()

from sklearn.utils._param_validation import (  # noqa: E402
    Interval,
    InvalidParameterError,
    StrOptions,
    _ArrayLikes,
    _Booleans,
    _Constraint,
    _InstancesOf,
    _NoneConstraint,
    _RandomStates,
    _VerboseHelper,
    make_constraint,
)

TASKS = ("regression", "classification", "clustering", "decomposition")
# The tasks trained without a y column: every column of the relation is a feature.
UNSUPERVISED = ("clustering", "decomposition")


@dataclass(frozen=True)
class Algorithm:
    """One algorithm for one task.

    ``estimator`` is the dotted path of the scikit-learn class; ``defaults``
    are the hyperparameters we set beyond scikit-learn's own defaults;
    ``needs_scaling`` says whether features should be standardized by default.
    """

    name: str
    task: str
    estimator: str
    defaults: Mapping[str, Any] = field(hash=False)  # read-only; not part of the hash (mappings are unhashable)
    needs_scaling: bool
    description: str

    @property
    def library(self) -> Optional[str]:
        """The optional library behind it (xgboost, lightgbm, catboost), None for scikit-learn's."""
        return boosting.catalogue_library(self.estimator)


def _entry(
    name: str,
    task: str,
    estimator: str,
    description: str,
    needs_scaling: bool = False,
    **defaults: Any,
) -> Algorithm:
    return Algorithm(name, task, estimator, MappingProxyType(defaults), needs_scaling, description)


_R, _C, _K, _D = "regression", "classification", "clustering", "decomposition"

# random_state=0 wherever the estimator has one, so the same data gives the same model.
# max_iter is raised where scikit-learn's default often stops before converging.
CATALOGUE: Tuple[Algorithm, ...] = (
    # Scaled although least squares does not need it in theory: scikit-learn >= 1.9 solves with a
    # relative cutoff (tol=1e-6), under which a feature in the millions (an interval in seconds)
    # swamps the others and their coefficients come out as zero.
    _entry("linear", _R, "sklearn.linear_model.LinearRegression",
           "ordinary least squares linear regression", True),
    _entry("linear", _C, "sklearn.linear_model.LogisticRegression",
           "logistic regression", True, max_iter=1000, random_state=0),
    _entry("ridge", _R, "sklearn.linear_model.Ridge",
           "linear regression with L2 regularization", True, random_state=0),
    _entry("ridge", _C, "sklearn.linear_model.RidgeClassifier",
           "linear classifier with L2 regularization (no probabilities)", True, random_state=0),
    _entry("lasso", _R, "sklearn.linear_model.Lasso",
           "linear regression with L1 regularization (drops weak features)", True,
           max_iter=10000, random_state=0),
    _entry("elastic_net", _R, "sklearn.linear_model.ElasticNet",
           "linear regression with combined L1 and L2 regularization", True,
           max_iter=10000, random_state=0),
    _entry("bayesian_ridge", _R, "sklearn.linear_model.BayesianRidge",
           "ridge regression that estimates its regularization from the data", True),
    _entry("huber", _R, "sklearn.linear_model.HuberRegressor",
           "linear regression that is robust to outliers", True, max_iter=1000),
    _entry("svm", _R, "sklearn.svm.SVR",
           "support vector machine with an RBF kernel", True),
    _entry("svm", _C, "sklearn.svm.SVC",
           "support vector machine with an RBF kernel", True, probability=True, random_state=0),
    _entry("linear_svm", _R, "sklearn.svm.LinearSVR",
           "linear support vector machine, fast on large data", True,
           max_iter=10000, random_state=0),
    _entry("linear_svm", _C, "sklearn.svm.LinearSVC",
           "linear support vector machine, fast on large data (no probabilities)", True,
           max_iter=10000, random_state=0),
    _entry("knn", _R, "sklearn.neighbors.KNeighborsRegressor",
           "average of the k nearest training rows", True),
    _entry("knn", _C, "sklearn.neighbors.KNeighborsClassifier",
           "majority vote of the k nearest training rows", True),
    _entry("decision_tree", _R, "sklearn.tree.DecisionTreeRegressor",
           "a single decision tree", random_state=0),
    _entry("decision_tree", _C, "sklearn.tree.DecisionTreeClassifier",
           "a single decision tree", random_state=0),
    _entry("random_forest", _R, "sklearn.ensemble.RandomForestRegressor",
           "random forest of decision trees", random_state=0),
    _entry("random_forest", _C, "sklearn.ensemble.RandomForestClassifier",
           "random forest of decision trees", random_state=0),
    _entry("extra_trees", _R, "sklearn.ensemble.ExtraTreesRegressor",
           "extremely randomized trees", random_state=0),
    _entry("extra_trees", _C, "sklearn.ensemble.ExtraTreesClassifier",
           "extremely randomized trees", random_state=0),
    _entry("gradient_boosting_trees", _R, "sklearn.ensemble.GradientBoostingRegressor",
           "gradient-boosted decision trees", random_state=0),
    _entry("gradient_boosting_trees", _C, "sklearn.ensemble.GradientBoostingClassifier",
           "gradient-boosted decision trees", random_state=0),
    _entry("hist_gradient_boosting", _R, "sklearn.ensemble.HistGradientBoostingRegressor",
           "histogram-based gradient boosting, fast on large data", random_state=0),
    _entry("hist_gradient_boosting", _C, "sklearn.ensemble.HistGradientBoostingClassifier",
           "histogram-based gradient boosting, fast on large data", random_state=0),
    _entry("ada_boost", _R, "sklearn.ensemble.AdaBoostRegressor",
           "AdaBoost ensemble of decision trees", random_state=0),
    _entry("ada_boost", _C, "sklearn.ensemble.AdaBoostClassifier",
           "AdaBoost ensemble of decision trees", random_state=0),
    _entry("bagging", _R, "sklearn.ensemble.BaggingRegressor",
           "bagged decision trees", random_state=0),
    _entry("bagging", _C, "sklearn.ensemble.BaggingClassifier",
           "bagged decision trees", random_state=0),
    _entry("mlp", _R, "sklearn.neural_network.MLPRegressor",
           "multi-layer perceptron neural network", True, max_iter=1000, random_state=0),
    _entry("mlp", _C, "sklearn.neural_network.MLPClassifier",
           "multi-layer perceptron neural network", True, max_iter=1000, random_state=0),
    # Linear models fitted one row at a time, by gradient steps: on standardized features.
    _entry("stochastic_gradient_descent", _R, "sklearn.linear_model.SGDRegressor",
           "linear regression fitted by stochastic gradient descent, for large data", True, random_state=0),
    _entry("stochastic_gradient_descent", _C, "sklearn.linear_model.SGDClassifier",
           "linear classifier fitted by stochastic gradient descent, for large data (hinge loss: no "
           "probabilities; loss log_loss or modified_huber gives them)", True, random_state=0),
    _entry("perceptron", _C, "sklearn.linear_model.Perceptron",
           "the perceptron, a linear classifier (no probabilities)", True, random_state=0),
    # scikit-learn 1.8 deprecates the passive-aggressive classes for SGD's learning_rate "pa1",
    # which 1.6 and 1.7 do not have; every supported scikit-learn (below 1.10) has the classes,
    # and make_estimator silences the deprecation.
    _entry("passive_aggressive", _R, "sklearn.linear_model.PassiveAggressiveRegressor",
           "passive-aggressive linear regression, fitted one row at a time", True, random_state=0),
    _entry("passive_aggressive", _C, "sklearn.linear_model.PassiveAggressiveClassifier",
           "passive-aggressive linear classifier, fitted one row at a time (no probabilities)", True,
           random_state=0),
    # Least angle regression picks features by their correlation with the residual: on a common scale.
    _entry("least_angle", _R, "sklearn.linear_model.Lars",
           "least angle regression, for many features", True, random_state=0),
    _entry("lasso_least_angle", _R, "sklearn.linear_model.LassoLars",
           "lasso (L1 regularization) fitted by least angle regression", True, random_state=0),
    _entry("orthogonal_matching_pursuit", _R, "sklearn.linear_model.OrthogonalMatchingPursuit",
           "linear regression on a few features chosen greedily (n_nonzero_coefs; by default a tenth "
           "of the features)", True),
    _entry("automatic_relevance_determination", _R, "sklearn.linear_model.ARDRegression",
           "Bayesian linear regression that prunes irrelevant features", True),
    _entry("ransac", _R, "sklearn.linear_model.RANSACRegressor",
           "linear regression fitted on the inliers of random subsets, robust to outliers", random_state=0),
    _entry("theil_sen", _R, "sklearn.linear_model.TheilSenRegressor",
           "linear regression by the spatial median of subset fits, robust to outliers", random_state=0),
    # scikit-learn's alpha of 1.0 is an L1 penalty under which the pinball loss of standardized
    # features keeps no coefficient at all: 0 is the textbook quantile regression. highs is
    # scikit-learn's default solver from 1.4 on, named so that a later default cannot change a model.
    _entry("quantile", _R, "sklearn.linear_model.QuantileRegressor",
           "linear regression of a quantile of y (quantile; default the median), robust to outliers", True,
           alpha=0.0, solver="highs"),
    _entry("kernel_ridge", _R, "sklearn.kernel_ridge.KernelRidge",
           "ridge regression with a kernel (kernel; default linear), without an intercept: for a y "
           "centered on zero", True),
    # normalize_y: the prior's mean is y's mean rather than zero, and its scale y's.
    _entry("gaussian_process", _R, "sklearn.gaussian_process.GaussianProcessRegressor",
           "Gaussian process regression (memory grows with the square of the rows: small data)", True,
           normalize_y=True, random_state=0),
    _entry("gaussian_process", _C, "sklearn.gaussian_process.GaussianProcessClassifier",
           "Gaussian process classification (memory grows with the square of the rows: small data)", True,
           random_state=0),
    _entry("nu_svm", _R, "sklearn.svm.NuSVR",
           "support vector machine whose nu bounds the share of support vectors", True),
    _entry("nu_svm", _C, "sklearn.svm.NuSVC",
           "support vector machine whose nu bounds the share of support vectors", True,
           probability=True, random_state=0),
    # The gradient boosting libraries (optional: pyproject's extra "boosting"), through their
    # scikit-learn APIs: seeded, quiet (nothing written to the server's log or its files) and on one
    # thread, as every estimator here (n_jobs / thread_count raise it). early_stopping_rounds holds
    # out a tenth of the training rows to stop on (boosting.fit).
    _entry("xgboost", _R, "xgboost.XGBRegressor",
           "gradient-boosted trees (XGBoost)", random_state=0, n_jobs=1, verbosity=0),
    _entry("xgboost", _C, "xgboost.XGBClassifier",
           "gradient-boosted trees (XGBoost)", random_state=0, n_jobs=1, verbosity=0),
    _entry("xgboost_random_forest", _R, "xgboost.XGBRFRegressor",
           "random forest of XGBoost trees", random_state=0, n_jobs=1, verbosity=0),
    _entry("xgboost_random_forest", _C, "xgboost.XGBRFClassifier",
           "random forest of XGBoost trees", random_state=0, n_jobs=1, verbosity=0),
    # importance_type "gain", as XGBoost's and scikit-learn's trees measure it, not LightGBM's
    # default count of splits.
    _entry("lightgbm", _R, "lightgbm.LGBMRegressor",
           "gradient-boosted trees (LightGBM)", random_state=0, n_jobs=1, verbose=-1, importance_type="gain"),
    _entry("lightgbm", _C, "lightgbm.LGBMClassifier",
           "gradient-boosted trees (LightGBM)", random_state=0, n_jobs=1, verbose=-1, importance_type="gain"),
    _entry("catboost", _R, "catboost.CatBoostRegressor",
           "gradient-boosted oblivious trees (CatBoost)", random_state=0, thread_count=1,
           logging_level="Silent", allow_writing_files=False),
    _entry("catboost", _C, "catboost.CatBoostClassifier",
           "gradient-boosted oblivious trees (CatBoost)", random_state=0, thread_count=1,
           logging_level="Silent", allow_writing_files=False),
    # -- Clustering and decomposition: trained without y_column. Distances and variances depend on
    # the features' scales (an interval counts in seconds), so numbers are standardized by default,
    # as for knn. Only clusterers that can assign a new row to a cluster (a predict) are here: see
    # _NO_PREDICT for the others.
    _entry("kmeans", _K, "sklearn.cluster.KMeans",
           "k-means: each row goes to the nearest of n_clusters centroids", True, random_state=0),
    _entry("mini_batch_kmeans", _K, "sklearn.cluster.MiniBatchKMeans",
           "k-means fitted on small random batches, fast on large data", True, random_state=0),
    _entry("bisecting_kmeans", _K, "sklearn.cluster.BisectingKMeans",
           "k-means that splits a cluster in two until there are n_clusters", True, random_state=0),
    _entry("birch", _K, "sklearn.cluster.Birch",
           "BIRCH: a tree of small subclusters, grouped into n_clusters; suited to large data", True),
    _entry("mean_shift", _K, "sklearn.cluster.MeanShift",
           "mean shift: finds the number of clusters itself around the densest regions (slow on large data)",
           True),
    _entry("affinity_propagation", _K, "sklearn.cluster.AffinityPropagation",
           "affinity propagation: chooses exemplar rows and their number itself (memory grows with the "
           "square of the rows)", True, random_state=0),
    _entry("gaussian_mixture", _K, "sklearn.mixture.GaussianMixture",
           "mixture of n_components Gaussians, with each cluster's probability", True, random_state=0),
    _entry("pca", _D, "sklearn.decomposition.PCA",
           "principal component analysis: the row projected on n_components directions of most variance",
           True, random_state=0),
)

# Clusterers scikit-learn has (and PostgresML names) that only label the rows they were fitted on:
# they have no predict, so a model of them could not answer for a new row.
_NO_PREDICT = {
    "dbscan": "DBSCAN",
    "optics": "OPTICS",
    "spectral": "SpectralClustering",
    "spectral_bi": "SpectralBiclustering",
    "spectral_co": "SpectralCoclustering",
    "agglomerative": "AgglomerativeClustering",
    "feature_agglomeration": "FeatureAgglomeration",
}

_NAMES: Tuple[str, ...] = tuple(dict.fromkeys(a.name for a in CATALOGUE))


def _did_you_mean(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f"did you mean '{close[0]}'? " if close else ""


def lookup(name: str, task: str) -> Algorithm:
    """Return the catalogue entry for ``name`` and ``task``.

    Raises PgmlError for an unknown task, an unknown algorithm name (listing
    all valid names), or a name that does not support the task (listing the
    tasks it does support).
    """
    if task not in TASKS:
        raise PgmlError(f"unknown task '{task}'", hint=f"use one of: {', '.join(TASKS)}")
    key = name.strip().lower() if isinstance(name, str) else name
    entries = [a for a in CATALOGUE if a.name == key]
    if not entries and key in _NO_PREDICT:
        clusterers = ", ".join(a.name for a in CATALOGUE if a.task == "clustering")
        raise PgmlError(
            f"algorithm '{key}' cannot be trained here: scikit-learn's {_NO_PREDICT[key]} only labels the rows "
            "it was fitted on and cannot assign a new row to a cluster, so its model could not predict",
            hint=f"Use a clusterer that can: {clusterers} (mean_shift and affinity_propagation find the number "
            "of clusters themselves; gaussian_mixture gives each cluster's probability).",
            sqlstate=errors.FEATURE_NOT_SUPPORTED,
        )
    if not entries:
        raise PgmlError(
            f"unknown algorithm '{name}'",
            hint=f"{_did_you_mean(str(key), _NAMES)}valid algorithms: {', '.join(_NAMES)}",
        )
    for entry in entries:
        if entry.task == task:
            return entry
    supported = ", ".join(a.task for a in entries)
    others = ", ".join(a.name for a in CATALOGUE if a.task == task)
    raise PgmlError(
        f"algorithm '{key}' does not support {task}",
        hint=f"'{key}' supports only {supported}; for {task} use one of: {others}",
    )


def tasks_of(name: str) -> Tuple[str, ...]:
    """The tasks an algorithm name supports (none for an unknown name)."""
    key = name.strip().lower() if isinstance(name, str) else name
    return tuple(a.task for a in CATALOGUE if a.name == key)


def _estimator_class(algorithm: Algorithm) -> type:
    """The estimator's class, imported (an optional library that is missing: a PgmlError naming it)."""
    if algorithm.library is not None:
        boosting.require(algorithm.library, f"algorithm '{algorithm.name}'")
    module, _, cls = algorithm.estimator.rpartition(".")
    return getattr(importlib.import_module(module), cls)


def _new(cls: type, params: Mapping[str, Any]) -> Any:
    """An estimator of ``cls`` made with ``params``."""
    with warnings.catch_warnings():
        # The passive-aggressive classes, deprecated in scikit-learn 1.8 (see CATALOGUE), warn when made.
        warnings.simplefilter("ignore", FutureWarning)
        return cls(**params)


# Parameters scikit-learn has deprecated that we still accept, because users write them (as
# PostgresML's and scikit-learn's own examples do) and every supported scikit-learn (see
# pgml_fdw.versions) still honours them: LogisticRegression's penalty (deprecated in 1.8 in favour
# of l1_ratio and C=inf, removed in 1.10) and SVC's probability (deprecated in 1.9, which the svm
# classifier sets for its probabilities; removed in 1.11).
_STILL_ACCEPTED = frozenset({"penalty", "probability"})


def _unset(value: Any) -> bool:
    """Whether ``value`` is scikit-learn's marker for a deprecated parameter left at its default."""
    return isinstance(value, str) and value == "deprecated"


def _library_params(algorithm: Algorithm) -> Dict[str, Any]:
    """The library's own defaults, by hyperparameter name: scikit-learn's minus parameters
    scheduled for removal (but those in _STILL_ACCEPTED); for a boosting library, every name it
    accepts (:func:`boosting.hyperparameters`).

    scikit-learn marks those with the default "deprecated" (e.g. LogisticRegression
    multi_class in 1.5-1.7); offering them would only earn users a FutureWarning.
    """
    cls = _estimator_class(algorithm)
    if algorithm.library is not None:
        return boosting.hyperparameters(algorithm.library, cls)
    params = _new(cls, {}).get_params(deep=False)
    return {k: v for k, v in params.items() if not _unset(v) or k in _STILL_ACCEPTED}


def check_hyperparam_names(algorithm: Algorithm, names: Iterable[str]) -> None:
    """Raise PgmlError naming any of ``names`` that is not a hyperparameter of ``algorithm``."""
    valid = _library_params(algorithm)
    unknown = [n for n in names if n not in valid]
    if not unknown:
        return
    quoted = ", ".join(f"'{n}'" for n in unknown)
    plural = "s" if len(unknown) > 1 else ""
    listed = sorted(valid)
    more = ""
    if algorithm.library is not None:
        listed = boosting.hint_names(algorithm.library, _estimator_class(algorithm))
        if boosting.accepts_any_native(algorithm.library):
            more = ", and every parameter of the library under any of its names"
    raise PgmlError(
        f"unknown hyperparameter{plural} {quoted} for algorithm '{algorithm.name}' ({algorithm.task})",
        hint=f"{_did_you_mean(str(unknown[0]), valid)}valid hyperparameters: {', '.join(listed)}{more}",
    )


# Python types that a JSON value can take, in the words users see in the hint.
_JSON_TYPES = {
    dict: "a JSON object",
    list: "a JSON array",
    tuple: "a JSON array",
    str: "a string",
    int: "an integer",
    float: "a number",
}


def _describe(constraint: Any) -> List[str]:
    """Phrase a scikit-learn parameter constraint as the JSON values that satisfy it.

    Constraints that JSON cannot express (numpy arrays, callables, estimator
    objects, hidden/deprecated options) are left out.
    """
    if isinstance(constraint, str) and constraint == "no_validation":
        return []
    c = constraint if isinstance(constraint, _Constraint) else make_constraint(constraint)
    if c.hidden:
        return []
    if isinstance(c, (_RandomStates, _VerboseHelper)):
        return [text for sub in c._constraints for text in _describe(sub)]
    if isinstance(c, Interval):
        return [str(c).replace("an int ", "an integer ", 1).replace("a float ", "a number ", 1)]
    if isinstance(c, StrOptions):
        return ["one of " + ", ".join(json.dumps(o) for o in sorted(c.options - c.deprecated))]
    if isinstance(c, _Booleans) or (isinstance(c, _InstancesOf) and c.type is bool):
        return ["true", "false"]
    if isinstance(c, _NoneConstraint):
        return ["null"]
    if isinstance(c, _ArrayLikes):
        return [_JSON_TYPES[list]]
    if isinstance(c, _InstancesOf) and c.type in _JSON_TYPES:
        return [_JSON_TYPES[c.type]]
    return []


def _expected(estimator_class: type, param: str) -> Optional[str]:
    """What a valid JSON value for ``param`` looks like, or None if we cannot say."""
    constraints = getattr(estimator_class, "_parameter_constraints", {})
    texts = [t for c in constraints.get(param, []) for t in _describe(c)]
    texts = list(dict.fromkeys(texts))
    if not texts:
        return None
    return texts[0] if len(texts) == 1 else f"{', '.join(texts[:-1])} or {texts[-1]}"


def _to_json_text(value: Any) -> str:
    return json.dumps(json_safe(value))


# The message format of scikit-learn's InvalidParameterError.
_INVALID = re.compile(
    r"^The '(?P<param>[^']+)' parameter of \w+ must be (?P<expected>.+)\. Got .* instead\.$", re.S
)


def _from_json(defaults: Mapping[str, Any], hyperparams: Mapping[str, Any]) -> Dict[str, Any]:
    """Turn JSON arrays into tuples where scikit-learn's default is a tuple (e.g. hidden_layer_sizes)."""
    return {
        k: tuple(v) if isinstance(v, list) and isinstance(defaults.get(k), tuple) else v
        for k, v in hyperparams.items()
    }


def make_estimator(algorithm: Algorithm, hyperparams: Optional[Mapping[str, Any]] = None) -> Any:
    """Build an unfitted estimator: scikit-learn defaults, then catalogue defaults, then ``hyperparams``.

    Raises PgmlError for a non-object ``hyperparams``, unknown keys (naming the
    valid ones) and values scikit-learn rejects (naming the parameter and what
    it expects).
    """
    hyperparams = {} if hyperparams is None else hyperparams
    if not isinstance(hyperparams, Mapping):
        raise PgmlError(
            f"hyperparameters must be a JSON object, got {_to_json_text(hyperparams)}",
            hint='write them as {"name": value, ...}, for example {"max_depth": 4}',
        )
    check_hyperparam_names(algorithm, hyperparams)
    sk_defaults = _library_params(algorithm)
    cls = _estimator_class(algorithm)
    if algorithm.library is not None:
        boosting.check_values(algorithm.name, algorithm.library, {**sk_defaults, **algorithm.defaults}, hyperparams)
        return _new(cls, boosting.merge(algorithm.library, algorithm.defaults, hyperparams))
    estimator = _new(cls, {**dict(algorithm.defaults), **_from_json(sk_defaults, hyperparams)})
    try:
        estimator._validate_params()
    except InvalidParameterError as exc:
        match = _INVALID.match(str(exc))
        if match is None:
            raise PgmlError(f"invalid hyperparameter for algorithm '{algorithm.name}': {exc}") from exc
        param = match.group("param")
        expected = _expected(cls, param) or match.group("expected")
        default = algorithm.defaults.get(param, sk_defaults.get(param))
        shown = "" if _unset(default) else f" ({_to_json_text(default)})"
        raise PgmlError(
            f"invalid value for hyperparameter '{param}' of algorithm '{algorithm.name}': "
            f"got {_to_json_text(estimator.get_params(deep=False)[param])}, expected {expected}",
            hint=f"change '{param}', or leave it out to use the default{shown}",
        ) from exc
    return estimator


def all_params(algorithm: Algorithm, hyperparams: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """The full effective hyperparameter set (defaults plus ``hyperparams``), JSON-safe; a
    deprecated parameter left unset is not part of it. For a boosting library: the catalogue's
    defaults plus ``hyperparams``."""
    if algorithm.library is not None:
        # What pgml_fdw sets; the library decides the rest when it fits (xgboost's scikit-learn API
        # leaves nearly every parameter None). Listed without importing the library, which may not
        # be installed (training says what to install) and would cost a backend that lists the
        # catalogue a second and a hundred megabytes.
        return {k: json_safe(v) for k, v in sorted({**algorithm.defaults, **(hyperparams or {})}.items())}
    estimator = make_estimator(algorithm, hyperparams)
    params = estimator.get_params(deep=False)
    return {k: json_safe(params[k]) for k in sorted(_library_params(algorithm)) if not _unset(params[k])}
