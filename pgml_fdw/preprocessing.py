"""Per-column preprocessing: fitted on the training split, stored with the model as plain data.

A feature column is either a *number* (a float64 array, NaN for NULL; the data
loader has already turned booleans, intervals, dates and timestamps into
numbers) or *text* (an object array of ``str``, ``None`` for NULL, treated as
categorical).  :func:`plan_preprocessing` turns the user's ``preprocess`` jsonb
into one :class:`Preprocess` per column; :class:`FeatureEncoder` learns the
statistics on the training split and applies them identically to a batch
(:meth:`FeatureEncoder.transform`) or a single row on the prediction hot path
(:meth:`FeatureEncoder.transform_row`).

Plain numpy on purpose: scikit-learn's ColumnTransformer costs about a
millisecond per single row, which dominates per-row scoring.

Defaults
    number: impute ``mean``; scale ``standard`` when the estimator needs scaled
    inputs, else ``none``.
    text: impute ``none`` (NULL is a category of its own); encode ``one_hot``.

Encoding
    Categories are sorted by Unicode code point (not the database collation).
    A NULL category, when one was seen in training, comes last, as with
    PostgreSQL's ``ORDER BY ... NULLS LAST``.
    ``one_hot``: one output per category, named ``column=value`` (the NULL
    category is ``column IS NULL``).  A value not seen in training (or NULL,
    when training had none) sets all of the column's outputs to 0.
    ``ordinal``: one output holding the category's position 0..k-1; a value not
    seen in training (or NULL, when training had none) is -1.

Order of steps
    Imputation comes first and the scaling statistics and categories are learned
    from the imputed training values, as in a scikit-learn
    ``Pipeline(SimpleImputer, StandardScaler | OneHotEncoder)`` would.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from itertools import repeat
import math
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from pgml_fdw.errors import PgmlError
from pgml_fdw.row_encoder import RowEncoder

KINDS = ("number", "text")
PREPROCESS_KEYS = ("impute", "scale", "encode", "fill_value")
IMPUTE_CHOICES: Dict[str, Tuple[str, ...]] = {
    "number": ("mean", "median", "most_frequent", "constant", "none"),
    "text": ("most_frequent", "constant", "none"),
}
SCALE_CHOICES = ("standard", "min_max", "none")
ENCODE_CHOICES = ("one_hot", "ordinal")

# Preprocess.scale of a text column and Preprocess.encode of a number column.
NOT_APPLICABLE = "none"
# Relative spread below which a training column counts as constant for scaling.
_CONSTANT_TOLERANCE = 1e-12


@dataclass(frozen=True)
class Column:
    """A feature column: its name, its kind ('number' or 'text') and, for
    introspection only, the SQL type it came from (e.g. 'integer', 'interval')."""

    name: str
    kind: str
    sql_type: str

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"column {self.name!r}: kind must be one of {KINDS}, not {self.kind!r}")


@dataclass(frozen=True)
class Preprocess:
    """How one column is preprocessed.

    impute: how NULLs are replaced before anything else.
        'mean' / 'median' (numbers only) and 'most_frequent' use the training
        split; 'constant' uses ``fill_value``.  'none' keeps NULL: a text NULL
        becomes a category of its own, while a number NULL stays NaN, which
        only estimators that accept missing values take (e.g. the
        histogram-based gradient boosting and, in scikit-learn >= 1.4, the
        decision-tree and random-forest estimators).
    scale: 'standard' (subtract the mean, divide by the standard deviation),
        'min_max' (map the training range to [0, 1]) or 'none'.  Numbers only;
        a column that is constant in training is only shifted, not divided.
    encode: 'one_hot' or 'ordinal'.  Text only.
    fill_value: the replacement for impute 'constant' (a number for a number
        column, a string for a text column).
    """

    impute: str
    scale: str
    encode: str
    fill_value: Any = None


def _quote_list(values: Sequence[str]) -> str:
    return ", ".join(f'"{v}"' for v in values)


def plan_preprocessing(
    columns: Sequence[Column],
    options: Optional[Mapping[str, Any]],
    needs_scaling: bool,
) -> Dict[str, Preprocess]:
    """Combine the defaults with the user's ``preprocess`` option, validating it.

    ``options`` is the parsed ``preprocess`` jsonb, e.g.
    ``{"age": {"impute": "median", "scale": "min_max"}, "city": {"encode": "ordinal"}}``,
    or None.  ``needs_scaling`` says whether the estimator wants scaled numbers
    (it picks the default ``scale``).  Returns one :class:`Preprocess` per
    column, keyed by column name, in column order.  Raises :class:`PgmlError`
    for anything the user got wrong.
    """
    if options is None:
        options = {}
    if not isinstance(options, Mapping):
        raise PgmlError(
            "preprocess must be a JSON object mapping feature column names to options",
            hint='for example \'{"age": {"impute": "median"}, "city": {"encode": "ordinal"}}\'',
        )
    by_name = {c.name: c for c in columns}
    for name in options:
        if name not in by_name:
            raise PgmlError(
                f'preprocess names "{name}", which is not a feature column',
                hint=f"the feature columns are {_quote_list(list(by_name))}",
            )
    return {c.name: _plan_column(c, options.get(c.name), needs_scaling) for c in columns}


def _plan_column(column: Column, spec: Any, needs_scaling: bool) -> Preprocess:
    name, kind = column.name, column.kind
    if spec is None:
        spec = {}
    if not isinstance(spec, Mapping):
        raise PgmlError(
            f'preprocess for column "{name}" must be a JSON object',
            hint=f'for example \'{{"{name}": {{"impute": "constant", "fill_value": 0}}}}\'',
        )
    for key in spec:
        if key not in PREPROCESS_KEYS:
            raise PgmlError(
                f'unknown preprocess option "{key}" for column "{name}"',
                hint=f"valid options are {_quote_list(PREPROCESS_KEYS)}",
            )

    if kind == "number":
        if "encode" in spec:
            raise PgmlError(
                f'"encode" applies only to text columns, and "{name}" is a number column',
                hint=f'remove "encode" for "{name}"; numbers can be given "scale": {_quote_list(SCALE_CHOICES)}',
            )
        impute = _choice(spec, "impute", "mean", IMPUTE_CHOICES["number"], column)
        scale = _choice(spec, "scale", "standard" if needs_scaling else "none", SCALE_CHOICES, column)
        encode = NOT_APPLICABLE
    else:
        if "scale" in spec:
            raise PgmlError(
                f'"scale" applies only to number columns, and "{name}" is a text column',
                hint=f'remove "scale" for "{name}"; text columns can be given "encode": {_quote_list(ENCODE_CHOICES)}',
            )
        impute = _choice(spec, "impute", "none", IMPUTE_CHOICES["text"], column)
        scale = NOT_APPLICABLE
        encode = _choice(spec, "encode", "one_hot", ENCODE_CHOICES, column)

    fill_value = spec.get("fill_value")
    if impute != "constant":
        if fill_value is not None:
            raise PgmlError(
                f'"fill_value" for column "{name}" is used only with "impute": "constant"',
                hint=f'add "impute": "constant" for "{name}", or remove "fill_value"',
            )
    elif kind == "number":
        # bool is an int subclass, but true/false as a number fill is almost surely a mistake.
        if (not isinstance(fill_value, (int, float)) or isinstance(fill_value, bool)
                or not math.isfinite(fill_value)):
            raise PgmlError(
                f'"impute": "constant" for number column "{name}" needs a numeric "fill_value"',
                hint=f'for example \'{{"{name}": {{"impute": "constant", "fill_value": 0}}}}\'',
            )
        fill_value = float(fill_value)
    elif not isinstance(fill_value, str):
        raise PgmlError(
            f'"impute": "constant" for text column "{name}" needs a string "fill_value"',
            hint=f'for example \'{{"{name}": {{"impute": "constant", "fill_value": "unknown"}}}}\'',
        )
    return Preprocess(impute=impute, scale=scale, encode=encode, fill_value=fill_value)


def _choice(spec: Mapping[str, Any], key: str, default: str, choices: Sequence[str], column: Column) -> str:
    value = spec.get(key, default)
    if value not in choices:
        raise PgmlError(
            f'"{key}": {_json_repr(value)} is not valid for {column.kind} column "{column.name}"',
            hint=f'"{key}" for a {column.kind} column must be one of {_quote_list(choices)}',
        )
    return value


def _json_repr(value: Any) -> str:
    return f'"{value}"' if isinstance(value, str) else "null" if value is None else repr(value)


class FeatureEncoder:
    """Turns feature columns into the float64 matrix the estimator sees.

    Outputs are laid out column by column, in column order: one output per
    number column, one per ordinal-encoded text column and one per category of
    a one-hot text column.  After :meth:`fit`, ``output_names`` names each
    output ('age', 'city=Paris', 'city IS NULL') and ``output_sources`` gives
    the column each output came from, so importances can be folded back.
    """

    def __init__(self, columns: Sequence[Column], plan: Mapping[str, Preprocess]) -> None:
        missing = [c.name for c in columns if c.name not in plan]
        if missing:
            raise ValueError(f"no preprocessing plan for columns {missing}")
        self.columns: List[Column] = list(columns)
        self.plan: Dict[str, Preprocess] = {c.name: plan[c.name] for c in columns}
        self.output_names: List[str] = []
        self.output_sources: List[str] = []
        self._fitted = False
        # Learned per column, for describe(): impute value and scaling statistics / categories.
        self._stats: Dict[str, Dict[str, Any]] = {}
        # The tables of row_encoder (the serving path), plain Python values:
        # numbers: (input index, output index, offset, divisor, output for NULL)
        self._numbers: List[Tuple[int, int, float, float, float]] = []
        # text: (input index, first output index, value -> category code, one-hot?)
        self._texts: List[Tuple[int, int, Dict[Optional[str], int], bool]] = []
        self._n_outputs = 0

    def fit(self, data: Mapping[str, np.ndarray]) -> "FeatureEncoder":
        """Learn imputation values, scaling statistics and categories from the
        training split (``data``: column name -> 1-D array).  Returns self."""
        self._check_input(data)
        self.output_names, self.output_sources = [], []
        self._stats, self._numbers, self._texts = {}, [], []
        for index, column in enumerate(self.columns):
            first = len(self.output_names)
            if column.kind == "number":
                self._fit_number(index, first, column, data[column.name])
            else:
                self._fit_text(index, first, column, data[column.name])
        self._n_outputs = len(self.output_names)
        self._fitted = True
        return self

    def _fit_number(self, index: int, out: int, column: Column, values: np.ndarray) -> None:
        name, prep = column.name, self.plan[column.name]
        values = np.asarray(values, dtype=np.float64)
        present = values[~np.isnan(values)]
        if np.isinf(present).any():
            raise PgmlError(
                f'column "{name}" contains infinite values in the training data',
                hint=f"turn them into NULL in the training view, e.g. "
                     f"NULLIF(NULLIF(\"{name}\", 'Infinity'), '-Infinity')",
            )
        if prep.impute in ("mean", "median", "most_frequent") and present.size == 0:
            raise PgmlError(
                f'column "{name}" is NULL in every training row, '
                f'so "impute": "{prep.impute}" has nothing to learn from',
                hint=f'drop "{name}" from the training view, or set '
                     f'\'{{"{name}": {{"impute": "constant", "fill_value": 0}}}}\' in preprocess',
            )
        if prep.impute == "mean":
            fill = float(present.mean())
        elif prep.impute == "median":
            fill = float(np.median(present))
        elif prep.impute == "most_frequent":
            distinct, counts = np.unique(present, return_counts=True)
            fill = float(distinct[np.argmax(counts)])  # ties: the smallest value, as in scikit-learn
        elif prep.impute == "constant":
            fill = float(prep.fill_value)
        else:
            fill = math.nan

        # Scaling statistics are learned from the imputed values; under impute 'none', from the non-NULL ones.
        imputed = present
        if not math.isnan(fill):
            imputed = np.concatenate([present, np.full(values.size - present.size, fill)])
        stats: Dict[str, Any] = {"impute_value": None if math.isnan(fill) else fill}
        offset, divisor = 0.0, 1.0
        if prep.scale != "none" and imputed.size:
            low, high = float(imputed.min()), float(imputed.max())
            if prep.scale == "standard":
                offset, spread = float(imputed.mean()), float(imputed.std())
                stats.update(mean=offset, std=spread)
            else:
                offset, spread = low, high - low
                stats.update(min=low, max=high)
            # A constant column would divide by zero, or by the rounding noise a mean imputation
            # leaves behind (a mean of 0.1s is not exactly 0.1): shift it only.
            constant = high - low <= _CONSTANT_TOLERANCE * max(abs(low), abs(high))
            divisor = 1.0 if constant else spread
        self._stats[name] = stats
        # The NULL output is computed once, with the same operations transform applies to values.
        self._numbers.append((index, out, offset, divisor, (fill - offset) / divisor))
        self.output_names.append(name)
        self.output_sources.append(name)

    def _fit_text(self, index: int, out: int, column: Column, values: np.ndarray) -> None:
        name, prep = column.name, self.plan[column.name]
        counts = Counter(values)
        nulls = counts.pop(None, 0)
        if prep.impute == "most_frequent":
            if not counts:
                raise PgmlError(
                    f'column "{name}" is NULL in every training row, '
                    'so "impute": "most_frequent" has nothing to learn from',
                    hint=f'drop "{name}" from the training view, '
                    'or remove its "impute" so NULL is a category of its own',
                )
            fill: Optional[str] = min(counts, key=lambda v: (-counts[v], v))  # ties: the smallest value
        elif prep.impute == "constant":
            fill = prep.fill_value
        else:
            fill = None
        if nulls and fill is not None:
            counts[fill] += nulls
        categories: List[Optional[str]] = sorted(counts)
        if nulls and fill is None:
            categories.append(None)  # NULLS LAST
        lookup: Dict[Optional[str], int] = {v: code for code, v in enumerate(categories)}
        if fill is not None and fill in lookup:
            lookup[None] = lookup[fill]

        one_hot = prep.encode == "one_hot"
        if one_hot:
            self.output_names.extend(f"{name} IS NULL" if v is None else f"{name}={v}" for v in categories)
            self.output_sources.extend(repeat(name, len(categories)))
        else:
            self.output_names.append(name)
            self.output_sources.append(name)
        self._stats[name] = {"impute_value": fill, "categories": len(categories)}
        self._texts.append((index, out, lookup, one_hot))

    def transform(self, data: Mapping[str, np.ndarray]) -> np.ndarray:
        """Apply the fitted preprocessing to a batch (column name -> 1-D array).

        Returns a C-contiguous float64 array of shape (rows, len(output_names)).
        """
        if not self._fitted:
            raise RuntimeError("FeatureEncoder.transform called before fit")
        rows = self._check_input(data)
        out = np.zeros((rows, self._n_outputs), dtype=np.float64)
        for index, pos, offset, divisor, null_out in self._numbers:
            values = np.asarray(data[self.columns[index].name], dtype=np.float64)
            scaled = values - offset
            scaled /= divisor
            if not math.isnan(null_out):
                np.copyto(scaled, null_out, where=np.isnan(values))
            out[:, pos] = scaled
        for index, first, lookup, one_hot in self._texts:
            values = data[self.columns[index].name]
            codes = np.fromiter(map(lookup.get, values, repeat(-1)), dtype=np.intp, count=rows)
            if one_hot:
                seen = np.flatnonzero(codes >= 0)
                out[seen, first + codes[seen]] = 1.0
            else:
                out[:, first] = codes
        return out

    def transform_row(self, values: Sequence[Any]) -> np.ndarray:
        """Apply the fitted preprocessing to one row and return a 1-D float64 array.

        ``values`` are in column order: float (or None / NaN) for number
        columns, str or None for text columns.  Equal to the matching row of
        :meth:`transform` (serving uses :meth:`row_encoder`, which needs no numpy).
        """
        return np.array(self.row_encoder().encode(values), dtype=np.float64)

    def row_encoder(self) -> RowEncoder:
        """The fitted preprocessing of one row, in plain Python."""
        if not self._fitted:
            raise RuntimeError("FeatureEncoder.row_encoder called before fit")
        return RowEncoder([c.name for c in self.columns], self._numbers, self._texts, self._n_outputs)

    def describe(self) -> Dict[str, Dict[str, Any]]:
        """Per column, JSON-safe: kind, SQL type, the options in force, the
        learned statistics and the number of outputs.

        Number columns have ``impute``, ``impute_value`` (null under impute
        'none'), ``scale`` and, by scale, ``mean``/``std`` or ``min``/``max``.
        Text columns have ``impute``, ``impute_value`` (null: NULL is its own
        category), ``encode`` and ``categories`` (how many were learned,
        counting NULL when it is a category).
        """
        if not self._fitted:
            raise RuntimeError("FeatureEncoder.describe called before fit")
        result: Dict[str, Dict[str, Any]] = {}
        for column in self.columns:
            prep = self.plan[column.name]
            entry: Dict[str, Any] = {"kind": column.kind, "sql_type": column.sql_type, "impute": prep.impute}
            if column.kind == "number":
                entry["scale"] = prep.scale
            else:
                entry["encode"] = prep.encode
            entry.update(self._stats[column.name])
            entry["outputs"] = self.output_sources.count(column.name)
            result[column.name] = entry
        return result

    def to_data(self) -> Dict[str, Any]:
        """The fitted encoder as plain JSON data (model_format stores it so): lists, strings and
        numbers, NaN written as null."""
        if not self._fitted:
            raise RuntimeError("FeatureEncoder.to_data called before fit")
        return {
            "columns": [[c.name, c.kind, c.sql_type] for c in self.columns],
            "plan": {name: [p.impute, p.scale, p.encode, p.fill_value] for name, p in self.plan.items()},
            "output_names": self.output_names,
            "output_sources": self.output_sources,
            "stats": self._stats,
            "numbers": [[i, o, offset, divisor, None if math.isnan(null_out) else null_out]
                        for i, o, offset, divisor, null_out in self._numbers],
            "texts": [[i, first, list(lookup.items()), one_hot] for i, first, lookup, one_hot in self._texts],
        }

    @classmethod
    def from_data(cls, data: Mapping[str, Any]) -> "FeatureEncoder":
        """The fitted encoder :meth:`to_data` described."""
        columns = [Column(*c) for c in data["columns"]]
        encoder = cls(columns, {name: Preprocess(*p) for name, p in data["plan"].items()})
        encoder.output_names = list(data["output_names"])
        encoder.output_sources = list(data["output_sources"])
        encoder._stats = {name: dict(stats) for name, stats in data["stats"].items()}
        row = RowEncoder.from_data(data)
        encoder._numbers, encoder._texts = row.numbers, row.texts
        encoder._n_outputs = len(encoder.output_names)
        encoder._fitted = True
        return encoder

    def _check_input(self, data: Mapping[str, np.ndarray]) -> int:
        """Check every feature column is present with one length; return that length."""
        missing = [c.name for c in self.columns if c.name not in data]
        if missing:
            raise PgmlError(
                f"the input is missing feature column(s) {_quote_list(missing)}",
                hint=f"the model uses the columns {_quote_list([c.name for c in self.columns])}",
            )
        lengths = {len(data[c.name]) for c in self.columns}
        if len(lengths) > 1:
            raise ValueError(f"feature columns have different lengths: {sorted(lengths)}")
        return lengths.pop() if lengths else 0
