"""A model's prediction as a SQL expression over its feature columns, for PostgreSQL to compute.

Scoring a whole relation through the wrapper moves every row out of the database and back through
Multicorn, which costs several times what PostgreSQL takes to compute a simple expression over the
same rows. A linear regression with its preprocessing (imputation, scaling, one-hot, ordinal or
target encoded categories) *is* a simple expression, so ``pgml.score_table`` and ``pgml.score_into`` hand it to
PostgreSQL: it runs in the caller's transaction, with the caller's privileges, at the speed of a
plain SELECT.

The expression does in float8 what the fast path does in Python's floats, step by step: the same
values read from each column (``columns.load_expression``), the same ``(x - offset) / divisor``,
the same category codes (what a category adds, its outputs times their coefficients, is a constant
of the expression). Only the final sum's rounding can differ: the fast path rounds the exact sum
once (``math.fsum``), PostgreSQL adds term by term, so the two agree to about 1e-15 of the largest
term.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence, Tuple

from .columns import identifier, load_expression
from .errors import PgmlError
from .model import Model
from .row_encoder import Category, RowEncoder
from .single_row import LinearPredictor


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _number(value: float) -> str:
    return f"{_literal(repr(float(value)))}::float8"


def _raise(error: PgmlError) -> str:
    """A float8 expression that raises ``error`` when PostgreSQL evaluates it (pgml._raise)."""
    return f"pgml._raise({_literal(error.as_json())}::jsonb, NULL::float8)"


def expression(model: Model) -> Optional[str]:
    """The SQL expression of the model's prediction over its feature columns (by name, unqualified),
    or None when it has none: classification, a model other than linear, or preprocessing that
    hands NaN to the estimator (which scikit-learn would refuse), or features read from arrays.

    A NULL (or NaN) in a column trained with impute 'error' raises the error a single prediction
    gives; a category is compared as text in the C collation, or as a float8 for a number column
    encoded as categories (whose NULL is read as NaN, which PostgreSQL finds equal to NaN)."""
    predictor = model.predictor
    if model.classes is not None or not isinstance(predictor, LinearPredictor):
        return None
    if any(c.array is not None for c in model.columns):
        return None  # array features: the relation form checks each array's length, an expression could not
    meta, arrays = predictor.to_data()
    if meta["classifier"]:
        return None
    coef, intercept = list(arrays["coef"]), arrays["intercept"][0]
    row = model.row_encoder
    required = set(row.required)
    terms: List[str] = []
    for index, out, offset, divisor, null_out in row.numbers:
        column = model.columns[index]
        if index in required:
            fallback = _raise(RowEncoder.null_error(column.name))
        elif math.isnan(null_out):
            return None
        else:
            fallback = _number(null_out)
        value = load_expression(identifier(column.name), column.kind, column.base_type)
        encoded = f"coalesce((nullif({value}, 'NaN'::float8) - {_number(offset)}) / {_number(divisor)}, {fallback})"
        terms.append(f"{_number(coef[out])} * {encoded}")
    # Per categorical column, what each category adds to the prediction, and what a category
    # training never saw adds: nothing (one-hot: all zeros), code -1 (ordinal), the table's own.
    categories: List[Tuple[int, Dict[Category, float], float]] = [
        (index, {category: coef[first + code] if one_hot else coef[first] * code for category, code in lookup.items()},
         0.0 if one_hot else -coef[first])
        for index, first, lookup, one_hot in row.texts]
    categories += [(index, {category: _weight(coef, first, outputs) for category, outputs in table.items()},
                    _weight(coef, first, unseen))
                   for index, first, table, unseen in row.tables]
    for index, weights, unseen in categories:
        column = model.columns[index]
        if column.is_text:
            value = f"{load_expression(identifier(column.name), 'text', '')} COLLATE \"C\""
            null_test = f"{value} IS NULL"
        else:
            value = load_expression(identifier(column.name), column.kind, column.base_type)
            null_test = f"{value} = 'NaN'::float8"
        cases = [f"WHEN {null_test} THEN {_raise(RowEncoder.null_error(column.name))}"] if index in required else []
        for category, weight in weights.items():
            test = null_test if category is None else \
                f"{value} = {_literal(category) if isinstance(category, str) else _number(category)}"
            cases.append(f"WHEN {test} THEN {_number(weight)}")
        terms.append(f"(CASE {' '.join(cases)} ELSE {_number(unseen)} END)")
    return f"({' + '.join(terms) or _number(0.0)} + {_number(intercept)})"


def _weight(coef: List[float], first: int, outputs: Sequence[float]) -> float:
    """What a category's outputs add to the prediction: their products with the coefficients,
    summed exactly (math.fsum, as the fast path sums the whole row)."""
    return math.fsum(coef[first + j] * v for j, v in enumerate(outputs))
