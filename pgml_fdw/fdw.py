"""The Multicorn wrapper: one class, answering for each of the extension's foreign tables.

Each foreign table names its role in the ``table`` option; :class:`PgmlWrapper` hands the work to the
matching handler below, which in turn hands it to plain modules (training, the model store, batch
scoring).

Nothing here raises into PostgreSQL. An error raised from Python inside the backend jumps over the
interpreter's frames (Multicorn 1.4 leaves their accounting behind, and a few hundred such errors
crash the backend), so every failure is handed back as data instead: a row whose ``error`` column
holds it, which the extension's SQL raises with its SQLSTATE, message and hint.
"""
from __future__ import annotations

import json
import sys
from functools import cached_property
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from multicorn import ForeignDataWrapper

from . import errors, plan_guard
from .connection import ServerConnection, loopback_dsn
from .errors import PgmlError

# The backend's connections and model store: Multicorn keeps one wrapper object per foreign table,
# and they share these (keyed by the server's options).
_SERVICES: Dict[Tuple[Tuple[str, str], ...], "_Services"] = {}
# Trained estimators waiting for pgml._run_training to store them: token -> (pickle, details).
_PENDING: Dict[str, Tuple[bytes, Dict[str, Any]]] = {}
# The conditions that choose what pgml.predictions computes.
_KEYS = ("model", "features", "relation", "key_column")
# The columns of pgml.predictions that a decomposition model has no value for.
_PREDICTION_COLUMNS = frozenset(("prediction", "label", "probabilities"))
# Estimated rows of a relation scored whole, when the catalog does not say (a view).
_DEFAULT_BATCH_ROWS = 100_000


class _Services:
    """What the wrapper's tables share in a backend: the connection that loads models (as the
    server's serve_user), the one that reads users' relations as them (read_user), and the model
    store. Each is made on first use, inside a scan or an insert, whose errors are handed back as
    rows."""

    def __init__(self, options: Dict[str, str]) -> None:
        self.options = options

    @cached_property
    def serving(self) -> ServerConnection:
        return ServerConnection(loopback_dsn(self.options, "serve_user"))

    @cached_property
    def reading(self) -> ServerConnection:
        return ServerConnection(loopback_dsn(self.options, "read_user"))

    @cached_property
    def store(self) -> Any:
        from .store import ModelStore

        return ModelStore(self.serving)

    def close(self) -> None:
        """The statement's work is done: a backend keeps no connection between statements."""
        for made in ("serving", "reading"):
            if made in self.__dict__:  # cached_property keeps what it made there
                self.__dict__[made].close()

    def end_transaction(self) -> None:
        """The transaction (or a savepoint of it) ended: models trained in it are committed or gone."""
        if "store" in self.__dict__:
            self.store.forget_trained()


def _services(options: Dict[str, str]) -> _Services:
    key = tuple(sorted(options.items()))
    if key not in _SERVICES:
        _SERVICES[key] = _Services(options)
    return _SERVICES[key]


def as_user_error(exc: BaseException) -> PgmlError:
    """The error a user sees for an exception: itself if it is a :class:`PgmlError`, else a short
    message; the traceback of a bug goes to the server log (the backend's stderr), not the client."""
    import traceback

    from .isolation import ChildFailed  # here: a backend that only predicts never imports either

    if isinstance(exc, PgmlError):
        return exc
    if isinstance(exc, ChildFailed):
        return _bug(str(exc), "in a worker process", exc.traceback_text)
    if isinstance(exc, MemoryError):
        return PgmlError("pgml_fdw ran out of memory", sqlstate=errors.OUT_OF_MEMORY,
                         hint="Train or score fewer rows or columns, or give the server more memory.")
    return _bug(f"{type(exc).__name__}: {exc}", "",
                "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))


def _bug(summary: str, where: str, traceback_text: str) -> PgmlError:
    """A bug's error: its traceback to the server log (the backend's stderr), a short message
    to the client."""
    sys.stderr.write(f"pgml_fdw: unexpected error{' ' + where if where else ''}\n{traceback_text}")
    sys.stderr.flush()
    return PgmlError(f"pgml_fdw failed unexpectedly: {summary}", sqlstate=errors.INTERNAL_ERROR,
                     hint="This is a bug in pgml_fdw: please report it with the server log, which has its traceback.")


def _equalities(quals: Iterable[Any]) -> Dict[str, Any]:
    """The values of the ``column = value`` conditions of a scan."""
    return {q.field_name: q.value for q in quals if q.operator == "="}


def _json_text(value: Any) -> Optional[str]:
    return None if value is None else json.dumps(value)


class PgmlCannotPlanThisQuery(Exception):
    """Raised while planning (Multicorn reports it by this class's name, with the message as its
    DETAIL): the one error the wrapper cannot hand back as a row, because no scan runs."""


class _Table:
    """A handler of one foreign table, given the foreign server's options and the table's columns
    in order; it shares the backend's connections and model store."""

    def __init__(self, options: Dict[str, str], column_order: List[str]) -> None:
        self.column_order = column_order
        self.services = _services(options)

    def execute(self, quals: List[Any], columns: Any) -> Iterable[Any]:
        return []

    def rel_size(self, quals: List[Any]) -> Tuple[int, int, int]:
        """(rows, width, startup cost) of a scan; Multicorn costs it startup + rows x width."""
        return 1000, 100, 1

    def end_scan(self) -> None:
        """The scan ended, or its transaction: forget what was kept for it, close connections."""
        self.services.close()


class TrainingRuns(_Table):
    """pgml._training_runs: an inserted row is a training run; the returned row holds its results
    or its error."""

    def insert(self, values: Dict[str, Any]) -> Dict[str, Any]:
        from .isolation import Interrupted

        row = dict(values)
        try:
            row.update(self._train(values))
        except Interrupted:
            # PostgreSQL raises its own cancel or termination error at pgml._run_training's next
            # statement; this row only has to say that no model came back.
            row["error"] = PgmlError("canceling statement: the training was stopped",
                                     sqlstate=errors.QUERY_CANCELED).as_json()
        except Exception as exc:  # noqa: BLE001 - handed back to pgml._run_training, which raises it
            row["error"] = as_user_error(exc).as_json()
        for key in ("hyperparams", "search_params", "search_args", "preprocess", "metrics"):
            if isinstance(row.get(key), (dict, list)):
                row[key] = _json_text(row[key])
        return row

    def _train(self, values: Dict[str, Any]) -> Dict[str, Any]:
        from .training import TrainingOptions, run

        options = TrainingOptions.from_row(values)
        token = values["token"]  # the new version's uid (0.1.0: "txid:uuid")
        result = run(options, self.services.reading, memory_limit=int(values.get("memory_limit") or 0))
        _PENDING.clear()  # anything left was trained by a statement that failed after training
        _PENDING[token] = (result.model, result.details)
        self.services.store.remember_trained(token.rpartition(":")[2], result.model)
        return {
            "task": result.task,
            "algorithm": options.algorithm,
            "metrics": _json_text(result.metrics),
            "train_rows": result.train_rows,
            "test_rows": result.test_rows,
            "duration": f"{result.seconds:.6f} seconds",
            "peak_memory": result.peak_memory,
        }


class TrainedEstimators(_Table):
    """pgml._trained_estimators (internal): hands a trained estimator to the store, once."""

    def execute(self, quals: List[Any], columns: Any) -> Iterable[Dict[str, Any]]:
        token = _equalities(quals).get("token")
        if token in _PENDING:
            blob, details = _PENDING.pop(token)
            yield {"token": token, "estimator": blob, "details": _json_text(details)}


class Algorithms(_Table):
    """pgml.algorithms: the catalogue."""

    def execute(self, quals: List[Any], columns: Any) -> Iterable[Dict[str, Any]]:
        from . import algorithms

        for algorithm in algorithms.CATALOGUE:
            yield {
                "name": algorithm.name,
                "task": algorithm.task,
                "estimator": algorithm.estimator,
                "description": algorithm.description,
                "needs_scaling": algorithm.needs_scaling,
                "hyperparams": _json_text(algorithms.all_params(algorithm)),
            }


class Datasets(_Table):
    """pgml._datasets: WHERE name = ... gives one row, the columns and rows of one of the datasets
    scikit-learn ships (:mod:`datasets`), from which pgml.load_dataset makes a table."""

    def execute(self, quals: List[Any], columns: Any) -> Iterable[Dict[str, Any]]:
        from .isolation import Interrupted

        name = _equalities(quals).get("name")
        try:
            if name is None:
                raise PgmlError("pgml._datasets needs WHERE name = ...",
                                hint="Load a dataset with pgml.load_dataset(name).")
            from .datasets import as_table

            table = as_table(name)
            yield {"name": name, "columns": _json_text(table["columns"]), "rows": _json_text(table["rows"])}
        except Interrupted:
            # PostgreSQL raises its own cancel or termination error when pgml.load_dataset checks this row.
            yield {"name": name, "error": PgmlError("canceling statement: loading the dataset was stopped",
                                                    sqlstate=errors.QUERY_CANCELED).as_json()}
        except Exception as exc:  # noqa: BLE001 - handed back to pgml.load_dataset, which raises it
            yield {"name": name, "error": as_user_error(exc).as_json()}


class Expressions(_Table):
    """pgml._expressions: WHERE model = uid (AND context = the caller's, from 0.5.1's view) gives the
    model's prediction as a SQL expression over its feature columns, or NULL when it has none
    (:mod:`sql_form`)."""

    def execute(self, quals: List[Any], columns: Any) -> Iterable[Dict[str, Any]]:
        wanted = _equalities(quals)
        uid, context = wanted.get("model"), wanted.get("context")
        if uid is None:
            return
        try:
            from .sql_form import expression

            yield {"model": uid, "context": context, "expression": expression(self.services.store.get(uid, context))}
        except Exception as exc:  # noqa: BLE001 - handed back to pgml.score_table and score_into, which raise it
            yield {"model": uid, "context": context, "error": as_user_error(exc).as_json()}


class VersionNumbers(_Table):
    """pgml._version_numbers: WHERE name = ... AND at_least = n takes the model name's next version
    number and commits it at once (:mod:`version_numbers`), so that no id is ever given twice."""

    def execute(self, quals: List[Any], columns: Any) -> Iterable[Dict[str, Any]]:
        wanted = _equalities(quals)
        name, at_least = wanted.get("name"), wanted.get("at_least")
        if name is None or at_least is None:
            return
        try:
            from .version_numbers import take

            yield {"name": name, "at_least": at_least, "version": take(self.services.serving, name, at_least)}
        except Exception as exc:  # noqa: BLE001 - handed back to pgml._train, which raises it
            yield {"name": name, "at_least": at_least, "error": as_user_error(exc).as_json()}

    def rel_size(self, quals: List[Any]) -> Tuple[int, int, int]:
        return 1, 20, 1


def _refuse_unsafe_plans(table: str, quals: List[Any], keys: Sequence[str], inputs: Sequence[str], *,
                         instead_of_a_range: str, instead_of_a_subquery: str,
                         instead_of_computed_features: str) -> Dict[str, Any]:
    """The conditions ``column = value`` of a scan of ``table`` that computes its rows from its
    ``model`` and one of ``inputs``, once the plans Multicorn cannot run safely are refused:

    * any other operator than ``=`` on one of ``keys``: only "=" picks the rows to compute, and
      PostgreSQL's recheck of another condition could drop the row that carries an error, so
      that the query would answer nothing instead;
    * a subquery (values from an outer query reach the scan there) that is explained, or whose
      model and input are not constants: Multicorn mishandles conditions that refer to an outer
      query, and can crash the server on them;
    * inputs computed when the query runs (an expression, a parameter) in a plan an EXPLAIN shows:
      Multicorn hands the wrapper such a value unset, and multicorn2 crashes the server on a jsonb
      one. A prepared statement's generic plan may be explained later without being planned
      again: under plan_cache_mode = force_generic_plan it is refused as soon as it is made.
      PostgreSQL's default (auto) keeps making custom plans, in which parameters are constants,
      because the scans cost a generic plan higher; the generic plans of the extension's own
      functions are never explained."""
    other = sorted({q.field_name for q in quals if q.field_name in keys and q.operator != "="})
    if other:
        raise PgmlCannotPlanThisQuery(
            f"{table} takes {', '.join(other)} with = only (one value, not IN, LIKE or a range): it computes "
            f"the rows it returns, it cannot search them. {instead_of_a_range}")
    wanted = _equalities(quals)
    given = "model" in wanted and any(name in wanted for name in inputs)
    nested, explaining = plan_guard.planning_subquery()
    if nested and (explaining or not given):
        raise PgmlCannotPlanThisQuery(
            f"{table} inside a subquery "
            + ("cannot be explained" if explaining
               else "needs a constant model and " + inputs[0] + "".join(f" (or {name})" for name in inputs[1:]))
            + ": Multicorn mishandles conditions that refer to an outer query, and can crash the server on them. "
            + instead_of_a_subquery)
    if not nested and not any(name in wanted for name in inputs):
        from . import backend

        if plan_guard.explaining():
            raise PgmlCannotPlanThisQuery(
                f"EXPLAIN cannot show {table} with features computed when the query runs (an expression or a "
                "parameter): Multicorn hands the wrapper such a value unset under EXPLAIN, and can crash the "
                f"server on it. {instead_of_computed_features}")
        if backend.setting("plan_cache_mode") == "force_generic_plan" and plan_guard.preparing_a_statement():
            raise PgmlCannotPlanThisQuery(
                f"{table} cannot be prepared with its features a parameter under plan_cache_mode = "
                "force_generic_plan: an EXPLAIN EXECUTE of that generic plan would hand Multicorn the features "
                "unset, which can crash the server. SET plan_cache_mode = auto (the default) or "
                "force_custom_plan for this statement, or give the features as a constant.")
    return wanted


class Predictions(_Table):
    """pgml._predictions: one row for WHERE model AND features, or a whole relation's rows."""

    def __init__(self, options: Dict[str, str], column_order: List[str]) -> None:
        super().__init__(options, column_order)
        # A whole relation's rows, kept while its scan lasts: a rescan (the inner side of a join)
        # returns them again instead of reading and scoring the relation anew.
        self._batches: Dict[Tuple[Any, ...], List[Any]] = {}
        self._position = {name: i for i, name in enumerate(column_order)}

    def end_scan(self) -> None:
        self._batches.clear()
        super().end_scan()

    def execute(self, quals: List[Any], columns: Any) -> Iterable[Any]:
        from .isolation import Interrupted

        wanted = _equalities(quals)
        try:
            return self._predict(wanted, columns)
        except Interrupted:
            # PostgreSQL raises its own cancel or termination error when the view checks this row.
            error = PgmlError("canceling statement: the batch was stopped", sqlstate=errors.QUERY_CANCELED)
            return self._error_row(wanted, error)
        except Exception as exc:  # noqa: BLE001 - handed back to the view pgml.predictions, which raises it
            return self._error_row(wanted, as_user_error(exc))

    def _error_row(self, wanted: Dict[str, Any], error: PgmlError) -> List[Any]:
        """One row holding the error, and the conditions unchanged: PostgreSQL's recheck of them
        keeps it, and the view's check raises the error."""
        features = wanted.get("features")
        if features is not None and not isinstance(features, str):
            features = _json_text(features)
        echo = dict(wanted, features=features, error=error.as_json())
        return [tuple(echo.get(name) for name in self.column_order)]

    def _predict(self, wanted: Dict[str, Any], columns: Any) -> List[Any]:
        ref = wanted.get("model")
        if ref is None or ("features" not in wanted and "relation" not in wanted):
            raise PgmlError(
                "pgml.predictions needs WHERE model = ... AND features = ... (or AND relation = ...), "
                "with features a constant or a query parameter",
                hint="For one row: SELECT prediction FROM pgml.predictions WHERE model = 'my_model' AND features = "
                "'{\"age\": 31}'. To score the rows of another table one by one, call pgml.prediction(model, "
                "features) in a LATERAL join or pgml.score(model, features) in the select list.",
            )
        if "features" in wanted and "relation" in wanted:
            raise PgmlError("pgml.predictions takes features (one row) or relation (a whole table), not both",
                            hint="Drop the features condition to score every row of the relation.")
        if "context" not in self.column_order:
            raise PgmlError("this database's pgml_fdw objects are older than its Python package",
                            hint="Update them: ALTER EXTENSION pgml_fdw UPDATE (models are kept).",
                            sqlstate=errors.INVALID_PARAMETER)
        model = self.services.store.get(ref, wanted.get("context"))
        # A decomposition model answers components (an array) instead of a prediction: a query that
        # asks for a prediction and not for them (pgml.score and the like) is told so.
        decompose = model.task == "decomposition"
        if decompose:
            asked = set(columns or ())
            if "components" not in asked and asked & _PREDICTION_COLUMNS:
                raise model.not_a_prediction()
            if "components" not in self._position:
                raise PgmlError("this database's pgml_fdw objects are older than its Python package",
                                hint="Update them: ALTER EXTENSION pgml_fdw UPDATE (models are kept).",
                                sqlstate=errors.INVALID_PARAMETER)
        if "features" in wanted:
            features = wanted["features"]  # jsonb arrives as text (Multicorn 1.4) or parsed
            # A sequence in column order: Multicorn converts it without a lookup per column name.
            at = self._position
            row: List[Any] = [None] * len(at)
            row[at["model"]], row[at["context"]], row[at["version"]] = ref, wanted.get("context"), model.version
            row[at["features"]] = features if isinstance(features, str) else _json_text(features)
            if decompose:
                row[at["components"]] = model.decompose_row(features)
                return [tuple(row)]
            prediction, label, probabilities = model.predict_row(features)
            row[at["prediction"]], row[at["label"]] = prediction, label
            if probabilities is not None:
                row[at["probabilities"]] = json.dumps(probabilities)
            return [tuple(row)]
        from .batch import as_rows, score_relation

        relation, key_column = wanted["relation"], wanted.get("key_column")
        batch = (model.model_id, relation, key_column)
        if batch not in self._batches:
            keys, predictions, components = score_relation(self.services.reading, model, relation, key_column,
                                                               release=self.services.close)
            constant = {"model": ref, "relation": relation, "key_column": key_column, "version": model.version,
                        "context": wanted.get("context")}
            self._batches[batch] = list(as_rows(self.column_order, constant, keys, predictions, components))
        return self._batches[batch]

    def rel_size(self, quals: List[Any]) -> Tuple[int, int, int]:
        wanted = _refuse_unsafe_plans(
            "pgml.predictions", quals, _KEYS, ("features", "relation"),
            instead_of_a_range="Run one query per value, or score rows one by one with pgml.prediction(model, "
            "features).",
            instead_of_a_subquery="To score rows one by one, use pgml.prediction(model, features) in a LATERAL "
            "join or pgml.score(model, features) in the select list; else move pgml.predictions to the top level "
            "of the query.",
            instead_of_computed_features="Explain the query with the features written as a constant "
            "('{...}'::jsonb: the plan is the same), or run it without EXPLAIN.")
        if "relation" in wanted and "features" not in wanted:
            # Multicorn costs a scan rows x width: a whole relation's rows are costed at nothing
            # each, or PostgreSQL would JIT-compile a query that spends its time in Python. A join
            # may then rescan it for every outer row: the rows are kept for the scan (_batches).
            return self._relation_rows(wanted["relation"]), 0, 1
        # One row. Without constant features (a parameter of a generic plan, an expression),
        # costed a little higher, so that PostgreSQL keeps planning prepared statements with their
        # parameters' values, which Multicorn handles best.
        return 1, 64 if "features" in wanted else 128, 1

    def _relation_rows(self, relation: Any) -> int:
        from .loading import estimated_rows

        try:
            return int(estimated_rows(self.services.reading, relation)) or _DEFAULT_BATCH_ROWS
        except Exception:  # noqa: BLE001 - only an estimate; the scan itself reports a bad relation
            return _DEFAULT_BATCH_ROWS
        finally:
            self.services.reading.close()  # planning alone (PREPARE, EXPLAIN) reaches no end_scan


class Explanations(_Table):
    """pgml._explanations: WHERE model = uid AND features = ... gives the explanation of that
    prediction (:mod:`explain`), one row per feature after the base's, or one row holding the error."""

    def execute(self, quals: List[Any], columns: Any) -> Iterable[Any]:
        wanted = _equalities(quals)
        try:
            rows = self._explain(wanted)
        except Exception as exc:  # noqa: BLE001 - handed back to pgml.explain, which raises it
            rows = [{"error": as_user_error(exc).as_json()}]
        # Every row repeats the conditions as given: PostgreSQL's recheck of them keeps the rows.
        features = wanted.get("features")  # jsonb arrives as text (Multicorn 1.4) or parsed
        echo = {"model": wanted.get("model"), "context": wanted.get("context"),
                "features": features if features is None or isinstance(features, str) else _json_text(features)}
        return [tuple(dict(row, **echo).get(name) for name in self.column_order) for row in rows]

    def _explain(self, wanted: Dict[str, Any]) -> List[Dict[str, Any]]:
        from .explain import explain
        from .store import UID

        uid, features = wanted.get("model"), wanted.get("features")
        if uid is None or features is None or not UID.match(uid):
            raise PgmlError("pgml._explanations needs WHERE model = (a model's uid) AND features = ...",
                            hint="Call pgml.explain(model, features), which resolves the model's name.")
        # The caller's context (0.5.1's view passes it): a uid written by hand must be one it sees.
        explanation = explain(self.services.store.get(uid, wanted.get("context")), features)
        # The base (the first row) has no value; a feature given as null, the JSON null.
        return [{"feature": row.feature, "value": None if i == 0 else json.dumps(row.value), "imputed": row.imputed,
                 "contribution": row.contribution, "explains": explanation.explains, "label": explanation.label}
                for i, row in enumerate(explanation.rows())]

    def rel_size(self, quals: List[Any]) -> Tuple[int, int, int]:
        instead = "Call pgml.explain(model, features), in a LATERAL join to explain the rows of a table."
        _refuse_unsafe_plans("pgml._explanations", quals, ("model", "features"), ("features",),
                             instead_of_a_range=instead, instead_of_a_subquery=instead,
                             instead_of_computed_features=instead)
        return 20, 64, 1


_HANDLERS: Dict[str, Callable[[Dict[str, str], List[str]], _Table]] = {
    "training_runs": TrainingRuns,
    "predictions": Predictions,
    "algorithms": Algorithms,
    "expressions": Expressions,
    "explanations": Explanations,
    "trained_estimators": TrainedEstimators,
    "datasets": Datasets,
    "version_numbers": VersionNumbers,
    # 0.1.0's deployment trigger scans it; ALTER EXTENSION pgml_fdw UPDATE drops it.
    "model_cache": _Table,
}


class PgmlWrapper(ForeignDataWrapper):
    """The Multicorn entry point for every pgml foreign table (its ``table`` option says which)."""

    # Multicorn adds this to every path's cost; get_rel_size sets it per scan (rel_size).
    _startup_cost = 1

    def __init__(self, options: Dict[str, str], columns: Dict[str, Any]) -> None:
        super().__init__(options, columns)
        table = options.get("table")
        if table not in _HANDLERS:
            raise ValueError(f"pgml_fdw foreign tables need the option table (one of {sorted(_HANDLERS)})")
        server_options = {k: v for k, v in options.items() if k not in ("table", "wrapper")}
        self.handler = _HANDLERS[table](server_options, list(columns))

    @property
    def rowid_column(self) -> str:
        # Multicorn wants one to plan an UPDATE or DELETE, which the extension's trigger then refuses.
        return self.handler.column_order[0]

    def execute(self, quals: List[Any], columns: Any, sortkeys: Any = None) -> List[Any]:
        # A list, not a generator: the work, and its errors, happen inside this call.
        return list(self.handler.execute(quals, columns))

    def insert(self, values: Dict[str, Any]) -> Dict[str, Any]:
        # Only pgml._training_runs is written to: the extension's triggers refuse the rest, and a
        # row that still gets here is dropped rather than raised about.
        insert = getattr(self.handler, "insert", None)
        return insert(values) if insert is not None else values

    def end_scan(self) -> None:
        self.handler.end_scan()

    def commit(self) -> None:
        self.handler.services.end_transaction()

    def rollback(self) -> None:
        # A scan an error interrupted never reaches end_scan.
        self.handler.end_scan()
        self.handler.services.end_transaction()

    def sub_rollback(self, level: int) -> None:
        self.handler.end_scan()
        self.handler.services.end_transaction()

    def get_rel_size(self, quals: List[Any], columns: Any) -> Tuple[int, int]:
        rows, width, self._startup_cost = self.handler.rel_size(quals)
        return rows, width

    def get_path_keys(self) -> List[Tuple[Tuple[str, ...], int]]:
        # No parameterized paths: features computed per row of another table would reach the scan
        # as expressions over the outer row, which Multicorn evaluates unset under a plain EXPLAIN
        # and crashes on. Per-row scoring goes through pgml.prediction() and pgml.score() instead.
        return []
