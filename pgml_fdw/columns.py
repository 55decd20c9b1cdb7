"""PostgreSQL column types as model features.

A feature column has a *kind* that says how its values become numbers:

===========  ==========================================  ================================
kind         PostgreSQL types                            as a number
===========  ==========================================  ================================
number       integers, floats, numeric, money            itself
boolean      boolean                                     1.0 or 0.0
interval     interval                                    seconds (``extract(epoch ...)``)
date         date                                        seconds since 1970-01-01
timestamp    timestamp, timestamptz                      seconds since 1970-01-01 UTC
time         time, timetz                                seconds since midnight
text         text, varchar, char, name, enums            a category (encoded later)
===========  ==========================================  ================================

An array column of any of these kinds but text (``smallint[]``, ``float8[]``, ``boolean[]``...) is
as many features as its arrays have elements, named ``column[1]``, ``column[2]``... after
PostgreSQL's subscripts: every array of the column must be flat (one dimension, subscripts from 1)
and have that many elements; a NULL array, like a NULL element, is a NULL of each of its features.

Training reads every column through :func:`load_expression`, so the database does the conversion;
scoring converts the JSON values a query gives with :func:`to_number`, which agrees with it.
"""
from __future__ import annotations

import math
import re
import reprlib
import struct
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .errors import PgmlError

KINDS = ("number", "boolean", "interval", "date", "timestamp", "time", "text")

# The kinds of the built-in types, by their base type's name; other types are told by category.
_BY_TYPE = {
    "bool": "boolean",
    "interval": "interval",
    "date": "date",
    "timestamp": "timestamp",
    "timestamptz": "timestamp",
    "time": "time",
    "timetz": "time",
    "money": "number",
    "oid": "number",
    "bpchar": "text",
    "varchar": "text",
    "text": "text",
    "name": "text",
    "citext": "text",
}
_BY_CATEGORY = {"N": "number", "E": "text", "S": "text"}


class FeatureColumn:
    """A feature of the training relation: its name, its declared type, its kind and its base type
    (the declared type with domains resolved). A feature is a column, or one element of an array
    column: then ``array`` is (the column's name, the element's subscript, from 1), the name is
    ``column[subscript]`` and the types are the element's. A plain class, not a dataclass: serving
    a model loads this module, and a new connection should not pay for importing dataclasses."""

    # Also what a FeatureColumn pickled by pgml_fdw 0.2 (a whole model pickled) reads as.
    array: Optional[Tuple[str, int]] = None

    def __init__(self, name: str, sql_type: str, kind: str, base_type: str = "",
                 array: Optional[Sequence[Any]] = None) -> None:
        self.name = name
        self.sql_type = sql_type
        self.kind = kind
        self.base_type = base_type
        self.array: Optional[Tuple[str, int]] = None if array is None else (str(array[0]), int(array[1]))

    def _fields(self) -> tuple:
        return (self.name, self.sql_type, self.kind, self.base_type, self.array)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, FeatureColumn) and self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash(self._fields())

    def __repr__(self) -> str:
        return "FeatureColumn(name={!r}, sql_type={!r}, kind={!r}, base_type={!r}, array={!r})".format(
            *self._fields())

    @property
    def is_text(self) -> bool:
        return self.kind == "text"

    @property
    def column(self) -> str:
        """The relation's column this feature is read from: its own name, or its array's."""
        return self.name if self.array is None else self.array[0]

    def reference(self) -> str:
        """The SQL expression that reads this feature from a row of the relation: the quoted
        column, or its element (``("image")[3]``)."""
        quoted = identifier(self.column)
        return quoted if self.array is None else f"({quoted})[{self.array[1]}]"

    def to_data(self) -> List[Any]:
        """The feature as plain JSON data (model_format stores it so); ``FeatureColumn(*data)``
        makes it again. A scalar column's data is what pgml_fdw 0.4 stored."""
        data: List[Any] = [self.name, self.sql_type, self.kind, self.base_type]
        return data if self.array is None else data + [list(self.array)]


def identifier(name: str) -> str:
    """A column name quoted as a SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


def element_name(column: str, subscript: int) -> str:
    """The feature name of an array column's element: ``image[3]``."""
    return f"{column}[{subscript}]"


def array_elements(name: str, element_type: str, kind: str, base_type: str, width: int) -> List[FeatureColumn]:
    """The features of an array column whose arrays have ``width`` elements of the given type."""
    return [FeatureColumn(element_name(name, k), element_type, kind, base_type, (name, k)) for k in range(1, width + 1)]


def expand_preprocess(options: Any, features: Sequence[FeatureColumn]) -> Any:
    """The ``preprocess`` option with an array column's entry given to each of its elements (an
    element's own entry, ``"image[3]": {...}``, wins). Anything but an object is returned as it is,
    for the preprocessing to refuse."""
    if not isinstance(options, dict):
        return options
    names = {f.name for f in features}
    elements: Dict[str, List[str]] = {}
    for f in features:
        if f.array is not None:
            elements.setdefault(f.array[0], []).append(f.name)
    expanded: Dict[str, Any] = {}
    for key, value in options.items():
        if key in elements and key not in names:
            for element in elements[key]:
                expanded.setdefault(element, value)
        else:
            expanded[key] = value
    expanded.update((k, v) for k, v in options.items() if k in names)
    return expanded


class ArraySource:
    """An array column and where its elements are among a model's features: ``first`` is the
    position of element 1, ``width`` the number of elements."""

    def __init__(self, name: str, first: int, width: int) -> None:
        self.name = name
        self.first = first
        self.width = width


def array_sources(features: Sequence[FeatureColumn]) -> List[ArraySource]:
    """The array columns among a model's features, in order (their elements are consecutive)."""
    sources: List[ArraySource] = []
    for position, feature in enumerate(features):
        if feature.array is None:
            continue
        if sources and sources[-1].name == feature.array[0]:
            sources[-1].width += 1
        else:
            sources.append(ArraySource(feature.array[0], position, 1))
    return sources


def kind_of(base_type: str, category: str) -> Optional[str]:
    """The kind of a column whose base type (domains resolved) and type category are given.

    None means the type cannot be a feature by itself (json, arrays, geometric types, ...): an
    array column is its elements, each of its element type's kind (see :mod:`loading`).
    """
    return _BY_TYPE.get(base_type) or _BY_CATEGORY.get(category)


def load_expression(quoted: str, kind: str, base_type: str) -> str:
    """The SQL expression that reads a column of this kind as the training loader wants it.

    Numbers come back as float8 with NULL as NaN, so every numeric field is 8 bytes wide in a
    binary COPY; text comes back as text, NULL included.
    """
    if kind == "text":
        return f"({quoted})::text"
    if kind == "boolean":
        value = f"({quoted})::int::float8"
    elif kind in ("interval", "date", "timestamp", "time"):
        value = f"extract(epoch from {quoted})::float8"
    elif base_type in ("money", "oid"):
        value = f"({quoted})::numeric::float8" if base_type == "money" else f"({quoted})::bigint::float8"
    else:
        value = f"({quoted})::float8"
    return f"coalesce({value}, 'NaN'::float8)"


# PostgreSQL's interval output ("postgres" style) and the ISO 8601 form (P1Y2M3DT4H5M6S).
_INTERVAL_PART = re.compile(
    r"([+-]?\d+(?:\.\d+)?)\s*(years?|months?|mons?|weeks?|days?|hours?|minutes?|mins?|seconds?|secs?)",
    re.IGNORECASE,
)
_INTERVAL_CLOCK = re.compile(r"([+-])?(\d+):(\d{2})(?::(\d{2}(?:\.\d+)?))?")
_ISO_INTERVAL = re.compile(
    r"^(-)?P(?:(\d+(?:\.\d+)?)Y)?(?:(\d+(?:\.\d+)?)M)?(?:(\d+(?:\.\d+)?)W)?(?:(\d+(?:\.\d+)?)D)?"
    r"(?:T(?:(\d+(?:\.\d+)?)H)?(?:(\d+(?:\.\d+)?)M)?(?:(\d+(?:\.\d+)?)S)?)?$"
)
# extract(epoch from interval) counts a year as 365.25 days and a month as 30 days.
_SECONDS = {"y": 365.25 * 86400, "mo": 30 * 86400, "w": 7 * 86400, "d": 86400, "h": 3600, "mi": 60, "s": 1}


def _unit_seconds(unit: str) -> float:
    unit = unit.lower()
    for prefix in ("mo", "mi", "y", "w", "d", "h", "s"):
        if unit.startswith(prefix):
            return _SECONDS[prefix]
    raise ValueError(unit)


def interval_seconds(text: str) -> float:
    """Seconds in an interval written as PostgreSQL prints it ('1 year 2 mons 3 days 04:05:06'),
    as it accepts it ('2 years', '90 minutes ago') or in ISO 8601 ('P1DT2H'); as extract(epoch ...)."""
    s = text.strip()
    iso = _ISO_INTERVAL.match(s)
    if iso and s != "P":
        sign = -1.0 if iso.group(1) else 1.0
        units = ("y", "mo", "w", "d", "h", "mi", "s")
        return sign * sum(float(v) * _SECONDS[u] for v, u in zip(iso.groups()[1:], units) if v)
    ago = s.endswith(" ago")
    rest = s[: -len(" ago")] if ago else s
    total = sum(float(number) * _unit_seconds(unit) for number, unit in _INTERVAL_PART.findall(rest))
    rest = _INTERVAL_PART.sub("", rest)
    clock = _INTERVAL_CLOCK.search(rest)
    if clock:
        sign = -1.0 if clock.group(1) == "-" else 1.0
        total += sign * (int(clock.group(2)) * 3600 + int(clock.group(3)) * 60 + float(clock.group(4) or 0))
        rest = rest[: clock.start()] + rest[clock.end():]
    if rest.strip() or not s:
        raise ValueError(text)
    return -total if ago else total


def _iso(text: str) -> str:
    """Normalizes ISO timestamps for Python 3.9's fromisoformat (which wants 6 fractional digits)."""
    s = text.strip().replace(" ", "T", 1)
    if s.endswith("Z"):
        s = s[:-1] + "+00:00"
    s = re.sub(r"([+-]\d{2})$", r"\1:00", s)
    return re.sub(r"\.(\d{1,6})\d*", lambda m: "." + m.group(1).ljust(6, "0"), s)


def _epoch(value: str, kind: str) -> float:
    import datetime as dt  # here: most models take no dates, and a connection's first prediction is timed

    if kind == "date":
        day = dt.date.fromisoformat(value.strip())
        return float((day - dt.date(1970, 1, 1)).days * 86400)
    if kind == "time":
        t = dt.time.fromisoformat(_iso(value).split("+")[0])
        return t.hour * 3600 + t.minute * 60 + t.second + t.microsecond / 1e6
    stamp = dt.datetime.fromisoformat(_iso(value))
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=dt.timezone.utc)
    return stamp.timestamp()


def to_number(value: Any, column: FeatureColumn) -> float:
    """A JSON feature value as the number training saw for this column; NaN for null.

    Raises PgmlError, naming the column and what it expects, for a value of the wrong type, or one
    that is not finite (NaN and infinity are no values to score).
    """
    if value is None:
        return math.nan
    number = _number(value, column.kind)
    if number is not None and math.isfinite(number):
        if column.base_type == "float4":
            try:
                return as_real(number)
            except OverflowError:
                pass  # beyond real's range: PostgreSQL would refuse it too
        else:
            return number
    raise PgmlError(
        f"feature \"{column.name}\" ({column.sql_type}) cannot take the value {reprlib.repr(value)}",
        hint=_EXPECTED[column.kind],
    )


def _number(value: Any, kind: str) -> Optional[float]:
    """The number a JSON value stands for in a column of this kind, or None if it stands for none."""
    try:
        if isinstance(value, bool):
            if kind in ("boolean", "number"):
                return 1.0 if value else 0.0
        elif isinstance(value, (int, float)):
            return float(value)
        elif isinstance(value, str):
            if kind == "boolean" and value.lower() in ("true", "t", "false", "f"):
                return 1.0 if value.lower() in ("true", "t") else 0.0
            if kind == "number":
                return float(value)
            if kind == "interval":
                return interval_seconds(value)
            if kind in ("date", "timestamp", "time"):
                return _epoch(value, kind)
    except (ValueError, OverflowError):  # OverflowError: an integer beyond float range
        pass
    return None


_REAL = struct.Struct("f")


def as_real(number: float) -> float:
    """A number as a real (float4) column holds it: rounded to single precision, then read as
    float8, which is what training read from the column. ``0.1`` in JSON is 0.1 in double
    precision, while the real column held 0.10000000149011612. Raises OverflowError for a finite
    number beyond real's range, which PostgreSQL refuses too."""
    rounded: float = _REAL.unpack(_REAL.pack(number))[0]
    if math.isinf(rounded) and not math.isinf(number):
        raise OverflowError(f"{number!r} is out of range for type real")
    return rounded


_EXPECTED = {
    "number": "Give a number.",
    "boolean": "Give true or false.",
    "interval": "Give an interval as text, such as '2 years' or '3 days 04:00:00', or a number of seconds.",
    "date": "Give a date as 'YYYY-MM-DD'.",
    "timestamp": "Give a timestamp as 'YYYY-MM-DD HH:MM:SS[+TZ]', or seconds since 1970.",
    "time": "Give a time of day as 'HH:MM:SS'.",
    "text": "Give a string.",
}


def to_text(value: Any, column: FeatureColumn) -> Optional[str]:
    """A JSON feature value as the category text training saw (PostgreSQL's text form)."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    raise PgmlError(
        f"feature \"{column.name}\" ({column.sql_type}) cannot take the value {value!r}",
        hint=_EXPECTED["text"],
    )
