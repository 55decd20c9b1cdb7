"""Per-column preprocessing: fitted on the training split, stored with the model as plain data.

A feature column is either a *number* (a float64 array, NaN for NULL; the data
loader has already turned booleans, intervals, dates and timestamps into
numbers) or *text* (an object array of ``str``, ``None`` for NULL).  Text is
always *categorical*; a number column is categorical when its ``preprocess``
gives it an ``encode`` (its distinct values are then the categories, as
PostgresML does for ``{"encode": "target"}`` on an integer column).
:func:`plan_preprocessing` turns the user's ``preprocess`` jsonb into one
:class:`Preprocess` per column; :class:`FeatureEncoder` learns the statistics on
the training split and applies them identically to a batch
(:meth:`FeatureEncoder.transform`) or a single row on the prediction hot path
(:meth:`FeatureEncoder.row_encoder`, plain Python).

Plain numpy on purpose: scikit-learn's ColumnTransformer costs about a
millisecond per single row, which dominates per-row scoring.

Defaults
    number: impute ``mean``; scale ``standard`` when the estimator needs scaled
    inputs, else ``none``.
    categorical: impute ``none`` (NULL is a category of its own); encode
    ``one_hot`` for text; scale ``none``.

Names
    PostgresML's spellings are accepted as well: impute ``mode`` (our
    ``most_frequent``), scale ``preserve`` (our ``none``), encode ``native`` or
    ``none`` (on a number column: no encoding, the default; on a text column:
    ``ordinal``).  The plan holds our names.

Imputation
    ``mean``, ``median``, ``min``, ``max`` and ``most_frequent`` are learned from
    the training split's non-NULL values, ``zero`` and ``constant`` (with
    ``fill_value``) are given; ``error`` refuses NULL (training fails, naming the
    column and how many NULLs it has, and so does a prediction); ``none`` keeps
    NULL: NaN for a number (only estimators that take missing values accept it),
    a category of its own for a categorical column.  A categorical column takes
    ``most_frequent``, ``constant``, ``error`` and ``none``, and with ``target``
    encoding also ``mean``: NULL then gets the target's mean, as an unseen
    category does.

Scaling
    Every scaling is ``(x - offset) / divisor`` with statistics of the imputed
    training values: ``standard`` (mean, standard deviation), ``min_max`` (min,
    max - min), ``max_abs`` (0, the largest absolute value: scikit-learn's
    MaxAbsScaler) and ``robust`` (the median, the interquartile range between
    the 25th and 75th percentiles: scikit-learn's RobustScaler).  A column that
    is constant in training (for ``robust``: whose quartiles are equal; for
    ``max_abs``: all zeros) is only shifted, not divided.  Numbers, and the
    one output of ``ordinal`` and ``target`` encoded columns (each output of a
    multiclass ``target`` encoding on its own).

Encoding
    Categories are sorted by Unicode code point (not the database collation),
    numbers by value.  A NULL category, when one was seen in training, comes
    last, as with PostgreSQL's ``ORDER BY ... NULLS LAST``.
    ``one_hot``: one output per category, named ``column=value`` (the NULL
    category is ``column IS NULL``).  A value not seen in training (or NULL,
    when training had none) sets all of the column's outputs to 0.
    ``ordinal``: one output holding the category's position 0..k-1; a value not
    seen in training (or NULL, when training had none) is -1.  With an explicit
    order, ``{"ordinal": ["low", "medium", "high"]}``, the position is the
    value's in that list (``null`` in it places NULL); a training value missing
    from the list is an error naming it.
    ``target``: the mean of the target over the category's training rows,
    smoothed towards the mean over every training row (the *prior*) with
    ``smoothing`` pseudo-rows (default 1; 0 gives PostgresML's plain mean):
    ``(sum + smoothing * prior) / (rows + smoothing)``.  A value not seen in
    training (or NULL, when training had none) gets the prior.  For
    classification the target is the class index, so a binary target encoding
    is the share of the second class (as PostgresML's class index mean); with
    more classes, one output per class holds the category's share of that class
    (named ``column:class``), since a mean of arbitrary class indexes would
    rank classes that have no order.

Order of steps
    Imputation comes first; the scaling statistics and categories are learned
    from the imputed training values, as in a scikit-learn
    ``Pipeline(SimpleImputer, StandardScaler | OneHotEncoder)`` would.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from itertools import repeat
import json
import math
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from pgml_fdw import errors
from pgml_fdw.errors import PgmlError
from pgml_fdw.row_encoder import Category, RowEncoder

KINDS = ("number", "text")
PREPROCESS_KEYS = ("impute", "scale", "encode", "fill_value", "smoothing")
# By column: "number" for a number column left as a number, "text" for a categorical column.
IMPUTE_CHOICES: Dict[str, Tuple[str, ...]] = {
    "number": ("mean", "median", "most_frequent", "min", "max", "zero", "constant", "error", "none"),
    "text": ("most_frequent", "constant", "error", "none"),
}
SCALE_CHOICES = ("standard", "min_max", "max_abs", "robust", "none")
ENCODE_CHOICES = ("one_hot", "ordinal", "target")
# PostgresML's names for ours.
IMPUTE_ALIASES = {"mode": "most_frequent"}
SCALE_ALIASES = {"preserve": "none"}
NO_ENCODING = ("native", "none")  # PostgresML: a number stays a number (on text: ordinal codes)
DEFAULT_SMOOTHING = 1.0

# Preprocess.scale of a one-hot column and Preprocess.encode of a number column.
NOT_APPLICABLE = "none"
# Relative spread below which a training column counts as constant for scaling.
_CONSTANT_TOLERANCE = 1e-12
# scikit-learn's MaxAbsScaler divides by 1 where the largest absolute value is below this.
_ZERO_SCALE = 10 * np.finfo(np.float64).eps
_SHOWN = 5  # values named in an error, at most


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

    impute: how NULLs are replaced before anything else (see the module
        docstring): 'mean', 'median', 'min', 'max', 'most_frequent' (learned),
        'zero', 'constant' (``fill_value``), 'error' or 'none'.
    scale: 'standard', 'min_max', 'max_abs', 'robust' or 'none'.
    encode: 'one_hot', 'ordinal' or 'target' for a categorical column, 'none'
        for a number column left as a number.
    fill_value: the replacement for impute 'constant' (a number for a number
        column, a string for a text column).
    order: for 'ordinal' with an explicit order, its values (None: NULL's place).
    smoothing: for 'target', the pseudo-rows at the prior.
    """

    impute: str
    scale: str
    encode: str
    fill_value: Any = None
    order: Optional[Tuple[Category, ...]] = None
    smoothing: Optional[float] = None

    @property
    def categorical(self) -> bool:
        """Whether the column's values are categories (text, or a number given an encode)."""
        return self.encode != NOT_APPLICABLE


def _quote_list(values: Sequence[Any]) -> str:
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

    encode, order = _plan_encode(column, spec.get("encode"))
    if encode != NOT_APPLICABLE:
        what = "text" if kind == "text" else "categorical number"
        choices = IMPUTE_CHOICES["text"] + (("mean",) if encode == "target" else ())
        impute = _choice(spec, "impute", "none", choices, what, name, IMPUTE_ALIASES)
        given = spec.get("scale", "none")
        wanted = SCALE_ALIASES.get(given, given) if isinstance(given, str) else given
        if encode == "one_hot" and wanted != "none":
            raise PgmlError(
                f'"scale" applies only to number columns and to ordinal or target encoded ones, '
                f'and "{name}" is one-hot encoded',
                hint=f'remove "scale" for "{name}" (one-hot outputs are 0 or 1 already), or give it '
                     f'"encode": "ordinal" or "target"',
            )
        scale = _choice(spec, "scale", "none", SCALE_CHOICES, what, name, SCALE_ALIASES)
    else:
        impute = _choice(spec, "impute", "mean", IMPUTE_CHOICES["number"], kind, name, IMPUTE_ALIASES)
        scale = _choice(spec, "scale", "standard" if needs_scaling else "none", SCALE_CHOICES, kind, name,
                        SCALE_ALIASES)

    fill_value = _plan_fill_value(column, spec, impute)
    if order is not None:
        if None in order and impute != "none":
            raise PgmlError(
                f'the ordinal order of column "{name}" places null, which "impute": "{impute}" replaces',
                hint=f'remove null from the order, or "impute" from the options of "{name}"',
            )
        if impute == "constant" and fill_value not in order:
            raise PgmlError(
                f'"fill_value" {_json_repr(fill_value)} of column "{name}" is not one of its ordinal values',
                hint=f"add it to the order, or fill with one of {_quote_list(_labels(order))}",
            )
    smoothing = None
    if encode == "target":
        smoothing = spec.get("smoothing", DEFAULT_SMOOTHING)
        if (not isinstance(smoothing, (int, float)) or isinstance(smoothing, bool)
                or not math.isfinite(smoothing) or smoothing < 0):
            raise PgmlError(
                f'"smoothing" for column "{name}" must be a number of at least 0, not {_json_repr(smoothing)}',
                hint=f"it is how many rows at the mean of every training row each category's mean is "
                     f"blended with: {DEFAULT_SMOOTHING:g} by default, 0 for the plain mean",
            )
        smoothing = float(smoothing)
    elif "smoothing" in spec:
        raise PgmlError(
            f'"smoothing" for column "{name}" is used only with "encode": "target"',
            hint=f'add "encode": "target" for "{name}", or remove "smoothing"',
        )
    return Preprocess(impute=impute, scale=scale, encode=encode, fill_value=fill_value, order=order,
                      smoothing=smoothing)


def _plan_encode(column: Column, value: Any) -> Tuple[str, Optional[Tuple[Category, ...]]]:
    """The encoding of a column (NOT_APPLICABLE: a number left a number) and its explicit order."""
    name, kind = column.name, column.kind
    default = "one_hot" if kind == "text" else NOT_APPLICABLE
    if value is None:
        return default, None
    if isinstance(value, Mapping):
        if list(value) != ["ordinal"]:
            raise PgmlError(
                f'"encode": {_json_repr(value)} for column "{name}" is not an encoding',
                hint=f'give an explicit order as {{"encode": {{"ordinal": ["low", "medium", "high"]}}}}, '
                     f'or one of {_quote_list(ENCODE_CHOICES)}',
            )
        return "ordinal", _plan_order(column, value["ordinal"])
    if value in NO_ENCODING:
        return ("ordinal" if kind == "text" else NOT_APPLICABLE), None
    if value not in ENCODE_CHOICES:
        raise PgmlError(
            f'"encode": {_json_repr(value)} is not valid for {kind} column "{name}"',
            hint=f'"encode" must be one of {_quote_list(ENCODE_CHOICES)} (or PostgresML\'s "native" or "none", '
                 f'the default for a number column), or an explicit order: {{"ordinal": ["low", "high"]}}',
        )
    return value, None


def _plan_order(column: Column, values: Any) -> Tuple[Category, ...]:
    """The values of an explicit ordinal order: strings for text, numbers for a number column
    (as JSON numbers or numeric strings, which is how PostgresML spells them); null for NULL."""
    name = column.name
    example = '["low", "medium", "high"]' if column.kind == "text" else "[1, 2, 3]"
    if not isinstance(values, list) or not values:
        raise PgmlError(
            f'the ordinal order of column "{name}" must be a non-empty JSON array of its values',
            hint=f'for example {{"{name}": {{"encode": {{"ordinal": {example}}}}}}}',
        )
    order: List[Category] = []
    for value in values:
        if value is None:
            order.append(None)
        elif column.kind == "text" and isinstance(value, str):
            order.append(value)
        elif column.kind == "number" and isinstance(value, (int, float, str)) and not isinstance(value, bool):
            try:
                number = float(value)
            except (ValueError, OverflowError):
                number = math.nan
            if not math.isfinite(number):
                raise PgmlError(
                    f'the ordinal order of number column "{name}" holds {_json_repr(value)}, which is not a number',
                    hint=f"list its values as numbers, for example {example}",
                )
            order.append(number)
        else:
            raise PgmlError(
                f'the ordinal order of {column.kind} column "{name}" holds {_json_repr(value)}',
                hint=f"list its values as {'strings' if column.kind == 'text' else 'numbers'} "
                     f"(null for NULL), for example {example}",
            )
    repeated = sorted({_label(v) for v in order if order.count(v) > 1})
    if repeated:
        raise PgmlError(
            f'the ordinal order of column "{name}" lists {_quote_list(repeated)} more than once',
            hint="list each value once, in its order",
        )
    return tuple(order)


def _plan_fill_value(column: Column, spec: Mapping[str, Any], impute: str) -> Any:
    name, kind = column.name, column.kind
    fill_value = spec.get("fill_value")
    if impute != "constant":
        if fill_value is not None:
            raise PgmlError(
                f'"fill_value" for column "{name}" is used only with "impute": "constant"',
                hint=f'add "impute": "constant" for "{name}", or remove "fill_value"',
            )
        return None
    if kind == "number":
        # bool is an int subclass, but true/false as a number fill is almost surely a mistake.
        if (not isinstance(fill_value, (int, float)) or isinstance(fill_value, bool)
                or not math.isfinite(fill_value)):
            raise PgmlError(
                f'"impute": "constant" for number column "{name}" needs a numeric "fill_value"',
                hint=f'for example \'{{"{name}": {{"impute": "constant", "fill_value": 0}}}}\'',
            )
        return float(fill_value)
    if not isinstance(fill_value, str):
        raise PgmlError(
            f'"impute": "constant" for text column "{name}" needs a string "fill_value"',
            hint=f'for example \'{{"{name}": {{"impute": "constant", "fill_value": "unknown"}}}}\'',
        )
    return fill_value


def _choice(spec: Mapping[str, Any], key: str, default: str, choices: Sequence[str], what: str, name: str,
            aliases: Mapping[str, str]) -> str:
    """The option ``key`` of a column (``what``: its kind, as the error says it), in our spelling."""
    given = spec.get(key, default)
    value = aliases.get(given, given) if isinstance(given, str) else given
    if value not in choices:
        spellings = "".join(f', or PostgresML\'s "{alias}" for "{ours}"' for alias, ours in aliases.items()
                            if ours in choices)
        raise PgmlError(
            f'"{key}": {_json_repr(given)} is not valid for {what} column "{name}"',
            hint=f'"{key}" for a {what} column must be one of {_quote_list(choices)}{spellings}',
        )
    return value


def _json_repr(value: Any) -> str:
    """A value as the user wrote it in JSON."""
    try:
        return json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        return repr(value)


def _label(value: Category) -> str:
    """A category as text: the string, a number without a needless '.0', or NULL."""
    if value is None:
        return "NULL"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    return value


def _labels(values: Sequence[Category]) -> List[str]:
    return [_label(v) for v in values]


def category_keys(values: np.ndarray) -> np.ndarray:
    """A column's values as category keys: its strings, or for a number column its values as
    floats; None for NULL (and NaN)."""
    if values.dtype.kind != "f":
        return values
    keys = values.astype(object)
    keys[np.isnan(values)] = None
    return keys


def refuse_nulls(plan: Mapping[str, Preprocess], data: Mapping[str, np.ndarray], relation: str) -> None:
    """Refuses training data with NULLs in a column whose preprocess says ``"impute": "error"``,
    naming the column and how many of the relation's rows (all of them, before the split) hold one."""
    for name, prep in plan.items():
        if prep.impute == "error":
            _refuse_training_nulls(name, prep, _nulls(data[name]), len(data[name]), f"rows of {relation}")


def _nulls(values: np.ndarray) -> int:
    """How many NULLs (None, or NaN in a float array) a column holds."""
    values = np.asarray(values)
    if values.dtype.kind == "f":
        return int(np.count_nonzero(np.isnan(values)))
    return sum(1 for v in values if v is None or v != v)


def _refuse_training_nulls(name: str, prep: Preprocess, nulls: int, rows: int, which: str) -> None:
    if prep.impute == "error" and nulls:
        raise PgmlError(
            f'column "{name}" is NULL in {nulls:,} of the {rows:,} {which}, and its preprocess says '
            '"impute": "error"',
            hint=f'leave those rows out of the view, or impute them, for example '
                 f'\'{{"{name}": {{"impute": "{"most_frequent" if prep.categorical else "mean"}"}}}}\'',
            sqlstate=errors.NULL_VALUE_NOT_ALLOWED,
        )


def _scaling(values: np.ndarray, scale: str) -> Tuple[float, float, Dict[str, Any]]:
    """(offset, divisor, statistics) of a scaling learned from ``values`` (imputed, no NaN)."""
    if scale == "none" or not values.size:
        return 0.0, 1.0, {}
    low, high = float(values.min()), float(values.max())
    # A constant column would divide by zero, or by the rounding noise a mean imputation
    # leaves behind (a mean of 0.1s is not exactly 0.1): shift it only.
    constant = high - low <= _CONSTANT_TOLERANCE * max(abs(low), abs(high))
    if scale == "standard":
        offset, spread = float(values.mean()), float(values.std())
        stats: Dict[str, Any] = {"mean": offset, "std": spread}
    elif scale == "min_max":
        offset, spread = low, high - low
        stats = {"min": low, "max": high}
    elif scale == "max_abs":
        offset, spread = 0.0, max(abs(low), abs(high))
        stats = {"max_abs": spread}
        constant = bool(spread < _ZERO_SCALE)  # a constant non-zero column is divided, as by MaxAbsScaler
    else:  # robust: scikit-learn's RobustScaler with its default quantile_range (25.0, 75.0)
        first, third = (float(q) for q in np.percentile(values, [25.0, 75.0]))
        offset, spread = float(np.median(values)), third - first
        stats = {"median": offset, "iqr": spread}
        constant = spread <= _CONSTANT_TOLERANCE * max(abs(first), abs(third))
    return offset, 1.0 if constant else spread, stats


class FeatureEncoder:
    """Turns feature columns into the float64 matrix the estimator sees.

    Outputs are laid out column by column, in column order: one output per
    number column, one per ordinal or target encoded column (one per class for
    a multiclass target encoding) and one per category of a one-hot column.
    After :meth:`fit`, ``output_names`` names each output ('age', 'city=Paris',
    'city IS NULL') and ``output_sources`` gives the column each output came
    from, so importances can be folded back.
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
        # categories coded: (input index, first output index, value -> category code, one-hot?)
        self._texts: List[Tuple[int, int, Dict[Category, int], bool]] = []
        # categories valued: (input index, first output index, value -> outputs, outputs of an unseen value)
        self._tables: List[Tuple[int, int, Dict[Category, Tuple[float, ...]], Tuple[float, ...]]] = []
        # input indexes that may not be NULL (impute 'error')
        self._required: List[int] = []
        self._n_outputs = 0

    def __setstate__(self, state: Dict[str, Any]) -> None:
        """An encoder pickled by pgml_fdw 0.2, inside a whole pickled model: it predates tables."""
        self.__dict__.update(state)
        self.__dict__.setdefault("_tables", [])
        self.__dict__.setdefault("_required", [])

    def fit(self, data: Mapping[str, np.ndarray], target: Optional[np.ndarray] = None,
            classes: Optional[Sequence[Any]] = None) -> "FeatureEncoder":
        """Learn imputation values, scaling statistics and categories from the training split
        (``data``: column name -> 1-D array).  ``target`` is y of the same rows, which target
        encoding needs: numbers for regression, or class indexes of ``classes`` (the labels) for
        classification.  Returns self."""
        rows = self._check_input(data)
        if target is not None and len(target) != rows:
            raise ValueError(f"target has {len(target)} rows, the features {rows}")
        self.output_names, self.output_sources = [], []
        self._stats, self._numbers, self._texts, self._tables, self._required = {}, [], [], [], []
        for index, column in enumerate(self.columns):
            first = len(self.output_names)
            prep = self.plan[column.name]
            if prep.impute == "error":
                self._required.append(index)
            if prep.categorical:
                self._fit_categorical(index, first, column, data[column.name], target, classes)
            else:
                self._fit_number(index, first, column, data[column.name])
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
        _refuse_training_nulls(name, prep, values.size - present.size, values.size, "training rows")
        if prep.impute in ("mean", "median", "most_frequent", "min", "max") and present.size == 0:
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
        elif prep.impute == "min":
            fill = float(present.min())
        elif prep.impute == "max":
            fill = float(present.max())
        elif prep.impute == "zero":
            fill = 0.0
        elif prep.impute == "constant":
            fill = float(prep.fill_value)
        else:  # none, or error (no NULL can reach it)
            fill = math.nan

        # Scaling statistics are learned from the imputed values; under impute 'none', from the non-NULL ones.
        imputed = present
        if not math.isnan(fill):
            imputed = np.concatenate([present, np.full(values.size - present.size, fill)])
        stats: Dict[str, Any] = {"impute_value": None if math.isnan(fill) else fill}
        offset, divisor, learned = _scaling(imputed, prep.scale)
        stats.update(learned)
        self._stats[name] = stats
        # The NULL output is computed once, with the same operations transform applies to values.
        self._numbers.append((index, out, offset, divisor, (fill - offset) / divisor))
        self.output_names.append(name)
        self.output_sources.append(name)

    def _fit_categorical(self, index: int, out: int, column: Column, values: np.ndarray,
                         target: Optional[np.ndarray], classes: Optional[Sequence[Any]]) -> None:
        name, prep = column.name, self.plan[column.name]
        keys = category_keys(np.asarray(values) if column.kind == "text" else np.asarray(values, dtype=np.float64))
        counts = Counter(keys)
        nulls = counts.pop(None, 0)
        _refuse_training_nulls(name, prep, nulls, len(keys), "training rows")
        fill: Category
        if prep.impute == "most_frequent":
            if not counts:
                raise PgmlError(
                    f'column "{name}" is NULL in every training row, '
                    'so "impute": "most_frequent" has nothing to learn from',
                    hint=f'drop "{name}" from the training view, '
                    'or remove its "impute" so NULL is a category of its own',
                )
            fill = min(counts, key=lambda v: (-counts[v], v))  # ties: the smallest value
        elif prep.impute == "constant":
            fill = prep.fill_value
        else:  # none, error, or mean (target encoding: NULL gets the prior)
            fill = None
        if nulls and fill is not None:
            counts[fill] += nulls
        null_category = bool(nulls) and fill is None and prep.impute == "none"
        if prep.order is not None:
            listed = set(prep.order)
            unlisted = sorted(v for v in counts if v not in listed)
            if unlisted:
                shown = _quote_list(_labels(unlisted[:_SHOWN])) + (", ..." if len(unlisted) > _SHOWN else "")
                raise PgmlError(
                    f'column "{name}" holds {len(unlisted):,} value(s) that its ordinal order does not list: {shown}',
                    hint=f'list every value in {{"{name}": {{"encode": {{"ordinal": [...]}}}}}}: the order has '
                         f"{_quote_list(_labels(prep.order))}",
                )
            categories: List[Category] = list(prep.order)
            if null_category and None not in listed:
                categories.append(None)  # NULLS LAST
        else:
            categories = sorted(counts)  # type: ignore[type-var]  # one type per column: str or float
            if null_category:
                categories.append(None)  # NULLS LAST
        lookup: Dict[Category, int] = {v: code for code, v in enumerate(categories)}
        if fill is not None and fill in lookup:
            lookup[None] = lookup[fill]
        stats: Dict[str, Any] = {"impute_value": fill, "categories": len(categories)}

        if prep.encode == "one_hot":
            self.output_names.extend(f"{name} IS NULL" if v is None else f"{name}={_label(v)}" for v in categories)
            self.output_sources.extend(repeat(name, len(categories)))
            self._texts.append((index, out, lookup, True))
        elif prep.encode == "ordinal" and prep.scale == "none":
            self.output_names.append(name)
            self.output_sources.append(name)
            self._texts.append((index, out, lookup, False))
        else:
            codes = np.fromiter(map(lookup.get, keys, repeat(-1)), dtype=np.intp, count=len(keys))
            if prep.encode == "ordinal":
                table = np.arange(len(categories) + 1, dtype=np.float64)[:, None]
                table[-1] = -1.0  # unseen
                names = [name]
            else:
                table, names = self._target_table(column, codes, len(categories), target, classes, stats)
            # Scaled column by column from the training rows' values (codes -1: the unseen row).
            for j in range(table.shape[1]):
                offset, divisor, learned = _scaling(table[codes, j], prep.scale)
                table[:, j] = (table[:, j] - offset) / divisor
                if learned:
                    stats.setdefault("scaling", []).append(learned)
            rows = table.tolist()
            self._tables.append((index, out, {v: tuple(rows[code]) for v, code in lookup.items()}, tuple(rows[-1])))
            self.output_names.extend(names)
            self.output_sources.extend(repeat(name, len(names)))
        self._stats[name] = stats

    def _target_table(self, column: Column, codes: np.ndarray, k: int, target: Optional[np.ndarray],
                      classes: Optional[Sequence[Any]], stats: Dict[str, Any]) -> Tuple[np.ndarray, List[str]]:
        """Per category (k rows, then the unseen value's), the smoothed mean of the target; one
        column, or one per class for more than two classes."""
        name, prep = column.name, self.plan[column.name]
        if target is None:
            raise PgmlError(
                f'"encode": "target" for column "{name}" needs the values of y_column, and this run has none',
                hint=f'give "{name}" "encode": "one_hot" or "ordinal" instead',
            )
        if classes is not None and len(classes) > 2:
            y = np.zeros((len(codes), len(classes)), dtype=np.float64)
            y[np.arange(len(codes)), np.asarray(target, dtype=np.intp)] = 1.0
            names = [f"{name}:{c}" for c in classes]
        else:
            y = np.asarray(target, dtype=np.float64)[:, None]
            names = [name]
        prior = y.mean(axis=0)
        seen = codes >= 0  # NULL under impute 'mean' is no category: it gets the prior
        rows = np.bincount(codes[seen], minlength=k).astype(np.float64)[:, None]
        sums = np.stack([np.bincount(codes[seen], weights=y[seen, j], minlength=k) for j in range(y.shape[1])],
                        axis=1)
        smoothing = prep.smoothing if prep.smoothing is not None else DEFAULT_SMOOTHING
        means = (sums + smoothing * prior) / (rows + smoothing)  # every category has a training row
        stats["prior"] = prior.tolist() if y.shape[1] > 1 else float(prior[0])
        stats["smoothing"] = smoothing
        return np.vstack([means, prior]), names

    def transform(self, data: Mapping[str, np.ndarray]) -> np.ndarray:
        """Apply the fitted preprocessing to a batch (column name -> 1-D array).

        Returns a C-contiguous float64 array of shape (rows, len(output_names)).
        """
        if not self._fitted:
            raise RuntimeError("FeatureEncoder.transform called before fit")
        rows = self._check_input(data)
        self._refuse_missing(data)
        out = np.zeros((rows, self._n_outputs), dtype=np.float64)
        for index, pos, offset, divisor, null_out in self._numbers:
            values = np.asarray(data[self.columns[index].name], dtype=np.float64)
            scaled = values - offset
            scaled /= divisor
            if not math.isnan(null_out):
                np.copyto(scaled, null_out, where=np.isnan(values))
            out[:, pos] = scaled
        for index, first, lookup, one_hot in self._texts:
            keys = self._keys(index, data)
            codes = np.fromiter(map(lookup.get, keys, repeat(-1)), dtype=np.intp, count=rows)
            if one_hot:
                seen = np.flatnonzero(codes >= 0)
                out[seen, first + codes[seen]] = 1.0
            else:
                out[:, first] = codes
        for index, first, table, unseen in self._tables:
            keys = self._keys(index, data)
            positions = {v: i for i, v in enumerate(table)}
            values = np.array([*table.values(), unseen], dtype=np.float64)
            where = np.fromiter(map(positions.get, keys, repeat(len(table))), dtype=np.intp, count=rows)
            out[:, first:first + len(unseen)] = values[where]
        return out

    def _keys(self, index: int, data: Mapping[str, np.ndarray]) -> np.ndarray:
        column = self.columns[index]
        values = data[column.name]
        return category_keys(np.asarray(values) if column.kind == "text" else np.asarray(values, dtype=np.float64))

    def _refuse_missing(self, data: Mapping[str, np.ndarray]) -> None:
        """A prediction of rows where a column trained with impute 'error' is NULL is refused."""
        for index in self._required:
            column = self.columns[index]
            nulls = _nulls(data[column.name])
            if nulls:
                raise RowEncoder.null_error(column.name, f"in {nulls:,} row(s)")

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
        return RowEncoder([c.name for c in self.columns], self._numbers, self._texts, self._n_outputs,
                          self._tables, self._required)

    def describe(self) -> Dict[str, Dict[str, Any]]:
        """Per column, JSON-safe: kind, SQL type, the options in force, the
        learned statistics and the number of outputs.

        Number columns have ``impute``, ``impute_value`` (null under impute
        'none' and 'error'), ``scale`` and, by scale, ``mean``/``std``,
        ``min``/``max``, ``max_abs`` or ``median``/``iqr``.  Categorical
        columns have ``impute``, ``impute_value`` (null: NULL is its own
        category), ``encode`` (with ``order`` when explicit), ``categories``
        (how many were learned, counting NULL when it is a category), ``scale``
        when scaled (``scaling``: the statistics of each output) and, for target
        encoding, ``prior`` and ``smoothing``.
        """
        if not self._fitted:
            raise RuntimeError("FeatureEncoder.describe called before fit")
        result: Dict[str, Dict[str, Any]] = {}
        for column in self.columns:
            prep = self.plan[column.name]
            entry: Dict[str, Any] = {"kind": column.kind, "sql_type": column.sql_type, "impute": prep.impute}
            if not prep.categorical:
                entry["scale"] = prep.scale
            else:
                entry["encode"] = prep.encode
                if prep.order is not None:
                    entry["order"] = list(prep.order)
                if prep.scale != "none":
                    entry["scale"] = prep.scale
            entry.update(self._stats[column.name])
            entry["outputs"] = self.output_sources.count(column.name)
            result[column.name] = entry
        return result

    def to_data(self) -> Dict[str, Any]:
        """The fitted encoder as plain JSON data (model_format stores it so): lists, strings and
        numbers, NaN written as null.  ``tables`` and ``required`` are only written when used, so
        that an encoder of the earlier steps is stored as before."""
        if not self._fitted:
            raise RuntimeError("FeatureEncoder.to_data called before fit")
        data: Dict[str, Any] = {
            "columns": [[c.name, c.kind, c.sql_type] for c in self.columns],
            "plan": {name: _plan_data(p) for name, p in self.plan.items()},
            "output_names": self.output_names,
            "output_sources": self.output_sources,
            "stats": self._stats,
            "numbers": [[i, o, offset, divisor, None if math.isnan(null_out) else null_out]
                        for i, o, offset, divisor, null_out in self._numbers],
            "texts": [[i, first, list(lookup.items()), one_hot] for i, first, lookup, one_hot in self._texts],
        }
        if self._tables:
            data["tables"] = [[i, first, [[v, list(outputs)] for v, outputs in table.items()], list(unseen)]
                              for i, first, table, unseen in self._tables]
        if self._required:
            data["required"] = list(self._required)
        return data

    @classmethod
    def from_data(cls, data: Mapping[str, Any]) -> "FeatureEncoder":
        """The fitted encoder :meth:`to_data` described."""
        columns = [Column(*c) for c in data["columns"]]
        encoder = cls(columns, {name: _plan_from_data(p) for name, p in data["plan"].items()})
        encoder.output_names = list(data["output_names"])
        encoder.output_sources = list(data["output_sources"])
        encoder._stats = {name: dict(stats) for name, stats in data["stats"].items()}
        row = RowEncoder.from_data(data)
        encoder._numbers, encoder._texts, encoder._tables = row.numbers, row.texts, row.tables
        encoder._required = row.required
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



def _plan_data(prep: Preprocess) -> List[Any]:
    """A plan as stored: [impute, scale, encode, fill_value], then order and smoothing when set
    (a plan of the earlier steps is stored as before)."""
    stored = [prep.impute, prep.scale, prep.encode, prep.fill_value]
    if prep.order is not None or prep.smoothing is not None:
        stored += [None if prep.order is None else list(prep.order), prep.smoothing]
    return stored


def _plan_from_data(stored: Sequence[Any]) -> Preprocess:
    impute, scale, encode, fill_value = stored[:4]
    order = stored[4] if len(stored) > 4 else None
    smoothing = stored[5] if len(stored) > 5 else None
    return Preprocess(impute, scale, encode, fill_value, None if order is None else tuple(order), smoothing)
