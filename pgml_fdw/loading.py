"""Reading a relation into numpy arrays, in bulk, with the training user's privileges.

One ``COPY (SELECT ...) TO STDOUT (FORMAT binary)`` reads every row. Numeric kinds are converted by
the database to float8 with NULL as NaN (see :func:`columns.load_expression`), so when no column is
text every row has the same width and the buffer becomes arrays in one vectorized pass, in place:
no Python object per value, no second copy. Text columns take a per-row path.
"""
from __future__ import annotations

import ctypes
import mmap
import struct
import sys
from collections import Counter
from contextlib import contextmanager
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import psycopg2
import psycopg2.errors
from psycopg2 import sql

from .columns import FeatureColumn, array_elements, identifier, kind_of, load_expression
from .connection import ServerConnection, read_as
from . import errors
from .errors import PgmlError

# Each column's name, declared type, base type (domains resolved) and its category and, for an array,
# its element type: declared, base and category.
_COLUMNS_SQL = """
SELECT a.attname, format_type(a.atttypid, a.atttypmod), base.typname, base.typcategory,
       format_type(base.typelem, NULL), element.typname, element.typcategory
FROM pg_attribute a
CROSS JOIN LATERAL (
    WITH RECURSIVE chain(oid, depth) AS (
        SELECT a.atttypid, 0
        UNION ALL
        SELECT t.typbasetype, chain.depth + 1 FROM chain JOIN pg_type t ON t.oid = chain.oid
        WHERE t.typtype = 'd'
    )
    SELECT t.typname, t.typcategory, t.typelem FROM chain JOIN pg_type t ON t.oid = chain.oid
    ORDER BY chain.depth DESC LIMIT 1
) base
LEFT JOIN LATERAL (
    WITH RECURSIVE chain(oid, depth) AS (
        SELECT base.typelem, 0
        UNION ALL
        SELECT t.typbasetype, chain.depth + 1 FROM chain JOIN pg_type t ON t.oid = chain.oid
        WHERE t.typtype = 'd'
    )
    SELECT t.typname, t.typcategory FROM chain JOIN pg_type t ON t.oid = chain.oid
    ORDER BY chain.depth DESC LIMIT 1
) element ON base.typcategory = 'A'
WHERE a.attrelid = %s::regclass AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum
"""

_SIGNATURE = b"PGCOPY\n\xff\r\n\x00"
_LIBC = ctypes.CDLL(None)
_MADV_DONTNEED = 4  # Linux: the pages read as zeros next time, and leave the resident set now

# The types a field is read as (its SQL type in the COPY): a number as float8 (NULL as NaN), an
# integer key as int8, anything else as text.
FLOAT, INTEGER, TEXT = "float8", "int8", "text"
_BLOCK_ROWS = 16384


class RelationColumn:
    """A column of a relation as the catalog describes it: its name, declared type, base type
    (domains resolved) and type category and, for an array, its element type (declared, base and
    category; else None)."""

    def __init__(self, name: str, declared: str, base: str, category: str, element_type: Optional[str] = None,
                 element_base: Optional[str] = None, element_category: Optional[str] = None) -> None:
        self.name = name
        self.declared = declared
        self.base = base
        self.category = category
        self.element_type = element_type
        self.element_base = element_base
        self.element_category = element_category

    @property
    def is_array(self) -> bool:
        return self.category == "A" and self.element_base is not None


class ArrayColumn:
    """An array column of the training relation, before the width of its arrays is known
    (:func:`expand_arrays`): its name, declared type, and its elements' type, kind and base type."""

    def __init__(self, name: str, sql_type: str, element_type: str, kind: str, base_type: str) -> None:
        self.name = name
        self.sql_type = sql_type
        self.element_type = element_type
        self.kind = kind
        self.base_type = base_type

    def elements(self, width: int) -> List[FeatureColumn]:
        """Its features when its arrays have ``width`` elements."""
        return array_elements(self.name, self.element_type, self.kind, self.base_type, width)


def relation_columns(server: ServerConnection, relation: str) -> List[RelationColumn]:
    """Each column of a relation, in order."""
    return [RelationColumn(*row) for row in server.fetch(_COLUMNS_SQL, (relation,))]


def estimated_rows(server: ServerConnection, relation: str) -> float:
    """The catalog's estimate of a table's rows (pg_class.reltuples); 0 for a view or when it
    cannot tell. Never the planner's: planning a view runs code its owner wrote (constant-folded
    functions), and this connection is privileged."""
    rows = server.fetch("SELECT c.reltuples FROM pg_class c "
                        "WHERE c.oid = to_regclass(%s) AND c.relkind IN ('r', 'm', 'p')", (relation,))
    return float(rows[0][0]) if rows and rows[0][0] is not None and rows[0][0] > 0 else 0.0


def feature_columns(server: ServerConnection, relation: str,
                    y_column: Optional[str]) -> Tuple[Optional[FeatureColumn], List[Union[FeatureColumn, ArrayColumn]]]:
    """The y column and the feature columns (every other column) of a relation: an array column
    as an :class:`ArrayColumn`, which :func:`expand_arrays` turns into its elements. Without a
    y_column (clustering, decomposition), None and every column.

    Raises PgmlError when y_column is missing, when there is nothing else, or when a feature's
    type cannot be used.
    """
    described = relation_columns(server, relation)
    names = [c.name for c in described]
    if y_column is not None and y_column not in names:
        raise PgmlError(
            f'column "{y_column}" does not exist in {relation}',
            hint=f"y_column names the column to predict; {relation} has: {', '.join(names)}.",
            sqlstate=errors.UNDEFINED_COLUMN,
        )
    y = None
    features: List[Union[FeatureColumn, ArrayColumn]] = []
    for c in described:
        kind = kind_of(c.base, c.category)
        if c.name == y_column:
            y = FeatureColumn(c.name, c.declared, kind or "unsupported", c.base)
            continue
        if c.is_array:
            features.append(_array_column(c, relation))
            continue
        if kind is None:
            raise PgmlError(
                f'column "{c.name}" of {relation} has type {c.declared}, which cannot be a feature',
                hint="Leave it out of the view, or turn it into a number or text there "
                "(for instance a cast, or extract(epoch from ...)).", sqlstate=errors.DATATYPE_MISMATCH,
            )
        features.append(FeatureColumn(c.name, c.declared, kind, c.base))
    if not features:
        raise PgmlError(
            f"{relation} has no feature columns besides {y_column}" if y_column else f"{relation} has no columns",
            hint="Every column of the relation except y_column is a feature: add at least one.",
        )
    return y, features


def _array_column(c: RelationColumn, relation: str) -> ArrayColumn:
    """An array column as features: its elements must be of a kind other than text."""
    assert c.element_base is not None and c.element_type is not None
    kind = kind_of(c.element_base, c.element_category or "")
    if kind is None or kind == "text":
        raise PgmlError(
            f'column "{c.name}" of {relation} has type {c.declared}, which cannot be a feature',
            hint="Arrays of numbers, booleans, intervals, dates and times are features, one per element; "
            "leave this one out of the view, or turn its elements into columns there.",
            sqlstate=errors.DATATYPE_MISMATCH,
        )
    return ArrayColumn(c.name, c.declared, c.element_type, kind, c.element_base)


def expand_arrays(dsn: str, role: str, relation: str, not_null: Optional[str],
                  columns: Sequence[Union[FeatureColumn, ArrayColumn]]) -> List[FeatureColumn]:
    """The features of the columns: an array column's elements, as many as its first non-NULL array
    (of the rows where ``not_null`` is not NULL) has, read as ``role``. :func:`read_columns` then
    checks that every array has that many.

    Raises PgmlError when an array column is NULL (or empty) in every row, or a feature name is
    taken twice (a column named like another's element)."""
    arrays = [c for c in columns if isinstance(c, ArrayColumn)]
    if not arrays:
        return [c for c in columns if isinstance(c, FeatureColumn)]
    condition = sql.SQL("") if not_null is None else sql.SQL(" AND {} IS NOT NULL").format(sql.Identifier(not_null))
    select_sql = sql.SQL("SELECT {}").format(sql.SQL(", ").join(
        sql.SQL("(SELECT cardinality({c}) FROM {r} WHERE cardinality({c}) > 0{w} LIMIT 1)").format(
            c=sql.Identifier(a.name), r=sql.SQL(relation), w=condition) for a in arrays))
    result_columns = sql.SQL(", ").join(sql.SQL("c{} integer").format(sql.SQL(str(i))) for i in range(len(arrays)))
    with _reading(relation, role):
        with read_as(dsn, role, select_sql, result_columns) as (cur, query):
            cur.execute(query)
            widths = dict(zip((a.name for a in arrays), cur.fetchone()))
    features: List[FeatureColumn] = []
    for c in columns:
        if isinstance(c, FeatureColumn):
            features.append(c)
            continue
        width = widths[c.name]
        if not width:
            raise PgmlError(f'array column "{c.name}" is NULL or empty in every row of {relation}',
                            hint="Its elements are the features: leave it out of the view, or fill it.",
                            sqlstate=errors.DATA_EXCEPTION)
        features.extend(c.elements(width))
    taken = [name for name, n in Counter(f.name for f in features).items() if n > 1]
    if taken:
        raise PgmlError(f"{relation} has a column named like an array element: {', '.join(taken)}",
                        hint="An array column's elements are the features column[1], column[2]...: "
                        "rename the other column in the view.", sqlstate=errors.DATATYPE_MISMATCH)
    return features


def read_columns(
    dsn: str,
    role: str,
    relation: str,
    fields: Sequence[Tuple[FeatureColumn, str]],
    not_null: Optional[str] = None,
) -> List[np.ndarray]:
    """One array per field of every row of a relation (where ``not_null`` is not NULL), read as
    ``role`` (see :func:`connection.read_as`).

    A field is a feature and the wire type to read it as (:data:`FLOAT`, :data:`INTEGER` or
    :data:`TEXT`); see :func:`parse_binary_copy` for the arrays each gives. When features are the
    elements of an array column, its arrays are checked to be flat and as many elements long as
    there are such features (:func:`check_array_shapes`): a float8 field more per array column,
    which keeps every field 8 bytes wide.
    """
    shapes = array_shapes(fields)
    read: List[Tuple[Union[FeatureColumn, ArrayShape], str]] = [*fields, *((shape, FLOAT) for shape in shapes)]
    select_sql = sql.SQL("SELECT {} FROM {}{}").format(
        sql.SQL(", ").join(sql.SQL(_wire_expression(c, wire)) for c, wire in read),
        sql.SQL(relation),
        sql.SQL("") if not_null is None else sql.SQL(" WHERE {} IS NOT NULL").format(sql.Identifier(not_null)),
    )
    result_columns = sql.SQL(", ").join(
        sql.SQL("c{} {}").format(sql.SQL(str(i)), sql.SQL(wire)) for i, (_, wire) in enumerate(read)
    )
    sink = _Sink()
    with _reading(relation, role):
        with read_as(dsn, role, select_sql, result_columns) as (cur, query):
            cur.copy_expert(sql.SQL("COPY ({}) TO STDOUT (FORMAT binary)").format(query).as_string(cur), sink)
    buffer, sink.buffer = sink.buffer, bytearray()
    arrays = parse_binary_copy(buffer, [wire for _, wire in read])
    for shape, found in zip(shapes, arrays[len(fields):]):
        check_array_shapes(shape, found, relation)
    return arrays[:len(fields)]


@contextmanager
def _reading(relation: str, role: str) -> Iterator[None]:
    """The errors of reading a relation as a role, as the user's errors."""
    try:
        yield
    except psycopg2.errors.LockNotAvailable as exc:
        raise PgmlError(f"reading {relation} waited too long for a lock: {exc.diag.message_primary}",
                        sqlstate=errors.LOCK_NOT_AVAILABLE,
                        hint="A transaction that has not committed holds it: yours, if it locked or altered "
                        f"{relation}. Commit it first, or train and score outside it.") from exc
    except psycopg2.errors.InsufficientPrivilege as exc:
        raise PgmlError(f"{role} may not read {relation}: {exc.diag.message_primary}",
                        hint=f"Its owner can allow it: GRANT SELECT ON {relation} TO {role}.",
                        sqlstate=errors.INSUFFICIENT_PRIVILEGE) from exc
    except psycopg2.Error as exc:
        raise PgmlError(f"reading {relation} failed: {exc.diag.message_primary or exc}",
                        hint=exc.diag.message_hint or "Check that the relation can be read with a plain SELECT.",
                        sqlstate=exc.pgcode or errors.DATA_EXCEPTION) from exc


class ArrayShape:
    """A field that reads the shape of an array column's arrays: the number of elements of a flat
    array (one dimension, subscripts from 1; 0 when empty), -1 for any other, NaN for NULL. ``width``
    is the number of elements every array must have."""

    def __init__(self, column: str, width: int) -> None:
        self.column = column
        self.width = width

    def expression(self) -> str:
        c = identifier(self.column)
        return (f"coalesce((CASE WHEN {c} IS NULL THEN NULL WHEN cardinality({c}) = 0 THEN 0 "
                f"WHEN array_ndims({c}) = 1 AND array_lower({c}, 1) = 1 THEN cardinality({c}) ELSE -1 END)::float8, "
                "'NaN'::float8)")


def array_shapes(fields: Sequence[Tuple[FeatureColumn, str]]) -> List[ArrayShape]:
    """The array columns whose elements are among the fields, each with its number of elements."""
    widths = Counter(c.array[0] for c, _ in fields if c.array is not None)
    return [ArrayShape(column, width) for column, width in widths.items()]


def check_array_shapes(shape: ArrayShape, found: np.ndarray, relation: str) -> None:
    """Refuses arrays of a column (their shapes, as :class:`ArrayShape` reads them) that are not
    flat or do not have ``shape.width`` elements: their elements would be read as other features,
    or as NULL."""
    bad = found[~np.isnan(found) & (found != shape.width)]
    if bad.size == 0:
        return
    flat = bad[bad >= 0]
    if flat.size < bad.size:
        raise PgmlError(
            f'array column "{shape.column}" has arrays that are not flat (one dimension, subscripts from 1) '
            f"in {bad.size - flat.size:,} row(s) of {relation}", sqlstate=errors.DATA_EXCEPTION,
            hint=f"Flatten them in the view: ARRAY(SELECT unnest({identifier(shape.column)})) "
            f"AS {identifier(shape.column)}.")
    lengths, counts = np.unique(flat, return_counts=True)
    found_text = ", ".join(f"{int(n):,} array(s) of {int(length):,}" for length, n in zip(lengths, counts))
    raise PgmlError(
        f'array column "{shape.column}" must hold arrays of {shape.width:,} elements, and {relation} has '
        f"arrays of other lengths: {found_text} element(s)", sqlstate=errors.DATA_EXCEPTION,
        hint="Each element is a feature of its own, so every array needs as many (a NULL element, or a NULL "
        "array, is imputed): pad or cut them in the view, or leave those rows out.")


def read_training_data(
    dsn: str,
    role: str,
    relation: str,
    y: Optional[FeatureColumn],
    y_as_text: bool,
    features: Sequence[FeatureColumn],
) -> Tuple[Dict[str, np.ndarray], Optional[np.ndarray]]:
    """Every row of the relation whose y is not NULL: feature arrays by name, and y; without a y
    (clustering, decomposition), every row and None."""
    fields = [feature_field(c) for c in features]
    if y is None:
        return dict(zip((c.name for c in features), read_columns(dsn, role, relation, fields))), None
    fields.append((y, TEXT if y_as_text else FLOAT))
    arrays = read_columns(dsn, role, relation, fields, not_null=y.name)
    return {c.name: a for c, a in zip(features, arrays[:-1])}, arrays[-1]


def feature_field(column: FeatureColumn) -> Tuple[FeatureColumn, str]:
    """A feature column as a field of :func:`read_columns`: text kinds as text, the rest as float8."""
    return column, TEXT if column.is_text else FLOAT


def _wire_expression(column: Union[FeatureColumn, ArrayShape], wire: str) -> str:
    if isinstance(column, ArrayShape):
        return column.expression()
    reference = column.reference()
    if wire == FLOAT:
        return load_expression(reference, column.kind, column.base_type)
    return f"({reference})::{wire}"


class _Sink:
    """The file psycopg2's copy_expert writes COPY data to: one growing buffer."""

    def __init__(self) -> None:
        self.buffer = bytearray()

    def write(self, chunk: bytes) -> int:
        self.buffer += chunk
        return len(chunk)


def _header_length(buffer: Union[bytes, bytearray]) -> int:
    if bytes(buffer[:11]) != _SIGNATURE:
        raise ValueError("not a binary COPY stream")
    (extension,) = struct.unpack_from(">i", buffer, 15)
    return 19 + extension


def parse_binary_copy(buffer: Union[bytes, bytearray], wires: Sequence[str]) -> List[np.ndarray]:
    """Columns of a binary COPY stream whose fields have the given wire types.

    A :data:`FLOAT` field (never NULL: the loader sends NULL as NaN) gives a float64 array; an
    :data:`INTEGER` field an int64 array, or an object array with None where it is NULL; a
    :data:`TEXT` field an object array of str with None for NULL.

    When every field is 8 bytes wide, every row has the same layout and the stream is converted in
    one vectorized pass, in place: the columns are then views into the buffer (a bytearray is used
    as it is; anything else is copied first). Otherwise each row is walked in Python.
    """
    start = _header_length(buffer)
    if TEXT not in wires:
        if not isinstance(buffer, bytearray):
            buffer = bytearray(buffer)
        matrix = _parse_fixed(buffer, start, len(wires))
        if matrix is not None:
            return [matrix[:, i].view(np.int64 if wire == INTEGER else np.float64) for i, wire in enumerate(wires)]
    return _parse_rows(memoryview(buffer), start, wires)


def _parse_fixed(buffer: bytearray, start: int, n: int) -> Optional[np.ndarray]:
    """The 8-byte values of a stream whose rows are all n fields of 8 bytes, as a (rows, n) array
    of native-endian uint64 written over the start of the buffer, which is then cut to it; None if
    any field is NULL.

    A row is a 2-byte field count then, per field, a 4-byte length and 8 bytes of big-endian value.
    Row r of the result ends at byte 8n(r + 1), before row r + 1 of the stream begins, so converting
    block by block in row order never overwrites a row not yet read, and needs no second matrix.
    """
    width = 2 + 12 * n
    rows, trailing = divmod(len(buffer) - start - 2, width)
    if trailing:
        return None
    if rows == 0:
        return np.empty((0, n), dtype=np.uint64)
    counts = np.ndarray((rows,), dtype=">u2", buffer=buffer, offset=start, strides=(width,))
    lengths = np.ndarray((rows, n), dtype=">u4", buffer=buffer, offset=start + 2, strides=(width, 12))
    if not (np.all(counts == n) and np.all(lengths == 8)):
        return None
    values = np.ndarray((rows, n, 8), dtype=np.uint8, buffer=buffer, offset=start + 6, strides=(width, 12, 1))
    if sys.byteorder == "little":
        values = values[:, :, ::-1]
    out = np.ndarray((rows, n, 8), dtype=np.uint8, buffer=buffer)
    for first in range(0, rows, _BLOCK_ROWS):
        block = np.ascontiguousarray(values[first:first + _BLOCK_ROWS])  # read before overwritten
        out[first:first + _BLOCK_ROWS] = block
    # Only the matrix is kept: the rest of the stream goes, and its memory with it (the views
    # into the buffer must go first, or it cannot shrink).
    del counts, lengths, values, out, block
    del buffer[rows * n * 8:]
    _release_tail(buffer)
    return np.frombuffer(buffer, dtype=np.uint64).reshape(rows, n)


def _release_tail(buffer: bytearray) -> None:
    """Gives the kernel back the pages past a bytearray's end. CPython keeps the whole allocation
    of a bytearray cut by less than half, and a COPY stream is a third longer than its matrix: the
    pages past the matrix stay resident, and whatever the training makes next comes on top."""
    page = mmap.PAGESIZE
    view = ctypes.c_char.from_buffer(buffer)  # released below: a bytearray with exports cannot resize
    base = ctypes.addressof(view)
    del view
    start = (base + len(buffer) + 1 + page - 1) // page * page  # after the trailing NUL byte
    end = (base + buffer.__alloc__()) // page * page
    if end > start:
        _LIBC.madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start), _MADV_DONTNEED)


def _parse_rows(view: memoryview, pos: int, wires: Sequence[str]) -> List[np.ndarray]:
    values: List[list] = [[] for _ in wires]
    unpack_count, unpack_len = struct.Struct(">h").unpack_from, struct.Struct(">i").unpack_from
    unpack = {FLOAT: struct.Struct(">d").unpack_from, INTEGER: struct.Struct(">q").unpack_from}
    # Text has no unpacker: its bytes are decoded as they are.
    kinds = [(i, unpack.get(wire)) for i, wire in enumerate(wires)]
    while True:
        (count,) = unpack_count(view, pos)
        pos += 2
        if count == -1:
            break
        for i, unpack_value in kinds:
            (length,) = unpack_len(view, pos)
            pos += 4
            if length < 0:
                values[i].append(None)
            elif unpack_value is None:
                values[i].append(str(view[pos:pos + length], "utf-8"))
            else:
                values[i].append(unpack_value(view, pos)[0])
            pos += max(length, 0)
    arrays = []
    for column, wire in zip(values, wires):
        if wire == FLOAT:
            arrays.append(np.asarray(column, dtype=np.float64))
        elif wire == INTEGER and None not in column:
            arrays.append(np.asarray(column, dtype=np.int64))
        else:
            array = np.empty(len(column), dtype=object)
            array[:] = column
            arrays.append(array)
    return arrays
