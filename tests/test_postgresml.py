"""PostgresML's classic SQL runs on pgml_fdw: its walkthroughs (pgml-extension/examples regression.sql,
image_classification.sql, binary_classification.sql, clustering.sql), written as PostgresML's documents
write them, with every result checked against scikit-learn on the same split; every call shape of
pgml.train and pgml.deploy; array features; and what hostile callers and names get."""
from __future__ import annotations

import math
import os
import warnings
from typing import Any, Iterator, Optional, Tuple

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LinearRegression, LogisticRegression, Ridge
from sklearn.metrics import f1_score, r2_score
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVR

from conftest import Session, make_table, role

TOKEN = f"t{os.getpid()}"
TRAINING_GRANTS = ["GRANT INSERT, SELECT (id) ON pgml.training_runs TO {role}",
                   "GRANT SELECT ON pgml.predictions TO {role}"]
BREAST_CANCER_FEATURES = [
    "mean radius", "mean texture", "mean perimeter", "mean area", "mean smoothness", "mean compactness",
    "mean concavity", "mean concave points", "mean symmetry", "mean fractal dimension", "radius error",
    "texture error", "perimeter error", "area error", "smoothness error", "compactness error", "concavity error",
    "concave points error", "symmetry error", "fractal dimension error", "worst radius", "worst texture",
    "worst perimeter", "worst area", "worst smoothness", "worst compactness", "worst concavity",
    "worst concave points", "worst symmetry", "worst fractal dimension"]
DIABETES = "age, sex, bmi, bp, s1, s2, s3, s4, s5, s6"


@pytest.fixture(scope="module")
def loaded(database: None) -> None:
    """PostgresML's datasets, as its examples load them."""
    db = Session()
    for source in ("diabetes", "digits", "breast_cancer", "iris"):
        db.rows("SELECT pgml.load_dataset(%s)", (source,))
    db.close()


@pytest.fixture
def project(db: Session) -> Iterator[str]:
    """A suffix for the test's project names; their models go afterwards (and the projects with them)."""
    suffix = f"{TOKEN} {os.urandom(3).hex()}"
    yield suffix
    db.run("DELETE FROM pgml.model_names WHERE name IN (SELECT model FROM pgml.project_names WHERE name LIKE %s)",
           (f"%{suffix}",))


def _real(values: Any) -> np.ndarray:
    """Values of real columns as training reads them (float4, exactly, as float8)."""
    return np.asarray(values, dtype=np.float32).astype(np.float64)


def _split(n: int, y: Optional[np.ndarray] = None, test_size: float = 0.25) -> Tuple[np.ndarray, np.ndarray]:
    """pgml_fdw's split: seed 0, stratified by class for classification."""
    return train_test_split(np.arange(n), test_size=math.ceil(n * test_size), random_state=0, stratify=y)


def _model(db: Session, name: str) -> str:
    return db.one("SELECT model FROM pgml.projects WHERE name = %s", (name,))


def _metrics(db: Session, model_id: str) -> dict:
    return db.one("SELECT metrics FROM pgml.models WHERE id = %s", (model_id,))


# --------------------------------------------------------------------------------------------------
# load_dataset
# --------------------------------------------------------------------------------------------------

def test_load_dataset_makes_postgresml_tables(db: Session, loaded: None) -> None:
    expected = {"breast_cancer": 569, "diabetes": 442, "digits": 1797, "iris": 150, "linnerud": 20, "wine": 178}
    for source, rows in expected.items():
        assert db.one("SELECT * FROM pgml.load_dataset(%s)", (source,)) == (f"pgml.{source}", rows)
        assert db.one(f"SELECT count(*) FROM pgml.{source}") == rows
    columns = db.rows("SELECT table_name, column_name, data_type FROM information_schema.columns "
                      "WHERE table_schema = 'pgml' AND table_name IN ('digits', 'iris', 'breast_cancer', 'wine') "
                      "ORDER BY table_name, ordinal_position")
    by_table: dict = {}
    for table, column, data_type in columns:
        by_table.setdefault(table, []).append((column, data_type))
    assert by_table["digits"] == [("image", "ARRAY"), ("target", "smallint")]
    assert db.one("SELECT format_type(atttypid, NULL) FROM pg_attribute WHERE attrelid = 'pgml.digits'::regclass "
                  "AND attname = 'image'") == "smallint[]"
    assert by_table["iris"] == [("sepal_length", "real"), ("sepal_width", "real"), ("petal_length", "real"),
                                ("petal_width", "real"), ("target", "integer")]
    assert by_table["breast_cancer"][0] == ("mean radius", "real")
    assert by_table["breast_cancer"][-1] == ("malignant", "boolean")
    assert [c for c, _ in by_table["wine"]][9:12] == ["hue", "color_intensity", "od280/od315_of_diluted_wines"]
    # The data are scikit-learn's, in its order.
    from sklearn.datasets import load_digits, load_iris

    images = db.rows("SELECT image, target FROM pgml.digits")
    assert np.array_equal(np.array([i for i, _ in images]), load_digits().data.astype(int))
    assert [t for _, t in images] == load_digits().target.tolist()
    iris = np.array(db.rows("SELECT sepal_length, sepal_width, petal_length, petal_width FROM pgml.iris"))
    assert np.allclose(iris, load_iris().data, atol=1e-6)
    assert db.one("SELECT count(*) FROM pgml.breast_cancer WHERE malignant") == 212
    # The caller owns what it loaded.
    assert db.one("SELECT tableowner FROM pg_tables WHERE schemaname = 'pgml' AND tablename = 'digits'") == "postgres"


def test_load_dataset_again_replaces_it_and_limit_keeps_the_first_rows(db: Session, loaded: None) -> None:
    assert db.one("SELECT * FROM pgml.load_dataset('linnerud', \"limit\" => 5)") == ("pgml.linnerud", 5)
    assert db.one("SELECT count(*) FROM pgml.linnerud") == 5
    assert db.one("SELECT * FROM pgml.load_dataset('linnerud', NULL, 0)") == ("pgml.linnerud", 0)
    assert db.one("SELECT * FROM pgml.load_dataset('linnerud')") == ("pgml.linnerud", 20)
    assert db.one("SELECT chins FROM pgml.linnerud LIMIT 1") == 5.0
    # In the caller's transaction: a rollback takes the new table back, and leaves the old one.
    db.conn.autocommit = False
    db.run("SELECT pgml.load_dataset('linnerud', \"limit\" => 3)")
    assert db.one("SELECT count(*) FROM pgml.linnerud") == 3
    db.conn.rollback()
    db.conn.autocommit = True
    assert db.one("SELECT count(*) FROM pgml.linnerud") == 20


def test_load_dataset_refuses_what_it_cannot_do(db: Session, loaded: None) -> None:
    error = db.error("SELECT pgml.load_dataset('titanic')")
    assert error.pgcode == "0A000"
    assert "breast_cancer, diabetes, digits, iris, linnerud, wine" in error.diag.message_hint
    error = db.error("SELECT pgml.load_dataset('linnerud', \"limit\" => -1)")
    assert error.pgcode == "22023"
    for call in ("SELECT pgml.load_dataset('iris', 'plain_text')",
                 "SELECT pgml.load_dataset('iris', kwargs => '{\"split\": \"train\"}')"):
        error = db.error(call)
        assert error.pgcode == "0A000" and "Hugging Face" in error.pgerror
    # A view on the table: kept, and said so (PostgresML would drop it with the table).
    db.run("CREATE VIEW linnerud_view AS SELECT chins FROM pgml.linnerud")
    error = db.error("SELECT pgml.load_dataset('linnerud')")
    assert error.pgcode == "2BP01" and "other objects depend on it" in error.pgerror
    assert "linnerud_view" in error.diag.message_detail
    db.run("DROP VIEW linnerud_view")
    # Something else of that name in schema pgml is no table to replace.
    db.run("DROP TABLE IF EXISTS pgml.wine")
    db.run("CREATE VIEW pgml.wine AS SELECT 1 AS x")
    try:
        error = db.error("SELECT pgml.load_dataset('wine')")
        assert error.pgcode == "42P07" and "was not made by pgml.load_dataset" in error.pgerror
    finally:
        db.run("DROP VIEW pgml.wine")
    assert db.one("SELECT rows FROM pgml.load_dataset('wine')") == 178


# --------------------------------------------------------------------------------------------------
# The walkthroughs
# --------------------------------------------------------------------------------------------------

def test_regression_walkthrough(db: Session, loaded: None, project: str) -> None:
    """regression.sql: diabetes, several algorithms, deploy by strategy and algorithm, predict."""
    name = f"Diabetes Progression {project}"
    first = db.one("SELECT * FROM pgml.train(%s, 'regression', 'pgml.diabetes', 'target')", (name,))
    model = _model(db, name)
    assert model.startswith("diabetes_progression_") and first == f"{model}_1"
    predictions = db.rows(f"SELECT target, pgml.predict(%s, ARRAY[{DIABETES}]) AS prediction "
                          "FROM pgml.diabetes LIMIT 10", (name,))
    assert len(predictions) == 10 and all(isinstance(p, float) for _, p in predictions)
    for algorithm, hyperparams in [("ridge", None), ("lasso", None), ("elastic_net", None),
                                   ("random_forest", '{"n_estimators": 5}'), ("knn", None),
                                   ("svm", '{"max_iter": 100}')]:
        if hyperparams is None:
            db.one("SELECT * FROM pgml.train(%s, 'regression', 'pgml.diabetes', 'target', %s)", (name, algorithm))
        else:
            db.one("SELECT * FROM pgml.train(%s, 'regression', 'pgml.diabetes', 'target', %s, %s)",
                   (name, algorithm, hyperparams))
    versions = dict(db.rows("SELECT algorithm, id FROM pgml.models WHERE name = %s", (model,)))
    assert set(versions) == {"linear", "ridge", "lasso", "elastic_net", "random_forest", "knn", "svm"}
    best = db.rows("SELECT trained_models.* FROM pgml.trained_models JOIN pgml.models ON models.id = trained_models.id "
                   "WHERE trained_models.name = %s ORDER BY (models.metrics->>'r2')::float8 DESC LIMIT 5", (name,))
    assert len(best) == 5 and all(r[1] == name and r[2] == "regression" and r[4] == "python" for r in best)

    # The metrics are scikit-learn's on the same split.
    data = db.rows(f"SELECT {DIABETES}, target FROM pgml.diabetes")
    X, y = _real([r[:-1] for r in data]), _real([r[-1] for r in data])
    train, test = _split(len(y))
    for algorithm, estimator in [("linear", make_pipeline(StandardScaler(), LinearRegression())),
                                 ("ridge", make_pipeline(StandardScaler(), Ridge(random_state=0))),
                                 ("random_forest", RandomForestRegressor(n_estimators=5, random_state=0)),
                                 ("svm", make_pipeline(StandardScaler(), SVR(max_iter=100)))]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)  # max_iter 100, as regression.sql trains it
            fitted = clone(estimator).fit(X[train], y[train])
        expected = r2_score(y[test], fitted.predict(X[test]))
        assert _metrics(db, versions[algorithm])["r2"] == pytest.approx(expected, abs=1e-9), algorithm

    # Deploying, as regression.sql does.
    assert db.one("SELECT * FROM pgml.deploy(%s, 'most_recent', 'random_forest')", (name,)) == (
        name, "most_recent", "random_forest")
    assert db.one("SELECT id FROM pgml.deployed_models WHERE name = %s", (model,)) == versions["random_forest"]
    best_id = db.one("SELECT id FROM pgml.models WHERE name = %s ORDER BY (metrics->>'r2')::float8 DESC LIMIT 1",
                     (model,))
    assert db.one("SELECT * FROM pgml.deploy(%s, 'best_score')", (name,)) == best_id
    assert db.one("SELECT * FROM pgml.deploy(%s, 'most_recent')", (name,)) == versions["svm"]
    assert db.one("SELECT * FROM pgml.deploy(%s, 'rollback')", (name,)) == best_id
    assert db.one("SELECT * FROM pgml.deploy(%s, 'best_score', 'svm')", (name,)) == (name, "best_score", "svm")
    assert db.one("SELECT algorithm FROM pgml.deployed_models WHERE name = %s", (model,)) == "svm"

    # The predictions on the loaded rows are the deployed model's, as PostgresML returns them (real).
    served = db.rows(f"SELECT pgml.predict(%s, ARRAY[{DIABETES}]) FROM pgml.diabetes", (name,))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        svm = make_pipeline(StandardScaler(), SVR(max_iter=100)).fit(X[train], y[train])
    assert np.allclose([p for (p,) in served], np.float32(svm.predict(X)), rtol=1e-6, atol=1e-4)
    as_row = db.one(f"SELECT pgml.predict(%s, ({DIABETES})) FROM pgml.diabetes LIMIT 1", (name,))
    assert as_row == served[0][0]
    # pgml.explain takes the project's name too (an svm cannot be explained: the linear version can),
    # and its contributions add up to the prediction.
    db.one("SELECT * FROM pgml.deploy(%s, 'most_recent', 'linear')", (name,))
    explained = db.one(f"SELECT sum(e.contribution) FROM pgml.diabetes d, pgml.explain(%s, ARRAY[{DIABETES}]) e "
                       "WHERE d.ctid = (SELECT min(ctid) FROM pgml.diabetes)", (name,))
    assert explained == pytest.approx(db.one(f"SELECT pgml.predict(%s, ARRAY[{DIABETES}]) FROM pgml.diabetes "
                                             "WHERE ctid = (SELECT min(ctid) FROM pgml.diabetes)", (name,)), rel=1e-6)


def test_classification_walkthrough_with_image_arrays(db: Session, loaded: None, project: str) -> None:
    """image_classification.sql: digits, whose feature is one smallint[] of 64 pixels."""
    name = f"Handwritten Digits {project}"
    first = db.one("SELECT * FROM pgml.train(%s, 'classification', 'pgml.digits', 'target')", (name,))
    model = _model(db, name)
    assert first == f"{model}_1"
    assert db.one("SELECT count(*) FROM pgml.features WHERE model = %s", (first,)) == 64
    assert db.one("SELECT feature FROM pgml.features WHERE model = %s AND position = 64", (first,)) == "image[64]"
    rows = db.rows("SELECT target, pgml.predict(%s, image::FLOAT4[]) AS prediction FROM pgml.digits LIMIT 10",
                   (name,))
    assert [p for _, p in rows] == [float(t) for t, _ in rows]  # the first ten digits are easy
    probabilities = db.rows("SELECT target, pgml.predict_proba(%s, image) FROM pgml.digits LIMIT 10", (name,))
    for target, proba in probabilities:
        assert len(proba) == 10 and sum(proba) == pytest.approx(1, abs=1e-5)
        assert int(np.argmax(proba)) == target
    # After a project has been trained, omitted parameters are its last training data's.
    trained = [db.one("SELECT * FROM pgml.train(%s, algorithm => 'ridge')", (name,)),
               db.one("SELECT * FROM pgml.train(%s, algorithm => 'random_forest', "
                      "hyperparams => '{\"n_estimators\": 10}')", (name,)),
               db.one("SELECT * FROM pgml.train(%s, algorithm => 'knn')", (name,))]
    algorithms = ("ridge", "random_forest", "knn")
    assert [(p, t, a) for p, t, a, _ in trained] == [(name, "classification", a) for a in algorithms]
    searched = db.one("SELECT pgml.train(%s, algorithm => 'knn', search => 'grid', "
                      "search_params => '{\"n_neighbors\": [3, 5]}')", (name,))
    assert searched.startswith(f'("{name}",classification,knn,')  # PostgresML's row, as a composite
    assert db.one("SELECT count(*) FROM pgml.models WHERE name = %s", (model,)) == 5
    assert db.one("SELECT DISTINCT train_rows FROM pgml.models WHERE name = %s", (model,)) == 1347

    # Metrics as scikit-learn's on the same stratified split.
    data = db.rows("SELECT image, target FROM pgml.digits")
    X, y = np.array([i for i, _ in data], dtype=np.float64), np.array([t for _, t in data])
    train, test = _split(len(y), y)
    logistic = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, random_state=0))
    logistic.fit(X[train], y[train])
    expected = f1_score(y[test], logistic.predict(X[test]), average="macro")
    assert _metrics(db, first)["f1"] == pytest.approx(expected, abs=1e-9)
    forest = RandomForestClassifier(n_estimators=10, random_state=0).fit(X[train], y[train])
    expected = f1_score(y[test], forest.predict(X[test]), average="macro")
    assert _metrics(db, f"{model}_3")["f1"] == pytest.approx(expected, abs=1e-9)

    assert db.one("SELECT * FROM pgml.deploy(%s, 'most_recent', 'random_forest')", (name,)) == (
        name, "most_recent", "random_forest")
    served = [p for (p,) in db.rows("SELECT pgml.predict(%s, image) FROM pgml.digits", (name,))]
    assert served == forest.predict(X).astype(float).tolist()
    best_id = db.one("SELECT id FROM pgml.models WHERE name = %s ORDER BY (metrics->>'f1')::float8 DESC, version DESC "
                     "LIMIT 1", (model,))
    assert db.one("SELECT * FROM pgml.deploy(%s, 'best_score')", (name,)) == best_id
    assert db.one("SELECT * FROM pgml.deploy(%s, 'rollback')", (name,)) == f"{model}_3"
    assert db.one("SELECT * FROM pgml.deploy(%s, 'best_score', 'linear')", (name,)) == (name, "best_score", "linear")
    served = [p for (p,) in db.rows("SELECT pgml.predict(%s, image::FLOAT4[]) FROM pgml.digits", (name,))]
    assert served == logistic.predict(X).astype(float).tolist()
    # predict_proba's array is the classes' order; pgml_fdw's own form keys the same values by class.
    array, by_class = db.one("SELECT pgml.predict_proba(%s, image), "
                             "pgml.predict_proba(%s, jsonb_build_object('image', image)) "
                             "FROM pgml.digits OFFSET 7 LIMIT 1", (name, model))
    assert array == pytest.approx([by_class[str(k)] for k in range(10)], rel=1e-6)
    assert array == pytest.approx(logistic.predict_proba(X[7:8])[0].tolist(), rel=1e-5, abs=1e-7)


def test_binary_classification_walkthrough(db: Session, loaded: None, project: str) -> None:
    """binary_classification.sql: breast cancer, whose classes are booleans."""
    name = f"Breast Cancer Detection {project}"
    db.one("SELECT * FROM pgml.train(%s, 'classification', 'pgml.breast_cancer', 'malignant')", (name,))
    features = ", ".join(f'"{c}"' for c in BREAST_CANCER_FEATURES)
    rows = db.rows(f"SELECT malignant, pgml.predict(%s, ARRAY[{features}]), pgml.predict_proba(%s, ARRAY[{features}]) "
                   "FROM pgml.breast_cancer", (name, name))
    accuracy = sum(float(m) == p for m, p, _ in rows) / len(rows)
    assert accuracy > 0.95
    # false before true: the second probability is malignant's.
    assert all((proba[1] > 0.5) == (p == 1.0) and sum(proba) == pytest.approx(1, abs=1e-5) for _, p, proba in rows)


def test_gradient_boosting_steps_of_the_walkthroughs(db: Session, loaded: None, project: str) -> None:
    """The walkthroughs' xgboost and lightgbm lines."""
    available = {a for (a,) in db.rows("SELECT DISTINCT name FROM pgml.algorithms "
                                       "WHERE name IN ('xgboost', 'lightgbm')")}
    assert available == {"xgboost", "lightgbm"}
    name = f"Diabetes Boosting {project}"
    db.one("SELECT * FROM pgml.train(%s, 'regression', 'pgml.diabetes', 'target')", (name,))
    for algorithm in sorted(available):
        model_id = db.one("SELECT * FROM pgml.train(%s, 'regression', 'pgml.diabetes', 'target', %s, "
                          "'{\"n_estimators\": 10}')", (name, algorithm))
        assert db.one("SELECT algorithm FROM pgml.models WHERE id = %s", (model_id,)) == algorithm
        assert db.one("SELECT * FROM pgml.deploy(%s, 'best_score', %s)", (name, algorithm)) == (
            name, "best_score", algorithm)
        served = db.one(f"SELECT pgml.predict(%s, ARRAY[{DIABETES}]) FROM pgml.diabetes LIMIT 1", (name,))
        assert math.isfinite(served)
    digits = f"Handwritten Digits Boosting {project}"
    db.one("SELECT * FROM pgml.train(%s, 'classification', 'pgml.digits', 'target', %s, '{\"n_estimators\": 10}')",
           (digits, sorted(available)[0]))
    rows = db.rows("SELECT target, pgml.predict(%s, image) FROM pgml.digits LIMIT 100", (digits,))
    assert sum(float(t) == p for t, p in rows) >= 80


def test_clustering_walkthrough(db: Session, loaded: None, project: str) -> None:
    """clustering.sql: digits' images without their labels."""
    name = f"Handwritten Digit Clusters {project}"
    db.run("CREATE OR REPLACE VIEW pgml.digit_vectors AS SELECT image FROM pgml.digits")
    try:
        db.one("SELECT * FROM pgml.train(%s, 'clustering', 'pgml.digit_vectors', "
               "hyperparams => '{\"n_clusters\": 10}')", (name,))
        for algorithm in ("birch", "kmeans", "mini_batch_kmeans"):
            row = db.one("SELECT * FROM pgml.train(%s, algorithm => %s, hyperparams => '{\"n_clusters\": 10}')",
                         (name, algorithm))
            assert row[:3] == (name, "clustering", algorithm)
        clusters = db.rows("SELECT target, pgml.predict(%s, image) FROM pgml.digits", (name,))
        assert {c for _, c in clusters} == set(map(float, range(10)))
        # Each cluster is mostly one digit.
        by_cluster: dict = {}
        for target, cluster in clusters:
            by_cluster.setdefault(cluster, []).append(target)
        purity = sum(max(np.bincount(t)) for t in by_cluster.values()) / len(clusters)
        assert purity > 0.6
    finally:
        db.run("DROP VIEW pgml.digit_vectors")


# --------------------------------------------------------------------------------------------------
# Call shapes
# --------------------------------------------------------------------------------------------------

def test_every_call_shape_of_train_finds_its_function(db: Session, loaded: None, project: str) -> None:
    name = f"Shapes {project}"
    model_like = f"shapes_{os.urandom(3).hex()}"
    db.run("DELETE FROM pgml.model_names WHERE name = %s", (model_like,))
    # Plain literals in PostgresML's places: pgml_fdw's function, which hands over and returns the id.
    positional = [
        ("SELECT * FROM pgml.train(%s, 'regression', 'pgml.diabetes', 'target')", ()),
        ("SELECT * FROM pgml.train(%s, 'regression', 'pgml.diabetes', 'target', 'ridge')", ()),
        ("SELECT * FROM pgml.train(%s, 'regression', 'pgml.diabetes', 'target', 'ridge', '{\"alpha\": 2}')", ()),
        ("SELECT * FROM pgml.train(%s, 'regression', 'pgml.diabetes', 'target', 'ridge', '{}', 'grid', "
         "'{\"alpha\": [1, 2]}')", ()),
        ("SELECT * FROM pgml.train(%s, 'regression', 'pgml.diabetes', 'target', hyperparams => '{}')", ()),
        ("SELECT * FROM pgml.train(%s, 'regression', 'pgml.diabetes', 'target', test_size => 0.25)", ()),
        ("SELECT * FROM pgml.train(%s, 'regression')", ()),
    ]
    for statement, params in positional:
        result = db.rows(statement, (name, *params))
        assert len(result) == 1 and len(result[0]) == 1 and result[0][0].startswith("shapes_"), statement
    # PostgresML's own parameter names, or its task type: PostgresML's function and row.
    named = [
        "SELECT * FROM pgml.train(%s)",
        "SELECT * FROM pgml.train(%s, algorithm => 'ridge')",
        "SELECT * FROM pgml.train(%s, 'regression', 'pgml.diabetes', 'target', algorithm => 'ridge')",
        "SELECT * FROM pgml.train(%s, task => 'regression', relation_name => 'pgml.diabetes', "
        "y_column_name => 'target')",
        "SELECT * FROM pgml.train(project_name => %s, task => 'regression', relation_name => 'pgml.diabetes', "
        "y_column_name => 'target', algorithm => 'lasso', hyperparams => '{\"alpha\": 0.5}', test_size => 0.25, "
        "test_sampling => 'random', automatic_deploy => false, preprocess => '{}')",
        "SELECT * FROM pgml.train(%s, 'regression'::pgml.task, 'pgml.diabetes', 'target')",
        "SELECT * FROM pgml.train(%s, 'regression', 'pgml.diabetes', 'target', algorithm => 'ridge', search => 'grid', "
        "search_params => '{\"alpha\": [1, 2]}', search_args => '{\"cv\": 2}')",
        "SELECT * FROM pgml.train(%s, 'regression', 'pgml.diabetes', 'target', runtime => 'python')",
        "SELECT * FROM pgml.train(%s, 'regression', 'pgml.diabetes', 'target', algorithm => 'ridge', "
        "search => 'random', search_params => '{\"alpha\": [0.5, 1, 2, 4]}', search_args => '{\"n_iter\": 2}')",
    ]
    for statement in named:
        row = db.one(statement, (name,))
        assert row[:2] == (name, "regression") and isinstance(row[3], bool), statement
    model = _model(db, name)
    assert db.one("SELECT count(*) FROM pgml.models WHERE name = %s", (model,)) == len(positional) + len(named)
    assert db.one("SELECT search_folds FROM pgml.training_runs WHERE name = %s AND search_folds = 2", (model,)) == 2
    lasso = db.one("SELECT hyperparams->>'alpha', deployed FROM pgml.models WHERE name = %s AND algorithm = 'lasso'",
                   (model,))
    assert lasso == ("0.5", False)  # automatic_deploy => false
    # A project named like a model is that model.
    assert db.one("SELECT * FROM pgml.train(%s, 'regression', 'pgml.diabetes', 'target')", (model_like,)) == \
        f"{model_like}_1"
    assert db.one("SELECT model FROM pgml.projects WHERE name = %s", (model_like,)) == model_like
    assert db.one("SELECT pgml.score(%s, ROW(0,0,0,0,0,0,0,0,0,0))", (model_like,)) == pytest.approx(
        db.one("SELECT pgml.predict(%s, ARRAY[0,0,0,0,0,0,0,0,0,0])", (model_like,)), rel=1e-6)
    db.run("DELETE FROM pgml.model_names WHERE name = %s", (model_like,))
    # Nine or more literals in place fit both functions: PostgreSQL says so (a cast or a name decides).
    error = db.error("SELECT * FROM pgml.train(%s, 'regression', 'pgml.diabetes', 'target', 'ridge', '{}', NULL, "
                     "'{}', '{}')", (name,))
    assert error.pgcode == "42725" and "is not unique" in error.pgerror


def test_pgml_fdws_own_calls_keep_their_meaning(db: Session, name: str) -> None:
    # A relation with a column named like a task: pgml_fdw's training of that column, as before.
    make_table(db, "pgml_tasky", "x float8, regression float8", [(float(i), 2.0 * i) for i in range(40)])
    assert db.one("SELECT pgml.train('pgml_tasky', 'regression', name => %s)", (name,)) == f"{name}_1"
    assert db.one("SELECT y_column FROM pgml.models WHERE id = %s", (f"{name}_1",)) == "regression"
    assert db.one("SELECT count(*) FROM pgml.project_names WHERE model = %s", (name,)) == 0
    assert db.one("SELECT pgml.train('pgml_tasky', 'regression', 'ridge', %s)", (name,)) == f"{name}_2"
    assert db.one("SELECT algorithm FROM pgml.models WHERE id = %s", (f"{name}_2",)) == "ridge"
    # The default algorithm is still linear, and deploy takes a name and a strategy or version.
    assert db.one("SELECT algorithm FROM pgml.models WHERE id = %s", (f"{name}_1",)) == "linear"
    assert db.one("SELECT pgml.deploy(%s, 'most_recent')", (name,)) == f"{name}_2"
    assert db.one("SELECT pgml.deploy(%s, 1)", (name,)) == f"{name}_1"
    # A SQL array given to pgml.score is the features in order; a jsonb literal needs its cast, as before.
    assert db.one("SELECT pgml.score(%s, ARRAY[3.0])", (name,)) == pytest.approx(6, abs=1e-6)
    assert db.one("SELECT pgml.score(%s, '{\"x\": 3}'::jsonb)", (name,)) == pytest.approx(6, abs=1e-6)
    assert db.error("SELECT pgml.score(%s, '{\"x\": 3}')", (name,)).pgcode == "42725"


def test_a_relation_is_found_on_the_callers_search_path(db: Session, project: str) -> None:
    make_table(db, "pgml_pm_line", "x float8, y float8", [(float(i), 3.0 * i + 1) for i in range(60)])
    name = f"Line {project}"
    assert db.one("SELECT * FROM pgml.train(%s, 'regression', 'pgml_pm_line', 'y')", (name,)).endswith("_1")
    assert db.one("SELECT * FROM pgml.train(%s, relation_name => 'pgml_pm_line', y_column_name => 'y')",
                  (name,))[:3] == (name, "regression", "linear")
    assert db.one("SELECT relation FROM pgml.projects WHERE name = %s", (name,)) == "public.pgml_pm_line"
    assert db.one("SELECT pgml.predict(%s, ARRAY[2.0])", (name,)) == pytest.approx(7, rel=1e-5)


def test_retraining_a_project_reuses_its_training_data(db: Session, loaded: None, project: str) -> None:
    name = f"Reuse {project}"
    db.one("SELECT * FROM pgml.train(%s, 'regression', 'pgml.diabetes', 'target', test_size => 0.5, "
           "test_sampling => 'last')", (name,))
    assert db.one("SELECT * FROM pgml.train(%s, algorithm => 'ridge')", (name,))[:3] == (name, "regression", "ridge")
    assert db.one("SELECT * FROM pgml.train(%s)", (name,))[2] == "linear"
    model = _model(db, name)
    assert db.rows("SELECT DISTINCT relation, y_column, train_rows, test_rows FROM pgml.models WHERE name = %s",
                   (model,)) == [("pgml.diabetes", "target", 221, 221)]
    # The same split: the same algorithm gives the same metrics.
    assert len({str(m) for (m,) in db.rows("SELECT metrics FROM pgml.models WHERE name = %s AND algorithm = 'linear'",
                                           (model,))}) == 1
    error = db.error("SELECT * FROM pgml.train(%s, 'classification', 'pgml.diabetes', 'target')", (name,))
    assert error.pgcode == "22023" and "exists already, with task regression" in error.pgerror
    assert db.one("SELECT relation, y_column FROM pgml.projects WHERE name = %s", (name,)) == (
        "pgml.diabetes", "target")


def test_options_pgml_fdw_does_not_have_say_so(db: Session, loaded: None, project: str) -> None:
    name = f"Options {project}"
    error = db.error("SELECT * FROM pgml.train(%s, 'regression', 'pgml.diabetes', 'target', runtime => 'rust')",
                     (name,))
    assert error.pgcode == "0A000" and "runtime => 'python'" in error.diag.message_hint
    error = db.error("SELECT * FROM pgml.train(%s, 'regression', 'pgml.diabetes', 'target', algorithm => 'ridge', "
                     "search => 'grid', search_params => '{\"alpha\": [1, 2]}', search_args => '{\"bogus\": 1}')",
                     (name,))
    assert error.pgcode == "22023" and "bogus" in error.pgerror and '"n_iter"' in error.diag.message_hint
    db.conn.notices.clear()
    row = db.one("SELECT * FROM pgml.train(%s, 'regression', 'pgml.diabetes', 'target', materialize_snapshot => true)",
                 (name,))
    assert row[:2] == (name, "regression")
    assert any("materialize_snapshot is ignored" in notice for notice in db.conn.notices)


def test_unknown_projects_are_named(db: Session, loaded: None) -> None:
    cases = [
        ("SELECT * FROM pgml.train('No Such Project')", "42704", 'project "No Such Project" does not exist',
         "give its task"),
        ("SELECT * FROM pgml.train('No Such Project', 'regression')", "22023", "has no training data yet",
         "Give relation_name and y_column_name"),
        ("SELECT pgml.predict('No Such Project', ARRAY[1, 2]::real[])", "42704", 'no project named "No Such Project"',
         "pgml.projects"),
        ("SELECT pgml.predict_proba('No Such Project', ARRAY[1, 2])", "42704", "no project named", "pgml.projects"),
        ("SELECT pgml.deploy('No Such Project', 'best_score')", "42704", "no project named", "pgml.projects"),
        ("SELECT * FROM pgml.deploy('No Such Project', 'best_score', 'svm')", "42704", "no project named",
         "pgml.projects"),
        ("SELECT pgml.predict('no_such_model', ARRAY[1, 2])", "42704", 'no model named "no_such_model"', None),
        ("SELECT * FROM pgml.train('', 'regression', 'pgml.diabetes', 'target', algorithm => 'ridge')", "22023",
         "a project needs a name", None),
    ]
    for statement, state, message, hint in cases:
        error = db.error(statement)
        assert error.pgcode == state and message in error.pgerror, statement
        if hint:
            assert hint in error.diag.message_hint, statement


# --------------------------------------------------------------------------------------------------
# Names and privileges
# --------------------------------------------------------------------------------------------------

def test_any_project_name_is_safe(db: Session, loaded: None, project: str) -> None:
    names = [f"Robert'); DROP TABLE pgml.iris; -- {project}", f'Prévisions ☃ "2025" {project}', f"a\\b\t\nc {project}",
             f"日本語のプロジェクト {project}", f"  spaced   out  {project}", "x" * 300 + f" {project}",
             f"Iris Flowers! {project}", f"iris flowers {project}"]
    models = []
    for name in names:
        row = db.one("SELECT * FROM pgml.train(%s, task => 'classification', relation_name => 'pgml.iris', "
                     "y_column_name => 'target')", (name,))
        assert row == (name, "classification", "linear", True)
        model = _model(db, name)
        assert db.one("SELECT %s ~ '^[a-z][a-z0-9_]*$' AND length(%s) <= 63", (model, model))
        assert db.one("SELECT pgml.predict(%s, ARRAY[5.1, 3.5, 1.4, 0.2])", (name,)) == 0.0
        models.append(model)
    assert len(set(models)) == len(models)
    assert models[-1] == models[-2] + "_p2"  # the same letters: the second is told apart
    assert db.one("SELECT count(*) FROM pgml.iris") == 150
    assert db.one("SELECT count(*) FROM pgml.projects WHERE name = ANY(%s)", (names,)) == len(names)
    # A name that reads as a model's version id is no project name.
    error = db.error("SELECT * FROM pgml.train('iris_model_2', task => 'classification', relation_name => 'pgml.iris', "
                     "y_column_name => 'target')")
    assert error.pgcode == "22023" and "reads as the id of a model's version" in error.pgerror
    # A model can hold one project only.
    error = db.error("SELECT * FROM pgml.train(%s, task => 'classification', relation_name => 'pgml.iris', "
                     "y_column_name => 'target')", (models[-2],))
    assert error.pgcode == "42710" and "already holds project" in error.pgerror


def test_projects_belong_to_their_models_owner(db: Session, loaded: None, project: str) -> None:
    alice = role(db, "pgml_pm_alice", TRAINING_GRANTS, schema=True)
    mallory = role(db, "pgml_pm_mallory", TRAINING_GRANTS, schema=True)
    nobody = role(db, "pgml_pm_nobody")
    name = f"Wine Quality {project}"
    db.run("DROP TABLE IF EXISTS pgml.wine")
    as_alice, as_mallory, as_nobody = Session(alice), Session(mallory), Session(nobody)
    try:
        assert as_alice.one("SELECT * FROM pgml.load_dataset('wine')") == ("pgml.wine", 178)
        # The extension's owner keeps the table, which everyone may read: alice could otherwise hang
        # a trigger or a policy on it that runs as the next role to train on it.
        assert db.one("SELECT tableowner FROM pg_tables WHERE schemaname = 'pgml' AND tablename = 'wine'") == \
            db.one("SELECT extowner::regrole::text FROM pg_extension WHERE extname = 'pgml_fdw'")
        assert db.one("SELECT loaded_by FROM pgml.dataset_tables WHERE name = 'wine'") == alice
        assert as_mallory.one("SELECT count(*) FROM pgml.wine") == 178
        assert as_alice.error("ALTER TABLE pgml.wine ENABLE ROW LEVEL SECURITY").pgcode == "42501"
        assert as_alice.one("SELECT * FROM pgml.train(%s, 'classification', 'pgml.wine', 'target')", (name,))
        model = _model(db, name)
        assert db.one("SELECT owner FROM pgml.projects WHERE name = %s", (name,)) == alice
        prediction = as_alice.one("SELECT pgml.predict(%s, ARRAY[13.2, 1.78, 2.14, 11.2, 100, 2.65, 2.76, 0.26, "
                                  "1.28, 1.05, 4.38, 3.4, 1050])", (name,))
        assert prediction in (0.0, 1.0, 2.0)

        # mallory may train and predict, but neither replace alice's table nor touch her project.
        error = as_mallory.error("SELECT pgml.load_dataset('wine')")
        assert error.pgcode == "42501" and f"role {alice} loaded it" in error.pgerror
        for statement in ("SELECT * FROM pgml.train(%s, 'classification', 'pgml.iris', 'target')",
                          "SELECT * FROM pgml.train(%s, algorithm => 'knn')",
                          "SELECT pgml.deploy(%s, 'best_score')",
                          "SELECT * FROM pgml.deploy(%s, 'best_score', 'linear')",
                          "SELECT pgml.deploy(%s, 1)"):
            error = as_mallory.error(statement, (name,))
            assert error.pgcode == "42501", (statement, error.pgerror)
        assert as_mallory.one("SELECT pgml.predict(%s, ARRAY[13.2, 1.78, 2.14, 11.2, 100, 2.65, 2.76, 0.26, 1.28, "
                              "1.05, 4.38, 3.4, 1050])", (name,)) == prediction
        # The request's requester is whoever inserts it, whatever the row says.
        error = as_mallory.error(
            "INSERT INTO pgml._requests (action, arguments, requested_by) VALUES ('record_project', "
            "jsonb_build_object('name', 'Stolen', 'task', 'regression', 'model', %s::text, "
            "'relation', 'pgml.iris'), %s)",
            (model, alice))
        assert error.pgcode == "42501" and "permission denied to record project" in error.pgerror
        error = as_mallory.error("SELECT pgml._record_project('{}', %s)", (alice,))
        assert error.pgcode == "42501"
        assert db.one("SELECT count(*) FROM pgml.project_names WHERE name = 'Stolen'") == 0

        # A role that may not train may not load datasets or train; one that may not predict, not predict.
        error = as_nobody.error("SELECT pgml.load_dataset('iris')")
        assert error.pgcode == "42501" and "may not train" in error.pgerror
        assert "GRANT INSERT ON pgml.training_runs" in error.diag.message_hint
        error = as_nobody.error("SELECT * FROM pgml.train('Nobody''s', 'regression', 'pgml.diabetes', 'target')")
        assert error.pgcode == "42501"
        assert as_nobody.error("SELECT pgml.predict(%s, ARRAY[1.0])", (name,)).pgcode == "42501"

        # alice's own view on her table keeps her from loading it again.
        as_alice.run("CREATE VIEW wine_view AS SELECT * FROM pgml.wine")
        assert as_alice.error("SELECT pgml.load_dataset('wine')").pgcode == "2BP01"
        as_alice.run("DROP VIEW wine_view")
        assert as_alice.one("SELECT rows FROM pgml.load_dataset('wine', \"limit\" => 10)") == 10
    finally:
        for session in (as_alice, as_mallory, as_nobody):
            session.close()
        db.run("DROP TABLE IF EXISTS pgml.wine")


# --------------------------------------------------------------------------------------------------
# Array features
# --------------------------------------------------------------------------------------------------

def _array_table(db: Session, table: str = "pgml_arrays") -> None:
    """v smallint[3] (NULL elements, NULL arrays), w float8[2], x real, y = 2 v[1] + 3 v[2] - v[3] + w[1] + x."""
    db.run(f"DROP TABLE IF EXISTS {table} CASCADE")
    db.run(f"""CREATE TABLE {table} AS
        SELECT i AS id,
               CASE WHEN i % 17 = 0 THEN NULL
                    ELSE ARRAY[i % 7, CASE WHEN i % 5 = 0 THEN NULL ELSE (i * 3) % 11 END, i % 4]::smallint[] END AS v,
               ARRAY[(i % 13) / 2.0, (i % 3) * 1.5]::float8[] AS w,
               ((i % 9) / 4.0)::real AS x,
               (2 * (i % 7) + 3 * ((i * 3) % 11) - (i % 4) + (i % 13) / 2.0 + (i % 9) / 4.0)::float8 AS y
        FROM generate_series(1, 400) i""")
    db.run(f"CREATE OR REPLACE VIEW {table}_view AS SELECT v, w, x, y FROM {table}")


def test_array_columns_train_and_serve_alike(db: Session, name: str) -> None:
    _array_table(db)
    for algorithm in ("linear", "random_forest"):
        model_id = db.one("SELECT pgml.train('pgml_arrays_view', 'y', %s, name => %s)", (algorithm, name))
        features = db.rows("SELECT feature, type FROM pgml.features WHERE model = %s ORDER BY position", (model_id,))
        assert features == [("v[1]", "smallint"), ("v[2]", "smallint"), ("v[3]", "smallint"),
                            ("w[1]", "double precision"), ("w[2]", "double precision"), ("x", "real")]
        batch = dict(db.rows("SELECT key::int, prediction FROM pgml.score_table(%s, 'pgml_arrays', 'id')", (model_id,)))
        rows = db.rows("SELECT id, v, w, x FROM pgml_arrays WHERE id % 23 = 0 OR id % 17 = 0 OR id % 5 = 0 LIMIT 40")
        for row_id, _, _, _ in rows:
            forms = db.one(
                "SELECT pgml.score(%s, to_jsonb(a) - 'id' - 'y'), pgml.score(%s, ROW(v, w, x)), "
                "pgml.score(%s, jsonb_build_array(v, w, x)), pgml.predict(%s, (v, w, x)), "
                "pgml.score(%s, to_jsonb(coalesce(v::float8[], '{NULL,NULL,NULL}') || w || x::float8)) "
                "FROM pgml_arrays a WHERE id = %s", (model_id, model_id, model_id, model_id, model_id, row_id))
            assert forms[0] == forms[1] == forms[2] == pytest.approx(batch[row_id], rel=1e-12, abs=1e-9), row_id
            assert forms[3] == pytest.approx(batch[row_id], rel=1e-6)  # PostgresML's real
        if algorithm == "linear":
            r2 = db.one("SELECT (metrics->>'r2')::float8 FROM pgml.models WHERE id = %s", (model_id,))
            assert r2 > 0.6  # with NULLs imputed
    # preprocess names the array column, and applies to each element.
    model_id = db.one("SELECT pgml.train('pgml_arrays_view', 'y', preprocess => '{\"v\": {\"scale\": \"min_max\"}}', "
                      "name => %s)", (name,))
    scales = db.rows("SELECT preprocess->>'scale' FROM pgml.features WHERE model = %s AND feature LIKE 'v[%%' "
                     "ORDER BY position", (model_id,))
    assert scales == [("min_max",)] * 3


def test_array_columns_that_cannot_be_features(db: Session, name: str) -> None:
    _array_table(db)
    cases = [
        ("UPDATE pgml_arrays SET v = ARRAY[1, 2] WHERE id IN (3, 4)", "22000",
         'array column "v" must hold arrays of 3 elements', "2 array(s) of 2 element(s)"),
        ("UPDATE pgml_arrays SET v = ARRAY[[1, 2], [3, 4]] WHERE id = 5", "22000",
         'array column "v" has arrays that are not flat', "in 1 row(s)"),
        ("UPDATE pgml_arrays SET v = '[0:2]={1,2,3}' WHERE id = 6", "22000", "not flat", "pgml_arrays_view"),
        ("UPDATE pgml_arrays SET v = NULL", "22000", 'array column "v" is NULL or empty in every row', ""),
        ("UPDATE pgml_arrays SET v = '{}'", "22000", "is NULL or empty in every row", ""),
        ("DROP VIEW pgml_arrays_view; CREATE VIEW pgml_arrays_view AS SELECT v::text[] AS v, w, x, y FROM pgml_arrays",
         "42804", 'column "v" of public.pgml_arrays_view has type text[], which cannot be a feature', ""),
    ]
    for change, state, message, more in cases:
        _array_table(db)
        db.run(change)
        error = db.error("SELECT pgml.train('pgml_arrays_view', 'y', name => %s)", (name,))
        assert error.pgcode == state and message in error.pgerror and more in error.pgerror, change
        assert error.diag.message_hint, change
    _array_table(db)
    db.run('CREATE OR REPLACE VIEW pgml_arrays_view AS SELECT v, w, x, y, 1.0::float8 AS "v[1]" FROM pgml_arrays')
    error = db.error("SELECT pgml.train('pgml_arrays_view', 'y', name => %s)", (name,))
    assert "has a column named like an array element: v[1]" in error.pgerror


def test_serving_an_array_of_the_wrong_shape_is_a_clear_error(db: Session, name: str) -> None:
    _array_table(db)
    db.one("SELECT pgml.train('pgml_arrays_view', 'y', 'random_forest', name => %s)", (name,))
    cases = [
        ("SELECT pgml.score(%s, '{\"v\": [1, 2], \"w\": [1, 2], \"x\": 1}'::jsonb)",
         'feature "v" of model', "takes an array of 3 values, not 2 values"),
        ("SELECT pgml.score(%s, ROW(ARRAY[1, 2, 3, 4], ARRAY[1.0, 2.0], 1))", 'feature "v"', "not 4 values"),
        ("SELECT pgml.predict(%s, ARRAY[1, 2, 3, 4, 5])", "takes 6 features, not 5", ""),
        ("SELECT pgml.score(%s, '{\"v\": \"abc\", \"w\": [1, 2], \"x\": 1}'::jsonb)", "takes an array of 3 values",
         '"abc"'),
    ]
    for statement, message, more in cases:
        error = db.error(statement, (name,))
        assert error.pgcode == "22023" and message in error.pgerror and more in error.pgerror, statement
    # A whole relation: every array is checked.
    db.run("UPDATE pgml_arrays SET v = ARRAY[1, 2, 3, 4] WHERE id = 10")
    error = db.error("SELECT * FROM pgml.score_table(%s, 'pgml_arrays', 'id')", (name,))
    assert error.pgcode == "22000" and "1 array(s) of 4 element(s)" in error.pgerror
    # A NULL array, or a NULL element, is imputed like a NULL number.
    value = db.one("SELECT pgml.score(%s, '{\"v\": null, \"w\": [1, null], \"x\": null}'::jsonb)", (name,))
    assert math.isfinite(value)


def test_predict_on_text_classes_points_to_classify(db: Session, name: str) -> None:
    make_table(db, "pgml_fruit", "weight float8, kind text",
               [(100 + i % 20, "apple") for i in range(40)] + [(150 + i % 20, "banana") for i in range(40)])
    db.one("SELECT pgml.train('pgml_fruit', 'kind', name => %s)", (name,))
    error = db.error("SELECT pgml.predict(%s, ARRAY[160.0])", (name,))
    assert error.pgcode == "22023" and "predicts text classes" in error.pgerror
    assert "pgml.classify" in error.diag.message_hint
    assert db.one("SELECT pgml.classify(%s, ARRAY[160.0])", (name,)) == "banana"
    apple, banana = db.one("SELECT pgml.predict_proba(%s, ARRAY[160.0])", (name,))  # classes in code point order
    assert banana > 0.5 > apple
    error = db.error("SELECT pgml.predict_proba(%s, ARRAY[1.0])", ("pgml_no_such",))
    assert error.pgcode == "42704"

