"""xgboost, LightGBM and CatBoost in the catalogue, without a server: hyperparameters, early
stopping, the libraries' errors, a missing library, versions recorded and checked, and OpenMP.

stored/boosting/ holds models of each library trained under the local server's pinned versions,
which the newest versions (make test's host venv) must load and answer as then; to write them anew:

    local/server.sh run python3 tests/unit/test_algorithms_boosting.py
"""
from __future__ import annotations

import importlib
import json
import re
import struct
import sys
import warnings
from pathlib import Path
from typing import Any, Dict

import numpy as np
import pytest

from pgml_fdw import algorithms, boosting, model_format, search, training, versions
from pgml_fdw.columns import FeatureColumn
from pgml_fdw.errors import PgmlError
from pgml_fdw.training import TrainingOptions

LIBRARIES = ("xgboost", "lightgbm", "catboost")
ROUNDS = {"xgboost": "n_estimators", "lightgbm": "n_estimators", "catboost": "iterations"}
EARLY = {"xgboost": "early_stopping_rounds", "lightgbm": "early_stopping_round", "catboost": "early_stopping_rounds"}

STORED = Path(__file__).parent / "stored" / "boosting"
POINT = [0.5, -0.5, 0.9]
RNG = np.random.default_rng(0)
X = RNG.uniform(-1, 1, (400, 3))
Y = 2 * X[:, 0] - X[:, 1] + RNG.normal(0, 0.3, 400)
CLASSES = (X[:, 0] > X[:, 1]).astype(np.int64) + (X[:, 2] > 0.3)  # three classes


def _make(library: str, task: str = "regression", **hyperparams: Any) -> Any:
    return algorithms.make_estimator(algorithms.lookup(library, task), hyperparams)


@pytest.mark.skipif(sys.version_info < (3, 11), reason="tomllib is Python 3.11's (the host venv of make test runs it)")
def test_pyproject_extra_states_the_ranges_versions_checks() -> None:
    import tomllib

    project = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())["project"]
    assert project["optional-dependencies"]["boosting"] == [versions.spec(name) for name in versions.OPTIONAL]


@pytest.mark.parametrize("library, version", [("xgboost", "1.7.6"), ("lightgbm", "5.0.0"), ("catboost", "0.26")])
def test_an_unsupported_library_version_is_named_with_the_fix(library: str, version: str) -> None:
    with pytest.raises(PgmlError) as caught:
        versions.check_library(library, version)
    assert caught.value.message.startswith(f"pgml_fdw {versions.__version__} does not support {library} {version}")
    assert caught.value.sqlstate == "0A000" and f"pip install '{versions.spec(library)}'" in caught.value.hint
    versions.check_library(library, importlib.import_module(library).__version__)  # the installed one is fine


@pytest.mark.parametrize("library", LIBRARIES)
def test_defaults_are_seeded_single_threaded_and_quiet(library: str) -> None:
    for task in ("regression", "classification"):
        params = _make(library, task).get_params()
        assert params["random_state"] == 0
        if library == "catboost":
            quiet = (params["thread_count"], params["logging_level"], params["allow_writing_files"])
            assert quiet == (1, "Silent", False)
        else:
            assert params["n_jobs"] == 1
            assert params["verbosity" if library == "xgboost" else "verbose"] in (0, -1)


def test_an_alias_given_replaces_the_catalogue_default_it_stands_for() -> None:
    params = _make("catboost", random_seed=7, verbose=False).get_params()
    assert params["random_seed"] == 7 and "random_state" not in params
    assert params["verbose"] is False and "logging_level" not in params
    assert _make("lightgbm", seed=3).get_params()["seed"] == 3
    assert "random_state" not in _make("lightgbm", seed=3).get_params() or \
        _make("lightgbm", seed=3).get_params()["random_state"] is None


@pytest.mark.parametrize("library, hyperparams, message", [
    ("xgboost", {"n_estimators": 0}, "invalid value for hyperparameter 'n_estimators' of algorithm 'xgboost': got 0, "
     "expected a whole number of at least 1"),
    ("lightgbm", {"num_iterations": 2.5}, "invalid value for hyperparameter 'num_iterations' of algorithm 'lightgbm': "
     "got 2.5, expected a whole number of at least 1"),
    ("catboost", {"early_stopping_rounds": -1}, "invalid value for hyperparameter 'early_stopping_rounds' of "
     "algorithm 'catboost': got -1, expected a whole number of at least 1"),
    ("lightgbm", {"importance_type": 3}, "invalid value for hyperparameter 'importance_type' of algorithm "
     "'lightgbm': got 3, expected a string"),
    ("catboost", {"thread_count": True}, "invalid value for hyperparameter 'thread_count' of algorithm 'catboost': "
     "got true, expected an integer"),
    ("xgboost", {"eta": 0.1, "learning_rate": 0.2}, "hyperparameters 'eta' and 'learning_rate' of algorithm "
     "'xgboost' are one parameter under two names"),
])
def test_values_refused_before_fitting(library: str, hyperparams: Dict[str, Any], message: str) -> None:
    with pytest.raises(PgmlError) as caught:
        _make(library, **hyperparams)
    assert caught.value.message == message


def test_unknown_names_are_listed_with_the_valid_ones() -> None:
    with pytest.raises(PgmlError) as caught:
        _make("lightgbm", num_leafs=3)
    assert caught.value.message == "unknown hyperparameter 'num_leafs' for algorithm 'lightgbm' (regression)"
    assert "num_leaves" in caught.value.hint and "every parameter of the library under any of its names" in \
        caught.value.hint
    # LightGBM's own names and aliases pass through its scikit-learn API; PostgresML's xgboost names too.
    assert _make("lightgbm", min_data_in_leaf=5, bagging_fraction=0.5).get_params()["min_data_in_leaf"] == 5
    assert _make("xgboost", eta=0.2, rate_drop=0.1, booster="dart").get_params()["eta"] == 0.2


@pytest.mark.parametrize("library, hyperparams, named", [
    ("xgboost", {"max_depth": -1}, "max_depth"),
    ("xgboost", {"eta": -1}, "eta"),  # XGBoost's message says learning_rate
    ("xgboost", {"tree_method": "fastest"}, "tree_method"),  # only quoted in the message
    ("lightgbm", {"subsample": 2.0}, "subsample"),  # LightGBM's message says bagging_fraction
    ("lightgbm", {"min_data_in_leaf": -1}, "min_data_in_leaf"),  # not min_child_samples, its alias at 20
    ("catboost", {"depth": 20}, "depth"),
    ("catboost", {"l2_leaf_reg": -1}, "l2_leaf_reg"),  # CatBoost's message says L2LeafRegularizer
])
def test_the_librarys_refusal_names_the_hyperparameter(library: str, hyperparams: Dict[str, Any], named: str) -> None:
    estimator = _make(library, **{ROUNDS[library]: 5, **hyperparams})
    with pytest.raises(PgmlError) as caught:
        boosting.fit(estimator, X, Y, "regression")
    assert caught.value.message.startswith(f"invalid value for hyperparameter '{named}' of algorithm '{library}': "
                                           f"got {json.dumps(hyperparams[named])}; ")
    assert " says: " in caught.value.message and "/" not in caught.value.message.split(" says: ")[1]  # no source path
    assert caught.value.hint == f"change '{named}', or leave it out to use the default"


def _spy_fit(estimator: Any, monkeypatch: pytest.MonkeyPatch) -> Dict[str, Any]:
    seen: Dict[str, Any] = {}
    original = type(estimator).fit

    def fit(self: Any, X: Any, y: Any, **kwargs: Any) -> Any:
        seen.update(X=X, y=y, **kwargs)
        return original(self, X, y, **kwargs)

    monkeypatch.setattr(type(estimator), "fit", fit)
    return seen


@pytest.mark.parametrize("library", LIBRARIES)
def test_early_stopping_validates_on_the_last_tenth_of_the_training_rows(library: str,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    estimator = _make(library, **{ROUNDS[library]: 500, "learning_rate": 0.5, EARLY[library]: 3})
    seen = _spy_fit(estimator, monkeypatch)
    boosting.fit(estimator, X, Y, "regression")
    held_X = seen["eval_X"][0] if "eval_X" in seen else seen["eval_set"][0][0]
    assert np.array_equal(seen["X"], X[:360]) and np.array_equal(held_X, X[360:])
    assert np.shares_memory(seen["X"], X)  # a view: no copy of the training matrix
    trees = {"xgboost": lambda e: e.best_iteration + 1, "lightgbm": lambda e: e.best_iteration_,
             "catboost": lambda e: e.tree_count_}[library](estimator)
    assert 1 <= trees < 100


def test_early_stopping_keeps_every_class_among_the_rows_fitted_on(monkeypatch: pytest.MonkeyPatch) -> None:
    y = np.zeros(100, dtype=np.int64)
    y[:5], y[90:] = 1, 2  # class 2 only among the last tenth: a stratified split instead
    estimator = _make("xgboost", "classification", n_estimators=20, early_stopping_rounds=3)
    seen = _spy_fit(estimator, monkeypatch)
    boosting.fit(estimator, X[:100], y, "classification")
    assert set(np.unique(seen["y"])) == {0, 1, 2} and len(seen["y"]) == 90
    y[:5], y[5:7] = 0, 1  # class 1 has two rows, class 2 ten; now class 2 has one row, last: left out
    y[90:] = 0
    y[99] = 2
    estimator = _make("xgboost", "classification", n_estimators=20, early_stopping_rounds=3)
    boosting.fit(estimator, X[:100], y, "classification")
    assert set(np.unique(seen["eval_set"][0][1])) == {0} and len(seen["y"]) == 90


def test_early_stopping_holds_out_a_row_of_every_class_or_says_why_it_cannot() -> None:
    # Five classes, the last only among the last tenth (3 of 30 rows): a stratified split must hold
    # out five rows at least, one per class.
    y = np.concatenate([np.tile([0, 1, 2, 3], 7)[:27], [4, 4, 4]])
    fit_rows, validation = boosting._holdout(y, True)
    assert set(y[fit_rows]) == set(y[validation]) == {0, 1, 2, 3, 4}
    assert len(fit_rows) + len(validation) == 30 and len(validation) == 5
    # The last row is the only one of its class: nothing known is left to validate on.
    with pytest.raises(PgmlError) as caught:
        boosting._holdout(np.array([0, 0, 0, 0, 0, 1]), True)
    assert "no rows to validate on" in caught.value.message and "early stopping" in caught.value.hint


def test_xgboost_needs_every_class_below_the_highest_among_its_training_rows() -> None:
    y = np.where(CLASSES == 1, 2, CLASSES)  # classes 0 and 2: class 1 in the test split alone, say
    with pytest.raises(PgmlError) as caught:
        boosting.fit(_make("xgboost", "classification", n_estimators=5), X, y, "classification")
    assert caught.value.message.startswith("xgboost needs a training row of every class, and 1 class(es) have none")
    assert "lightgbm or catboost" in caught.value.hint
    lightgbm = _make("lightgbm", "classification", n_estimators=5)
    boosting.fit(lightgbm, X, y, "classification")
    assert list(lightgbm.classes_) == [0, 2]


def test_search_cross_validates_without_early_stopping_and_refuses_to_vary_it() -> None:
    algorithm = algorithms.lookup("lightgbm", "regression")
    found = search.search(algorithm, {"n_estimators": 20, "early_stopping_round": 3}, X, Y, "regression", "grid",
                          {"num_leaves": [4, 8]})
    assert [c["mean_score"] is not None for c in found.candidates] == [True, True]
    assert boosting.early_stopping(boosting.without_early_stopping(
        algorithms.make_estimator(algorithm, {"early_stopping_rounds": 3}))) is None
    with pytest.raises(PgmlError, match="the search cannot vary 'n_iter_no_change' of algorithm 'lightgbm'"):
        search.validate_search(algorithm, "grid", {"n_iter_no_change": [3, 5]}, 3)


def test_catboost_answers_classes_in_one_dimension_and_lightgbm_predicts_without_warnings() -> None:
    catboost = _make("catboost", "classification", iterations=10)
    catboost.fit(X, CLASSES)
    assert catboost.predict(X[:5]).shape == (5,) and catboost.predict_proba(X[:5]).shape == (5, 3)
    lightgbm = _make("lightgbm", "classification", n_estimators=10).fit(X, CLASSES)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        boosting.adapt("lightgbm")  # as loading a model does (pytest resets the filters of each test)
        assert lightgbm.predict(X[:5]).shape == (5,)
    assert not caught, [str(w.message) for w in caught]


def _train(library: str, task: str, hyperparams: Dict[str, Any]) -> Any:
    options = TrainingOptions.from_row({"id": "m_1", "name": "m", "version": 1, "relation": "t", "y_column": "y",
                                        "trained_by": "app", "algorithm": library, "task": task,
                                        "hyperparams": json.dumps(hyperparams)})
    columns = [FeatureColumn(f"x{i}", "double precision", "number", "float8") for i in range(3)]
    y = CLASSES.astype(str) if task == "classification" else Y
    y_column = FeatureColumn("y", "text" if task == "classification" else "double precision",
                             "text" if task == "classification" else "number", "text" if task == "classification"
                             else "float8")
    return training.train(options, y_column, columns, {f"x{i}": X[:, i].copy() for i in range(3)}, y)


def _split(blob: bytes) -> Any:
    (length,) = struct.unpack_from(">I", blob, len(model_format.MAGIC))
    start = len(model_format.MAGIC) + 4
    return json.loads(blob[start:start + length]), blob[start + length:]


def _join(header: Dict[str, Any], rest: bytes) -> bytes:
    text = json.dumps(header).encode()
    return model_format.MAGIC + struct.pack(">I", len(text)) + text + rest


@pytest.mark.parametrize("library", LIBRARIES)
def test_a_stored_model_records_the_library_and_predicts_the_same_when_loaded(library: str) -> None:
    result = _train(library, "classification", {ROUNDS[library]: 20})
    assert result.details["importance"]["method"] == "impurity"
    blob = model_format.dump(result.model, result.probe)
    header, _ = _split(blob)
    assert header["versions"][library] == importlib.import_module(library).__version__
    loaded = model_format.load(blob, "m_1")
    assert type(loaded.estimator) is type(result.model.estimator)
    for row in ([0.5, -0.5, 0.9], {"x0": -0.3, "x1": 0.8, "x2": 0.0}):
        assert loaded.predict_row(row) == result.model.predict_row(row)
    assert sum(loaded.predict_row([0.1, 0.2, 0.3])[2].values()) == pytest.approx(1, abs=1e-6)


def test_another_library_version_is_probe_checked() -> None:
    result = _train("xgboost", "regression", {"n_estimators": 20})
    header, rest = _split(model_format.dump(result.model, result.probe))
    header["versions"]["xgboost"] = "2.0.3"
    assert model_format.load(_join(header, rest), "m_1").made_with["xgboost"] == "2.0.3"  # same answers: loads
    header["probe"]["predict"][0] += 1e-3
    with pytest.raises(PgmlError) as caught:
        model_format.load(_join(header, rest), "m_1")
    assert "it predicts differently under these versions" in caught.value.message
    assert f"xgboost {importlib.import_module('xgboost').__version__}" in caught.value.message
    assert "xgboost 2.0.3" in caught.value.hint


@pytest.mark.parametrize("library", LIBRARIES)
def test_a_missing_library_names_its_pip_package_at_training_and_at_loading(library: str,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    result = _train(library, "regression", {ROUNDS[library]: 5})
    blob = model_format.dump(result.model, result.probe)
    version = importlib.import_module(library).__version__
    package = versions.OPTIONAL[library][0]
    for module in [m for m in sys.modules if m == library or m.startswith(library + ".")]:
        monkeypatch.setitem(sys.modules, module, None)  # import raises ImportError, as when not installed
    with pytest.raises(PgmlError) as caught:
        algorithms.make_estimator(algorithms.lookup(library, "classification"))
    assert caught.value.message.startswith(f"algorithm '{library}' needs {library}, which is not installed")
    assert caught.value.sqlstate == "0A000" and f"pip install '{versions.spec(library)}'" in caught.value.hint
    assert algorithms.all_params(algorithms.lookup(library, "regression"))["random_state"] == 0  # still listed
    with pytest.raises(PgmlError) as caught:
        model_format.load(blob, "m_1")
    assert caught.value.message.startswith(f'model "m_1" needs {library}, which is not installed')
    assert f"pip install '{package}=={version}' (the version that trained it)" in caught.value.hint
    # A model that does not record it (the unpickling is what fails) says the same.
    header, rest = _split(blob)
    del header["versions"][library]
    with pytest.raises(PgmlError, match=re.escape(f'model "m_1" needs {library}')):
        model_format.load(_join(header, rest), "m_1")


def test_a_loaded_model_predicts_on_one_thread() -> None:
    from threadpoolctl import threadpool_info

    result = _train("lightgbm", "regression", {"n_estimators": 5, "n_jobs": 2})
    assert result.details["hyperparams"]["n_jobs"] == 2  # trained as asked
    loaded = model_format.load(model_format.dump(result.model, result.probe), "m_1")
    assert loaded.estimator.get_params()["n_jobs"] == 1
    assert all(pool["num_threads"] == 1 for pool in threadpool_info() if pool["user_api"] == "openmp")


@pytest.mark.parametrize("key", [f"{library}_{task}" for library in LIBRARIES
                                 for task in ("regression", "classification")])
def test_models_stored_under_the_pinned_versions_load_and_answer_as_then(key: str) -> None:
    expected = json.loads((STORED / "expected.json").read_text())[key]
    model = model_format.load((STORED / f"{key}.model").read_bytes(), key)
    library = key.split("_")[0]
    assert model.made_with[library] == expected["version"]  # the version that trained it, kept
    prediction, label, probabilities = model.predict_row(POINT)
    want = expected["answer"]
    assert (label, prediction is None, probabilities is None) == (want[1], want[0] is None, want[2] is None)
    if prediction is not None:
        assert prediction == pytest.approx(want[0], rel=1e-6)
    if probabilities is not None:
        assert probabilities == pytest.approx(want[2], rel=1e-6)


def _write_stored() -> None:
    """Trains and writes stored/boosting/ (run under the local server's pinned versions)."""
    STORED.mkdir(exist_ok=True)
    expected = {}
    for library in LIBRARIES:
        for task in ("regression", "classification"):
            result = _train(library, task, {ROUNDS[library]: 5})
            (STORED / f"{library}_{task}.model").write_bytes(model_format.dump(result.model, result.probe))
            expected[f"{library}_{task}"] = {"version": importlib.import_module(library).__version__,
                                             "answer": result.model.predict_row(POINT)}
    (STORED / "expected.json").write_text(json.dumps(expected, indent=1) + "\n")


if __name__ == "__main__":
    _write_stored()
