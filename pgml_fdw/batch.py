"""Scoring a whole relation in one vectorized pass: ``WHERE model = ... AND relation = ...``."""
from __future__ import annotations

import json
import os
from typing import Any, Dict, Iterator, List, Optional, Tuple

from .columns import FeatureColumn
from .connection import ServerConnection
from .errors import PgmlError
from .loading import FLOAT, INTEGER, TEXT, read_columns, relation_columns
from .model import Model


def session_role(server: ServerConnection) -> str:
    """The login role of this backend's session: a scan cannot see current_user, so the batch
    form reads with the privileges of the role that logged in."""
    rows = server.fetch("SELECT usename FROM pg_stat_activity WHERE pid = %s", (os.getpid(),))
    if not rows or rows[0][0] is None:
        raise PgmlError("pgml_fdw cannot tell which role this session belongs to",
                        hint="Score the rows one by one through a LATERAL join instead.")
    return rows[0][0]


def _fields(server: ServerConnection, model: Model, relation: str, key_column: Optional[str]) -> List[Tuple[FeatureColumn, str]]:
    """The columns to read and their wire types: the model's features, then the key column, if
    any. Integer keys travel as int8 (the all-numbers fast path of :func:`loading.parse_binary_copy`),
    any other key as text."""
    types = {name: base for name, _, base, _ in relation_columns(server, relation)}
    missing = [c.name for c in model.columns if c.name not in types]
    if missing:
        raise PgmlError(f"{relation} lacks the features {', '.join(missing)} of model {model.model_id}",
                        hint="Score a relation with the same columns as the one the model was trained on.")
    fields = [(c, TEXT if c.is_text else FLOAT) for c in model.columns]
    if key_column is not None:
        if key_column not in types:
            raise PgmlError(f'column "{key_column}" does not exist in {relation}',
                            hint=f"key_column names the column returned as key; {relation} has: {', '.join(types)}.")
        wire = INTEGER if types[key_column] in ("int2", "int4", "int8") else TEXT
        fields.append((FeatureColumn(key_column, wire, wire, types[key_column]), wire))
    return fields


def score_relation(server: ServerConnection, dsn: str, model: Model, ref: str, relation: str,
                   key_column: Optional[str]) -> Iterator[Dict[str, Any]]:
    """One row per row of the relation: its prediction and, if asked, its key_column as ``key``."""
    rows = server.fetch("SELECT to_regclass(%s)::text", (relation,))
    if rows[0][0] is None:
        raise PgmlError(f'relation "{relation}" does not exist',
                        hint="Name a table or view, schema-qualified unless it is in public.")
    fields = _fields(server, model, rows[0][0], key_column)
    arrays = read_columns(dsn, session_role(server), rows[0][0], fields)
    data = {c.name: a for c, a in zip(model.columns, arrays)}
    keys = arrays[-1] if key_column is not None else None
    for i, (prediction, label, probabilities) in enumerate(model.predict_arrays(data)):
        yield {
            "model": ref, "relation": relation, "key_column": key_column,
            "key": None if keys is None else keys[i],
            "prediction": prediction, "label": label,
            "probabilities": None if probabilities is None else json.dumps(probabilities),
            "version": model.version,
        }
