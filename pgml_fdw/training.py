"""One training run: options, the held-out split, fitting, evaluation.

:func:`train` is pure (arrays in, a :class:`TrainingResult` out) so it is tested without a server;
:func:`run` adds reading the relation, and does both in a worker process the backend supervises.
"""
from __future__ import annotations

import json
import math
import os
import resource
import time
import warnings
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Mapping, MutableMapping, Optional, Sequence, Tuple

import numpy as np

from . import algorithms, boosting, errors, importance, isolation, metrics, model_format, search, versions
from .columns import FeatureColumn, expand_preprocess
from .connection import ServerConnection
from .errors import PgmlError
from .jsonsafe import json_safe
from .loading import estimated_rows, expand_arrays, feature_columns, read_training_data
from .model import Model, label_text
from .preprocessing import Column, FeatureEncoder, plan_preprocessing, refuse_nulls

REGRESSION_KINDS = ("number", "interval", "date", "timestamp", "time")
# How the held-out rows are chosen; "stratified" is PostgresML's name for our random (stratified by class).
SAMPLINGS = ("random", "first", "last", "stratified")
# The algorithm of a clustering or decomposition run that names none: linear, every run's default
# (pgml.train's and pgml.training_runs'), stands for these (as PostgresML's examples expect).
UNSUPERVISED_DEFAULTS = {"clustering": "kmeans", "decomposition": "pca"}
# One training run may use this share of the server's memory unless pgml.training_memory says
# otherwise, and never more than the ceiling: the server's other sessions need the rest.
DEFAULT_MEMORY_SHARE = 0.25
MAX_MEMORY_SHARE = 0.5
# Below this, a worker cannot even read and parse a relation's first rows.
MIN_MEMORY = 64 * 2**20
# Peak memory of a run, as a multiple of its float64 feature matrix: the raw columns and the
# matrix, or the matrix and the estimator's working copy and workspace (make bench measures 2.2
# for a linear regression, whose solver copies the matrix).
PEAK_FACTOR = 2.5


def parse_json(value: Any, what: str, example: str) -> Any:
    """A jsonb option as Python: Multicorn hands jsonb over as text."""
    if value is None or not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except ValueError as exc:
        raise PgmlError(f"{what} is not valid JSON: {exc}", hint=f"For example: {example}",
                        sqlstate=errors.INVALID_TEXT) from exc
    except RecursionError as exc:
        raise PgmlError(f"{what} is nested too deeply", hint=f"For example: {example}") from exc


@dataclass
class TrainingOptions:
    """What a row inserted into pgml.training_runs asks for, checked before any data is read."""

    model_id: str
    name: str
    version: int
    relation: str
    y_column: Optional[str]  # None: clustering or decomposition, every column a feature
    trained_by: str
    algorithm: str = "linear"
    task: Optional[str] = None
    hyperparams: Dict[str, Any] = field(default_factory=dict)
    search: Optional[str] = None
    search_params: Optional[Dict[str, Any]] = None
    search_folds: int = 3
    search_args: Dict[str, Any] = field(default_factory=dict)  # PostgresML's: n_iter and cv (see search.py)
    preprocess: Optional[Dict[str, Any]] = None
    test_size: float = 0.25
    test_sampling: str = "random"

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> "TrainingOptions":
        """Options from the inserted row (after pgml._before_training filled in id, version...)."""
        hyperparams = parse_json(row.get("hyperparams"), "hyperparams", '\'{"alpha": 0.5}\'') or {}
        if not isinstance(hyperparams, dict):
            raise PgmlError("hyperparams must be a JSON object", hint='For example: \'{"alpha": 0.5}\'')
        search_params = parse_json(row.get("search_params"), "search_params", '\'{"max_depth": [3, 5]}\'')
        search_args = search.check_search_args(row.get("search"), parse_json(
            row.get("search_args"), "search_args", '\'{"n_iter": 20}\''))
        folds = search_args.get("cv", row.get("search_folds"))
        if row.get("search_folds") is not None and folds != row["search_folds"]:
            raise PgmlError(f"search_folds is {row['search_folds']} and search_args cv is {folds}: they are the same "
                            "setting", hint="Give the number of folds once, as search_folds or as search_args cv.")
        preprocess = parse_json(row.get("preprocess"), "preprocess", '\'{"age": {"impute": "median"}}\'')
        algorithm = row.get("algorithm") or "linear"
        if algorithm.strip().lower() == "linear" and row.get("task") in UNSUPERVISED_DEFAULTS:
            algorithm = UNSUPERVISED_DEFAULTS[row["task"]]
        options = cls(
            model_id=row["id"],
            name=row["name"],
            version=int(row["version"]),
            relation=row["relation"],
            y_column=row.get("y_column"),
            trained_by=row["trained_by"],
            algorithm=algorithm,
            task=row.get("task"),
            hyperparams=hyperparams,
            search=row.get("search"),
            search_params=search_params,
            search_folds=3 if folds is None else int(folds),
            search_args=search_args,
            preprocess=preprocess,
            test_size=0.25 if row.get("test_size") is None else float(row["test_size"]),
            test_sampling=row.get("test_sampling") or "random",
        )
        options.check()
        return options

    def check(self) -> None:
        """Checks what can be checked without the data."""
        if self.task is not None and self.task not in algorithms.TASKS:
            raise PgmlError(f'unknown task "{self.task}"', hint="Use regression, classification, clustering or "
                            "decomposition, or leave task out to have it follow y_column's type (or, for an "
                            "algorithm such as kmeans or pca, its task).")
        if not (0 < self.test_size < 1):
            raise PgmlError(f"test_size must be between 0 and 1, not {self.test_size}",
                            hint="It is the held-out fraction; 0.25 keeps a quarter of the rows for evaluation.")
        if self.test_sampling not in SAMPLINGS:
            raise PgmlError(f'unknown test_sampling "{self.test_sampling}"',
                            hint="Use random, or first or last to hold out the first or last rows in the "
                            "relation's order (a view's ORDER BY: order it by time).")
        if (self.search is None) != (self.search_params is None):
            raise PgmlError("search and search_params go together",
                            hint='For example: search => \'grid\', search_params => \'{"alpha": [0.1, 1, 10]}\'.')

    @property
    def n_iter(self) -> int:
        """How many candidates a random search tries at most (search_args n_iter)."""
        return int(self.search_args.get("n_iter", search.DEFAULT_N_ITER))

    def resolve_task(self, y: Optional[FeatureColumn]) -> str:
        """The task: as given; else the task of an algorithm made for clustering or decomposition
        (kmeans, pca); else from y's kind (numbers regress, text and booleans classify)."""
        task = self.task
        if task is None:
            tasks = algorithms.tasks_of(self.algorithm)
            if len(tasks) == 1 and tasks[0] in algorithms.UNSUPERVISED:
                task = tasks[0]
        if task in algorithms.UNSUPERVISED:
            assert task is not None
            return task
        if y is None:
            if task is None and not algorithms.tasks_of(self.algorithm):
                algorithms.lookup(self.algorithm, "clustering")  # says what is wrong with the name
            raise PgmlError(f"a {task or 'training'} run needs y_column, the column to predict",
                            hint="Give y_column, or train without one for clustering or decomposition: "
                            "pgml.train('my_view', NULL, 'kmeans'), or task => 'clustering' or 'decomposition' "
                            "(SELECT name, task FROM pgml.algorithms lists their algorithms).")
        if y.kind == "unsupported":
            raise PgmlError(f'y_column "{y.name}" has type {y.sql_type}, which cannot be predicted',
                            hint="Predict a number, a boolean or a text column; cast it in the view.",
                            sqlstate=errors.DATATYPE_MISMATCH)
        task = task or ("regression" if y.kind in REGRESSION_KINDS else "classification")
        if task == "regression" and y.kind not in REGRESSION_KINDS:
            raise PgmlError(f'y_column "{y.name}" is {y.sql_type}, and regression predicts numbers',
                            hint="Use task => 'classification', or y_column a numeric column.")
        return task


@dataclass
class TrainingResult:
    """A trained model and what the run measured."""

    model: Model
    metrics: Dict[str, Any]
    train_rows: int
    test_rows: int
    seconds: float
    details: Dict[str, Any]
    probe: np.ndarray  # rows the stored model answers again when loaded under other versions


def split(n: int, test_size: float, sampling: str, y: Optional[np.ndarray] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Deterministic train and test row indices: a shuffle with seed 0 (stratified by class when
    every class has two rows or more: "random" and "stratified"), or the first or last rows, in the
    order they were read, as the test set ("first" and "last")."""
    test_rows = int(math.ceil(n * test_size))
    if n < 2 or test_rows >= n:
        raise PgmlError(f"{n} row(s) are too few to train and evaluate a model",
                        hint="Train on more rows, or lower test_size.", sqlstate=errors.DATA_EXCEPTION)
    if sampling == "last":
        return np.arange(n - test_rows), np.arange(n - test_rows, n)
    if sampling == "first":
        return np.arange(test_rows, n), np.arange(test_rows)
    from sklearn.model_selection import train_test_split

    stratify = None
    if y is not None:
        counts = np.bincount(y)
        if counts[counts > 0].min() >= 2 and test_rows >= np.count_nonzero(counts):
            stratify = y
    train, test = train_test_split(np.arange(n), test_size=test_rows, random_state=0, stratify=stratify)
    return train, test


def encode_labels(y_text: np.ndarray, y: FeatureColumn) -> Tuple[np.ndarray, List[Any]]:
    """Class indices for text labels, and the classes in their original form (sorted)."""
    texts, indices = np.unique(y_text.astype(str), return_inverse=True)
    if y.kind == "boolean":
        classes: List[Any] = [t == "true" for t in texts]
    elif y.kind == "number":
        numbers = [float(t) for t in texts]
        classes = [int(v) if v.is_integer() else v for v in numbers]
        order = np.argsort(numbers, kind="stable")
        rank = np.empty_like(order)
        rank[order] = np.arange(len(order))
        return rank[indices], [classes[i] for i in order]
    else:
        classes = list(texts)
    return indices.astype(np.int64), classes


def prepare(options: TrainingOptions, y_column: Optional[FeatureColumn],
            columns: Sequence[FeatureColumn]) -> Tuple[str, algorithms.Algorithm, Dict[str, Any]]:
    """The task, algorithm and preprocessing plan of a run: every option checked, no data needed."""
    task = options.resolve_task(y_column)
    algorithm = algorithms.lookup(options.algorithm, task)
    plan = plan_preprocessing(_encoder_columns(columns), expand_preprocess(options.preprocess, columns),
                              algorithm.needs_scaling)
    algorithms.make_estimator(algorithm, options.hyperparams)
    if options.search:
        if task == "decomposition":
            raise PgmlError("hyperparameter search is not available for decomposition",
                            hint="Its key metric, the explained variance, only grows with n_components: give the "
                            "share of variance to keep instead, hyperparams => '{\"n_components\": 0.95}' (pca then "
                            "keeps as many components as that takes), or train one version per setting and compare "
                            "their metrics.")
        search.validate_search(algorithm, options.search, options.search_params or {}, options.search_folds,
                               options.n_iter)
    return task, algorithm, plan


def train(options: TrainingOptions, y_column: Optional[FeatureColumn], columns: Sequence[FeatureColumn],
          data: MutableMapping[str, np.ndarray], y_raw: Optional[np.ndarray],
          budget: Optional[float] = None) -> TrainingResult:
    """Fits and evaluates the model a run asks for, on the rows given, refusing a feature matrix
    that would not fit in ``budget`` bytes (default: :func:`training_budget`'s).

    Clustering and decomposition fit without y (``y_column`` and ``y_raw`` None, or a y_column
    given for clustering, whose values the clusters are then compared with on the test split).

    ``data`` is consumed: its columns are dropped once the feature matrix is made, so that the
    raw columns and the matrix are never both held while the estimator fits."""
    started = time.monotonic()
    task, algorithm, plan = prepare(options, y_column, columns)

    budget = training_budget(0) if budget is None else budget
    n = len(y_raw) if y_raw is not None else len(data[columns[0].name])
    if n == 0:
        if y_column is None:
            raise PgmlError(f"{options.relation} has no rows", hint="Training needs rows.",
                            sqlstate=errors.DATA_EXCEPTION)
        raise PgmlError(f'{options.relation} has no rows where "{y_column.name}" is not NULL',
                        hint="Training needs rows with a known value of y_column.", sqlstate=errors.DATA_EXCEPTION)
    classes = None
    y: Optional[np.ndarray] = None
    truth: Optional[np.ndarray] = None  # clustering with a y_column: its values as indices
    if task in algorithms.UNSUPERVISED:
        if task == "clustering" and y_raw is not None:
            truth = np.unique(y_raw.astype(str), return_inverse=True)[1].ravel()
    elif task == "classification":
        assert y_raw is not None and y_column is not None
        y, classes = encode_labels(y_raw, y_column)
        if len(classes) < 2:
            raise PgmlError(f'"{y_column.name}" has only one class ({classes[0]!r}) in {options.relation}',
                            hint="Classification needs at least two classes to tell apart.",
                            sqlstate=errors.DATA_EXCEPTION)
    else:
        assert y_raw is not None and y_column is not None
        y = np.array(y_raw, dtype=np.float64)
        bad = int(np.count_nonzero(~np.isfinite(y)))
        if bad:
            raise PgmlError(f'"{y_column.name}" is NaN or infinite in {bad:,} row(s) of {options.relation}',
                            sqlstate=errors.DATA_EXCEPTION,
                            hint=f"Leave those rows out in the view: WHERE {y_column.name} NOT IN "
                            "('NaN', 'Infinity', '-Infinity').")
    del y_raw
    check_finite_features(columns, data, options.relation)
    refuse_nulls(plan, data, options.relation)
    train_idx, test_idx = split(n, options.test_size, options.test_sampling, y if classes else None)

    encoder = FeatureEncoder(_encoder_columns(columns), plan)
    # Target encoding learns from the training rows' y only, never the held-out rows'.
    encoder.fit({name: values[train_idx] for name, values in data.items()}, None if y is None else y[train_idx],
                None if classes is None else [label_text(c) for c in classes])
    check_matrix_size(encoder, n, budget)
    # The columns in split order (training rows first), then one matrix of every row (the encoder
    # was fitted on the training rows only) whose two splits are views: at no point are there
    # more than two copies of the data, and the estimator fits on the matrix itself.
    order = np.concatenate([train_idx, test_idx])
    for name in list(data):
        data[name] = data[name][order]
    X = encoder.transform(data)
    data.clear()
    X_train, X_test = X[:len(train_idx)], X[len(train_idx):]
    y_train, y_test = (None, None) if y is None else (y[train_idx], y[test_idx])
    truth_test = None if truth is None else truth[test_idx]
    check_pairwise_size(algorithm, len(train_idx), budget)
    if y_train is not None and classes is not None and len(np.unique(y_train)) < 2:
        raise PgmlError("the training split holds a single class", hint="Train on more rows, or lower test_size.",
                        sqlstate=errors.DATA_EXCEPTION)

    params = dict(options.hyperparams)
    found = None
    with _fit_errors(algorithm):
        if options.search:
            # A clusterer ignores y, but the folds are made from one.
            found = search.search(algorithm, params, X_train, np.zeros(len(X_train)) if y_train is None else y_train,
                                  task, options.search, options.search_params or {}, options.search_folds,
                                  options.n_iter)
            params.update(found.best_params)
        estimator = algorithms.make_estimator(algorithm, params)
        if "copy_X" in estimator.get_params() and "copy_X" not in params:
            # X_train is this run's own: the estimator may center it in place instead of copying it.
            estimator.set_params(copy_X=False)
        with warnings.catch_warnings():
            # Deprecations of parameters passed knowingly (SVC's probability in scikit-learn 1.9, a
            # user's LogisticRegression penalty in 1.8): every supported version honours them, and
            # the warning would only reach the server log.
            warnings.simplefilter("ignore", FutureWarning)
            boosting.fit(estimator, X_train, y_train, task)  # early stopping, for the boosting libraries

    # scikit-learn only warns (in the server log) when affinity propagation does not converge, and
    # then gives no clusters, or one per row.
    if task == "clustering" and (metrics.cluster_count(estimator) == 0 or (
            algorithm.name == "affinity_propagation" and estimator.n_iter_ >= estimator.max_iter)):
        raise PgmlError(f"algorithm '{algorithm.name}' did not converge: it found no clusters it could keep",
                        hint="Raise max_iter, or damping (up to 0.99), or change preference (lower: fewer "
                        "clusters); or use kmeans.", sqlstate=errors.DATA_EXCEPTION)
    if task == "decomposition" and estimator.n_components_ == 0:
        raise PgmlError(f"algorithm '{algorithm.name}' kept no components",
                        hint="Give n_components a whole number of at least 1, or the share of variance to keep "
                        "(between 0 and 1), or leave it out to keep them all.")
    model = Model.fitted(options.model_id, task, columns, encoder, estimator, classes,
                         made_with=versions.current(estimator))
    if task == "clustering":
        measured = json_safe(metrics.clustering(X_test, estimator.predict(X_test), truth_test,
                                                metrics.cluster_count(estimator)))
    elif task == "decomposition":
        measured = json_safe(metrics.decomposition(estimator))
    else:
        assert y_test is not None
        measured = _evaluate(model, X_test, y_test, task, len(classes) if classes else None)
    feature_importance = None
    if y_test is not None:  # permutation importance needs a y to score against
        method, values = importance.feature_importance(estimator, X_test, y_test, task)
        feature_importance = {"method": method, "columns": importance.by_column(values, encoder.output_sources)}
    details = {
        "features": [
            {"name": c.name, "type": c.sql_type, "kind": c.kind, "preprocess": encoder.describe().get(c.name),
             **({} if c.array is None else {"column": c.array[0]})}
            for c in columns
        ],
        "classes": classes,
        "hyperparams": json_safe(estimator.get_params()),
        "search": None if found is None else {
            "method": options.search, "folds": options.search_folds,
            **({"n_iter": options.n_iter} if options.search == "random" else {}),
            "args": options.search_args or None, "best_params": json_safe(found.best_params),
            "best_score": json_safe(found.best_score), "candidates": json_safe(found.candidates)},
        "importance": feature_importance,
        "versions": model.made_with,
    }
    return TrainingResult(model, measured, len(train_idx), len(test_idx), time.monotonic() - started, details,
                          model_format.probe_rows(X_train))


# Algorithms that hold matrices of every pair of training rows (float64), and how many:
# affinity_propagation's similarities, responsibilities, availabilities and a work array.
_PAIRWISE_MATRICES = {"affinity_propagation": 4}


def check_pairwise_size(algorithm: algorithms.Algorithm, rows: int, budget: float) -> None:
    """Refuses, before fitting, an algorithm whose memory grows with the square of the training
    rows when they are too many for ``budget`` bytes."""
    matrices = _PAIRWISE_MATRICES.get(algorithm.name)
    if matrices is None or matrices * 8 * rows * rows <= budget:
        return
    fits = int(math.sqrt(budget / (matrices * 8)))
    raise PgmlError(f"algorithm '{algorithm.name}' would need {_size(matrices * 8 * rows * rows)} for {rows:,} "
                    f"training rows (it holds {matrices} matrices of every pair of rows), more than the "
                    f"{_size(budget)} a training run may use (pgml.training_memory)", sqlstate=errors.OUT_OF_MEMORY,
                    hint=f"Train it on a sample of at most about {fits:,} training rows (a view with TABLESAMPLE or "
                    "LIMIT), or use kmeans, mini_batch_kmeans or birch, whose memory grows with the rows only.")


def check_finite_features(columns: Sequence[FeatureColumn], data: Mapping[str, np.ndarray], relation: str) -> None:
    """Refuses infinite values in numeric features (NULL and NaN are imputed; infinity cannot be)."""
    for column in columns:
        values = data[column.name]
        if values.dtype == np.float64:
            bad = int(np.count_nonzero(np.isinf(values)))
            if bad:
                raise PgmlError(f'feature "{column.name}" is infinite in {bad:,} row(s) of {relation}',
                                sqlstate=errors.DATA_EXCEPTION,
                                hint=f"Leave those rows out in the view, or turn them into NULL: "
                                f"nullif(nullif({column.name}, 'Infinity'), '-Infinity').")


@contextmanager
def _fit_errors(algorithm: algorithms.Algorithm) -> Iterator[None]:
    """scikit-learn's own refusals while fitting (a hyperparameter it only checks then, a value
    too large for its C code) as errors that say which algorithm refused and why."""
    try:
        yield
    except PgmlError:
        raise
    except (ValueError, TypeError, OverflowError, IndexError, KeyError) as exc:
        # Raised by scikit-learn on hyperparameters it accepted when the estimator was made
        # (hidden_layer_sizes [0], monotonic_cst given as an object...): the user's to change.
        too_large = isinstance(exc, OverflowError)
        reason = str(exc).strip() if isinstance(exc, (ValueError, TypeError)) else f"{type(exc).__name__}: {exc}"
        raise PgmlError(
            f"algorithm '{algorithm.name}' ({algorithm.task}) cannot train with these hyperparameters: "
            + ("a value is too large" if too_large else reason),
            hint=("Use integers below 2147483647." if too_large else
                  f"Change the hyperparameter it names; SELECT hyperparams FROM pgml.algorithms WHERE name = "
                  f"'{algorithm.name}' lists the defaults."),
        ) from exc


def training_budget(requested: int) -> int:
    """The bytes one run may use: ``requested`` (pgml.training_memory; 0 for the default, a
    quarter of the server's memory), refused above half of it."""
    available = memory_limit()
    ceiling = available * MAX_MEMORY_SHARE
    if requested <= 0:
        return int(available * DEFAULT_MEMORY_SHARE)
    if requested < MIN_MEMORY:
        raise PgmlError(f"pgml.training_memory is {_size(requested)}, less than the {_size(MIN_MEMORY)} a training "
                        "run needs at least", sqlstate=errors.INVALID_PARAMETER,
                        hint=f"Set it to {_size(MIN_MEMORY)} or more.")
    if requested > ceiling:
        raise PgmlError(f"pgml.training_memory is {_size(requested)}, more than half of the {_size(available)} "
                        "this server may use", sqlstate=errors.INVALID_PARAMETER,
                        hint=f"Set it to at most {_size(ceiling)}, or train on fewer rows.")
    return int(requested)


def check_matrix_size(encoder: FeatureEncoder, rows: int, budget: float) -> None:
    """Refuses, before it is made, a feature matrix whose run would need more than ``budget``
    bytes; the error names the column that widens it most (a text column with as many categories
    as rows, typically)."""
    features = len(encoder.output_names)
    needed = rows * features * 8
    if needed * PEAK_FACTOR <= budget:
        return
    widest, width = Counter(encoder.output_sources).most_common(1)[0]
    if width > 1:
        hint = (f'Column "{widest}" alone becomes {width:,} features, one per distinct value: if it identifies '
                f'rows, leave it out of the view; else give it {{"{widest}": {{"encode": "ordinal"}}}} '
                '(or "target": the mean of y per value) in preprocess.')
    else:
        hint = ("Train on fewer rows (for instance a view with TABLESAMPLE or LIMIT) or fewer columns, "
                "or raise pgml.training_memory.")
    raise PgmlError(f"the feature matrix would take {_size(needed)} ({rows:,} rows x {features:,} features) and "
                    f"training about {PEAK_FACTOR}x that, more than the {_size(budget)} a training run may use "
                    "(pgml.training_memory)", hint=hint, sqlstate=errors.OUT_OF_MEMORY)


def check_estimated_size(rows: float, columns: Sequence[FeatureColumn], budget: float) -> None:
    """Refuses, before the relation is read, a run whose estimated rows (the planner's) would not
    fit in ``budget`` even with one feature per column."""
    needed = rows * (len(columns) + 1) * 8
    if needed * PEAK_FACTOR <= budget:
        return
    raise PgmlError(f"the relation has about {rows:,.0f} rows, and training on them would need at least "
                    f"{_size(needed * PEAK_FACTOR)}, more than the {_size(budget)} a training run may use "
                    "(pgml.training_memory)", sqlstate=errors.OUT_OF_MEMORY,
                    hint="Train on fewer rows (a view with TABLESAMPLE or LIMIT) or fewer columns, "
                    "or raise it: SET pgml.training_memory = '4GB'.")


def _size(nbytes: float) -> str:
    if nbytes >= 2**30:
        return f"{nbytes / 2**30:.1f} GB"
    return f"{nbytes / 2**20:.0f} MB" if nbytes >= 2**20 else f"{nbytes / 2**10:.0f} kB"


def memory_limit() -> float:
    """The memory this server may use: its physical memory, or less where a container's cgroup or
    an address-space limit says so."""
    limits: List[float] = []
    try:
        limits.append(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):
        pass
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):  # v2, v1
        try:
            with open(path) as f:
                text = f.read().strip()
        except OSError:
            continue
        if text.isdigit():
            limits.append(int(text))
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        limits.append(soft)
    return min(limits, default=math.inf)


def _encoder_columns(columns: Sequence[FeatureColumn]) -> List[Column]:
    return [Column(c.name, "text" if c.is_text else "number", c.sql_type) for c in columns]


def _evaluate(model: Model, X_test: np.ndarray, y_test: np.ndarray, task: str,
              n_classes: Optional[int]) -> Dict[str, Any]:
    estimator = model.estimator
    y_pred = estimator.predict(X_test)
    proba = None
    if n_classes is not None and hasattr(estimator, "predict_proba"):
        proba = np.zeros((len(X_test), n_classes))
        proba[:, estimator.classes_] = estimator.predict_proba(X_test)
    return json_safe(metrics.evaluate(task, y_test, y_pred, proba, n_classes))


@dataclass
class TrainedRun:
    """What a run in its worker process hands back to the backend: small, and the model already
    serialized by model_format (it goes into pgml.model_estimators as it is)."""

    task: str
    model: bytes
    metrics: Dict[str, Any]
    train_rows: int
    test_rows: int
    seconds: float
    details: Dict[str, Any]
    peak_memory: int  # bytes the worker used at most, beyond what it shared with the backend


def run(options: TrainingOptions, server: ServerConnection, memory_limit: int = 0) -> TrainedRun:
    """Reads the relation as the training user and trains on it, in a worker process of its own
    (:mod:`isolation`) that may use at most ``memory_limit`` bytes (pgml.training_memory; 0 for
    the default) and that a cancel, a statement timeout or a termination stops at once. The
    worker connects with ``server``'s dsn, and ``server`` terminates its backends if it is abandoned.

    Raises :class:`isolation.Interrupted` when PostgreSQL asked the backend to stop: the caller
    returns and lets PostgreSQL raise its own error.
    """
    budget = training_budget(memory_limit)
    return isolation.run(_train_in_worker, options, server.dsn, budget, memory_limit=budget,
                         on_abandon=server.terminate)


def _train_in_worker(options: TrainingOptions, dsn: str, budget: int) -> TrainedRun:
    started = time.monotonic()
    resident = _reset_peak()  # the backend's pages, which the worker starts out sharing
    server = ServerConnection(dsn)  # the worker's own: the backend's connections are not to be touched
    y_column, described = feature_columns(server, options.relation, options.y_column)
    # An array column is as many features as its arrays have elements.
    columns = expand_arrays(dsn, options.trained_by, options.relation, options.y_column, described)
    # Checked first: a typo in an option, or a relation far too big, should not cost a full read.
    task, _, _ = prepare(options, y_column, columns)
    if task in algorithms.UNSUPERVISED:
        check_objects_support(server, task)
    check_estimated_size(estimated_rows(server, options.relation), columns, budget)
    # y is read as text but for regression: class labels, or what clusters are compared with.
    data, y_raw = read_training_data(dsn, options.trained_by, options.relation, y_column,
                                     task != "regression", columns)
    # A copy: the columns are views of one buffer, which train() frees by dropping them.
    y_raw = None if y_raw is None else np.array(y_raw)
    result = train(options, y_column, columns, data, y_raw, budget)
    model = model_format.dump(result.model, result.probe)
    peak = _peak_bytes() - resident
    return TrainedRun(result.model.task, model, result.metrics, result.train_rows, result.test_rows,
                      time.monotonic() - started, result.details, max(peak, 0))


def check_objects_support(server: ServerConnection, task: str) -> None:
    """Refuses a clustering or decomposition run in a database whose pgml_fdw objects predate those
    tasks (0.5.0): the run would fail when its model is stored."""
    rows = server.fetch("SELECT string_to_array(extversion, '.')::int[] >= '{0,5,0}' FROM pg_extension "
                        "WHERE extname = 'pgml_fdw'")
    if rows and rows[0][0] is False:
        raise PgmlError(f"this database's pgml_fdw objects are older than its Python package and cannot store "
                        f"{task} models", hint="Update them: ALTER EXTENSION pgml_fdw UPDATE (models are kept).",
                        sqlstate=errors.FEATURE_NOT_SUPPORTED)


def _reset_peak() -> int:
    """The process's resident bytes now, made its peak: a forked worker inherits the backend's
    highest resident size ever, which is not this run's."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # Linux: reset the peak resident set size to the current one
    except OSError:
        pass
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_bytes() -> int:
    """The process's peak resident bytes (VmHWM), or getrusage's where /proc does not say."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
