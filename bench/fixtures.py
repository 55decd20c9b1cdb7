"""The benchmark's data and models: tables in the schema ``bench`` and models named ``bench_*``.

Data is generated in the database (generate_series and random() after setseed, with parallel query
off so the rows come out the same every run). Everything is made on first use, so a run of one
scenario builds only what that scenario needs, and removed by :meth:`Fixtures.cleanup`.
"""
from __future__ import annotations

import sys
from typing import Any, Dict, List, Set, Tuple

import numpy as np
import psycopg2.extensions
from pgml_fdw import model_format

from harness import Sizes

SCHEMA = "bench"
PREDICTION_TABLE = "bench.pred_data"   # id, x1..x10, y: scored by b, features for a and e
PREDICTION_VIEW = "bench.pred_train"   # x1..x10, y of the first train_rows rows: what a, b and e train on
WIDE_VIEW = "bench.wide_view"          # x1..x20, y: read by c, trained on by d
MODELS = {"linear": "bench_linear", "random_forest": "bench_forest"}
SMALL_ROWS = 2_000                     # rows the ten models of f train on, at every size
SMALL_VIEW = "bench.small_train"       # x1..x10, y of the first SMALL_ROWS rows
SMALL_CLASS_VIEW = "bench.small_class"  # the same rows with y > -0.5 (about half of them) as a boolean class
# The models of f, by kind: what kind of estimator serves (algorithm, relation); named bench_f_<kind>.
# Ten kinds pgml_fdw serves by a fast path of its own (no scikit-learn in the backend), whose memory
# has the target; then kinds without one, measured apart (they load scikit-learn).
SERVED_KINDS = {
    "linear": ("linear", SMALL_VIEW),
    "ridge": ("ridge", SMALL_VIEW),
    "lasso": ("lasso", SMALL_VIEW),
    "elastic_net": ("elastic_net", SMALL_VIEW),
    "logistic": ("linear", SMALL_CLASS_VIEW),
    "linear_svm_classifier": ("linear_svm", SMALL_CLASS_VIEW),
    "decision_tree": ("decision_tree", SMALL_VIEW),
    "random_forest": ("random_forest", SMALL_VIEW),
    "random_forest_classifier": ("random_forest", SMALL_CLASS_VIEW),
    "extra_trees": ("extra_trees", SMALL_VIEW),
}
SLOW_KINDS = {
    "gradient_boosting": ("gradient_boosting_trees", SMALL_VIEW),
    "svm": ("svm", SMALL_VIEW),
}
END_TO_END_MODEL = "bench_e2e"
FLOOR_SERVER = "pgml_bench_floor"
READER_ROLE = "pgml_bench_reader"      # a role other than the extension owner, allowed to read the wide view
FLOOR_TABLE = "bench.floor"            # pgml.predictions' columns, answered by bench/floor_fdw.py
FLOOR_SCORE = "bench.floor_score"      # pgml.score's signature, over bench.floor
FLOOR_PREDICTION = "bench.floor_prediction"  # pgml.prediction's signature, over bench.floor
PREDICTION_FEATURES = [f"x{i}" for i in range(1, 11)]
WIDE_FEATURES = [f"x{i}" for i in range(1, 21)]


def _generate(table: str, rows: int, features: List[str], seed: float) -> str:
    """CREATE TABLE ... AS: id, uniform features, and y a linear function of them plus noise.

    OFFSET 0 keeps the subquery from being flattened, so y uses the very values stored in x.
    """
    drawn = ", ".join(f"random() AS {f}" for f in features)
    weights = " + ".join(f"({(i % 7) - 2.5:g}) * {f}" for i, f in enumerate(features))
    return (f"SELECT setseed({seed}); "
            f"CREATE TABLE {table} AS SELECT id, {', '.join(features)}, {weights} + 0.2 * (random() - 0.5) AS y "
            f"FROM (SELECT g AS id, {drawn} FROM generate_series(1, {rows}) g OFFSET 0) s")


class Fixtures:
    """Builds the benchmark's tables and models on first use, on one connection."""

    def __init__(self, conn: "psycopg2.extensions.connection", sizes: Sizes) -> None:
        self.conn = conn
        self.sizes = sizes
        self._made: Set[str] = set()

    def _run(self, statement: str, params: Any = None) -> List[Any]:
        with self.conn.cursor() as cur:
            cur.execute(statement, params)
            return cur.fetchall() if cur.description else []

    def reset(self) -> None:
        """Removes what an earlier run may have left, and makes an empty schema bench."""
        self._run("DELETE FROM pgml.model_versions WHERE name LIKE 'bench\\_%'")
        self._run(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
        self._run(f"DROP SERVER IF EXISTS {FLOOR_SERVER} CASCADE")
        self._drop_reader()
        self._run(f"CREATE SCHEMA {SCHEMA}")
        self._run("SET max_parallel_workers_per_gather = 0")

    def cleanup(self) -> None:
        """Drops every bench_ model (with its estimators and deployments) and the schema."""
        self._run("DELETE FROM pgml.model_versions WHERE name LIKE 'bench\\_%'")
        self._run(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
        self._run(f"DROP SERVER IF EXISTS {FLOOR_SERVER} CASCADE")
        self._drop_reader()

    def _drop_reader(self) -> None:
        if self._run("SELECT 1 FROM pg_roles WHERE rolname = %s", (READER_ROLE,)):
            self._run(f"DROP OWNED BY {READER_ROLE}")
            self._run(f"DROP ROLE {READER_ROLE}")

    def prediction_data(self) -> None:
        """bench.pred_data (score_rows rows) and the training view over its first train_rows."""
        if "prediction" in self._made:
            return
        rows = max(self.sizes.score_rows, self.sizes.train_rows + self.sizes.lateral_rows,
                   self.sizes.per_row_rows)
        self._run(_generate(PREDICTION_TABLE, rows, PREDICTION_FEATURES, 0.42))
        self._run(f"ALTER TABLE {PREDICTION_TABLE} ADD PRIMARY KEY (id)")
        self._run(f"VACUUM ANALYZE {PREDICTION_TABLE}")  # hint bits set now, not during a timed read
        self._run(f"CREATE VIEW {PREDICTION_VIEW} AS SELECT {', '.join(PREDICTION_FEATURES)}, y "
                  f"FROM {PREDICTION_TABLE} WHERE id <= {self.sizes.train_rows}")
        self._made.add("prediction")

    def model(self, algorithm: str) -> str:
        """The name of a deployed model of this algorithm trained on the prediction view."""
        name = MODELS[algorithm]
        if name not in self._made:
            self.prediction_data()
            print(f"   training {name} ({algorithm}, {self.sizes.train_rows} rows)", file=sys.stderr, flush=True)
            self._run("SELECT pgml.train(%s, 'y', %s, name => %s)", (PREDICTION_VIEW, algorithm, name))
            self._made.add(name)
        return name

    def served_models(self) -> Dict[str, str]:
        """The deployed models of f by kind (see SERVED_KINDS, then SLOW_KINDS), trained on SMALL_ROWS rows
        whatever the size, so that what a backend holds after serving them does not move with
        PGML_BENCH_QUICK."""
        kinds = {**SERVED_KINDS, **SLOW_KINDS}
        names = {kind: f"bench_f_{kind}" for kind in kinds}
        if "served" not in self._made:
            self.prediction_data()
            features = ", ".join(PREDICTION_FEATURES)
            self._run(f"CREATE VIEW {SMALL_VIEW} AS SELECT {features}, y "
                      f"FROM {PREDICTION_TABLE} WHERE id <= {SMALL_ROWS}")
            self._run(f"CREATE VIEW {SMALL_CLASS_VIEW} AS SELECT {features}, y > -0.5 AS y "
                      f"FROM {PREDICTION_TABLE} WHERE id <= {SMALL_ROWS}")
            print(f"   training {len(names)} models of various kinds ({SMALL_ROWS} rows)", file=sys.stderr, flush=True)
            for kind, (algorithm, relation) in kinds.items():
                self._run("SELECT pgml.train(%s, 'y', %s, name => %s)", (relation, algorithm, names[kind]))
            self._made.add("served")
        return names

    def stored_bytes(self, name: str) -> int:
        """The size of a model's deployed version as pgml.model_estimators stores it."""
        return int(self._run("SELECT octet_length(e.estimator) FROM pgml.model_estimators e "
                             "JOIN pgml.deployed_models d ON d.id = e.model_id WHERE d.name = %s", (name,))[0][0])

    def load_model(self, name: str) -> Any:
        """The deployed version of a model as the wrapper has it: a pgml_fdw.model.Model, read by the
        wrapper's own loader (pgml_fdw.model_format)."""
        rows = self._run("SELECT e.model_id, e.estimator FROM pgml.model_estimators e "
                         "JOIN pgml.deployed_models d ON d.id = e.model_id WHERE d.name = %s", (name,))
        return model_format.load(bytes(rows[0][1]), rows[0][0])

    def feature_rows(self, count: int) -> List[Dict[str, float]]:
        """Feature objects of rows the models were not trained on, as a query would send them."""
        self.prediction_data()
        rows = self._run(f"SELECT {', '.join(PREDICTION_FEATURES)} FROM {PREDICTION_TABLE} "
                         f"WHERE id > %s ORDER BY id LIMIT %s", (self.sizes.train_rows, count))
        return [dict(zip(PREDICTION_FEATURES, row)) for row in rows]

    def scoring_matrix(self) -> Dict[str, np.ndarray]:
        """Every row of the scored table, by id: 'id' and one float64 array per feature."""
        self.prediction_data()
        rows = self._run(f"SELECT id, {', '.join(PREDICTION_FEATURES)} FROM {PREDICTION_TABLE} ORDER BY id")
        matrix = np.asarray(rows, dtype=np.float64)
        return {name: matrix[:, i] for i, name in enumerate(["id"] + PREDICTION_FEATURES)}

    def floor_table(self) -> str:
        """bench.floor: a foreign table with pgml.predictions' columns whose wrapper
        (bench/floor_fdw.py) answers with a constant: Multicorn's cost without a model."""
        if "floor" not in self._made:
            columns = self._run("SELECT string_agg(format('%I %s', attname, format_type(atttypid, atttypmod)), ', ' "
                                "ORDER BY attnum) FROM pg_attribute "
                                "WHERE attrelid = 'pgml.predictions'::regclass AND attnum > 0 "
                                "AND NOT attisdropped")[0][0]
            self._run(f"CREATE SERVER {FLOOR_SERVER} FOREIGN DATA WRAPPER multicorn "
                      "OPTIONS (wrapper 'bench.floor_fdw.ConstantPrediction')")
            self._run(f"CREATE FOREIGN TABLE {FLOOR_TABLE} ({columns}) SERVER {FLOOR_SERVER}")
            self._made.add("floor")
        return FLOOR_TABLE

    def floor_functions(self) -> Tuple[str, str]:
        """bench.floor_score and bench.floor_prediction: plpgsql functions with the signatures of
        pgml.score(text, jsonb) and pgml.prediction(text, jsonb) that select from bench.floor, the
        floor of the per-row forms (a function call and a Multicorn scan per row, without a model).
        They take the planner's view of the product's functions (COST, ROWS), so that both plan alike,
        but none of their SET clauses: those are the product's own cost."""
        if "floor_functions" not in self._made:
            table = self.floor_table()
            planned = "SELECT procost, prorows FROM pg_proc WHERE oid = %s::regprocedure"
            score_cost, _ = self._run(planned, ("pgml.score(text, jsonb)",))[0]
            prediction_cost, prediction_rows = self._run(planned, ("pgml.prediction(text, jsonb)",))[0]
            self._run(f"CREATE FUNCTION {FLOOR_SCORE}(model text, features jsonb) RETURNS double precision "
                      f"LANGUAGE plpgsql STABLE COST {score_cost:g} AS $$ "
                      "DECLARE answer double precision; "
                      f"BEGIN SELECT f.prediction INTO answer FROM {table} f "
                      "WHERE f.model = floor_score.model AND f.features = floor_score.features; "
                      "RETURN answer; END $$")
            self._run(f"CREATE FUNCTION {FLOOR_PREDICTION}(model text, features jsonb) "
                      "RETURNS TABLE (prediction double precision, label text, probabilities jsonb, version integer) "
                      f"LANGUAGE plpgsql STABLE COST {prediction_cost:g} ROWS {prediction_rows:g} AS $$ "
                      "BEGIN RETURN QUERY SELECT f.prediction, f.label, f.probabilities, f.version "
                      f"FROM {table} f WHERE f.model = floor_prediction.model "
                      "AND f.features = floor_prediction.features; END $$")
            self._made.add("floor_functions")
        return FLOOR_SCORE, FLOOR_PREDICTION

    def reader_role(self) -> str:
        """A role that is not the extension owner, allowed to read the wide view: training as it
        reads through a SECURITY DEFINER function (see pgml_fdw.connection.read_as)."""
        if "reader" not in self._made:
            view = self.wide_view()
            self._run(f"CREATE ROLE {READER_ROLE} NOLOGIN")
            self._run(f"GRANT USAGE ON SCHEMA {SCHEMA} TO {READER_ROLE}")
            self._run(f"GRANT SELECT ON {view} TO {READER_ROLE}")
            self._made.add("reader")
        return READER_ROLE

    def wide_view(self) -> str:
        """bench.wide_view: load_rows rows of 20 float features and y, over a plain table."""
        if "wide" not in self._made:
            print(f"   generating {self.sizes.load_rows} rows x {len(WIDE_FEATURES)} features",
                  file=sys.stderr, flush=True)
            self._run(_generate("bench.wide_data", self.sizes.load_rows, WIDE_FEATURES, 0.17))
            self._run("VACUUM ANALYZE bench.wide_data")
            self._run(f"CREATE VIEW {WIDE_VIEW} AS SELECT {', '.join(WIDE_FEATURES)}, y FROM bench.wide_data")
            self._made.add("wide")
        return WIDE_VIEW
