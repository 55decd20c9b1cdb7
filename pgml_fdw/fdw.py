"""The Multicorn wrapper: one class, answering for each of the extension's foreign tables.

Each foreign table names its role in the ``table`` option; :class:`PgmlWrapper` hands the work to the
matching handler below, which in turn hands it to plain modules (training, the model store, batch
scoring). Every entry point reports a :class:`PgmlError` as a PostgreSQL ERROR with its hint, and
anything unexpected as an ERROR too: nothing a user sends takes the backend down.
"""
from __future__ import annotations

import functools
import json
import pickle
import traceback
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

from multicorn import ForeignDataWrapper
from multicorn.utils import ERROR, log_to_postgres

from .connection import ServerConnection
from .errors import PgmlError

# One connection and one model store per backend and dsn: Multicorn keeps one wrapper object per
# foreign table, and they share these.
_SERVICES: Dict[str, Tuple[ServerConnection, Any]] = {}
# Trained estimators waiting for pgml._after_training to store them: token -> (pickle, details).
_PENDING: Dict[str, Tuple[bytes, Dict[str, Any]]] = {}


def _services(dsn: str) -> Tuple[ServerConnection, Any]:
    if dsn not in _SERVICES:
        from .store import ModelStore

        server = ServerConnection(dsn)
        _SERVICES[dsn] = (server, ModelStore(server))
    return _SERVICES[dsn]


def _reported(method: Callable) -> Callable:
    """Turns exceptions into PostgreSQL ERRORs that say what went wrong and how to fix it."""

    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return method(*args, **kwargs)
        except PgmlError as exc:
            log_to_postgres(exc.message, ERROR, hint=exc.hint)
        except MemoryError:
            log_to_postgres("pgml_fdw ran out of memory", ERROR,
                            hint="Train on fewer rows or columns, or give the server more memory.")
        except Exception as exc:  # noqa: BLE001 - reported to the user, never raised into Multicorn
            log_to_postgres(f"pgml_fdw failed: {type(exc).__name__}: {exc}", ERROR,
                            hint="This is a bug in pgml_fdw; please report it.",
                            detail=traceback.format_exc(limit=8))

    return wrapper


def _equalities(quals: Iterable[Any]) -> Dict[str, Any]:
    """The values of the ``column = value`` conditions of a scan."""
    return {q.field_name: q.value for q in quals if q.operator == "="}


def _json_text(value: Any) -> Optional[str]:
    return None if value is None else json.dumps(value)


class _Table:
    """A handler of one foreign table, given the foreign server's dsn and the table's columns in
    order; it shares the backend's connection and model store."""

    def __init__(self, dsn: str, column_order: List[str]) -> None:
        self.dsn = dsn
        self.column_order = column_order
        self.server, self.store = _services(dsn)


class TrainingRuns(_Table):
    """pgml.training_runs: INSERT trains a model; SELECT lists the stored versions."""

    def insert(self, values: Dict[str, Any]) -> Dict[str, Any]:
        from .training import TrainingOptions, run

        options = TrainingOptions.from_row(values)
        token = values["token"]
        txid = int(token.split(":")[0])
        result = run(options, self.server, self.dsn)
        for stale in [t for t in _PENDING if not t.startswith(f"{txid}:")]:
            del _PENDING[stale]  # left behind by a statement that failed after training
        _PENDING[token] = (pickle.dumps(result.model, protocol=4), result.details)
        self.store.remember_trained(result.model, txid)
        row = dict(values)
        row.update(
            task=result.model.task,
            algorithm=options.algorithm,
            metrics=_json_text(result.metrics),
            train_rows=result.train_rows,
            test_rows=result.test_rows,
            duration=f"{result.seconds:.6f} seconds",
        )
        for key in ("hyperparams", "search_params", "preprocess"):
            if isinstance(row.get(key), (dict, list)):
                row[key] = _json_text(row[key])
        return row

    def execute(self, quals: List[Any], columns: Any) -> Iterable[Dict[str, Any]]:
        rows = self.server.fetch(
            "SELECT m.id, m.name, m.version, m.relation, m.y_column, m.algorithm, m.task, m.hyperparams,"
            " m.search ->> 'method', m.metrics, m.train_rows, m.test_rows, m.duration, m.trained_by,"
            " m.trained_at FROM pgml.model_versions m ORDER BY m.trained_at, m.name, m.version"
        )
        keys = ("id", "name", "version", "relation", "y_column", "algorithm", "task", "hyperparams", "search",
                "metrics", "train_rows", "test_rows", "duration", "trained_by", "trained_at")
        for row in rows:
            record = dict(zip(keys, row))
            record["hyperparams"] = _json_text(record["hyperparams"])
            record["metrics"] = _json_text(record["metrics"])
            yield record


class TrainedEstimators(_Table):
    """pgml.trained_estimators (internal): hands a trained estimator to the store, once."""

    def execute(self, quals: List[Any], columns: Any) -> Iterable[Dict[str, Any]]:
        token = _equalities(quals).get("token")
        if token in _PENDING:
            blob, details = _PENDING.pop(token)
            yield {"token": token, "estimator": blob, "details": _json_text(details)}


class ModelCache(_Table):
    """pgml.model_cache (internal): told of this session's deployments as they are made."""

    def execute(self, quals: List[Any], columns: Any) -> Iterable[Dict[str, Any]]:
        wanted = _equalities(quals)
        if {"name", "model", "txid"} <= wanted.keys():
            self.store.note_deployment(wanted["name"], wanted["model"], int(wanted["txid"]))
        return []


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


class Predictions(_Table):
    """pgml.predictions: one row for WHERE model AND features, or a whole relation's rows."""

    def execute(self, quals: List[Any], columns: Any) -> Iterable[Any]:
        wanted = _equalities(quals)
        ref = wanted.get("model")
        if ref is None or ("features" not in wanted and "relation" not in wanted):
            raise PgmlError(
                "pgml.predictions needs WHERE model = ... AND features = ... (or AND relation = ...)",
                hint="For example: SELECT prediction FROM pgml.predictions WHERE model = 'my_model' "
                "AND features = '{\"age\": 31}'. It computes predictions; it cannot list them all.",
            )
        model = self.store.get(ref)
        if "features" in wanted:
            features = wanted["features"]  # jsonb arrives as text (Multicorn 1.4) or parsed
            prediction, label, probabilities = model.predict_row(features)
            row = {"model": ref, "features": features if isinstance(features, str) else _json_text(features),
                   "prediction": prediction, "label": label, "probabilities": _json_text(probabilities),
                   "version": model.version}
            # A sequence in column order: Multicorn converts it without a lookup per column name.
            yield tuple(row.get(name) for name in self.column_order)
            return
        from .batch import as_rows, score_relation

        relation, key_column = wanted["relation"], wanted.get("key_column")
        keys, predictions = score_relation(self.server, self.dsn, model, relation, key_column)
        constant = {"model": ref, "relation": relation, "key_column": key_column, "version": model.version}
        yield from as_rows(self.column_order, constant, keys, predictions)

    @staticmethod
    def get_rel_size(quals: List[Any], columns: Any) -> Tuple[int, int]:
        # Without features a scan cannot run, so it is costed high: a join then takes the
        # parameterized path (get_path_keys). A prepared statement's generic plan shows Multicorn
        # no parameter values and looks the same, so PostgreSQL keeps making one-row custom plans.
        fields = {q.field_name for q in quals if q.operator == "="}
        if "features" in fields:
            return 1, 64
        return (100_000 if "relation" in fields else 1_000_000), 64

    @staticmethod
    def get_path_keys() -> List[Tuple[Tuple[str, ...], int]]:
        # With model and features known per outer row (a LATERAL join), a scan gives one row.
        return [(("model", "features"), 1)]


_HANDLERS: Dict[str, Callable[[str, List[str]], _Table]] = {
    "training_runs": TrainingRuns,
    "predictions": Predictions,
    "algorithms": Algorithms,
    "trained_estimators": TrainedEstimators,
    "model_cache": ModelCache,
}


class PgmlWrapper(ForeignDataWrapper):
    """The Multicorn entry point for every pgml foreign table (its ``table`` option says which)."""

    def __init__(self, options: Dict[str, str], columns: Dict[str, Any]) -> None:
        super().__init__(options, columns)
        table = options.get("table")
        if table not in _HANDLERS or "dsn" not in options:
            raise ValueError(f"pgml_fdw foreign tables need the options table (one of {sorted(_HANDLERS)}) and dsn")
        self.handler = _HANDLERS[table](options["dsn"], list(columns))

    @property
    def rowid_column(self) -> str:
        return "id"

    @_reported
    def execute(self, quals: List[Any], columns: Any, sortkeys: Any = None) -> List[Dict[str, Any]]:
        # A list, not a generator: errors must surface inside this call to be reported.
        return list(self.handler.execute(quals, columns))

    @_reported
    def insert(self, values: Dict[str, Any]) -> Dict[str, Any]:
        if not hasattr(self.handler, "insert"):
            raise PgmlError("this pgml table is read-only", hint="Train with INSERT INTO pgml.training_runs.")
        return self.handler.insert(values)

    def get_rel_size(self, quals: List[Any], columns: Any) -> Tuple[int, int]:
        if hasattr(self.handler, "get_rel_size"):
            return self.handler.get_rel_size(quals, columns)
        return 1000, 100

    def get_path_keys(self) -> List[Tuple[Tuple[str, ...], int]]:
        if hasattr(self.handler, "get_path_keys"):
            return self.handler.get_path_keys()
        return []
