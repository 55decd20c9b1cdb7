"""Scoring a whole relation in one vectorized pass: ``WHERE model = ... AND relation = ...``."""
from __future__ import annotations

import json
from itertools import repeat
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple

from .columns import FeatureColumn
from .connection import ServerConnection
from . import backend, errors, isolation, libpq
from .errors import PgmlError
from .loading import INTEGER, TEXT, feature_field, read_columns, relation_columns
from .model import Model, Prediction
from .training import training_budget


def _fields(server: ServerConnection, model: Model, relation: str,
            key_column: Optional[str]) -> List[Tuple[FeatureColumn, str]]:
    """The columns to read and their wire types: the model's features, then the key column, if
    any. Integer keys travel as int8 (the all-numbers fast path of :func:`loading.parse_binary_copy`),
    any other key as text."""
    types = {c.name: c.base for c in relation_columns(server, relation)}
    missing = list(dict.fromkeys(c.column for c in model.columns if c.column not in types))
    if missing:
        raise PgmlError(f"{relation} lacks the features {', '.join(missing)} of model {model.model_id}",
                        hint="Score a relation with the same columns as the one the model was trained on.",
                        sqlstate=errors.UNDEFINED_COLUMN)
    fields = [feature_field(c) for c in model.columns]
    if key_column is not None:
        if key_column not in types:
            raise PgmlError(f'column "{key_column}" does not exist in {relation}', sqlstate=errors.UNDEFINED_COLUMN,
                            hint=f"key_column names the column returned as key; {relation} has: {', '.join(types)}.")
        base = types[key_column]
        integer = base in ("int2", "int4", "int8")
        key = FeatureColumn(key_column, base, "number" if integer else "text", base)
        fields.append((key, INTEGER if integer else TEXT))
    return fields


Scored = Tuple[Optional[List[Any]], List[Prediction], Optional[List[List[float]]]]


def score_relation(server: ServerConnection, model: Model, relation: str, key_column: Optional[str],
                   release: Callable[[], None]) -> Scored:
    """Every row of the relation's prediction and, if key_column is given, its key (else None);
    for a decomposition model, no prediction (all None) but its components (else None).
    ``release`` closes the backend's connections back once nothing more is read through them: while
    the worker scores, its own read is the statement's only connection back.

    The relation is read and scored in a worker process (:mod:`isolation`): a cancel or a statement
    timeout stops a slow view at once, and a relation too big for memory costs the worker, not
    the backend. Raises :class:`isolation.Interrupted` when PostgreSQL asked the backend to stop.
    """
    try:
        rows = server.fetch("SELECT to_regclass(%s)::text", (relation,))
    except libpq.Error as exc:  # not even a name: '"unterminated', 'a.b.c.d'
        raise PgmlError(f"relation {relation!r} is not a valid name: {exc.message_primary}",
                        sqlstate=errors.INVALID_NAME,
                        hint="Name a table or view, schema-qualified unless it is in public.") from exc
    if rows[0][0] is None:
        raise PgmlError(f'relation "{relation}" does not exist', sqlstate=errors.UNDEFINED_TABLE,
                        hint="Name a table or view, schema-qualified unless it is in public.")
    fields = _fields(server, model, rows[0][0], key_column)
    # The estimator, read and unpickled here rather than in the worker: the worker then starts with
    # scikit-learn imported (as later batches of this connection do), and reads nothing through this
    # backend's own connection.
    model.load_estimator()
    release()
    # Read with the privileges of the role the statement runs as (current_user, after SET ROLE too).
    return isolation.run(_score_in_worker, server.dsn, backend.current_user(), rows[0][0], model, fields,
                         key_column is not None, memory_limit=training_budget(0), on_abandon=server.terminate,
                         task="batch scoring")


def _score_in_worker(dsn: str, role: str, relation: str, model: Model, fields: List[Tuple[FeatureColumn, str]],
                     keyed: bool) -> Scored:
    arrays = read_columns(dsn, role, relation, fields)
    data = {c.name: a for c, a in zip(model.columns, arrays)}
    keys = arrays[-1].tolist() if keyed else None
    if model.task == "decomposition":
        components = model.decompose_arrays(data)
        return keys, [(None, None, None)] * len(components), components
    return keys, model.predict_arrays(data), None


def as_rows(order: Sequence[str], constant: Mapping[str, Any], keys: Optional[List[Any]],
            predictions: List[Prediction],
            components: Optional[List[List[float]]] = None) -> Iterator[Tuple[Any, ...]]:
    """Rows of pgml.predictions as sequences in its column order (``order``), which Multicorn turns
    into tuples with no lookup by name: per row the prediction, label, probabilities, key and a
    decomposition's components; ``constant`` gives the columns that are the same in every row.

    Every column is filled, whether or not the query names it: a whole-row reference (``SELECT p``,
    ``to_jsonb(p)``) shows the wrapper no column names.
    """
    values, labels, probabilities = zip(*predictions) if predictions else ((), (), ())
    per_row: Dict[str, Iterable[Any]] = {
        "prediction": values,
        "label": labels,
        "probabilities": [None if p is None else json.dumps(p) for p in probabilities],
    }
    if keys is not None:
        per_row["key"] = keys
    if components is not None:
        per_row["components"] = components
    return zip(*(per_row[name] if name in per_row else repeat(constant.get(name)) for name in order))
