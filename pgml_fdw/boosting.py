"""xgboost, LightGBM and CatBoost: the optional libraries behind the algorithms of the same names
(and xgboost_random_forest).

Each is used through its own scikit-learn API (XGBRegressor, LGBMClassifier, CatBoostRegressor...),
and the fitted library estimator is what a model stores. None of them is required: pgml_fdw imports
one only for a model that uses it, and says which pip package to install when it is missing
(:func:`require`, and :func:`missing` for a stored model). This module imports none of them, nor
numpy, until a function needs them: model_format imports it on the serving path.

What the catalogue (algorithms.py) needs that scikit-learn's parameter validation gives its own
estimators, these libraries do not have: :func:`hyperparameters` (the names each accepts) and
:func:`check_values` (the checks that can be made before fitting); the library's own refusal
while fitting becomes an error naming the hyperparameter (:func:`fit`).

:func:`fit` is the one fit of a training run: for these libraries it holds out the last tenth of
the training rows (never test rows) as the validation set when early stopping is asked for, and the
library's predict then uses the best iteration (xgboost and LightGBM record it; CatBoost keeps only
the trees up to it).

Where a model is loaded to serve (model_format), :func:`ready` adapts its library (:func:`adapt`)
and keeps OpenMP to one thread, without which the workers a backend forks could hang
(:func:`single_threaded`).
"""
from __future__ import annotations

import functools
import importlib
import inspect
import json
import re
import sys
import warnings
from types import ModuleType
from typing import Any, Dict, FrozenSet, Iterable, List, Mapping, Optional

from . import errors, versions
from .errors import PgmlError

LIBRARIES = tuple(versions.OPTIONAL)
# The share of the training rows early stopping validates on (the last ones: training rows come
# shuffled, or in time order with test_sampling 'last', where the latest are the ones to validate on).
VALIDATION_FRACTION = 0.1

_TITLES = {"xgboost": "XGBoost", "lightgbm": "LightGBM", "catboost": "CatBoost"}

# Native XGBoost parameters that its scikit-learn API passes on to the booster, and that PostgresML
# accepts for xgboost: the aliases of learning_rate, reg_lambda, reg_alpha and gamma, and the dart
# booster's parameters.
_XGBOOST_NATIVE = ("eta", "lambda", "alpha", "min_split_loss", "rate_drop", "one_drop", "skip_drop",
                   "sample_type", "normalize_type")
_XGBOOST_ALIASES = (("learning_rate", "eta"), ("reg_lambda", "lambda"), ("reg_alpha", "alpha"),
                    ("gamma", "min_split_loss"))
# CatBoost's constructor takes several names for one parameter, and refuses two of them at once.
_CATBOOST_ALIASES = (
    ("iterations", "n_estimators", "num_boost_round", "num_trees"), ("learning_rate", "eta"),
    ("depth", "max_depth"), ("l2_leaf_reg", "reg_lambda"), ("random_seed", "random_state"),
    ("rsm", "colsample_bylevel"), ("border_count", "max_bin"), ("loss_function", "objective"),
    ("min_data_in_leaf", "min_child_samples"), ("max_leaves", "num_leaves"),
    ("logging_level", "verbose", "silent", "verbose_eval"),
)
# The number of boosting rounds, under each name a library takes for it: a positive integer.
_ROUNDS = {"xgboost": ("n_estimators",), "lightgbm": ("num_iterations",),
           "catboost": ("iterations", "n_estimators", "num_boost_round", "num_trees")}
# Early stopping, under each name a library takes for it (LightGBM: the aliases of this one name).
_EARLY_STOPPING = {"xgboost": ("early_stopping_rounds",), "lightgbm": ("early_stopping_round",),
                   "catboost": ("early_stopping_rounds", "od_type", "od_wait", "od_pval")}


def missing(library: str, needed_by: str, version: Optional[str] = None) -> PgmlError:
    """The error for ``library`` not installed: ``needed_by`` says what needs it ("algorithm
    'xgboost'", 'model "m_1"'); ``version``, the version a stored model was trained with."""
    python = f"python{sys.version_info.major}.{sys.version_info.minor}"
    package = versions.OPTIONAL[library][0]
    wanted = f"{package}=={version}" if version else versions.spec(library)
    also = " (the version that trained it)" if version else " (or pgml_fdw's extra: pip install 'pgml_fdw[boosting]')"
    return PgmlError(f"{needed_by} needs {library}, which is not installed in the server's Python (at {sys.prefix})",
                     hint=f"Install it there: {python} -m pip install '{wanted}'{also}, then reconnect.",
                     sqlstate=errors.FEATURE_NOT_SUPPORTED)


def require(library: str, needed_by: Optional[str] = None, version: Optional[str] = None) -> ModuleType:
    """The library imported, of a supported version and ready for pgml_fdw (:func:`adapt`); a
    PgmlError naming the pip package when it is not installed (see :func:`missing`: ``needed_by``
    defaults to the algorithm of the library's name)."""
    try:
        with warnings.catch_warnings():
            # What the libraries' own imports warn about (LightGBM's import of matplotlib, and its
            # use of pyparsing's deprecated names) is nobody's to fix here.
            warnings.simplefilter("ignore")
            module = importlib.import_module(library)
    except ImportError as exc:
        raise missing(library, needed_by or f"algorithm '{library}'", version) from exc
    except Exception as exc:  # noqa: BLE001 - installed but unusable: LightGBM without libgomp (OSError), XGBoost without its library
        raise PgmlError(f"{library} is installed in the server's Python but cannot be loaded: {exc}",
                        hint=f"Reinstall it, with the system libraries it needs (LightGBM and XGBoost: libgomp1); "
                        f"check with: {sys.executable} -c 'import {library}'.",
                        sqlstate=errors.FEATURE_NOT_SUPPORTED) from exc
    versions.check_library(library, module.__version__)
    adapt(library)
    return module


def adapt(library: str) -> None:
    """Makes an imported ``library`` behave as pgml_fdw needs it to, once per process: where a
    model is trained (:func:`require`) and where a stored one is unpickled (model_format).

    - CatBoostClassifier.predict answers a multiclass model's classes as a column, shape (n, 1),
      against scikit-learn's API and CatBoost's own documentation; everything that predicts here
      (metrics, scoring, the probe of a stored model) expects (n,), as every other classifier gives.
    - LightGBM 4.5 and 4.6 name the features of a numpy matrix themselves (Column_0...), and
      scikit-learn then warns on every prediction from a numpy matrix that it was fitted with
      feature names: the warning would only fill the server's log (LightGBM 4.7 no longer gives it).
    """
    if library == "catboost":
        cls = sys.modules["catboost"].CatBoostClassifier
        if not getattr(cls.predict, "_pgml_fdw_one_dimensional", False):
            cls.predict = _one_dimensional(cls.predict)
    elif library == "lightgbm":
        warnings.filterwarnings("ignore", message="X does not have valid feature names, but LGBM",
                                category=UserWarning)


def _one_dimensional(predict: Any) -> Any:
    @functools.wraps(predict)
    def one_dimensional(self: Any, data: Any, prediction_type: str = "Class", *args: Any, **kwargs: Any) -> Any:
        answer = predict(self, data, prediction_type, *args, **kwargs)
        if prediction_type == "Class" and getattr(answer, "ndim", 0) == 2 and answer.shape[1] == 1:
            return answer.reshape(-1)
        return answer

    one_dimensional._pgml_fdw_one_dimensional = True  # type: ignore[attr-defined]
    return one_dimensional


def single_threaded() -> None:
    """Keeps the OpenMP runtimes loaded in this process to one thread by default, before it loads
    or serves a model.

    Models are loaded in a backend, which forks the workers of training and batch scoring, and
    OpenMP (GNU libgomp: XGBoost's, LightGBM's, and scikit-learn's histogram gradient boosting's) is
    not fork-safe: once a process has run a parallel region on more than one thread, any OpenMP
    region in a child it forks waits forever for threads that were not forked. XGBoost runs some
    regions at the default even with n_jobs 1, and LightGBM while it loads a model. A worker forked
    afterwards inherits the default of one thread; an n_jobs given to a training applies there all
    the same.
    """
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1, user_api="openmp")


def ready(estimator: Any) -> None:
    """Makes an unpickled estimator ready to predict in this process: its library (if it is one of
    these) checked and adapted, and its predictions on one thread (see :func:`single_threaded`:
    a model trained with n_jobs 4 would otherwise predict on four)."""
    single_threaded()
    library = versions.library(estimator)
    if library is not None:
        versions.check_library(library, sys.modules[library].__version__)
        adapt(library)
        _add_new_parameters(estimator)
        if library in ("xgboost", "lightgbm"):
            # CatBoost refuses parameters on a fitted model; its thread pool survives a fork.
            estimator.set_params(n_jobs=1)


def _add_new_parameters(estimator: Any) -> None:
    """Gives an estimator pickled by an older release of its library the parameters the release
    here added, at their defaults: a pickle restores the attributes it had, and get_params() reads
    every parameter of the constructor (xgboost 3 added feature_weights). Whether the model then
    predicts as it did is for the probe to say (model_format)."""
    for name, value in type(estimator)().get_params(deep=False).items():
        if not hasattr(estimator, name):
            setattr(estimator, name, value)


# -- hyperparameters -------------------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def _lightgbm_aliases() -> Dict[str, List[str]]:
    """LightGBM's parameters, each with its aliases (its own table, read from the library once per
    process; empty where a LightGBM release no longer has it: then its scikit-learn API's names
    alone are accepted). Callers only read it."""
    try:
        from lightgbm.basic import _ConfigAliases

        table = _ConfigAliases._get_all_param_aliases()
    except (ImportError, AttributeError):
        return {}
    return {str(name): [str(a) for a in aliases] for name, aliases in table.items()}


def alias_groups(library: str) -> List[FrozenSet[str]]:
    """The sets of names that stand for one parameter of ``library``."""
    if library == "xgboost":
        pairs: Iterable[Iterable[str]] = _XGBOOST_ALIASES
    elif library == "catboost":
        pairs = _CATBOOST_ALIASES
    else:
        pairs = ([name, *aliases] for name, aliases in _lightgbm_aliases().items())
    return [frozenset(group) for group in pairs if len(set(group)) > 1]


def _same(library: str, name: str) -> FrozenSet[str]:
    """``name`` and its aliases."""
    for group in alias_groups(library):
        if name in group:
            return group
    return frozenset((name,))


def hyperparameters(library: str, cls: type) -> Dict[str, Any]:
    """Every hyperparameter name ``cls`` accepts, with the library's default where its scikit-learn
    API states one (None where the library decides when fitting).

    The constructor's named parameters and get_params() (xgboost passes the rest through
    ``**kwargs``), the early stopping names, and the native names the library's scikit-learn API
    passes on: for xgboost the ones PostgresML accepts, for LightGBM every parameter and alias of
    its own table."""
    params: Dict[str, Any] = {}
    for name, parameter in inspect.signature(cls).parameters.items():
        if parameter.kind not in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            params[name] = None if parameter.default is parameter.empty else parameter.default
    params.update(cls().get_params(deep=False))
    extra: Iterable[str] = ()
    if library == "xgboost":
        extra = _XGBOOST_NATIVE
    elif library == "lightgbm":
        extra = (n for name, aliases in _lightgbm_aliases().items() for n in (name, *aliases))
    for name in (*_EARLY_STOPPING[library], *extra):
        params.setdefault(name, None)
    return params


def hint_names(library: str, cls: type) -> List[str]:
    """The names a hint lists: all of them, but for LightGBM its scikit-learn API's (its own table
    has several hundred), which the hint then says it accepts besides."""
    if library != "lightgbm":
        return sorted(hyperparameters(library, cls))
    return sorted({*cls().get_params(deep=False), "early_stopping_round"})


def accepts_any_native(library: str) -> bool:
    """Whether ``library`` takes its native parameters, by any alias, beyond the names hints list."""
    return library == "lightgbm"


def merge(library: str, defaults: Mapping[str, Any], given: Mapping[str, Any]) -> Dict[str, Any]:
    """The catalogue's ``defaults`` overridden by the user's ``given`` hyperparameters, where a
    default also gives way to an alias of it (CatBoost refuses random_seed and random_state both)."""
    taken = {alias for name in given for alias in _same(library, name)}
    return {**{k: v for k, v in defaults.items() if k not in taken}, **given}


def _kind(value: Any) -> Optional[str]:
    """What JSON values a default of this type stands for, or None when it says nothing."""
    if isinstance(value, bool):
        return "true or false"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return None


def _fits(value: Any, kind: str) -> bool:
    if kind == "true or false":
        return isinstance(value, bool)
    if kind == "an integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "a number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, str)


def check_values(algorithm: str, library: str, defaults: Mapping[str, Any], given: Mapping[str, Any]) -> None:
    """Refuses what can be refused before fitting: two names of one parameter, boosting rounds and
    early stopping that are not positive integers, and a value of another type than the
    parameter's default (``defaults``: the catalogue's over the library's). The library checks the
    rest when it fits (:func:`fit`)."""
    for group in alias_groups(library):
        both = sorted(group.intersection(given))
        if len(both) > 1:
            raise PgmlError(f"hyperparameters {' and '.join(repr(n) for n in both)} of algorithm '{algorithm}' are one "
                            "parameter under two names", hint=f"Give only one of them: {', '.join(both)}.")
    counts = {alias for name in (*_ROUNDS[library], *_EARLY_STOPPING[library][:1]) for alias in _same(library, name)}
    for name, value in given.items():
        default = defaults.get(name)
        if name in counts:
            allowed = value is None and default is None and name not in _ROUNDS[library]
            if not allowed and not (_fits(value, "an integer") and value >= 1):
                raise _invalid(algorithm, name, value, "a whole number of at least 1", default)
            continue
        kind = _kind(default)
        if kind is not None and value is not None and not _fits(value, kind):
            raise _invalid(algorithm, name, value, kind, default)


def _invalid(algorithm: str, name: str, value: Any, expected: str, default: Any) -> PgmlError:
    shown = "" if default is None else f" ({json.dumps(default)})"
    return PgmlError(f"invalid value for hyperparameter '{name}' of algorithm '{algorithm}': "
                     f"got {json.dumps(value, default=repr)}, expected {expected}",
                     hint=f"change '{name}', or leave it out to use the default{shown}")


# -- fitting ---------------------------------------------------------------------------------------

def early_stopping(estimator: Any) -> Optional[Dict[str, Any]]:
    """The early stopping settings of a boosting estimator (name: value), or None when it has none."""
    library = versions.library(estimator)
    if library is None:
        return None
    names = {alias for name in _EARLY_STOPPING[library] for alias in _same(library, name)}
    params = estimator.get_params(deep=False)
    found = {name: params[name] for name in sorted(names & set(params)) if params[name] is not None}
    if library == "lightgbm":  # LightGBM stops early only for a positive number of rounds
        found = {k: v for k, v in found.items() if isinstance(v, (int, float)) and v > 0}
    return found or None


def without_early_stopping(estimator: Any) -> Any:
    """A copy of ``estimator`` that does not stop early: what a hyperparameter search cross-validates,
    whose folds have no validation set of their own (the model the search picks then stops early)."""
    settings = early_stopping(estimator)
    if not settings:
        return estimator
    params = {k: v for k, v in estimator.get_params(deep=False).items() if k not in settings}
    return type(estimator)(**params)


def check_search_space(algorithm: Any, space: Mapping[str, Any]) -> None:
    """Refuses early stopping among the searched hyperparameters of a boosting algorithm."""
    library = getattr(algorithm, "library", None)
    if library is None:
        return
    names = {alias for name in _EARLY_STOPPING[library] for alias in _same(library, name)}
    searched = sorted(names.intersection(space))
    if searched:
        raise PgmlError(f"the search cannot vary '{searched[0]}' of algorithm '{algorithm.name}'",
                        hint="Give it in hyperparams instead: the search cross-validates each candidate without "
                        "early stopping, and the model it picks then stops early, validated on a tenth of the "
                        "training rows.")


def fit(estimator: Any, X: Any, y: Any, task: str) -> None:
    """Fits ``estimator`` on the training rows ``X``, ``y`` (class indexes for classification).

    A scikit-learn estimator just fits. A boosting library's fits quietly (xgboost prints every
    round of an evaluation otherwise); with early stopping, on all but the last tenth of the rows,
    which it validates on; and whatever the library refuses becomes a PgmlError that names the
    hyperparameter at fault, where its message names one."""
    library = versions.library(estimator)
    if library is None:
        estimator.fit(X, y)
        return
    import numpy as np

    kwargs: Dict[str, Any] = {"verbose": False} if library == "xgboost" else {}
    X_fit, y_fit = X, y
    if early_stopping(estimator):
        fit_rows, held_out = _holdout(np.asarray(y), task == "classification")
        X_fit, y_fit = X[fit_rows], y[fit_rows]
        if "eval_X" in inspect.signature(estimator.fit).parameters:  # LightGBM 4.7 deprecates eval_set
            kwargs.update(eval_X=(X[held_out],), eval_y=(y[held_out],))
        else:
            kwargs["eval_set"] = [(X[held_out], y[held_out])]
    if library == "xgboost" and task == "classification":
        _check_xgboost_classes(np.asarray(y_fit))
    with warnings.catch_warnings():
        # The libraries' Python warnings (LightGBM's about aliases it resolves, say) would only
        # reach the server's log.
        warnings.simplefilter("ignore", UserWarning)
        try:
            estimator.fit(X_fit, y_fit, **kwargs)
        except (PgmlError, MemoryError):
            raise
        except Exception as exc:  # noqa: BLE001 - each library raises its own error class (CatBoostError...)
            raise _fit_error(library, estimator, exc) from exc


def _holdout(y: Any, classification: bool) -> Any:
    """(fit rows, validation rows) of the training rows: the last tenth validates, as slices (no
    copy of the matrix). For classification, when those would leave a class out of the rows fitted
    on: a stratified split (index arrays) holding out a row of every class at least, or where a
    class has a single row, the last tenth less the rows of classes the fit does not see (a model
    cannot be validated on a class it does not know)."""
    import numpy as np

    n = len(y)
    held = max(1, int(round(n * VALIDATION_FRACTION)))
    if n - held < 2:
        raise PgmlError(f"early stopping validates on a tenth of the training rows, and {n} training row(s) are "
                        "too few to split", hint="Train on more rows, or leave early stopping out.",
                        sqlstate=errors.DATA_EXCEPTION)
    fit_rows, held_out = slice(0, n - held), slice(n - held, n)
    if classification and len(np.unique(y[fit_rows])) < len(np.unique(y)):
        counts = np.bincount(y)
        classes = int((counts > 0).sum())
        # A stratified split holds out a row of every class at least, and fits on one of each too.
        stratified = max(held, classes)
        if counts[counts > 0].min() >= 2 and n - stratified >= classes:
            from sklearn.model_selection import train_test_split

            return train_test_split(np.arange(n), test_size=stratified, random_state=0, stratify=y)
        known = np.isin(y[held_out], np.unique(y[fit_rows]))
        if not known.any():
            raise PgmlError(f"early stopping has no rows to validate on: the last tenth of the {n} training rows "
                            "holds only classes that the rest lacks", hint="Train on more rows, or leave early "
                            "stopping out.", sqlstate=errors.DATA_EXCEPTION)
        return fit_rows, np.arange(n - held, n)[known]
    return fit_rows, held_out


def _check_xgboost_classes(y: Any) -> None:
    """XGBoost needs the classes of its training rows to be 0..k-1, with none missing in between."""
    import numpy as np

    present = np.unique(y)
    absent = int(present.max()) + 1 - len(present)
    if absent:
        raise PgmlError(f"xgboost needs a training row of every class, and {absent} class(es) have none (a class "
                        "with a single row, or a few, can fall in the test split)",
                        hint="Add rows of the rare classes, leave them out in the view, or use lightgbm or catboost, "
                        "which train without them.", sqlstate=errors.DATA_EXCEPTION)


# What a library's error message carries besides its words: a time stamp and a source location
# before (XGBoost, CatBoost), a source location after (LightGBM), and XGBoost's stack trace.
_NOISE = (re.compile(r"^\[\d\d:\d\d:\d\d\]\s*"), re.compile(r"^\S+\.(?:cc|cpp|h|cu):\d+:\s*"),
          re.compile(r"\s+at \S+, line \d+\s*\.?$"))


def _words(message: str) -> str:
    text = message.split("Stack trace:")[0].strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    text = lines[0] if lines else ""
    for noise in _NOISE:
        text = noise.sub("", text)
    return text


def _fit_error(library: str, estimator: Any, exc: Exception) -> PgmlError:
    """A library's refusal to fit as the error users see: naming the hyperparameter its message
    names, else as the library says it."""
    said = _words(str(exc)) or type(exc).__name__
    params = estimator.get_params(deep=False)
    name = _named(library, params, _library_defaults(estimator), said)
    # The catalogue's name: xgboost's random forests are an algorithm of their own.
    algorithm = "xgboost_random_forest" if type(estimator).__name__.startswith("XGBRF") else library
    if name is not None:
        return PgmlError(f"invalid value for hyperparameter '{name}' of algorithm '{algorithm}': got "
                         f"{json.dumps(params[name], default=repr)}; {_TITLES[library]} says: {said}",
                         hint=f"change '{name}', or leave it out to use the default")
    return PgmlError(f"algorithm '{algorithm}' cannot train on this data with these hyperparameters; "
                     f"{_TITLES[library]} says: {said}",
                     hint=f"SELECT hyperparams FROM pgml.algorithms WHERE name = '{algorithm}' lists the defaults.")


def _named(library: str, params: Mapping[str, Any], defaults: Mapping[str, Any], said: str) -> Optional[str]:
    """The hyperparameter of ``params`` that the message ``said`` is about: one it names under any
    of its names (LightGBM and XGBoost name a parameter by its canonical name, CatBoost sometimes by
    its name run together, "L2LeafRegularizer" for l2_leaf_reg), else the only one whose text value
    it quotes. Values other than the library's ``defaults`` first: the user's, most likely at fault."""
    candidates = sorted((n for n, v in params.items() if v is not None),
                        key=lambda n: (n in defaults and _equal(defaults[n], params[n]), n))
    lowered = said.lower()
    words = re.findall(r"[a-z0-9_]+", lowered)
    for name in candidates:
        if any(re.search(rf"(?<![a-z0-9_]){re.escape(alias.lower())}(?![a-z0-9_])", lowered)
               for alias in _same(library, name)):
            return name
    for name in candidates:
        joined = name.replace("_", "")
        if "_" in name and any(word.startswith(joined) for word in words):
            return name
    quoted = [n for n in candidates if isinstance(params[n], str) and params[n]
              and re.search(rf"""['"]{re.escape(params[n])}['"]""", said)]
    return quoted[0] if len(quoted) == 1 else None


def _library_defaults(estimator: Any) -> Dict[str, Any]:
    try:
        return dict(type(estimator)().get_params(deep=False))
    except Exception:  # noqa: BLE001 - only an order of preference
        return {}


def _equal(a: Any, b: Any) -> bool:
    try:
        return bool(a == b)
    except Exception:  # noqa: BLE001 - values that do not compare to a truth value
        return False


def catalogue_library(estimator_path: str) -> Optional[str]:
    """The optional library of a catalogue entry, by its estimator's dotted path."""
    root = estimator_path.split(".")[0]
    return root if root in LIBRARIES else None

