"""Writes the stored models that tests/unit/test_model_format.py loads under whatever versions run.

They are trained here once, under the local server's pinned versions (local/requirements.txt), and
committed: under the newest versions (the host run of ``make test``) they are models from another
scikit-learn, as a user's are after an upgrade; in later releases, models from an older pgml_fdw.

    local/server.sh run python3 tests/unit/stored/make.py           # current/: format of this checkout
    local/server.sh run python3 tests/unit/stored/make.py --legacy  # legacy/: with PYTHONPATH on pgml_fdw 0.2.0

format1/ holds the same models as pgml_fdw 0.3.0 stored them (format 1: no fast path arrays).

Each model is ``<name>.model`` (the bytes pgml.model_estimators holds) and ``expected.json`` has its
answers to FEATURES, as predict_row gave them when it was made.
"""
from __future__ import annotations

import argparse
import json
import pickle
from pathlib import Path

import numpy as np

from pgml_fdw import training
from pgml_fdw.columns import FeatureColumn
from pgml_fdw.training import TrainingOptions

HERE = Path(__file__).parent
ROWS = 300
COLUMNS = [FeatureColumn("size", "double precision", "number", "float8"),
           FeatureColumn("rooms", "integer", "number", "int4"),
           FeatureColumn("city", "text", "text", "text")]
FEATURES = [
    {"size": 50.0, "rooms": 2, "city": "paris"},
    {"size": 120.5, "rooms": 5, "city": "rome"},
    {"size": None, "rooms": 3, "city": None},
    {"size": 80.0, "rooms": None, "city": "oslo"},  # a city training never saw
    [10.0, 1, "lyon"],
]
MODELS = [  # name, algorithm, task, hyperparams
    ("linear", "linear", "regression", {}),
    ("forest", "random_forest", "regression", {"n_estimators": 5, "max_depth": 4}),
    ("boosting", "hist_gradient_boosting", "regression", {"max_iter": 20}),
    ("logistic", "linear", "classification", {}),
    ("svm", "svm", "classification", {}),
    ("trees", "random_forest", "classification", {"n_estimators": 5, "max_depth": 4}),
    ("knn", "knn", "classification", {}),
    ("gbt", "gradient_boosting_trees", "classification", {"n_estimators": 10}),
]


def data() -> tuple:
    """Features with a NULL here and there, a price to regress and a class to predict."""
    rng = np.random.default_rng(0)
    size = rng.uniform(20, 200, ROWS)
    size[::17] = np.nan
    rooms = rng.integers(1, 7, ROWS).astype(np.float64)
    city = np.array([["paris", "rome", "lyon", None][i] for i in rng.integers(0, 4, ROWS)], dtype=object)
    price = 3000 * np.nan_to_num(size, nan=100) + 10000 * rooms + rng.normal(0, 5000, ROWS)
    band = np.array(["low", "mid", "high"], dtype=object)[np.digitize(price, np.quantile(price, [1 / 3, 2 / 3]))]
    return {"size": size, "rooms": rooms, "city": city}, price, band


def train(name: str, algorithm: str, task: str, hyperparams: dict) -> training.TrainingResult:
    options = TrainingOptions.from_row({"id": f"{name}_1", "name": name, "version": 1, "relation": "homes",
                                        "y_column": "y", "trained_by": "app", "algorithm": algorithm,
                                        "task": task, "hyperparams": hyperparams})
    columns, price, band = data()
    y = FeatureColumn("y", "double precision", "number", "float8") if task == "regression" \
        else FeatureColumn("y", "text", "text", "text")
    return training.train(options, y, COLUMNS, columns, price if task == "regression" else band)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--legacy", action="store_true", help="pgml_fdw 0.2.0's format: the whole model pickled")
    legacy = parser.parse_args().legacy
    folder = HERE / ("legacy" if legacy else "current")
    folder.mkdir(exist_ok=True)
    expected = {}
    for name, algorithm, task, hyperparams in MODELS:
        result = train(name, algorithm, task, hyperparams)
        if legacy:
            blob = pickle.dumps(result.model, protocol=4)
        else:
            from pgml_fdw import model_format
            blob = model_format.dump(result.model, result.probe)
        (folder / f"{name}.model").write_bytes(blob)
        expected[name] = [result.model.predict_row(f) for f in FEATURES]
    (folder / "expected.json").write_text(json.dumps(expected, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
