"""Reading a relation into numpy arrays, in bulk, with the training user's privileges.

One ``COPY (SELECT ...) TO STDOUT (FORMAT binary)`` reads every row. Numeric kinds are converted by
the database to float8 with NULL as NaN (see :func:`columns.load_expression`), so when no column is
text every row has the same width and the whole buffer becomes arrays through one
``numpy.frombuffer``: no Python object per value. Text columns take a per-row path.
"""
from __future__ import annotations

import struct
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import psycopg2
import psycopg2.errors
from psycopg2 import sql

from .columns import FeatureColumn, kind_of, load_expression
from .connection import ServerConnection, read_as
from .errors import PgmlError

_COLUMNS_SQL = """
SELECT a.attname, format_type(a.atttypid, a.atttypmod), base.typname, base.typcategory
FROM pg_attribute a
CROSS JOIN LATERAL (
    WITH RECURSIVE chain(oid, depth) AS (
        SELECT a.atttypid, 0
        UNION ALL
        SELECT t.typbasetype, chain.depth + 1 FROM chain JOIN pg_type t ON t.oid = chain.oid
        WHERE t.typtype = 'd'
    )
    SELECT t.typname, t.typcategory FROM chain JOIN pg_type t ON t.oid = chain.oid
    ORDER BY chain.depth DESC LIMIT 1
) base
WHERE a.attrelid = %s::regclass AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum
"""

_SIGNATURE = b"PGCOPY\n\xff\r\n\x00"


def relation_columns(server: ServerConnection, relation: str) -> List[Tuple[str, str, str, str]]:
    """(name, declared type, base type, type category) of each column of a relation, in order."""
    return [tuple(row) for row in server.fetch(_COLUMNS_SQL, (relation,))]  # type: ignore[misc]


def feature_columns(server: ServerConnection, relation: str, y_column: str) -> Tuple[FeatureColumn, List[FeatureColumn]]:
    """The y column and the feature columns (every other column) of a relation.

    Raises PgmlError when y_column is missing, when there is nothing else, or when a feature's
    type cannot be used.
    """
    described = relation_columns(server, relation)
    names = [name for name, *_ in described]
    if y_column not in names:
        raise PgmlError(
            f'column "{y_column}" does not exist in {relation}',
            hint=f"y_column names the column to predict; {relation} has: {', '.join(names)}.",
        )
    y = None
    features: List[FeatureColumn] = []
    for name, declared, base, category in described:
        kind = kind_of(base, category)
        if name == y_column:
            y = FeatureColumn(name, declared, kind or "unsupported", base)
            continue
        if kind is None:
            raise PgmlError(
                f'column "{name}" of {relation} has type {declared}, which cannot be a feature',
                hint="Leave it out of the view, or turn it into a number or text there "
                "(for instance a cast, or extract(epoch from ...)).",
            )
        features.append(FeatureColumn(name, declared, kind, base))
    assert y is not None
    if not features:
        raise PgmlError(
            f"{relation} has no feature columns besides {y_column}",
            hint="Every column of the relation except y_column is a feature: add at least one.",
        )
    return y, features


def read_columns(
    dsn: str,
    role: str,
    relation: str,
    fields: Sequence[Tuple[FeatureColumn, bool]],
    not_null: Optional[str] = None,
) -> List[np.ndarray]:
    """One array per field of every row of a relation (where ``not_null`` is not NULL), read as
    ``role`` (see :func:`connection.read_as`).

    A field is a column and whether to read it as text. Numbers become float64 arrays with NaN for
    NULL; text becomes object arrays of str with None for NULL.
    """
    select_sql = sql.SQL("SELECT {} FROM {}{}").format(
        sql.SQL(", ").join(
            sql.SQL(load_expression(_quote(c.name), "text" if as_text else c.kind, c.base_type)) for c, as_text in fields
        ),
        sql.SQL(relation),
        sql.SQL("") if not_null is None else sql.SQL(" WHERE {} IS NOT NULL").format(sql.Identifier(not_null)),
    )
    result_columns = sql.SQL(", ").join(
        sql.SQL("c{} {}").format(sql.SQL(str(i)), sql.SQL("text" if as_text else "float8"))
        for i, (_, as_text) in enumerate(fields)
    )
    sink = _Sink()
    try:
        with read_as(dsn, role, select_sql, result_columns) as (cur, query):
            cur.copy_expert(sql.SQL("COPY ({}) TO STDOUT (FORMAT binary)").format(query).as_string(cur), sink)
    except psycopg2.errors.InsufficientPrivilege as exc:
        raise PgmlError(f"{role} may not read {relation}: {exc.diag.message_primary}",
                        hint=f"Its owner can allow it: GRANT SELECT ON {relation} TO {role}.") from exc
    except psycopg2.Error as exc:
        raise PgmlError(f"reading {relation} failed: {exc.diag.message_primary or exc}",
                        hint=exc.diag.message_hint or "Check that the relation can be read with a plain SELECT.") from exc
    buffer, sink.buffer = sink.buffer, bytearray()
    return parse_binary_copy(buffer, [as_text for _, as_text in fields])


def read_training_data(
    dsn: str,
    role: str,
    relation: str,
    y: FeatureColumn,
    y_as_text: bool,
    features: Sequence[FeatureColumn],
) -> Tuple[Dict[str, np.ndarray], np.ndarray]:
    """Every row of the relation whose y is not NULL: feature arrays by name, and y."""
    fields = [(c, c.is_text) for c in features] + [(y, y_as_text)]
    arrays = read_columns(dsn, role, relation, fields, not_null=y.name)
    return {c.name: a for c, a in zip(features, arrays[:-1])}, arrays[-1]


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class _Sink:
    """The file psycopg2's copy_expert writes COPY data to: one growing buffer."""

    def __init__(self) -> None:
        self.buffer = bytearray()

    def write(self, chunk: bytes) -> int:
        self.buffer += chunk
        return len(chunk)


def _header_length(buffer: bytes) -> int:
    if bytes(buffer[:11]) != _SIGNATURE:
        raise ValueError("not a binary COPY stream")
    (extension,) = struct.unpack_from(">i", buffer, 15)
    return 19 + extension


def parse_binary_copy(buffer: bytes, text: Sequence[bool]) -> List[np.ndarray]:
    """Columns of a binary COPY stream whose fields are float8 (never NULL) or text.

    ``text[i]`` says whether field i is text (an object array, None for NULL) rather than float8.
    """
    start = _header_length(buffer)
    n = len(text)
    if not any(text):
        width = 2 + 12 * n
        rows = (len(buffer) - start - 2) // width
        layout = np.dtype([("count", ">i2")] + [item for i in range(n) for item in ((f"l{i}", ">i4"), (f"v{i}", ">f8"))])
        records = np.frombuffer(buffer, dtype=layout, count=rows, offset=start)
        return [records[f"v{i}"].astype(np.float64) for i in range(n)]
    return _parse_rows(memoryview(buffer), start, text)


def _parse_rows(view: memoryview, pos: int, text: Sequence[bool]) -> List[np.ndarray]:
    values: List[list] = [[] for _ in text]
    unpack_count, unpack_len, unpack_float = struct.Struct(">h").unpack_from, struct.Struct(">i").unpack_from, struct.Struct(">d").unpack_from
    kinds = list(enumerate(text))
    while True:
        (count,) = unpack_count(view, pos)
        pos += 2
        if count == -1:
            break
        for i, is_text in kinds:
            (length,) = unpack_len(view, pos)
            pos += 4
            if length < 0:
                values[i].append(None)
            elif is_text:
                values[i].append(str(view[pos:pos + length], "utf-8"))
                pos += length
            else:
                values[i].append(unpack_float(view, pos)[0])
                pos += 8
    arrays = []
    for column, is_text in zip(values, text):
        if is_text:
            array = np.empty(len(column), dtype=object)
            array[:] = column
        else:
            array = np.asarray(column, dtype=np.float64)
        arrays.append(array)
    return arrays
